"""Start, wait for and stop the `xinference-local` provision manages, or a cluster of an `xinference-supervisor`
and N `xinference-worker`s on this machine (server.mode: cluster); PID identity; log tail; port checks.

A started server runs in a session of its own (start_new_session=True), so one process group holds the
REST process, xinference's `start_local.py` and every `Model:` process. Stopping sends SIGTERM to the
main PID (xinference then stops its children itself, in about 5 s) and SIGKILLs the whole group after
a grace period: SIGKILL of the main PID alone orphans the model processes, which keep ports and memory.

A PID is only signalled while it is provably the program we started: its /proc cmdline and start time
(field 22 of /proc/<pid>/stat) must equal what was recorded, so a reused PID is left alone. Nothing
is ever killed by name, and nothing is deleted: leftover temp dirs are only reported.

A cluster is one process group per process: the supervisor's (its record's pid) and each worker's (a
worker's group holds its `worker_relaunch` host and its `Model:` processes). `start_cluster` returns once
the supervisor answers and the workers run; `wait_for_workers` then waits until the supervisor lists them
(GET /v1/cluster/info needs the admin's login where auth is on, so the caller passes its client).
`stop_server` stops the workers first, then the supervisor, each only after its own identity check.
The workers join the supervisor over Xinference's actor protocol, which the REST API's authentication does
not cover: provision gives the supervisor and the workers one random XOSCAR_AUTH_KEY (xoscar then signs every
actor message with it), so nothing else that can reach those ports can command the cluster.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from . import cluster
from .errors import AuthError, ServerError, XinferenceError
from .manifest import ServerSpec
from .state import ServerRecord, WorkerRecord
from .xinference import XinferenceClient

EXECUTABLE = "xinference-local"
SUPERVISOR, WORKER = "xinference-supervisor", "xinference-worker"
POLL_INTERVAL = 0.25  # seconds between checks of the process and the API while starting
FAILED_START_GRACE = 10.0  # SIGTERM grace for a server we started that did not come up
# xinference-supervisor polls its own supervisor child at 127.0.0.1:<random port> before that child listens;
# now and then such a loopback connect meets itself (TCP self-connect: source port = destination port), the
# host reads back its own request, and exits with this. A race of the start, not a fault: started once more.
SUPERVISOR_SELF_CONNECT = "object has no attribute 'as_instanceof_cause'"
# Servers this process started: kept so their exit status is reaped (no zombie) and Python does not
# warn about a Popen dropped while its process runs.
_children: dict[int, subprocess.Popen] = {}


# -- ports and addresses ----------------------------------------------------------------------------


def url_for(host: str, port: int) -> str:
    """The URL provision talks to: a wildcard listen address is reached through loopback."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def exposure_warning(host: str, port: int) -> str | None:
    """A warning to show when a server without authentication listens beyond this machine."""
    try:
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return f"the API is open to the network: anyone who can reach {host}:{port} can launch and delete models"


def port_in_use(host: str, port: int) -> bool:
    """Whether binding host:port fails with "address in use" (0.0.0.0 collides with 127.0.0.1 and back).

    The probe sets SO_REUSEADDR as uvicorn does, so TIME_WAIT sockets left by our polling don't count.
    Raises ServerError when the address cannot be bound for another reason (not this machine's, < 1024).
    """
    try:
        infos = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServerError(f"server.host {host!r} is not a known address: {exc}") from exc
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
                hint = {
                    errno.EADDRNOTAVAIL: "server.host must be 127.0.0.1, 0.0.0.0 or an address of this machine",
                    errno.EACCES: "ports below 1024 need root: pick a server.port above 1023",
                }.get(exc.errno)
                raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror}", hint=hint) from exc
    return False


def check_port(host: str, port: int, record: ServerRecord | None = None) -> bool:
    """False: the port is free. True: the server in `record` (ours, same process) holds it, so reuse it.

    Raises ServerError when any other program holds it.
    """
    if not port_in_use(host, port):
        return False
    if record is not None and record.managed and record.port == port and is_same_process(record):
        if record.host == host:
            return True
        raise ServerError(
            f"port {port} is held by the server provision started earlier on {record.host} (pid {record.pid}), "
            f"not on {host}",
            hint="stop it with `provision down` first, then bring the stack up again",
        )
    raise ServerError(
        f"port {port} is already in use on {host} ({host}:{port}): cannot start {EXECUTABLE} there",
        hint=_port_hint(host, port),
    )


def _port_hint(host: str, port: int) -> str:
    return (
        f"pick another server.port in the manifest, or set server.endpoint: {url_for(host, port)} to use the "
        f"server already there (`ss -ltnp 'sport = :{port}'` shows which program holds it)"
    )


# -- environment and executable ---------------------------------------------------------------------


def build_env(spec: ServerSpec, home: Path, hub: str = "modelscope", base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ours (or `base`), xinference settings, then the manifest's server.env."""
    env = dict(os.environ if base is None else base)
    env["XINFERENCE_HOME"] = str(home)
    # Per-model virtualenvs re-install packages at every launch (and break sentence_transformers on CPU).
    env["XINFERENCE_ENABLE_VIRTUAL_ENV"] = "1" if spec.virtual_env else "0"
    # 4.x has authentication on unless this says 0; with it on, provision performs the first-run setup (auth.py).
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


# -- /proc ------------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; the command name before it may hold spaces and ')'."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return text[text.rindex(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie holds no resources and ignores signals)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # field 22: start time in clock ticks after boot


def read_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [arg.decode(errors="surrogateescape") for arg in raw.split(b"\0")[:-1]]


def _group(pgid: int | None) -> list[int]:
    """Live members of a process group."""
    if not pgid:
        return []
    members = []
    for entry in os.listdir("/proc"):
        fields = _stat(int(entry)) if entry.isdigit() else None
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def is_same_process(record: ServerRecord | WorkerRecord) -> bool:
    """PID alive, same cmdline, same start time: the very process that was recorded (PID-reuse safe)."""
    if not record.pid or not record.cmdline or record.start_ticks is None or not pid_alive(record.pid):
        return False
    return read_cmdline(record.pid) == list(record.cmdline) and start_ticks(record.pid) == record.start_ticks


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
) -> ServerRecord:
    """Start xinference-local (or `name`, e.g. the supervisor, with `extra_args`) on spec.host:spec.port and
    wait until its API answers (any status).

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
                start_new_session=True, env={**build_env(spec, home, hub), **(extra_env or {})},
            )
    except OSError as exc:
        raise ServerError(f"cannot run {program}: {exc.strerror or exc}") from exc
    _children[proc.pid] = proc
    url = url_for(spec.host, spec.port)
    client = XinferenceClient(url)
    record = ServerRecord(
        url=url, managed=True, host=spec.host, port=spec.port, pid=proc.pid, pgid=proc.pid,  # own session
        cmdline=command, log=str(log_path), home=str(home), started_at=started_at,
    )
    try:
        _identify(record, proc)
        if on_started and proc.poll() is None:
            on_started(record)
        while proc.poll() is None:
            if client.answers() is not None:
                break
            elapsed = time.monotonic() - started
            if elapsed >= timeout:
                outcome = _terminate(proc.pid, proc.pid, FAILED_START_GRACE)
                raise ServerError(
                    f"{name} did not answer at {url} within {timeout:g} s ({outcome}); "
                    f"the last lines of {log_path}:\n{_indent(log_tail(log_path))}",
                    hint="a first start can be slow: raise server.start_timeout in the manifest",
                )
            if on_progress:
                on_progress(elapsed)
            time.sleep(POLL_INTERVAL)
        if proc.poll() is not None:  # it exited (perhaps after something else answered on the port)
            raise _exited(proc, log_path, time.monotonic() - started, name, _port_hint(spec.host, spec.port))
    except BaseException:  # Ctrl-C, a failing callback: never leave a server that nobody recorded
        if proc.poll() is None:
            _terminate(proc.pid, proc.pid, FAILED_START_GRACE)
        raise
    _identify(record, proc)  # again, in case a program rewrote its title while it started
    return record


def _identify(record: ServerRecord | WorkerRecord, proc: subprocess.Popen) -> None:
    """Fill in cmdline and start ticks from /proc. Popen can return while the kernel is still setting
    up the new program's arguments (its cmdline reads empty for a moment), so wait for them."""
    deadline = time.monotonic() + 5.0
    while not read_cmdline(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    record.cmdline = read_cmdline(proc.pid) or record.cmdline
    record.start_ticks = start_ticks(proc.pid)


def _exited(proc: subprocess.Popen, log_path: Path, elapsed: float, name: str, port_hint: str) -> ServerError:
    _children.pop(proc.pid, None)
    if _group(proc.pid):  # children outlived it; while they live the group's number is not reused
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    code = proc.returncode
    signame = next((s.name for s in signal.Signals if s.value == -code), str(-code))
    how = f"exited with code {code}" if code >= 0 else f"was killed by signal {signame}"
    tail = log_tail(log_path)
    hint = f"the whole log is {log_path}"
    if "address already in use" in tail.lower():
        hint = port_hint
    return ServerError(
        f"{name} {how} after {elapsed:.1f} s; the last lines of {log_path}:\n{_indent(tail)}", hint=hint
    )


# -- cluster ----------------------------------------------------------------------------------------


def start_cluster(
    spec: ServerSpec,
    home: Path,
    logs: Path,
    *,
    hub: str = "modelscope",
    executables: dict[str, str | os.PathLike] | None = None,
    timeout: float | None = None,
    on_progress: Callable[[float], None] | None = None,
    on_started: Callable[[ServerRecord], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> ServerRecord:
    """Start an xinference-supervisor on spec.host:spec.port (log: logs/server.log), wait until its API
    answers, then start spec.workers xinference-workers (logs/worker-N.log) that join it.

    Returns once every worker process runs; call wait_for_workers() for the supervisor to list them.
    on_started gets the record whenever a process was added to it. Raises ServerError before starting
    anything when a port is taken, and stops what it started on any failure.
    """
    executables = executables or {}
    worker_program = find_executable(executables.get(WORKER), WORKER)  # missing: fail before starting anything
    supervisor_port = spec.cluster_supervisor_port
    ports = [(spec.host, supervisor_port, "server.supervisor_port")]
    ports += [(spec.worker_host, int(a.rsplit(":", 1)[1]), f"worker {i + 1} (server.worker_port + {i})")
              for i, a in enumerate(spec.worker_addresses)]
    for host, port, what in ports:
        if port_in_use(host, port):
            raise ServerError(f"port {port} is already in use on {host}: it is the port of {what}",
                              hint="set server.supervisor_port and server.worker_port to free ports "
                              f"(`ss -ltnp 'sport = :{port}'` shows which program holds it)")
    # One key per start, shared by the supervisor and its workers: xoscar signs every actor message with it.
    extra_env = {} if "XOSCAR_AUTH_KEY" in spec.env else {"XOSCAR_AUTH_KEY": secrets.token_urlsafe(32)}

    def started(record: ServerRecord) -> None:
        record.mode, record.supervisor_port = "cluster", supervisor_port
        if on_started:
            on_started(record)

    logs = Path(logs)
    for attempt in (1, 2):
        try:
            record = start_server(spec, home, logs / "server.log", hub=hub, executable=executables.get(SUPERVISOR),
                                  timeout=timeout, on_progress=on_progress, on_started=started, name=SUPERVISOR,
                                  extra_args=("--supervisor-port", str(supervisor_port)), extra_env=extra_env)
            break
        except ServerError as exc:
            if attempt == 2 or SUPERVISOR_SELF_CONNECT not in exc.message:
                raise
            if on_event:
                on_event(f"{SUPERVISOR} hit a start-up race of its own (its loopback probe met itself); "
                         "starting it once more")
    record.mode, record.supervisor_port = "cluster", supervisor_port
    env = {**build_env(spec, Path(home), hub), **extra_env}
    try:
        for index, address in enumerate(spec.worker_addresses):
            log_path = logs / f"worker-{index + 1}.log"
            command = [worker_program, "--endpoint", record.url, "--host", spec.worker_host,
                       "--worker-port", address.rsplit(":", 1)[1], "--metrics-exporter-host", spec.worker_host]
            try:
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, env=env)
            except OSError as exc:
                raise ServerError(f"cannot run {worker_program}: {exc.strerror or exc}") from exc
            _children[proc.pid] = proc
            worker = WorkerRecord(address=address, pid=proc.pid, pgid=proc.pid, cmdline=command, log=str(log_path),
                                  started_at=time.time())
            _identify(worker, proc)
            record.workers.append(worker)
            if on_started:
                on_started(record)
    except BaseException:  # never leave a process that nobody recorded
        stop_server(record, FAILED_START_GRACE)
        raise
    return record


def wait_for_workers(
    record: ServerRecord,
    client: XinferenceClient,
    *,
    timeout: float,
    on_progress: Callable[[float], None] | None = None,
) -> list[str]:
    """Wait until the supervisor lists every worker of `record` in GET /v1/cluster/info (`client`: the
    admin's where auth is on); return the workers it lists. A process of the cluster that exits, a refused
    client or the deadline stop the whole cluster and raise ServerError."""
    wanted = [w.address for w in record.workers]
    started = time.monotonic()
    listed: list[str] = []
    problem = ""
    try:
        while True:
            elapsed = time.monotonic() - started
            for proc_record, name in [(record, SUPERVISOR), *((w, f"{WORKER} {w.address}") for w in record.workers)]:
                proc = _children.get(proc_record.pid)
                if proc is not None and proc.poll() is not None:
                    raise _exited(proc, Path(proc_record.log or ""), elapsed, name,
                                  "set server.supervisor_port and server.worker_port to free ports")
                if proc is None and not is_same_process(proc_record):
                    raise ServerError(f"{name} (pid {proc_record.pid}) is gone; the last lines of {proc_record.log}:\n"
                                      f"{_indent(log_tail(proc_record.log or ''))}")
            try:
                listed, problem = cluster.worker_addresses(client.cluster_info()), ""
            except AuthError:
                raise
            except XinferenceError as exc:
                problem = f"; GET /v1/cluster/info: {exc.message}"
            if set(wanted) <= set(listed):
                return listed
            if elapsed >= timeout:
                missing = [w for w in record.workers if w.address not in listed]
                raise ServerError(
                    f"{'worker' if len(missing) == 1 else 'workers'} {', '.join(w.address for w in missing)} did not "
                    f"join the supervisor at {record.url} within {timeout:g} s (it lists: {', '.join(listed) or 'none'}"
                    f"{problem}); the last lines of {missing[0].log}:\n{_indent(log_tail(missing[0].log or ''))}",
                    hint="a first start can be slow: raise server.start_timeout in the manifest",
                )
            if on_progress:
                on_progress(elapsed)
            time.sleep(POLL_INTERVAL * 2)
    except BaseException:
        stop_server(record, FAILED_START_GRACE)
        raise


def missing_workers(record: ServerRecord) -> list[WorkerRecord]:
    """The workers of a cluster provision started that are no longer the processes it recorded."""
    return [w for w in record.workers if not is_same_process(w)] if record.managed else []


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
    if not is_same_process(record):
        if pid_alive(record.pid):
            return f"pid {record.pid} is now another program: left alone"
        left = _group(record.pgid) if record.pgid == record.pid else []
        if left:  # cannot prove they are ours once the leader is gone: report, don't signal
            pids = " ".join(map(str, left))
            return f"not running, but processes of its group remain (pids {pids}; see `ps -o pid,cmd -g {record.pgid}`)"
        return "not running"
    return _terminate(record.pid, record.pgid, grace)


def _terminate(pid: int, pgid: int | None, grace: float) -> str:
    """SIGTERM the main PID, wait for its whole group and its descendants, then SIGKILL them. Caller proved
    identity.

    Descendants count wherever they run: xinference-supervisor starts its supervisor actor and its REST API
    as children in sessions of their own (outside its group), and stops them itself on SIGTERM; a SIGKILL of
    the group alone would orphan them, port and all. They are listed before the SIGTERM, while their parent
    is the very process the caller identified, and each is only signalled while its start time is unchanged.
    """
    pgid = pgid if pgid == pid else None  # only a group we created: it is led by the server's own PID
    descendants = _descendants(pid)
    temp_dirs = _temp_dirs(pgid, [child for child, _ in descendants])
    started = time.monotonic()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise ServerError(f"not allowed to stop pid {pid}: {exc.strerror}", hint="run as the user who started it") from exc
    if _wait_gone(pid, pgid, grace, descendants):
        outcome = f"stopped in {time.monotonic() - started:.1f} s"
    else:
        with contextlib.suppress(ProcessLookupError):
            if pgid:
                os.killpg(pgid, signal.SIGKILL)  # the group: killing the main PID alone orphans the models
            else:
                os.kill(pid, signal.SIGKILL)
        for child, ticks in descendants:  # those in sessions of their own, with the groups they lead
            if not _still(child, ticks):
                continue
            with contextlib.suppress(ProcessLookupError):
                if (_stat(child) or ["", "", ""])[2] == str(child):  # it leads a group of its own: all of it
                    os.killpg(child, signal.SIGKILL)
                else:
                    os.kill(child, signal.SIGKILL)
        if not _wait_gone(pid, pgid, 10.0, descendants):
            left = sorted({pid, *_group(pgid)} if pid_alive(pid) else set(_group(pgid)))
            left += [child for child, ticks in descendants if _still(child, ticks) and child not in left]
            raise ServerError(f"pids {' '.join(map(str, left))} survived SIGKILL", hint="see `ps -o pid,stat,cmd -p PID`")
        outcome = f"killed after {grace:g} s (did not stop on SIGTERM)"
    left_behind = sorted(d for d in temp_dirs if os.path.isdir(d))
    if left_behind:
        outcome += f"; its temp dirs remain: {', '.join(left_behind)}"
    return outcome


def _wait_gone(pid: int, pgid: int | None, seconds: float,
               descendants: list[tuple[int, int | None]] = ()) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        proc = _children.get(pid)
        if proc is not None and proc.poll() is not None:  # reap our own child so it is not a zombie
            del _children[pid]
        if not pid_alive(pid) and not _group(pgid) and not any(_still(c, t) for c, t in descendants):
            proc = _children.pop(pid, None)
            if proc is not None:
                proc.poll()  # a zombie counts as gone: reap it, or it stays one for as long as we run
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _descendants(pid: int) -> list[tuple[int, int | None]]:
    """Every live descendant of `pid`, in any session, with its start ticks (its identity from now on)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        fields = _stat(int(entry)) if entry.isdigit() else None
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append((child, start_ticks(child)))
            todo.append(child)
    return found


def _still(pid: int, ticks: int | None) -> bool:
    """The descendant listed before the SIGTERM still runs (same PID, same start time)."""
    return ticks is not None and pid_alive(pid) and start_ticks(pid) == ticks


def _temp_dirs(pgid: int | None, others: list[int] = ()) -> set[str]:
    """xinference's /tmp/xinf-* dirs named on its processes' command lines: the proof they are ours."""
    found = set()
    for member in {*_group(pgid), *others}:
        for arg in read_cmdline(member) or []:
            if arg.startswith("/"):
                found.update(str(p) for p in (Path(arg), *Path(arg).parents) if p.name.startswith("xinf-"))
    return found


# -- observing --------------------------------------------------------------------------------------


def server_alive(record: ServerRecord) -> bool:
    """The recorded server still runs (the same process, when provision started it) and its API answers."""
    if record.managed and not is_same_process(record):
        return False
    return XinferenceClient(record.url).answers() is not None


def log_tail(path: str | os.PathLike, lines: int = 20) -> str:
    """The last `lines` lines of a log ("" when it is missing), read from its end only."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines()) or "    (the log is empty)"
