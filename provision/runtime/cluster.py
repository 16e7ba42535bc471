"""A cluster on this machine (server.mode: cluster): an `xinference-supervisor` and N `xinference-worker`s.

A cluster is one process group per process: the supervisor's (its record's pid) and each worker's (a
worker's group holds its `worker_relaunch` host and its `Model:` processes). `start_cluster` returns once
the supervisor answers and the workers run; `wait_for_workers` then waits until the supervisor lists them
(GET /v1/cluster/info needs the admin's login where auth is on, so the caller passes its client).
server.stop_server stops the workers first, then the supervisor, each only after its own identity check.
The workers join the supervisor over Xinference's actor protocol, which the REST API's authentication does
not cover: provision gives the supervisor and the workers one random XOSCAR_AUTH_KEY (xoscar then signs every
actor message with it), so nothing else that can reach those ports can command the cluster.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Callable

from .. import placement
from ..errors import AuthError, ServerError, XinferenceError
from ..manifest import ServerSpec
from ..state import ServerRecord, WorkerRecord
from ..xinference import XinferenceClient
from . import procs
from .logs import indent, log_tail
from .ports import port_holders, port_in_use
from .server import FAILED_START_GRACE, POLL_INTERVAL, _children, build_env, exited, find_executable, identify, \
    start_server, stop_server

SUPERVISOR, WORKER = "xinference-supervisor", "xinference-worker"
# xinference-supervisor polls its own supervisor child at 127.0.0.1:<random port> before that child listens;
# now and then such a loopback connect meets itself (TCP self-connect: source port = destination port), the
# host reads back its own request, and exits with this. A race of the start, not a fault: started once more.
SUPERVISOR_SELF_CONNECT = "object has no attribute 'as_instanceof_cause'"


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
    base_env: dict[str, str] | None = None,
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
            holders = ", ".join(f"pid {pid} ({procs.describe(pid)[0]})" for pid in port_holders(port) or [])
            raise ServerError(f"port {port} is already in use on {host}"
                              + (f" by {holders}" if holders else "") + f": it is the port of {what}",
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
                                  extra_args=("--supervisor-port", str(supervisor_port)), extra_env=extra_env,
                                  base_env=base_env)
            break
        except ServerError as exc:
            if attempt == 2 or SUPERVISOR_SELF_CONNECT not in exc.message:
                raise
            if on_event:
                on_event(f"{SUPERVISOR} hit a start-up race of its own (its loopback probe met itself); "
                         "starting it once more")
    record.mode, record.supervisor_port = "cluster", supervisor_port
    env = {**build_env(spec, Path(home), hub, base_env), **extra_env}
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
            identify(worker, proc)
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
                    raise exited(proc, Path(proc_record.log or ""), elapsed, name,
                                  "set server.supervisor_port and server.worker_port to free ports")
                if proc is None and not procs.is_same_process(proc_record):
                    raise ServerError(f"{name} (pid {proc_record.pid}) is gone; the last lines of {proc_record.log}:\n"
                                      f"{indent(log_tail(proc_record.log or ''))}")
            try:
                listed, problem = placement.worker_addresses(client.cluster_info()), ""
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
                    f"{problem}); the last lines of {missing[0].log}:\n{indent(log_tail(missing[0].log or ''))}",
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
    return [w for w in record.workers if not procs.is_same_process(w)] if record.managed else []
