"""The plan: manifest + what is observed -> what `up` will do to each model, and why. Pure: no I/O.

observe.py gathers the facts (`Observed`: what runs, what is on disk, the hub listing, the GPUs, the
server's engines); `make_plan` only decides. `provision plan` prints the same plan `up` acts on.

Per candidate the plan gives an engine verdict (from GET /v1/engines, or pending while no server
answers), a memory verdict (gpu_fit.py), the bytes still to download (weights.py), and a skip reason
when it cannot work: no GPU, a worker_ip that names no worker of the cluster, an engine the server
says is not installed or does not run this model, not enough GPU memory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..catalog import weights
from ..engines import engine_verdict
from ..manifest import Candidate, Manifest
from ..placement import worker_ip_problem
from ..state import ModelRecord
from .gpu_fit import GpuLedger, fit_memory
from .model import KEEP, LAUNCH, ON_SERVER, RELAUNCH, TERMINATE, CandidateStep, ModelStep, Plan
from .text import gpus_line
from .weights import disk_line, weights_of, weights_text

if TYPE_CHECKING:
    from ..observe import Observed


def chain_key(candidates: list[Candidate]) -> str:
    """A fingerprint of everything that decides how a model is launched: same key, same launch."""
    fields = []
    for c in candidates:
        fields.append(
            {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in c.__dict__.items()
                if k not in ("model_index", "launch_timeout", "source_from_catalog")  # a note, not how it launches
            }
        )
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_plan(manifest: Manifest, observed: Observed, refetch: set[str] | frozenset = frozenset()) -> Plan:
    url = manifest.server.url
    if manifest.server.endpoint:
        server, server_reason = "external", f"use the existing server at {url}; provision will not start or stop it"
    elif observed.server_reusable:
        server, server_reason = "reuse", f"the server provision started earlier is alive at {url}"
    elif observed.server_moved:
        server, server_reason = "restart", (
            f"{observed.server_move_reason or 'server.host/port changed'}: stop the server provision started "
            f"earlier, start one on {manifest.server.host}:{manifest.server.port}"
        )
    elif manifest.server.mode == "cluster":
        spec = manifest.server
        server, server_reason = "start", (
            f"start xinference-supervisor on {spec.host}:{spec.port} (supervisor port {spec.cluster_supervisor_port}) "
            f"and {spec.workers} worker{'s' if spec.workers != 1 else ''}: {', '.join(spec.worker_addresses)}"
        )
    else:
        server, server_reason = "start", f"start xinference-local on {manifest.server.host}:{manifest.server.port}"
    if server == "start" and observed.previous is not None and observed.previous.server is not None \
            and observed.previous.server.managed:
        gone = observed.previous.server
        server_reason = f"the server provision started earlier (pid {gone.pid}) is gone: {server_reason}"
    plan = Plan(manifest=manifest.file, name=manifest.name, server=server, server_reason=server_reason, base_url=url,
                gpus=gpus_line(observed))
    if not manifest.server.endpoint and manifest.server.mode == "local":
        placed = sorted({c.uid for i in range(len(manifest.models)) for c in manifest.candidates(i) if c.worker_ip})
        if placed:
            plan.warnings.append(f"worker_ip of {', '.join(placed)} is ignored: xinference-local is a single worker "
                                 "(server.mode: cluster starts several)")

    previous = {m.uid: m for m in observed.previous.models} if observed.previous else {}
    wanted = {spec.uid for spec in manifest.models}
    removed = [record for uid, record in previous.items() if uid not in wanted and record.status in ON_SERVER]
    # Memory that a relaunch, a server restart or the termination of a removed model frees first (`up` does
    # those before it launches) is still counted as used by the facts: it is no reason to skip.
    frees_memory = server == "restart" or bool(removed)
    gpus = GpuLedger(observed.gpus, frees_memory, manifest._catalog, manifest.download.hub)
    active: list[tuple[Candidate, CandidateStep]] = []  # the candidates of models to launch
    for index, spec in enumerate(manifest.models):
        candidates = manifest.candidates(index)
        key = chain_key(candidates)
        action, reason = _decide(spec.uid, key, previous.get(spec.uid), observed)
        if action == KEEP and spec.uid in refetch:
            action, reason = RELAUNCH, "its weights are checked against the hub and fetched again (--refetch)"
        step = ModelStep(role=spec.role, uid=spec.uid, action=action, reason=reason, chain_key=key,
                         clear_first=action == LAUNCH and observed.server_reusable and
                         getattr(previous.get(spec.uid), "status", None) in ON_SERVER)
        for candidate in candidates:
            step.candidates.append(_candidate_step(manifest, candidate, observed))
        if action in (LAUNCH, RELAUNCH):
            soft = action == RELAUNCH or frees_memory
            for candidate, cstep in zip(candidates, step.candidates):
                _check(manifest, candidate, cstep, observed, gpus, soft)
            gpus.choose_first(plan, step)
            active += zip(candidates, step.candidates)
        plan.steps.append(step)
    for record in removed:
        plan.steps.append(ModelStep(role=record.role, uid=record.uid, action=TERMINATE, reason="no longer in the manifest"))
    gpus.share_auto(plan)
    gpus.check_colocation(plan)
    for candidate, cstep in active:  # the first candidate is fetched up front, the others when reached
        cstep.weights = weights_text(manifest, candidate, observed, cstep.bytes_to_fetch, cstep.first,
                                      skipped=cstep.skip_reason is not None)
    plan.disk = disk_line(plan, manifest, observed)
    return plan


def _decide(uid: str, key: str, record: ModelRecord | None, observed: Observed) -> tuple[str, str]:
    if record is not None and record.status == "launching" and observed.server_reusable and uid in observed.running_uids:
        return RELAUNCH, "an `up` that was interrupted left its launch on the server"
    if record is None or record.status != "running":
        return LAUNCH, "not running yet"
    if not observed.server_reusable:
        return LAUNCH, "its server is gone"
    if uid not in observed.running_uids:
        return LAUNCH, "the server no longer runs it"
    if uid in observed.not_ready:
        return LAUNCH, f"its instance on the server is {observed.not_ready[uid]}: its process died or is restarting"
    probe = observed.probes.get(uid)
    if probe is not None and probe.model_gone:
        return LAUNCH, f"it does not answer ({probe.diagnosis}): {probe.message.split(': ', 1)[-1][:160]}"
    if record.chain_key != key:
        return RELAUNCH, "its manifest entry changed"
    return KEEP, f"running since the last `up` ({record.candidate}, {record.engine})"


def _candidate_step(manifest: Manifest, candidate: Candidate, observed: Observed) -> CandidateStep:
    notes = [f"source {candidate.source} {candidate.source_from_catalog}"] if candidate.source_from_catalog else []
    folder = candidate.folder
    weight_bytes, to_fetch = weights_of(candidate, observed)
    if candidate.is_vllm and candidate.gpu_memory_utilization != "auto":
        share, defaulted = candidate.gpu_share()
        notes.append(f"gpu_memory_utilization {share}" + (" (provision's default for this role)" if defaulted else ""))
    present = folder is not None and folder in observed.folders_with_model
    return CandidateStep(
        label=candidate.label,
        name=candidate.name,
        engine=candidate.engine,
        folder=str(folder) if folder else None,
        weights=weights_text(manifest, candidate, observed, to_fetch, fetched_first=candidate.position == 0),
        notes=notes,
        bytes_to_fetch=to_fetch if present or candidate.downloadable else None,
        weight_bytes=weight_bytes,
    )


def _check(manifest: Manifest, c: Candidate, cs: CandidateStep, observed: Observed, gpus: GpuLedger,
           soft: bool) -> None:
    key = (c.model_type, c.name)
    if key not in observed.engines:
        cs.engine_check = f"pending: {observed.engines_pending}"
    else:
        verdict = engine_verdict(c.engine, c.name, observed.engines[key])
        cs.engine_check = verdict.summary
        if verdict.blocks:
            cs.skip_kind, cs.skip_reason = verdict.kind, verdict.reason
    facts = observed.weight_facts.get(c.folder) if c.folder is not None else None
    refused = weights.verdict(manifest._catalog, c.model_type, c.name, None, facts) if facts else None
    if refused is not None and c.accept_weights_mismatch:
        cs.notes.append(f"weights: {refused[0]} (accept_weights_mismatch: launched anyway)")
    elif refused is not None and cs.skip_kind is None:
        cs.skip_kind, cs.skip_reason = "weights_mismatch", f"{refused[0]} ({refused[1]})"
    catalog = manifest._catalog
    cs.notes += weights.remarks(catalog.family(c.model_type, c.name) if catalog else None, facts)
    no_worker = worker_ip_problem(c.worker_ip, observed.workers)
    if no_worker:  # the placement the manifest asks for cannot be had: this is what to fix first
        cs.skip_kind, cs.skip_reason = "no_worker", no_worker
    fit_memory(c, cs, observed, gpus, soft)
