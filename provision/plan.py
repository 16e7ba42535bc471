"""The plan: manifest + what is observed -> what `up` will do to each model, and why. Pure: no I/O.

The caller (apply.py) gathers the facts (`Observed`); `make_plan` only decides. `provision plan` prints
the same plan `up` acts on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .launch import gpu_memory_utilization
from .manifest import Candidate, Manifest
from .state import ModelRecord, State

KEEP, LAUNCH, RELAUNCH, TERMINATE = "keep", "launch", "relaunch", "terminate"


@dataclass
class Observed:
    """Facts about the world the plan depends on, gathered by apply.py."""

    previous: State | None = None
    server_reusable: bool = False  # the recorded server is ours, alive, and answers
    server_moved: bool = False  # our recorded server is alive but the manifest now wants another address
    running_uids: set[str] = field(default_factory=set)  # what that server reports in /v1/models
    folders_with_model: set[Path] = field(default_factory=set)  # local folders that already hold weights


@dataclass
class CandidateStep:
    label: str
    name: str
    engine: str
    folder: str | None
    weights: str  # "present", "download from <hub>", "missing: ..." , "downloaded when reached"
    notes: list[str] = field(default_factory=list)


@dataclass
class ModelStep:
    role: str
    uid: str
    action: str  # keep | launch | relaunch | terminate
    reason: str
    chain_key: str = ""
    candidates: list[CandidateStep] = field(default_factory=list)


@dataclass
class Plan:
    manifest: str
    name: str
    server: str  # start | restart | reuse | external
    server_reason: str
    base_url: str
    steps: list[ModelStep] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def step(self, uid: str) -> ModelStep | None:
        return next((s for s in self.steps if s.uid == uid), None)


def chain_key(candidates: list[Candidate]) -> str:
    """A fingerprint of everything that decides how a model is launched: same key, same launch."""
    fields = []
    for c in candidates:
        fields.append(
            {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in c.__dict__.items()
                if k not in ("model_index", "launch_timeout")
            }
        )
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def server_url(manifest: Manifest) -> str:
    if manifest.server.endpoint:
        return manifest.server.endpoint
    host = manifest.server.host
    # A server bound to every interface is reached locally through loopback.
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{manifest.server.port}"


def make_plan(manifest: Manifest, observed: Observed) -> Plan:
    url = server_url(manifest)
    if manifest.server.endpoint:
        server, server_reason = "external", f"use the existing server at {url}; provision will not start or stop it"
    elif observed.server_reusable:
        server, server_reason = "reuse", f"the server provision started earlier is alive at {url}"
    elif observed.server_moved:
        server, server_reason = "restart", (
            f"server.host/port changed: stop the server provision started earlier, start one on "
            f"{manifest.server.host}:{manifest.server.port}"
        )
    else:
        server, server_reason = "start", f"start xinference-local on {manifest.server.host}:{manifest.server.port}"
    plan = Plan(manifest=manifest.file, name=manifest.name, server=server, server_reason=server_reason, base_url=url)
    if manifest.server.host not in ("127.0.0.1", "localhost", "::1") and not manifest.server.endpoint:
        plan.warnings.append(
            f"server.host {manifest.server.host} opens the Xinference API to the network without "
            "authentication: anyone who can reach the port can launch and delete models"
        )

    previous = {m.uid: m for m in observed.previous.models} if observed.previous else {}
    wanted: set[str] = set()
    for index, spec in enumerate(manifest.models):
        candidates = manifest.candidates(index)
        key = chain_key(candidates)
        wanted.add(spec.uid)
        action, reason = _decide(spec.uid, key, previous.get(spec.uid), observed)
        step = ModelStep(role=spec.role, uid=spec.uid, action=action, reason=reason, chain_key=key)
        for candidate in candidates:
            step.candidates.append(_candidate_step(manifest, candidate, observed))
        plan.steps.append(step)
    for uid, record in previous.items():
        if uid not in wanted and record.status == "running":
            plan.steps.append(
                ModelStep(role=record.role, uid=uid, action=TERMINATE, reason="no longer in the manifest")
            )
    return plan


def _decide(uid: str, key: str, record: ModelRecord | None, observed: Observed) -> tuple[str, str]:
    if record is None or record.status != "running":
        return LAUNCH, "not running yet"
    if not observed.server_reusable:
        return LAUNCH, "its server is gone"
    if uid not in observed.running_uids:
        return LAUNCH, "the server no longer runs it"
    if record.chain_key != key:
        return RELAUNCH, "its manifest entry changed"
    return KEEP, f"running since the last `up` ({record.candidate}, {record.engine})"


def _candidate_step(manifest: Manifest, candidate: Candidate, observed: Observed) -> CandidateStep:
    notes = []
    folder = candidate.folder
    if folder is not None and folder in observed.folders_with_model:
        weights = "present"
    elif candidate.downloadable:
        hub = manifest.download.endpoint or manifest.download.hub
        weights = f"download {candidate.source} from {hub}" if candidate.position == 0 else "downloaded if reached"
    else:
        weights = f"missing: {folder}" if folder else "no local folder"
    if candidate.is_vllm:
        share, defaulted = gpu_memory_utilization(candidate)
        notes.append(f"gpu_memory_utilization {share}" + (" (provision's default for this role)" if defaulted else ""))
    if not candidate.on_gpu:
        notes.append("CPU")
    return CandidateStep(
        label=candidate.label,
        name=candidate.name,
        engine=candidate.engine,
        folder=str(folder) if folder else None,
        weights=weights,
        notes=notes,
    )
