"""`up`'s serve stage: start the server (local, or a supervisor and workers), reuse it, or reach the one
server.endpoint names; then its authentication and the clients the other stages use."""

from __future__ import annotations

import time

from .. import auth
from ..errors import ProvisionError, ServerError
from ..plan import TERMINATE, Plan
from ..report import seconds
from ..runtime import cluster, ports, procs, server
from ..state import ServerRecord
from ..xinference import XinferenceClient
from .run import UpRun

PORT_RELEASE_SECONDS = 20.0  # how long a restart waits for the earlier server's sockets to close


def serve(run: UpRun, plan: Plan) -> None:
    """Start (or reuse) the server; the launch threads wait on run.server_ready."""
    manifest, console = run.manifest, run.console
    started = time.monotonic()
    try:
        if plan.server == "restart":
            previous = run.previous_server
            run.earlier_server = server.stop_server(previous)
            console.line(f"[server] stopping the earlier server at {previous.url}: {run.earlier_server}")
            if previous.managed:  # its ports are free only when the last process holding them has exited
                ports.wait_until_free(ports.server_ports(previous), PORT_RELEASE_SECONDS)
        spec = manifest.server
        if plan.server == "start":
            _stop_leftovers(run)
        if plan.server in ("start", "restart") and spec.mode == "cluster":
            console.line(f"[server] starting xinference-supervisor on {spec.host}:{spec.port} and {spec.workers} "
                         f"worker{'s' if spec.workers != 1 else ''} ({', '.join(spec.worker_addresses)})")
            run.state_dir.ensure()
            record = cluster.start_cluster(
                spec,
                home=manifest.server_home,
                logs=run.state_dir.logs,
                hub=manifest.download.hub,
                on_event=lambda text: console.line(f"[server] {text}"),
                on_started=lambda rec: run.record_server(rec),
                on_progress=lambda waited: console.progress("server", f"[server] waiting for the API ({waited:.0f}s)"),
                base_env=run.server_environ(),
            )
            record.auth = spec.auth
            run.record_server(record)
            console.done("server")
            console.line(f"[server] supervisor ready at {record.url} in {seconds(time.monotonic() - started)} "
                         f"(pid {record.pid}); workers started (pids {', '.join(str(w.pid) for w in record.workers)})")
        elif plan.server in ("start", "restart"):
            console.line(f"[server] starting xinference-local on {manifest.server.host}:{manifest.server.port}")
            run.state_dir.ensure()
            record = server.start_server(
                manifest.server,
                home=manifest.server_home,
                log_path=run.state_dir.logs / "server.log",
                hub=manifest.download.hub,
                on_started=lambda rec: run.record_server(rec),
                on_progress=lambda waited: console.progress("server", f"[server] waiting for the API ({waited:.0f}s)"),
                base_env=run.server_environ(),
            )
            record.auth = manifest.server.auth
            run.record_server(record)
            console.done("server")
            console.line(f"[server] ready at {record.url} in {seconds(time.monotonic() - started)} (pid {record.pid})")
        elif plan.server == "reuse":
            console.line(f"[server] reusing {run.state.server.url} (pid {run.state.server.pid})")
        else:
            run.record_server(ServerRecord(url=plan.base_url, managed=False, **auth.server_record_fields(manifest)))
            if XinferenceClient(plan.base_url).answers() is None:
                raise ServerError(
                    f"the server at {plan.base_url} (server.endpoint) does not answer",
                    hint="check the address and that the server is running",
                )
            console.line(f"[server] using the existing server at {plan.base_url}")
        record = run.state.server
        if record.managed and record.auth:
            auth.ensure_credentials(record.url, record.home or manifest.server_home, record.log, run.state_dir,
                                    on_event=lambda text: console.line(f"[server] {text}"))
        run.api_key = auth.api_key_for(run.state_dir, record)
        run.key_client = auth.key_client(run.state_dir, record)
        run.client = auth.admin_client(run.state_dir, record)
        if record.managed and record.workers and plan.server in ("start", "restart"):
            waited = time.monotonic()
            listed = cluster.wait_for_workers(
                record, run.client, timeout=spec.start_timeout,
                on_progress=lambda w: console.progress("server", f"[server] waiting for the workers to join ({w:.0f}s)"),
            )
            console.line(f"[server] workers joined in {seconds(time.monotonic() - waited)}: {', '.join(listed)}")
        if not record.managed:
            run.key_client.list_models()  # a refused key ends `up` here, naming the variable to set
        _terminate_removed(run, plan)
    except ProvisionError as exc:
        run.server_error = exc
    finally:
        run.console.done("server")
        run.stage_seconds["serve"] = time.monotonic() - started
        run.server_ready.set()


def _stop_leftovers(run: UpRun) -> None:
    """The server an earlier `up` started is gone (SIGKILLed, crashed): what it started may still run. Killing
    xinference-local's process leaves its actor pool (`start_local.py`) and every `Model:` process running in its
    group, holding memory (GPU memory too) and, on a cluster, the workers' ports. They are stopped before a new
    server starts, as `down` would stop them: only processes of the group it created, born after it."""
    previous = run.previous_server
    if previous is None or not previous.managed or not previous.pid or procs.is_same_process(previous):
        return
    outcome = server.stop_server(previous)
    if outcome != "not running":
        run.console.line(f"[server] the earlier server (pid {previous.pid}) is gone: {outcome}")


def _terminate_removed(run: UpRun, plan: Plan) -> None:
    """Models no longer in the manifest go first: the launches that follow get the memory they held."""
    for step in plan.steps:
        if step.action == TERMINATE:
            run.console.line(f"[launch] {step.uid}: terminating ({step.reason})")
            run.client.terminate(step.uid)
            run.terminated.append(step.uid)
            run.drop_model(step.uid)
