"""What the end-to-end tests share: the CLI environment, the mirror process, process checks, cleanup.

Every process started here is stopped here, by PID or by the process group a state file recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import requests

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".test-cache"
PROVISION = [sys.executable, "-m", "provision"]

try:
    import xinference  # noqa: F401

    HAVE_SERVER = True
except ImportError:  # pragma: no cover - CI installs the server extra
    HAVE_SERVER = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Nothing listens on the port (TIME_WAIT leftovers of closed connections do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


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
