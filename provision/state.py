"""The state folder: what `up` started and launched, written atomically, guarded by a lock.

Layout of a state folder (default ./.provision, or --state-dir / PROVISION_STATE_DIR):

    state.json              ServerRecord + one ModelRecord per model (every attempt of its chain)
    lock                    flock()ed by the command that changes state
    logs/server.log         stdout/stderr of the xinference-local (or cluster supervisor) provision started
    logs/worker-N.log       stdout/stderr of cluster worker N (server.mode: cluster)
    ragflow/provider.json   what RAGFlow needs (see ragflow/config.py); 0600, it holds the API key
    credentials.json        admin login and API key of each server provision set up (auth/credentials.py); 0600
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import StateError

STATE_VERSION = 1
DEFAULT_STATE_DIR = ".provision"


def default_state_dir() -> Path:
    return Path(os.environ.get("PROVISION_STATE_DIR") or DEFAULT_STATE_DIR)


@dataclass
class WorkerRecord:
    """One xinference-worker of a cluster provision started; identity fields as ServerRecord's."""

    address: str  # host:port, as the supervisor and worker_ip name it
    pid: int | None = None
    pgid: int | None = None
    cmdline: list[str] = field(default_factory=list)
    create_time: float | None = None
    start_ticks: int | None = None  # written by provision 0.1 instead of create_time; still read
    log: str | None = None
    started_at: float | None = None


@dataclass
class ServerRecord:
    url: str  # base of the REST API, e.g. http://127.0.0.1:9997
    managed: bool  # True: provision started it and `down` stops it
    host: str = ""
    port: int = 0
    pid: int | None = None
    pgid: int | None = None
    cmdline: list[str] = field(default_factory=list)
    create_time: float | None = None  # with the cmdline, the PID's identity (runtime/procs.py)
    start_ticks: int | None = None  # written by provision 0.1 instead of create_time; still read
    log: str | None = None
    home: str | None = None
    started_at: float | None = None
    # Where the server's secrets come from; never the secrets themselves (see auth/).
    auth: bool = False  # managed: provision set up its authentication; the key is in credentials.json
    api_key_env: str | None = None  # external: the variable holding an API key (server.api_key_env)
    admin_user: str | None = None  # external: the admin provision logs in as (server.admin_user)
    admin_password_env: str | None = None  # external: the variable holding that admin's password
    # server.mode: cluster: pid/pgid/cmdline/log above are the supervisor's; `down` stops the workers first.
    mode: str = "local"  # local | cluster
    supervisor_port: int | None = None  # cluster: the supervisor's internal (actor) port
    workers: list[WorkerRecord] = field(default_factory=list)


@dataclass
class AttemptRecord:
    candidate: str  # "primary" / "fallback 1"
    name: str
    engine: str
    outcome: str  # ready | failed | skipped
    reason: str = ""
    kind: str = ""  # failure class (launch.FailureKind value) or ""
    seconds: float = 0.0


@dataclass
class ModelRecord:
    role: str
    uid: str
    model_type: str
    status: str  # running | failed | terminated
    candidate: str | None = None  # label of the winning candidate
    name: str | None = None
    engine: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)  # the POST /v1/models body that launched it
    chain_key: str = ""  # fingerprint of the manifest entry it was launched from (plan.chain_key)
    folder: str | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    error: str | None = None
    context_length: int | None = None
    dimensions: int | None = None
    launched_at: float | None = None
    ready_seconds: float | None = None


@dataclass
class State:
    manifest: str
    name: str
    server: ServerRecord | None = None
    models: list[ModelRecord] = field(default_factory=list)
    ragflow_docker: bool = False
    docker_host: str = "host.docker.internal"
    version: int = STATE_VERSION
    updated_at: float = 0.0

    def model(self, uid: str) -> ModelRecord | None:
        return next((m for m in self.models if m.uid == uid), None)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> State:
        server = None
        if data.get("server"):
            fields = dict(data["server"])
            fields["workers"] = [WorkerRecord(**w) for w in fields.get("workers") or []]
            server = ServerRecord(**fields)
        models = []
        for m in data.get("models", []):
            m = dict(m)
            if "spec" in m:  # provision 0.1 called the launch payload `spec`
                m["payload"] = m.pop("spec")
            m["attempts"] = [AttemptRecord(**a) for a in m.get("attempts", [])]
            models.append(ModelRecord(**m))
        rest = {k: v for k, v in data.items() if k not in ("server", "models")}
        return cls(server=server, models=models, **rest)


class StateDir:
    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_state_dir()

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def ragflow_dir(self) -> Path:
        return self.path / "ragflow"

    def ensure(self) -> None:
        for folder in (self.path, self.logs, self.ragflow_dir):
            folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o700)  # it will hold credentials

    def exists(self) -> bool:
        return self.state_file.exists()

    def read(self) -> State | None:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read {self.state_file}: {exc}", hint="remove the folder if it is stale") from exc
        if data.get("version") != STATE_VERSION:
            raise StateError(f"{self.state_file} was written by another version of provision (version {data.get('version')})")
        try:
            return State.from_json(data)
        except (TypeError, KeyError) as exc:
            raise StateError(f"{self.state_file} is damaged: {exc}") from exc

    def require(self) -> State:
        state = self.read()
        if state is None:
            raise StateError(
                f"no state in {self.path}: nothing was brought up from here",
                hint="run `provision up MANIFEST` first, or pass --state-dir",
            )
        return state

    def write(self, state: State) -> None:
        self.ensure()
        state.updated_at = time.time()
        write_atomic(self.state_file, json.dumps(state.to_json(), indent=2, sort_keys=False) + "\n")

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold an exclusive lock for the whole command so two runs on one state cannot interleave."""
        self.ensure()
        lock_path = self.path / "lock"
        handle = open(lock_path, "a+", encoding="utf-8")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another provision command"
                raise StateError(
                    f"{self.path} is in use by {holder}",
                    hint="wait for it to finish, or use another --state-dir",
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"`provision {command}` (pid {os.getpid()})")
            handle.flush()
            yield
        finally:
            handle.close()


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
