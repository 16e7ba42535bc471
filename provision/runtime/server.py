"""Start, wait for and stop the `xinference-local` provision manages (cluster.py starts a supervisor and
workers with the same pieces).

A started server runs in a session of its own (start_new_session=True), so one process group holds the
REST process, xinference's `start_local.py` and every `Model:` process; procs.py stops it by that group,
and only while the PID is provably the process that was recorded. Nothing is deleted: leftover temp
dirs are only reported.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .. import netaddr
from ..errors import ServerError
from ..manifest import ServerSpec
from ..state import ServerRecord, WorkerRecord
from ..xinference import XinferenceClient
from . import procs
from .logs import indent, log_tail
from .ports import EXECUTABLE, check_port, port_hint

POLL_INTERVAL = 0.25  # seconds between checks of the process and the API while starting
FAILED_START_GRACE = 10.0  # SIGTERM grace for a server we started that did not come up
# Servers this process started: kept so their exit status is reaped (no zombie) and Python does not
# warn about a Popen dropped while its process runs.
_children: dict[int, subprocess.Popen] = {}


# -- environment and executable ---------------------------------------------------------------------


def build_env(spec: ServerSpec, home: Path, hub: str = "modelscope", base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ours (or `base`), xinference settings, then the manifest's server.env."""
    env = dict(os.environ if base is None else base)
    env["XINFERENCE_HOME"] = str(home)
    # Per-model virtualenvs re-install packages at every launch (and break sentence_transformers on CPU).
    env["XINFERENCE_ENABLE_VIRTUAL_ENV"] = "1" if spec.virtual_env else "0"
    # 4.x has authentication on unless this says 0; with it on, provision performs the first-run setup (auth/setup.py).
    env["XINFERENCE_AUTH_ADVANCED"] = "1" if spec.auth else "0"
    env["PYTHONUNBUFFERED"] = "1"  # the log tail we show on failure must hold the last words
    if hub == "modelscope":
        env["XINFERENCE_MODEL_SRC"] = "modelscope"
    env.update(spec.env)  # the manifest has the last word
    return env


def find_executable(executable: str | os.PathLike | None = None, name: str = EXECUTABLE) -> str:
    """`executable` if given, else `name` beside our interpreter (same venv), else on PATH."""
    if executable is not None:
        found = shutil.which(str(executable))
        if not found:
            raise ServerError(f"{executable} is not an executable file")
        return found
    beside = Path(sys.executable).parent / name  # not resolved: a venv's python is a symlink
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which(name)
    if found:
        return found
    raise ServerError(
        f"{name} was found neither next to {sys.executable} nor on PATH",
        hint="install the server extra (`pip install 'provision[server]'`), or run scripts/bootstrap, "
        "which installs the CPU torch first",
    )



# -- start ------------------------------------------------------------------------------------------


def start_server(
    spec: ServerSpec,
    home: Path,
    log_path: Path,
    *,
    hub: str = "modelscope",
    executable: str | os.PathLike | None = None,
    timeout: float | None = None,
    on_progress: Callable[[float], None] | None = None,
    on_started: Callable[[ServerRecord], None] | None = None,
    name: str = EXECUTABLE,
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
    base_env: dict[str, str] | None = None,
) -> ServerRecord:
    """Start xinference-local (or `name`, e.g. the supervisor, with `extra_args`) on spec.host:spec.port and
    wait until its API answers (any status). `base_env`: the environment to start from (default: ours now).

    on_started gets the record as soon as the process runs (so the state can hold it while we wait);
    on_progress gets the seconds waited. Raises ServerError at once when the port is taken or the
    process exits, and at the deadline (timeout, default spec.start_timeout); either way nothing it
    started is left running.
    """
    timeout = spec.start_timeout if timeout is None else timeout
    program = find_executable(executable, name)
    check_port(spec.host, spec.port)
    home, log_path = Path(home), Path(log_path)
    home.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [program, "--host", spec.host, "--port", str(spec.port), *extra_args]
    started_at, started = time.time(), time.monotonic()
    try:
        with open(log_path, "wb") as log:  # one log per start: a failure's tail is this run's
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**build_env(spec, home, hub, base_env), **(extra_env or {})},
            )
    except OSError as exc:
        raise ServerError(f"cannot run {program}: {exc.strerror or exc}") from exc
    _children[proc.pid] = proc
    url = netaddr.url_for(spec.host, spec.port)
    client = XinferenceClient(url)
    record = ServerRecord(
        url=url, managed=True, host=spec.host, port=spec.port, pid=proc.pid, pgid=proc.pid,  # own session
        cmdline=command, log=str(log_path), home=str(home), started_at=started_at,
    )
    try:
        identify(record, proc)
        if on_started and proc.poll() is None:
            on_started(record)
        while proc.poll() is None:
            if client.answers() is not None:
                break
            elapsed = time.monotonic() - started
            if elapsed >= timeout:
                outcome = terminate(proc.pid, proc.pid, FAILED_START_GRACE)
                raise ServerError(
                    f"{name} did not answer at {url} within {timeout:g} s ({outcome}); "
                    f"the last lines of {log_path}:\n{indent(log_tail(log_path))}",
                    hint="a first start can be slow: raise server.start_timeout in the manifest",
                )
            if on_progress:
                on_progress(elapsed)
            time.sleep(POLL_INTERVAL)
        if proc.poll() is not None:  # it exited (perhaps after something else answered on the port)
            raise exited(proc, log_path, time.monotonic() - started, name, port_hint(spec.host, spec.port))
    except BaseException:  # Ctrl-C, a failing callback: never leave a server that nobody recorded
        if proc.poll() is None:
            terminate(proc.pid, proc.pid, FAILED_START_GRACE)
        raise
    identify(record, proc)  # again, in case a program rewrote its title while it started
    return record


def identify(record: ServerRecord | WorkerRecord, proc: subprocess.Popen) -> None:
    """Record the command line and create time of a process just started: its identity from now on."""
    found = procs.wait_for_cmdline(proc.pid, lambda: proc.poll() is None)
    if found is not None:
        record.cmdline = found[0] or record.cmdline
        record.create_time = found[1]


def exited(proc: subprocess.Popen, log_path: Path, elapsed: float, name: str, hint: str) -> ServerError:
    _children.pop(proc.pid, None)
    if procs.group_members(proc.pid):  # children outlived it; while they live the group's number is not reused
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    code = proc.returncode
    signame = next((s.name for s in signal.Signals if s.value == -code), str(-code))
    how = f"exited with code {code}" if code >= 0 else f"was killed by signal {signame}"
    tail = log_tail(log_path)
    if "address already in use" not in tail.lower():
        hint = f"the whole log is {log_path}"
    return ServerError(f"{name} {how} after {elapsed:.1f} s; the last lines of {log_path}:\n{indent(tail)}", hint=hint)

# -- stop -------------------------------------------------------------------------------------------


def stop_server(record: ServerRecord, grace: float = 15.0) -> str:
    """Stop a server provision started, if it is still that very process; say what happened.

    A cluster: its workers first (side by side, each after its own identity check), then the supervisor.
    """
    if not record.managed:
        return f"{record.url} was not started by provision: left alone"
    if not record.workers:
        return _stop_one(record, grace)
    outcomes: list[str | ServerError] = []
    with ThreadPoolExecutor(max_workers=len(record.workers), thread_name_prefix="stop-worker") as pool:
        for future in [pool.submit(_stop_one, worker, grace) for worker in record.workers]:
            try:
                outcomes.append(future.result())
            except ServerError as exc:  # the supervisor is stopped all the same
                outcomes.append(exc)
    parts = [f"worker {w.address}: {o if isinstance(o, str) else o.message}" for w, o in zip(record.workers, outcomes)]
    parts.append(f"supervisor: {_stop_one(record, grace)}")
    failed = next((o for o in outcomes if isinstance(o, ServerError)), None)
    if failed is not None:
        raise ServerError("; ".join(parts), hint=failed.hint)
    return "; ".join(parts)


def _stop_one(record: ServerRecord | WorkerRecord, grace: float) -> str:
    """Stop one recorded process and its group, if it is still that very process."""
    proc = _children.get(record.pid) if record.pid else None
    if proc is not None and proc.poll() is not None:  # our own child that already exited: reap it
        del _children[record.pid]
    if not record.pid:
        return "not running"
    if not procs.is_same_process(record):
        if procs.alive(record.pid):
            return f"pid {record.pid} is now another program: left alone"
        left = procs.group_members(record.pgid) if record.pgid == record.pid else []
        born = procs.recorded_create_time(record)
        if left and born is not None and all(procs.born_since(pid, born) for pid in left):
            # A group provision created (led by the recorded PID) whose members all started after that leader:
            # they are its children (a SIGKILLed worker's model process, say), holding ports and memory.
            procs.stop_group(record.pgid, grace)
            still = procs.group_members(record.pgid)
            if still:
                return f"not running; {len(still)} leftover processes of its group survived SIGKILL (pids {still})"
            count = len(left)
            return (f"not running; stopped {count} leftover process{'es' if count != 1 else ''} of its group "
                    f"(pid{'s' if count != 1 else ''} {' '.join(map(str, left))})")
        if left:  # some are older than the leader we recorded: the group number is not provably ours
            pids = " ".join(map(str, left))
            return f"not running, but processes of its group remain (pids {pids}; see `ps -o pid,cmd -g {record.pgid}`)"
        return "not running"
    return terminate(record.pid, record.pgid, grace)


def terminate(pid: int, pgid: int | None, grace: float) -> str:
    """Stop a process provision started and everything it started (the caller proved its identity); say
    what happened, and name xinference's temp dirs it left behind."""
    members = {*procs.group_members(pgid if pgid == pid else None), *(s.pid for s in procs.descendants(pid))}
    temp_dirs = _temp_dirs(members)
    outcome = procs.stop_tree(pid, pgid, grace, reap=_reap)
    left_behind = sorted(d for d in temp_dirs if os.path.isdir(d))
    if left_behind:
        outcome += f"; its temp dirs remain: {', '.join(left_behind)}"
    return outcome


def _reap(pid: int) -> None:
    """Collect the exit status of a child of ours that ended, so it does not stay a zombie."""
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]


def _temp_dirs(pids: set[int]) -> set[str]:
    """xinference's /tmp/xinf-* dirs named on its processes' command lines: the proof they are ours."""
    found = set()
    for cmdline in procs.command_lines(pids):
        for arg in cmdline:
            if arg.startswith("/"):
                found.update(str(p) for p in (Path(arg), *Path(arg).parents) if p.name.startswith("xinf-"))
    return found


# -- observing --------------------------------------------------------------------------------------


def server_alive(record: ServerRecord) -> bool:
    """The recorded server still runs (the same process, when provision started it) and its API answers."""
    if record.managed and not procs.is_same_process(record):
        return False
    return XinferenceClient(record.url).answers() is not None

