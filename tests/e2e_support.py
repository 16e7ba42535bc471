"""What the end-to-end tests share: one stack harness (the CLI environment, the mirror process, every run's
output and the process groups it recorded), and the cleanup.

Every process started here is stopped here, by PID or by the process group a state file recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import pytest
import requests
from support import free_port, group_members

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".test-cache"
PROVISION = [sys.executable, "-m", "provision"]

try:
    import xinference  # noqa: F401

    HAVE_SERVER = True
except ImportError:  # pragma: no cover - CI installs the server extra
    HAVE_SERVER = False


def cli_env(root: Path, *, drop: Iterable[str] = ()) -> dict:
    """The environment the CLI runs in: the modelscope client writes under root, quiet, no hub probes."""
    env = {
        **os.environ,
        "MODELSCOPE_CACHE": str(root / "ms-cache"),
        "MODELSCOPE_HOME": str(root / "ms-home"),
        "MODELSCOPE_DOWNLOAD_INTRA_CLOUD": "false",
        "TQDM_DISABLE": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    for name in ("PROVISION_STATE_DIR", *drop):
        env.pop(name, None)
    return env


@contextlib.contextmanager
def mirror_process(env: dict, timeout: float = 30) -> Iterator[str]:
    """`provision mirror serve` over the tiny test models on a free loopback port; yields its URL."""
    from tiny_models import build_all

    root = CACHE / "mirror"
    build_all(root)
    port = free_port()
    mirror = subprocess.Popen(
        [*PROVISION, "mirror", "serve", str(root), "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                requests.get(f"{url}/api/v1/models/tiny/minilm-embed", timeout=1)
                break
            except requests.ConnectionError:
                assert mirror.poll() is None, f"mirror died: {mirror.stdout.read().decode()}"
                assert time.monotonic() < deadline, f"mirror did not answer within {timeout:.0f} s"
                time.sleep(0.2)
        yield url
    finally:
        mirror.send_signal(signal.SIGTERM)
        try:
            mirror.wait(timeout=10)
        except subprocess.TimeoutExpired:
            mirror.kill()
            mirror.wait()
        mirror.stdout.close()


def recorded_pgids(state_dir: Path) -> set[int]:
    """The process groups of the server processes a state folder recorded (supervisor and workers too)."""
    try:
        server = json.loads((state_dir / "state.json").read_text()).get("server") or {}
    except (OSError, ValueError):
        return set()
    records = [server, *server.get("workers", [])]
    return {r["pgid"] for r in records if isinstance(r, dict) and r.get("pgid")}


def tear_down(state_dirs: Iterable[Path], env: dict, cwd: Path, pgids: Iterable[int] = ()) -> None:
    """`provision down` for every state, then SIGKILL any recorded group that still has members."""
    groups = set(pgids)
    for state in state_dirs:
        groups |= recorded_pgids(state)
        if (state / "state.json").exists():
            subprocess.run([*PROVISION, "--state-dir", str(state), "down"], env=env, cwd=cwd,
                           capture_output=True, timeout=180)
    for pgid in groups:
        if group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)


def tiny_embedding(uid: str, *extra: str) -> str:
    """The manifest entry of the tiny embedding model (tests/tiny_models.py), with extra `key: value` lines."""
    lines = ["  - role: embedding", f"    uid: {uid}", "    name: bge-small-en-v1.5", "    source: tiny/minilm-embed",
             "    engine: sentence_transformers", *(f"    {line}" for line in extra)]
    return "\n".join(lines) + "\n"


class Run:
    """One CLI run: exit code, the JSON document (with --json), and what it printed.
    `code, doc, output = run` unpacks it (output: stdout + stderr)."""

    def __init__(self, code: int, doc: dict | None, stdout: str, stderr: str):
        self.code, self.doc, self.stdout, self.stderr = code, doc, stdout, stderr

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __iter__(self):
        return iter((self.code, self.doc, self.output))


class E2EStack:
    """A folder for one module's stack: the manifest(s), the state folder(s), the models, the server home;
    `run` drives the real CLI and remembers what it printed and which process groups a state recorded."""

    def __init__(self, root: Path, env: dict, mirror: str):
        self.root, self.env, self.mirror = root, env, mirror
        self.port = free_port()
        self.state = root / "state"
        self.home = root / "xinf-home"
        self.models = root / "models"
        self.printed: list[tuple[str, str]] = []  # (command, output) of every run that must not show a secret
        self.timings: dict[str, float] = {}
        self.states: set[Path] = {self.state}
        self.pgids: set[int] = set()
        self.background: list[subprocess.Popen] = []  # `provision` runs started with start(): killed at the end

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_manifest(self, text: str, name: str = "stack.yml") -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def manifest_text(self, name: str, models: str, *, server: Iterable[str] = (), local: bool = True,
                      tail: str = "", hub: str | None = None, download: Iterable[str] = ()) -> str:
        """A manifest of this stack: its server (local: host, port, home; plus `server` lines), the mirror (or
        `hub`) as the hub, its models folder (plus `download` lines), then `models` entries and `tail` (roles,
        ragflow, ...)."""
        lines = ["  host: 127.0.0.1", f"  port: {self.port}", f"  home: {self.home}", "  start_timeout: 300"]
        lines = (lines if local else []) + [f"  {line}" for line in server]
        extra = "".join(f"  {line}\n" for line in download)
        return (f"version: 1\nname: {name}\nserver:\n" + "\n".join(lines) + "\n"
                f"download:\n  hub: modelscope\n  endpoint: {hub or self.mirror}\n  models_dir: {self.models}\n{extra}"
                f"models:\n{models}{tail}")

    def start(self, *args: str) -> subprocess.Popen:
        """`provision ARGS` in the background (its own session, so the test can signal it alone)."""
        proc = subprocess.Popen([*PROVISION, "--state-dir", str(self.state), *args], env=self.env, cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.background.append(proc)
        return proc

    def run(self, *args: str, state: Path | None = None, env: dict | None = None, timeout: float = 900,
            may_show_secrets: bool = False) -> Run:
        state = state or self.state
        self.states.add(state)
        started = time.monotonic()
        proc = subprocess.run([*PROVISION, "--state-dir", str(state), *args], env=env or self.env, cwd=self.root,
                              capture_output=True, text=True, timeout=timeout)
        name = " ".join(a for a in args if not a.startswith("/"))
        while name in self.timings:
            name += " (again)"
        self.timings[name] = time.monotonic() - started
        if not may_show_secrets:
            self.printed.append((" ".join(args), proc.stdout + proc.stderr))
        self.pgids |= recorded_pgids(state)
        doc = None
        if "--json" in args:
            try:
                doc = json.loads(proc.stdout)
            except ValueError:
                pytest.fail(f"`provision {' '.join(args)}` printed no JSON:\n{proc.stdout}\n{proc.stderr}")
        return Run(proc.returncode, doc, proc.stdout, proc.stderr)

    def state_json(self, state: Path | None = None) -> dict:
        return json.loads(((state or self.state) / "state.json").read_text())

    def server(self) -> dict:
        return self.state_json()["server"]

    def credentials(self) -> dict:
        """What `up` stored for the server (server.auth is on by default): admin login and API key."""
        entries = json.loads((self.state / "credentials.json").read_text())["servers"]
        return entries[str(self.home)]

    def admin_headers(self) -> dict:
        """An API key may only list and call models; deleting one takes the admin's login."""
        login = self.credentials()
        token = requests.post(f"{self.base}/token", json={"username": login["username"], "password": login["password"]},
                              timeout=30).json()["access_token"]
        return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def e2e_stack(tmp_path_factory, name: str, drop: Iterable[str] = ()) -> Iterator[E2EStack]:
    """A stack folder with the mirror serving the tiny models; afterwards every state it used is brought
    down, and every process group it recorded is made empty."""
    if not HAVE_SERVER:
        pytest.skip("xinference is not installed (pip install -e '.[server]')")
    root = tmp_path_factory.mktemp(name)
    env = cli_env(root, drop=drop)
    stack = None
    try:
        with mirror_process(env) as mirror_url:
            stack = E2EStack(root, env, mirror_url)
            yield stack
    finally:
        for proc in stack.background if stack else []:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        tear_down(stack.states if stack else [root / "state"], env, root, stack.pgids if stack else ())
