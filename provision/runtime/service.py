"""A systemd unit that keeps a stack up: `provision watch MANIFEST` as a service, and its install/uninstall.

    unit_text(manifest, state_dir, python=..., env_file=..., user=...)  -> the unit's text
    install(manifest, state_dir, ...)   -> ServiceResult  (writes the unit; runs or prints systemctl)
    uninstall(manifest_or_name, ...)    -> ServiceResult

How the unit stops. `watch` ends its loop on SIGTERM and leaves the stack running, and the stack (the
xinference server and its model processes, each in a session of its own) still lives in the unit's
cgroup. So the unit's stop is, in order: SIGTERM to `watch` alone (KillMode=mixed; the lock on the state
is released when its loop ends), then `provision down` (ExecStopPost, run after the main process is
gone, while the server still runs: models terminated, server stopped by PID), then SIGKILL to whatever
is left in the cgroup. TimeoutStopSec bounds each step. ExecStopPost also runs after a crash, before
Restart=on-failure starts `watch` again, so a restart never meets a half-stopped stack.

The unit only runs `provision`: the absolute interpreter of this venv (not resolved: a venv's python is
a link), `-m provision --state-dir ABS watch ABS`, in the manifest's folder (relative paths in it resolve
the same), with the secrets the manifest names read from an EnvironmentFile.

A unit provision wrote carries MARKER in its first lines; install refuses to overwrite (and uninstall to
remove) a unit without it unless forced. Where systemd is not running (a container, these CI machines)
the systemctl commands are printed instead of run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ProvisionError, UsageError

MARKER = "# provision-unit:"
SYSTEM_DIR = Path("/etc/systemd/system")
USER_DIR = Path(".config/systemd/user")  # under $HOME (or $XDG_CONFIG_HOME/systemd/user)
RESTART_SEC = 10
STOP_TIMEOUT_S = 300  # each stop step: watch ending its loop, then `provision down` (models, then the server)
START_LIMIT = (600, 5)  # at most 5 starts in 600 s, then systemd gives up (`systemctl reset-failed` to retry)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


@dataclass
class Secrets:
    """The environment variables a manifest names: required (no default) and optional ones."""

    required: list[str] = field(default_factory=list)
    optional: list[str] = field(default_factory=list)


@dataclass
class ServiceResult:
    unit: str  # provision-<stack>.service
    path: Path
    action: str  # written | unchanged | printed | removed | not installed
    commands: list[str] = field(default_factory=list)  # the systemctl commands, run or to run
    ran: bool = False  # True: systemd runs here and the commands were run
    outputs: list[str] = field(default_factory=list)  # what each command that was run said
    notes: list[str] = field(default_factory=list)
    exit_code: int = 0
    text: str | None = None  # the unit's text (printed: what would be written)


# -- the unit's text --------------------------------------------------------------------------------


def unit_name(stack: str) -> str:
    if not _NAME.match(stack) or ".." in stack:
        raise UsageError(f"stack name {stack[:80]!r} cannot name a systemd unit",
                         hint="the manifest's name may hold letters, digits, '.', '_' and '-'")
    return f"provision-{stack}.service"


def read_manifest(manifest: Path) -> tuple[str, Secrets]:
    """(the stack's name, the variables it names), from the YAML as written: no secret needs to be set
    for a unit to be written, and nothing is expanded."""
    from ..manifest.source import read_text, read_yaml

    _, data = read_yaml(read_text(str(manifest)), str(manifest))
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise UsageError(f"{manifest} has no `name`: it is not a manifest", hint="`provision validate` says more")
    secrets = Secrets()

    def add(name: str, required: bool) -> None:
        target = secrets.required if required else secrets.optional
        if name not in secrets.required and name not in target:
            target.append(name)
            if required and name in secrets.optional:
                secrets.optional.remove(name)

    def walk(value) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            for match in _VARIABLE.finditer(value.replace("$$", "")):
                add(match.group(1), match.group(2) is None)

    walk(data)
    server = data.get("server") if isinstance(data.get("server"), dict) else {}
    download = data.get("download") if isinstance(data.get("download"), dict) else {}
    for key in ("api_key_env", "admin_password_env"):
        if isinstance(server.get(key), str):
            add(server[key], True)
    token = download.get("token_env", "MODELSCOPE_API_TOKEN")
    add(token if isinstance(token, str) else "MODELSCOPE_API_TOKEN", False)  # a public hub needs none
    return data["name"], secrets


def unit_text(manifest: Path, state_dir: Path, *, python: str, env_file: Path | None, user: bool,
              run_as: str | None = None, env_required: bool | None = None, restart_sec: int = RESTART_SEC,
              stop_timeout: int = STOP_TIMEOUT_S) -> str:
    """The unit that runs `provision watch MANIFEST` (see the module's docstring for how it stops).

    env_file: the secrets file (EnvironmentFile=; `-` in front, a missing file is no error, unless the
    manifest names a variable without a default, or env_required says so). user: a `systemctl --user`
    unit (WantedBy=default.target) rather than a system one (multi-user.target, User=run_as if given).
    """
    manifest = Path(os.path.abspath(os.path.expanduser(manifest)))
    state_dir = Path(os.path.abspath(os.path.expanduser(state_dir)))
    interpreter = _interpreter(python)
    stack, secrets = read_manifest(manifest)
    name = unit_name(stack)
    if run_as is not None and user:
        raise UsageError("a --user unit runs as the user whose manager runs it: --run-as is for --system units")
    command = [interpreter, "-m", "provision", "--state-dir", str(state_dir)]
    lines = [
        f"{MARKER} {name}",
        "# Written by `provision service install`; `provision service uninstall` removes it.",
        f"# Stack {stack} from {_check(str(manifest))}.",
    ]
    if secrets.required or secrets.optional:
        lines.append("# Secrets the manifest names (EnvironmentFile, one NAME=value a line): "
                     + ", ".join(secrets.required + [f"{v} (optional)" for v in secrets.optional]))
    lines += [
        "",
        "[Unit]",
        f"Description=provision stack {stack} (Xinference models of {_escape(manifest.name)})",
        "After=network-online.target",
        "Wants=network-online.target",
        f"StartLimitIntervalSec={START_LIMIT[0]}",
        f"StartLimitBurst={START_LIMIT[1]}",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={_path_value(manifest.parent)}",
    ]
    if env_file is None and secrets.required:
        lines.append(f"# No EnvironmentFile: {', '.join(secrets.required)} must reach the service some other way "
                     "(`provision service install --env-file FILE`).")
    if env_file is not None:
        required = bool(secrets.required) if env_required is None else env_required
        env_path = Path(os.path.abspath(os.path.expanduser(env_file)))
        lines.append(f"EnvironmentFile={'' if required else '-'}{_path_value(env_path)}")
    lines += [
        "Environment=PYTHONUNBUFFERED=1",
        f"ExecStart={_command(command + ['watch', str(manifest)])}",
        "# watch leaves the stack running on SIGTERM: stop it alone, then bring the stack down, then kill the rest.",
        "KillMode=mixed",
        # watch exits 0 on SIGTERM (the stop systemd sends) and 130 on SIGINT, the exit systemd counts clean when a
        # process dies of SIGINT itself: `systemctl kill -s INT` is a stop too, not a failure to restart after.
        "SuccessExitStatus=130",
        f"ExecStopPost={_command(command + ['down'])}",
        f"TimeoutStopSec={stop_timeout}",
        "Restart=on-failure",
        f"RestartSec={restart_sec}",
    ]
    if run_as:
        if not re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?", run_as):
            raise UsageError(f"{run_as[:40]!r} is not a user name")
        lines.append(f"User={run_as}")
    lines += ["", "[Install]", f"WantedBy={'default.target' if user else 'multi-user.target'}", ""]
    return "\n".join(lines)


def _interpreter(python: str) -> str:
    """An absolute interpreter path, not resolved (a venv's python is a link to the base one)."""
    found = python if os.path.isabs(python) else shutil.which(python)
    if not found or not os.access(found, os.X_OK):
        raise UsageError(f"{python} is not an executable interpreter", hint="give the absolute path of the venv's python")
    return os.path.abspath(found)


def _check(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UsageError(f"{value[:80]!r} holds a control character: it cannot go into a unit file")
    return value


def _escape(value: str) -> str:
    """% starts a specifier in every unit setting: %% is a literal %."""
    return _check(value).replace("%", "%%")


def _path_value(path: Path) -> str:
    text = str(path)
    if text != text.strip():
        raise UsageError(f"{text!r} starts or ends with a space: it cannot go into a unit file")
    return _escape(text)


def _command(args: list[str]) -> str:
    """An Exec*= line: each word quoted where needed, with specifiers (%) and variables ($) escaped."""
    words = []
    for arg in args:
        text = _escape(arg).replace("$", "$$")
        if not text or re.search(r"[\s\"'\\;]", text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        words.append(text)
    return " ".join(words)


# -- install and uninstall --------------------------------------------------------------------------


def unit_dir(user: bool, *, root: Path | None = None, environ: dict | None = None) -> Path:
    """Where units go: ~/.config/systemd/user (or $XDG_CONFIG_HOME/systemd/user), or /etc/systemd/system;
    under `root` when given (tests, images)."""
    environ = os.environ if environ is None else environ
    if not user:
        base = SYSTEM_DIR
    elif environ.get("XDG_CONFIG_HOME"):
        base = Path(environ["XDG_CONFIG_HOME"]) / "systemd" / "user"
    else:
        base = Path(environ.get("HOME") or Path.home()) / USER_DIR
    return Path(root) / base.relative_to(base.anchor) if root is not None else base


def systemd_running(user: bool, environ: dict | None = None) -> bool:
    """systemd is PID 1 here (sd_booted), and for --user units a user manager answers in this session."""
    environ = os.environ if environ is None else environ
    if not os.path.isdir("/run/systemd/system"):
        return False
    if not user:
        return True
    runtime = environ.get("XDG_RUNTIME_DIR")
    return bool(runtime) and os.path.exists(os.path.join(runtime, "systemd"))


Runner = Callable[[list[str]], tuple[int, str]]


def _run(command: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=STOP_TIMEOUT_S + 60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return done.returncode, (done.stdout + done.stderr).strip()


def install(manifest: Path, state_dir: Path, *, user: bool | None = None, python: str | None = None,
            env_file: Path | None = None, run_as: str | None = None, force: bool = False, start: bool = True,
            root: Path | None = None, systemd: bool | None = None, runner: Runner = _run) -> ServiceResult:
    """Write the unit of the manifest's stack, then `systemctl daemon-reload` and `enable [--now]` it.

    user: None means a --user unit unless we are root. Refuses (UsageError) to overwrite a unit that
    provision did not write unless `force`. systemd: whether to run systemctl (None: when systemd runs
    here and no `root` is given); otherwise the commands are only returned, to be printed.
    """
    user = os.geteuid() != 0 if user is None else user
    text = unit_text(manifest, state_dir, python=python or sys.executable, env_file=env_file, user=user,
                     run_as=run_as)
    name = unit_name(read_manifest(Path(manifest))[0])
    path = unit_dir(user, root=root) / name
    _refuse_foreign(path, force, "overwrite")
    old = _read(path)
    result = ServiceResult(name, path, "unchanged" if old == text else "written")
    if old != text:
        from ..state import write_atomic

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text, mode=0o644)
        except OSError as exc:
            raise ProvisionError(f"cannot write {path}: {exc.strerror or exc}",
                                 hint="a system unit needs root: run as root, or install a --user unit") from exc
    ctl = ["systemctl"] + (["--user"] if user else [])
    commands = [ctl + ["daemon-reload"], ctl + ["enable", "--now", name] if start else ctl + ["enable", name]]
    _commands(result, commands, root is None and (systemd_running(user) if systemd is None else systemd), runner)
    journal = "journalctl" + (" --user" if user else "") + f" -u {name} -f"
    result.notes.append(f"the log: {journal}; the stack: provision --state-dir {Path(state_dir).absolute()} status")
    if user:
        result.notes.append("a --user unit stops at logout unless lingering is on: loginctl enable-linger "
                            f"{os.environ.get('USER') or '$USER'}")
    if env_file is not None and not Path(env_file).exists():
        result.notes.append(f"{env_file} does not exist yet: write the secrets there (NAME=value lines, mode 600)")
    return result


def uninstall(manifest_or_stack: Path | str, *, user: bool | None = None, force: bool = False,
              root: Path | None = None, systemd: bool | None = None, runner: Runner = _run) -> ServiceResult:
    """Stop and disable the stack's unit (which brings the stack down), remove it, reload systemd.

    manifest_or_stack: the manifest (its name picks the unit) or the stack's name.
    """
    user = os.geteuid() != 0 if user is None else user
    target = str(manifest_or_stack)
    stack = read_manifest(Path(target))[0] if os.path.isfile(target) else target
    name = unit_name(stack)
    folder = unit_dir(user, root=root)
    path = folder / name
    result = ServiceResult(name, path, "not installed")
    if not path.exists() and not path.is_symlink():
        return result
    _refuse_foreign(path, force, "remove")
    ctl = ["systemctl"] + (["--user"] if user else [])
    live = root is None and (systemd_running(user) if systemd is None else systemd)
    if live:  # disable --now stops it first: ExecStopPost brings the stack down
        _commands(result, [ctl + ["disable", "--now", name]], True, runner)
    else:
        for link in folder.glob(f"*.wants/{name}"):  # what `disable` removes
            with contextlib.suppress(OSError):
                link.unlink()
    try:
        path.unlink()
    except OSError as exc:
        raise ProvisionError(f"cannot remove {path}: {exc.strerror or exc}") from exc
    result.action = "removed"
    _commands(result, [ctl + ["daemon-reload"]], live, runner)
    if not live:
        result.commands.insert(0, " ".join(ctl + ["disable", "--now", name]) + "  # before removing, where it runs")
        result.notes.append("systemd is not running here: nothing was stopped; `provision down` stops the stack")
    return result


def _commands(result: ServiceResult, commands: list[list[str]], run: bool, runner: Runner) -> None:
    for command in commands:
        result.commands.append(" ".join(command))
        if not run:
            continue
        result.ran = True
        code, output = runner(command)
        result.outputs.append(output)
        if code != 0:
            result.exit_code = 1
            result.notes.append(f"`{' '.join(command)}` failed (exit {code}): {output[:300]}")
            return
    if not run and commands:
        result.notes.append("systemd is not running here: run these commands where it does")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _refuse_foreign(path: Path, force: bool, verb: str) -> None:
    if force or (not path.exists() and not path.is_symlink()):
        return
    head = (_read(path) or "").split("\n", 3)[:3]
    if path.is_symlink() or not any(line.startswith(MARKER) for line in head):
        raise UsageError(f"{path} exists and was not written by provision: will not {verb} it",
                         hint="pass --force to replace it, or remove it yourself")
