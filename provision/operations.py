"""`verify`, `status`, `down` and `ragflow`: they read the state, never re-derive it from the manifest."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import auth, ragflow as ragflow_config
from . import server, verify as checks
from .errors import EXIT_FAILED, EXIT_OK, ProvisionError
from .report import Console
from .state import State, StateDir
from .xinference import XinferenceClient


@dataclass
class VerifyResult:
    state: State
    checks: list[checks.CheckResult]
    exit_code: int


@dataclass
class ModelStatus:
    role: str
    uid: str
    recorded: str  # what the state says: running | failed | terminated
    live: str  # what the server says now: running | not running | unknown
    candidate: str | None
    engine: str | None
    error: str | None
    workers: list[str] = field(default_factory=list)  # where it runs now (a cluster's worker addresses)


@dataclass
class ProcessStatus:
    """One process provision started: the server, or a cluster's supervisor or one of its workers."""

    role: str  # server | supervisor | worker
    address: str  # host:port it serves on (a worker: as the supervisor and worker_ip name it)
    pid: int | None
    alive: bool  # still the very process provision started
    log: str | None


@dataclass
class StatusResult:
    state: State
    server_alive: bool
    server_detail: str
    base_url: str
    models: list[ModelStatus]
    exit_code: int
    processes: list[ProcessStatus] = field(default_factory=list)


@dataclass
class DownResult:
    terminated: list[str] = field(default_factory=list)
    already_gone: list[str] = field(default_factory=list)
    server: str = "nothing to stop"
    exit_code: int = EXIT_OK
    errors: list[str] = field(default_factory=list)


@dataclass
class RagflowResult:
    provider: dict
    docker: bool
    paste: str
    files: dict[str, str]


def _client(state_dir: StateDir, state: State) -> XinferenceClient:
    """Reads and checks models the way RAGFlow does: with the API key (see auth.py)."""
    return auth.key_client(state_dir, state.server)


def _admin_client(state_dir: StateDir, state: State) -> tuple[XinferenceClient | None, ProvisionError | None]:
    """Terminates models: the admin's login where auth is on; (None, why) when it cannot be had."""
    try:
        return auth.admin_client(state_dir, state.server), None
    except ProvisionError as exc:
        return None, exc


def verify(state_dir: StateDir) -> VerifyResult:
    state = state_dir.require()
    running = [m for m in state.models if m.status == "running"]
    if state.server is None or not running:
        results = [checks.not_checked(m, "not running: " + (m.error or m.status)) for m in state.models]
        return VerifyResult(state, results, EXIT_FAILED)
    results = checks.verify_all(_client(state_dir, state), running)
    results += [checks.not_checked(m, "did not come up: " + (m.error or m.status)) for m in state.models if m.status != "running"]
    return VerifyResult(state, results, EXIT_OK if results and all(r.ok for r in results) else EXIT_FAILED)


def status(state_dir: StateDir) -> StatusResult:
    state = state_dir.require()
    record = state.server
    alive, detail, live_uids = False, "no server recorded", None
    if record is not None:
        if record.managed and not server.is_same_process(record):
            detail = f"stopped (pid {record.pid} is gone)"
        else:
            try:
                client, key_problem = _client(state_dir, state), ""
            except ProvisionError as exc:
                client, key_problem = XinferenceClient(record.url), f" (no API key: {exc.message})"
            code = client.answers()
            alive = code is not None
            detail = (
                f"{'started by provision, pid ' + str(record.pid) if record.managed else 'external'}, "
                + ("answering" if alive else "not answering") + key_problem
            )
        if alive:
            try:
                live_uids = {m.get("id") for m in client.list_models()}
            except ProvisionError as exc:
                detail += f" (cannot list models: {exc.message})"
    processes = _processes(record)
    gone = [p for p in processes if p.role == "worker" and not p.alive]
    if gone:
        detail += f"; {len(gone)} of {len(processes) - 1} workers gone ({', '.join(p.address for p in gone)})"
    # Where each model runs: a cluster's (ours, or one given by server.endpoint) worker addresses.
    placed = live_uids is not None and record is not None and (record.mode == "cluster" or not record.managed)
    models = []
    for m in state.models:
        live = "unknown" if live_uids is None else ("running" if m.uid in live_uids else "not running")
        where = _workers_of(client, m.uid) if placed and live == "running" else []
        models.append(ModelStatus(m.role, m.uid, m.status, live, m.candidate, m.engine, m.error, where))
    healthy = alive and not gone and all(s.live == "running" for s in models if s.recorded == "running")
    return StatusResult(state, alive, detail, ragflow_config.base_url_of(state), models,
                        EXIT_OK if healthy else EXIT_FAILED, processes)


def _processes(record) -> list[ProcessStatus]:
    """The processes provision started for the recorded server, each checked against its recorded identity."""
    if record is None or not record.managed or not record.pid:
        return []
    if not record.workers:
        return [ProcessStatus("server", f"{record.host}:{record.port}", record.pid, server.is_same_process(record),
                              record.log)]
    supervisor = ProcessStatus("supervisor", f"{record.host}:{record.port}", record.pid,
                               server.is_same_process(record), record.log)
    return [supervisor] + [ProcessStatus("worker", w.address, w.pid, server.is_same_process(w), w.log)
                           for w in record.workers]


def _workers_of(client: XinferenceClient, uid: str) -> list[str]:
    """The workers the model's replicas run on (GET /v1/models/instances); [] when it cannot be told."""
    try:
        instances = client.instances(uid)
    except ProvisionError:
        return []
    found = [r.get("worker_address") for i in instances if isinstance(i, dict)
             for r in i.get("replica_statuses") or [] if isinstance(r, dict)]
    return list(dict.fromkeys(a for a in found if a))


def down(state_dir: StateDir, console: Console | None = None) -> DownResult:
    console = console or Console()
    result = DownResult()
    state = state_dir.read()
    if state is None:
        result.server = f"nothing recorded in {state_dir.path}"
        return result
    with state_dir.lock("down"):
        record = state.server
        reachable = record is not None and (not record.managed or server.is_same_process(record))
        if reachable:
            client, why = _admin_client(state_dir, state)
            for model in state.models:
                if model.status != "running":
                    continue
                try:
                    if client is None:
                        raise why
                    gone = not client.terminate(model.uid)
                except ProvisionError as exc:
                    if record.managed:  # the server is stopped next, which ends the model too
                        console.line(f"[down] {model.uid}: terminate failed ({exc.message}); stopping the server ends it")
                    else:
                        result.errors.append(f"{model.uid}: {exc.message}")
                        continue
                    gone = False
                (result.already_gone if gone else result.terminated).append(model.uid)
                model.status = "terminated"
                console.line(f"[down] {model.uid}: {'already gone' if gone else 'terminated'}")
        else:
            for model in state.models:
                if model.status == "running":
                    model.status = "terminated"
                    result.already_gone.append(model.uid)
        if record is not None and record.managed:
            started = time.monotonic()
            result.server = server.stop_server(record)
            console.line(f"[down] server: {result.server} ({time.monotonic() - started:.1f}s)")
            state.server = None
        elif record is not None:
            result.server = f"left running (external server {record.url})"
        state_dir.write(state)
    result.exit_code = EXIT_FAILED if result.errors else EXIT_OK
    return result


def ragflow(state_dir: StateDir, docker: bool | None = None, show_key: bool = False) -> RagflowResult:
    state = state_dir.require()
    use_docker = state.ragflow_docker if docker is None else docker
    if show_key and state.server is not None:
        key = auth.api_key_for(state_dir, state.server)
    else:
        key = ragflow_config.HIDDEN_KEY if auth.has_key(state.server) else None
    provider = ragflow_config.build_provider(state, key)
    files = {
        name: str(path)
        for name, path in ragflow_config.config_paths(state_dir).items()
        if path.exists()
    }
    return RagflowResult(provider, use_docker, ragflow_config.paste_block(provider, docker=use_docker), files)
