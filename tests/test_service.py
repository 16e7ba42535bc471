"""The systemd unit of a stack: its text, `systemd-analyze verify` on it, install/uninstall into a temp root.

systemd-analyze verify needs no running systemd (it loads the unit into a test manager); where the
tool is missing (no `systemd` package: `apt-get install systemd` on Debian) those tests are skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provision.errors import UsageError
from provision.runtime import service

MANIFEST = """\
version: 1
name: rag-stack
server:
  port: 9997
  api_key_env: XINF_KEY
  endpoint: ${XINF_URL:-http://127.0.0.1:9997}
download:
  token_env: MS_TOKEN
  models_dir: ${MODELS_DIR}
models:
  - role: embedding
    uid: emb
    name: bge-small-en-v1.5
    source: BAAI/bge-small-en-v1.5
    engine: sentence_transformers
"""

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is missing (Debian: apt-get install "
                                   "systemd); the unit's text is still checked by the other tests")


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    folder = tmp_path / "my stack%1"  # a space and a % in the path: both must be escaped
    folder.mkdir()
    path = folder / "stack.yml"
    path.write_text(MANIFEST)
    return path


def settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_unit_runs_watch_and_brings_the_stack_down_on_stop(manifest: Path, tmp_path: Path):
    state = tmp_path / "state"
    text = service.unit_text(manifest, state, python=sys.executable, env_file=tmp_path / "secrets.env", user=False)
    s = settings(text)
    assert text.startswith(f"{service.MARKER} provision-rag-stack.service\n")
    quoted = '"' + str(manifest).replace("%", "%%") + '"'
    assert s["ExecStart"] == [f"{sys.executable} -m provision --state-dir {state} watch {quoted}"]
    assert s["ExecStopPost"] == [f"{sys.executable} -m provision --state-dir {state} down"]
    assert s["WorkingDirectory"] == [str(manifest.parent).replace("%", "%%")]
    assert s["KillMode"] == ["mixed"] and s["Restart"] == ["on-failure"] and int(s["RestartSec"][0]) > 0
    assert int(s["TimeoutStopSec"][0]) >= 120
    assert s["After"] == ["network-online.target"] and s["Wants"] == ["network-online.target"]
    assert s["WantedBy"] == ["multi-user.target"]
    # XINF_KEY (api_key_env) and MODELS_DIR (${VAR} without default) are required: no `-` before the file.
    assert s["EnvironmentFile"] == [str(tmp_path / "secrets.env")]
    assert "MODELS_DIR, XINF_KEY, XINF_URL (optional), MS_TOKEN (optional)" in text


def test_user_unit_and_optional_secrets(tmp_path: Path):
    path = tmp_path / "m.yml"
    path.write_text(MANIFEST.replace("  api_key_env: XINF_KEY\n", "").replace("${MODELS_DIR}", "models"))
    text = service.unit_text(path, Path("state"), python=sys.executable, env_file=Path("secrets.env"), user=True)
    s = settings(text)
    assert s["WantedBy"] == ["default.target"]
    assert s["EnvironmentFile"] == ["-" + str(Path("secrets.env").absolute())]  # only optional ones: may be missing
    assert "--state-dir " + str(Path("state").absolute()) in s["ExecStart"][0]
    assert "User" not in s
    no_env = settings(service.unit_text(path, tmp_path, python=sys.executable, env_file=None, user=True))
    assert "EnvironmentFile" not in no_env


def test_refuses_what_cannot_go_into_a_unit(tmp_path: Path, manifest: Path):
    with pytest.raises(UsageError, match="control character"):
        service.unit_text(manifest, tmp_path / "a\nb", python=sys.executable, env_file=None, user=True)
    with pytest.raises(UsageError, match="not an executable"):
        service.unit_text(manifest, tmp_path, python=str(tmp_path / "nope"), env_file=None, user=True)
    with pytest.raises(UsageError, match="--run-as is for --system units"):
        service.unit_text(manifest, tmp_path, python=sys.executable, env_file=None, user=True, run_as="rag")
    text = service.unit_text(manifest, tmp_path, python=sys.executable, env_file=None, user=False, run_as="rag")
    assert settings(text)["User"] == ["rag"]


def analyze(unit: Path, user: bool) -> tuple[int, str]:
    """`systemd-analyze verify` on one unit file: (its exit code, what it said about that unit).

    verify loads the unit into a test manager (no running systemd needed). It exits 0 on parse warnings
    (an unknown key, a bad value: "ignoring"), so a unit is clean only when nothing is said about it."""
    runtime = unit.parent / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_LEVEL": "notice"}
    done = subprocess.run([ANALYZE, "verify", "--man=no", *(["--user"] if user else []), str(unit)],
                          capture_output=True, text=True, env=env, timeout=60)
    said = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if unit.name in line)
    return done.returncode, said


@needs_analyze
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_systemd_analyze_verify_accepts_the_unit(manifest: Path, tmp_path: Path, user: bool):
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    unit = unit_dir / "provision-rag-stack.service"  # a temp copy: verify loads it by path
    unit.write_text(service.unit_text(manifest, tmp_path / "state", python=sys.executable,
                                      env_file=tmp_path / "secrets.env", user=user))
    assert analyze(unit, user) == (0, "")
    broken = unit_dir / "provision-broken.service"
    broken.write_text(unit.read_text().replace("KillMode=mixed", "KillMode=sometimes"))
    assert "kill mode" in analyze(broken, user)[1].lower()  # the check above would see a mistake


@pytest.fixture()
def unit_home(tmp_path: Path, monkeypatch) -> Path:
    """--user units go under tmp ($XDG_CONFIG_HOME), and systemctl is never run, whatever this machine runs."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(service, "systemd_running", lambda user, environ=None: False)
    return tmp_path / "config" / "systemd" / "user"


def printed_unit(invoke, manifest: Path, tmp_path: Path, *args: str) -> Path:
    """`provision service install MANIFEST --print ...`, saved as systemd would find it."""
    result = invoke(["--state-dir", tmp_path / "state", "service", "install", manifest, "--print", *args])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "printed"
    folder.mkdir(exist_ok=True)
    unit = folder / "provision-rag-stack.service"
    unit.write_text(result.stdout)
    return unit


@needs_analyze
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_the_printed_unit_passes_systemd_analyze_verify(invoke, manifest: Path, tmp_path: Path, unit_home: Path,
                                                         user: bool):
    unit = printed_unit(invoke, manifest, tmp_path, "--user" if user else "--system", "--env-file",
                        str(tmp_path / "secrets.env"))
    text = unit.read_text()
    assert text.startswith(service.MARKER) and f"ExecStart={sys.executable} -m provision" in text
    assert f"--state-dir {tmp_path / 'state'} watch" in text
    assert analyze(unit, user) == (0, "")
    assert not unit_home.exists()  # --print wrote nothing


@needs_analyze
def test_verify_catches_a_broken_printed_unit(invoke, manifest: Path, tmp_path: Path, unit_home: Path):
    """The check above can fail: the printed unit with a misspelled key and a missing interpreter."""
    unit = printed_unit(invoke, manifest, tmp_path, "--system")
    text = unit.read_text()
    unit.write_text(text.replace("Restart=on-failure", "Restar=on-failure")
                    .replace(f"ExecStart={sys.executable}", f"ExecStart={tmp_path}/no-such-python"))
    code, said = analyze(unit, False)
    assert "Unknown key 'Restar'" in said and "no-such-python is not executable" in said, said
    assert code != 0


def test_print_names_the_secrets_that_have_no_file(invoke, manifest: Path, tmp_path: Path, unit_home: Path):
    result = invoke(["service", "install", manifest, "--print", "--user", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["status"] == "success" and doc["action"] == "printed" and doc["unit"] == "provision-rag-stack.service"
    assert doc["path"] == str(unit_home / "provision-rag-stack.service") and not unit_home.exists()
    assert "# No EnvironmentFile: MODELS_DIR, XINF_KEY must reach the service" in doc["text"]
    assert any("--env-file" in n and "MODELS_DIR, XINF_KEY" in n for n in doc["notes"])


def test_install_and_uninstall_on_the_command_line(invoke, manifest: Path, tmp_path: Path, unit_home: Path):
    args = ["--state-dir", tmp_path / "state", "service", "install", manifest, "--user", "--env-file",
            tmp_path / "secrets.env"]
    first = invoke(args)
    unit = unit_home / "provision-rag-stack.service"
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines()[:3] == [
        f"Wrote {unit} (provision-rag-stack.service)",
        "run: systemctl --user daemon-reload",
        "run: systemctl --user enable --now provision-rag-stack.service"]
    assert "note: systemd is not running here" in first.stdout and unit.read_text().startswith(service.MARKER)
    again = invoke(args + ["--no-start"])  # the same unit: the file is left alone, the commands follow --no-start
    assert again.exit_code == 0 and "unchanged" in again.stdout.splitlines()[0]
    assert "run: systemctl --user enable provision-rag-stack.service" in again.stdout
    assert invoke(args[:-2] + ["--run-as", "rag"]).exit_code == 2  # --run-as is for system units

    removed = invoke(["service", "uninstall", manifest, "--user", "--json"])
    doc = json.loads(removed.stdout)
    assert removed.exit_code == 0 and doc["action"] == "removed" and not unit.exists()
    assert doc["commands"][-1] == "systemctl --user daemon-reload"
    gone = invoke(["service", "uninstall", "rag-stack", "--user"])
    assert gone.exit_code == 0 and "is not installed" in gone.stdout
    missing = invoke(["service", "uninstall", tmp_path / "nope.yml", "--user"])
    assert missing.exit_code == 2 and "no such manifest" in missing.stderr
    assert invoke(["service", "install", tmp_path / "nope.yml"]).exit_code == 2


def test_install_and_uninstall_into_a_temp_root(manifest: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", "/home/rag")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    root = tmp_path / "root"
    ran: list[list[str]] = []
    result = service.install(manifest, tmp_path / "state", user=True, root=root, runner=lambda c: ran.append(c) or (0, ""))
    path = root / "home/rag/.config/systemd/user/provision-rag-stack.service"
    assert result.path == path and result.action == "written" and path.stat().st_mode & 0o777 == 0o644
    assert not result.ran and ran == []  # a temp root is not this machine's systemd: printed only
    assert result.commands == ["systemctl --user daemon-reload", "systemctl --user enable --now provision-rag-stack.service"]
    assert any("enable-linger" in n for n in result.notes)
    assert service.install(manifest, tmp_path / "state", user=True, root=root).action == "unchanged"

    system = service.install(manifest, tmp_path / "state", user=False, root=root, env_file=tmp_path / "s.env")
    assert system.path == root / "etc/systemd/system/provision-rag-stack.service"
    assert "WantedBy=multi-user.target" in system.path.read_text()
    assert any("s.env does not exist" in n for n in system.notes)

    (path.parent / "default.target.wants").mkdir()
    (path.parent / "default.target.wants" / path.name).symlink_to(path)
    removed = service.uninstall(manifest, user=True, root=root)
    assert removed.action == "removed" and not path.exists()
    assert not (path.parent / "default.target.wants" / path.name).is_symlink()
    assert removed.commands[-1] == "systemctl --user daemon-reload"
    assert service.uninstall("rag-stack", user=True, root=root).action == "not installed"


def test_install_refuses_a_unit_it_did_not_write(manifest: Path, tmp_path: Path):
    root = tmp_path / "root"
    path = service.unit_dir(False, root=root) / "provision-rag-stack.service"
    path.parent.mkdir(parents=True)
    path.write_text("[Service]\nExecStart=/usr/bin/someone-elses\n")
    with pytest.raises(UsageError, match="not written by provision") as caught:
        service.install(manifest, tmp_path / "state", user=False, root=root)
    assert "--force" in caught.value.hint
    with pytest.raises(UsageError, match="not written by provision"):
        service.uninstall("rag-stack", user=False, root=root)
    assert path.read_text().startswith("[Service]")
    assert service.install(manifest, tmp_path / "state", user=False, root=root, force=True).action == "written"
    assert path.read_text().startswith(service.MARKER)


def test_systemctl_is_run_where_systemd_runs(manifest: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(service, "unit_dir", lambda user, root=None, environ=None: tmp_path / "units")
    ran: list[list[str]] = []

    def runner(command):
        ran.append(command)
        return (1, "Failed to connect to bus") if "enable" in command else (0, "")

    result = service.install(manifest, tmp_path / "state", user=False, systemd=True, runner=runner)
    assert ran == [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "provision-rag-stack.service"]]
    assert result.ran and result.exit_code == 1 and "Failed to connect to bus" in result.notes[0]
    ran.clear()
    removed = service.uninstall(manifest, user=False, systemd=True, runner=lambda c: ran.append(c) or (0, ""))
    assert ran == [["systemctl", "disable", "--now", "provision-rag-stack.service"], ["systemctl", "daemon-reload"]]
    assert removed.action == "removed" and removed.exit_code == 0
