"""What a plan is: per model an action and a reason, per candidate its verdicts. Data only."""

from __future__ import annotations

from dataclasses import dataclass, field

KEEP, LAUNCH, RELAUNCH, TERMINATE = "keep", "launch", "relaunch", "terminate"
ON_SERVER = ("running", "launching")  # model statuses that may hold a model on the server


@dataclass
class CandidateStep:
    label: str
    name: str
    engine: str
    folder: str | None
    weights: str  # "present", "download from <hub>", "missing: ..." , "downloaded when reached"
    notes: list[str] = field(default_factory=list)
    engine_check: str = ""  # "ok" | "not usable: <reason>" | "not offered: ..." | "pending: ..." | "unknown: ..."
    memory: str = ""  # "fits: ...", "CPU", "auto -> 0.07 (...)", "unknown: ...", or why it cannot fit
    bytes_to_fetch: int | None = None  # None: not known (no hub listing)
    weight_bytes: int | None = None
    need_bytes: int | None = None  # GPU memory it takes on each GPU it is placed on
    gpu_idx: int | list[int] | None = None  # where the plan places it
    worker_ip: str | None = None  # the cluster worker it is placed on, when the plan chose one
    placed_by_plan: bool = False  # gpu_idx (and worker_ip) are the plan's choice: launchable sends them
    gpu_memory_utilization: float | None = None  # the share sent to vLLM, `auto` resolved
    skip_kind: str | None = None  # no_worker | no_gpu | oom | engine_missing | engine_unsupported
    skip_reason: str | None = None
    first: bool = False  # the candidate `up` tries first


@dataclass
class ModelStep:
    role: str
    uid: str
    action: str  # keep | launch | relaunch | terminate
    reason: str
    chain_key: str = ""
    candidates: list[CandidateStep] = field(default_factory=list)
    # The server may still hold an instance of the uid it no longer lists (a model process that died and is
    # being restarted by Xinference): terminated before the launch, so the uid is free.
    clear_first: bool = False


@dataclass
class Plan:
    manifest: str
    name: str
    server: str  # start | restart | reuse | external
    server_reason: str
    base_url: str
    steps: list[ModelStep] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    gpus: str = ""  # what is known about the GPUs, one line
    catalog: str = ""  # where the catalog the manifest was checked against came from
    disk: str = ""  # what the downloads need against the free space, one line

    def step(self, uid: str) -> ModelStep | None:
        return next((s for s in self.steps if s.uid == uid), None)

