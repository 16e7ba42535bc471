"""The state folder: what `up` started and launched, written atomically, guarded by a lock.

Nothing in it is reached through a link provision did not make (a link is refused), every file it writes
is 0600, and only a folder provision creates gets a mode (0700): an existing folder is used as it is, and
refused when other users may write into it.

Layout of a state folder (default ./.provision, or --state-dir / PROVISION_STATE_DIR):

    state.json              ServerRecord + one ModelRecord per model (every attempt of its chain)
    lock                    flock()ed by the command that changes state
    watch.lock              flock()ed by `provision watch` for its lifetime: one watch per state folder
    logs/server.log         stdout/stderr of the xinference-local (or cluster supervisor) provision started
    logs/worker-N.log       stdout/stderr of cluster worker N (server.mode: cluster)
    ragflow/provider.json   what RAGFlow needs (see ragflow/config.py); 0600, it holds the API key
    credentials.json        admin login and API key of each server provision set up (auth/credentials.py); 0600
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator

from ..errors import ProvisionError, StateError
from .records import STATE_VERSION, State

DEFAULT_STATE_DIR = ".provision"


def default_state_dir() -> Path:
    return Path(os.environ.get("PROVISION_STATE_DIR") or DEFAULT_STATE_DIR)


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
        """The folder and its subfolders, made 0700 where provision creates them; an existing folder keeps
        its mode, and is refused when it is a link or other users may write into it."""
        for folder in (self.path, self.logs, self.ragflow_dir):
            if folder.is_symlink():
                raise StateError(f"{folder} is a symbolic link: provision does not follow links in its state folder",
                                 hint="pass --state-dir to a real folder of your own")
            if not folder.exists():
                try:
                    folder.mkdir(mode=0o700, parents=True)
                    os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
                except FileExistsError:
                    pass  # another provision made it just now
                except OSError as exc:
                    raise StateError(f"cannot create the state folder {folder}: {exc.strerror or exc}",
                                     hint="pass --state-dir to a folder you may write") from exc
            info = folder.stat()
            if not stat.S_ISDIR(info.st_mode):
                raise StateError(f"{folder} is not a folder", hint="pass --state-dir to a folder of your own")
            if info.st_mode & 0o022:
                raise StateError(
                    f"{folder} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}): it would hold "
                    "credentials and the PIDs provision signals",
                    hint="pass --state-dir to a folder of your own; provision creates it with mode 0700")

    def exists(self) -> bool:
        return self.state_file.exists()

    def read(self) -> State | None:
        try:
            text = read_private(self.state_file)
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StateError(f"{self.state_file} is not JSON ({exc})", hint=_REMOVE) from None
        if isinstance(data, dict) and data.get("version") != STATE_VERSION:
            raise StateError(f"{self.state_file} was written by another version of provision "
                             f"(version {str(data.get('version'))[:20]})")
        try:
            return State.from_json(data)
        except ValueError as exc:
            raise StateError(f"{self.state_file} is damaged: {exc}", hint=_REMOVE) from None

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
    def lock(self, command: str, name: str = "lock", busy: type[ProvisionError] = StateError,
             hint: str = "wait for it to finish, or use another --state-dir") -> Iterator[None]:
        """Hold an exclusive lock for the whole command so two runs on one state cannot interleave.

        `name`: the lock file (`watch.lock` is held by `provision watch` for its lifetime, beside the `lock`
        that each `up` inside it takes); `busy`: the error raised, naming the holder, when it is taken."""
        self.ensure()
        lock_path = self.path / name
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _not_followed(lock_path, exc) from exc
        with os.fdopen(fd, "r+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = handle.read(200).strip() or "another provision command"
                raise busy(f"{self.path} is in use by {holder}", hint=hint) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"`provision {command}` (pid {os.getpid()})")
            handle.flush()
            yield


_REMOVE = "restore it from a backup, or remove it (then `provision up` starts afresh; stop what it recorded by PID first)"


def read_private(path: Path, limit: int = 16 << 20) -> str:
    """A state file's text, never through a link (FileNotFoundError when it is not there)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _not_followed(path, exc) from exc
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise StateError(f"{path} is larger than {limit >> 20} MiB: not a state file", hint=_REMOVE)
    return data.decode("utf-8", "replace")


def _not_followed(path: Path, exc: OSError) -> StateError:
    if exc.errno == errno.ELOOP:
        return StateError(f"{path} is a symbolic link: provision does not follow links in its state folder",
                          hint=f"remove the link {path}")
    return StateError(f"cannot open {path}: {exc.strerror or exc}")


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
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
