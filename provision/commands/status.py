"""`provision status`: the server and each model as recorded and as they are now."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import auth, redact
from ..errors import EXIT_FAILED, EXIT_OK, ProvisionError
from ..ragflow import config as ragflow_config
from ..runtime import procs
from ..state import AttemptRecord, State, StateDir
from ..xinference import XinferenceClient


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
    attempts: list[AttemptRecord] = field(default_factory=list)  # every candidate of its chain, and why


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



def status(state_dir: StateDir) -> StatusResult:
    state = state_dir.require()
    record = state.server
    alive, detail, live_uids = False, "no server recorded", None
    if record is not None:
        if record.managed and not procs.is_same_process(record):
            detail = (f"stopped (pid {record.pid} is now another program)" if procs.alive(record.pid)
                      else f"stopped (pid {record.pid} is gone)")
        else:
            try:
                client, key_problem = auth.key_client(state_dir, record), ""
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
        models.append(ModelStatus(m.role, m.uid, m.status, live, m.candidate, m.engine, m.error, where, m.attempts))
    healthy = alive and not gone and all(s.live == "running" for s in models if s.recorded == "running")
    base_url = redact.url(ragflow_config.base_url_of(state)) if record is not None else "-"
    return StatusResult(state, alive, detail, base_url, models, EXIT_OK if healthy else EXIT_FAILED, processes)


def _processes(record) -> list[ProcessStatus]:
    """The processes provision started for the recorded server, each checked against its recorded identity."""
    if record is None or not record.managed or not record.pid:
        return []
    if not record.workers:
        return [ProcessStatus("server", f"{record.host}:{record.port}", record.pid, procs.is_same_process(record),
                              record.log)]
    supervisor = ProcessStatus("supervisor", f"{record.host}:{record.port}", record.pid,
                               procs.is_same_process(record), record.log)
    return [supervisor] + [ProcessStatus("worker", w.address, w.pid, procs.is_same_process(w), w.log)
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
