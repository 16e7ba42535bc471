"""The plan: manifest + what is observed -> what `up` will do to each model, and why. Pure: no I/O.

The caller (apply.py) gathers the facts (`Observed`: what runs, what is on disk, the hub listing, the
GPUs, the server's engines); `make_plan` only decides. `provision plan` prints the same plan `up` acts
on, and `launchable(step, candidates)` turns a model's step into the candidates `up` tries (skipped ones
become "skipped" attempts in the attempt log).

Per candidate the plan gives an engine verdict (from GET /v1/engines, or pending while no server
answers), a memory verdict, the bytes still to download, and a skip reason when it cannot work:

- no GPU: vLLM/SGLang/LMDEPLOY, or an explicit n_gpu/gpu_idx, on a machine without one;
- no worker: its worker_ip names no worker of the cluster (the supervisor's /v1/cluster/info, or the
  workers server.mode: cluster will start);
- engine: the server says the engine is not installed or does not run this model;
- memory: vLLM reserves gpu_memory_utilization x the GPU's TOTAL memory and refuses to start when less
  is free; other engines on a GPU need about the weights x TORCH_OVERHEAD (a Transformers LLM that does
  not fit is not skipped: Xinference offloads the rest to CPU memory). `auto` picks the largest
  share that leaves max(1 GiB, 2% of the card) free, shared between the models placed on the same GPU.

A candidate without gpu_idx is placed on the GPU with the most memory left after the models above it;
with several GPUs that placement is sent as gpu_idx, because Xinference itself places by model count,
not by memory. Memory is never a skip reason when the plan relaunches the model or restarts the
server: what those stop frees memory the facts still count as used.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from .cluster import worker_ip_problem
from .gpu import GiB, Gpu
from .launch import DEFAULT_GPU_MEMORY_UTILIZATION, gpu_memory_utilization
from .manifest import GPU_ONLY_ENGINES, Candidate, Manifest
from .report import human_bytes
from .state import AttemptRecord, ModelRecord, State

KEEP, LAUNCH, RELAUNCH, TERMINATE = "keep", "launch", "relaunch", "terminate"

TORCH_OVERHEAD = 1.2  # GPU memory of a torch engine (transformers, sentence_transformers, ...) per weight byte
VLLM_MIN_OVERHEAD = 1.1  # a vLLM share must hold the weights and some KV cache
AUTO_MARGIN_BYTES = 1 * GiB  # `auto` leaves max(1 GiB, 2% of the card) free for others' growth
AUTO_MARGIN_SHARE = 0.02
# Weight files, in order of preference: a repo with safetensors often carries .bin copies too.
WEIGHT_GROUPS = (("*.safetensors",), ("*.gguf",), ("pytorch_model*.bin", "model*.bin", "*.pt", "*.pth"))

TRIED_ANYWAY = "tried anyway: what the relaunch or restart stops frees memory first"
PENDING_NO_SERVER = "no server answers yet; `up` asks it right after it starts"


@dataclass
class Observed:
    """Facts about the world the plan depends on, gathered by observe.observe()."""

    previous: State | None = None
    server_reusable: bool = False  # the recorded server is ours, alive, and answers
    server_moved: bool = False  # our recorded server is alive but the manifest now wants another one
    server_move_reason: str = ""
    running_uids: set[str] = field(default_factory=set)  # what that server reports in /v1/models
    folders_with_model: set[Path] = field(default_factory=set)  # local folders that already hold weights
    gpus: list[Gpu] | None = None  # None: not known; []: none
    gpu_source: str = ""  # where the GPU facts came from ("NVML"), or why they are unknown
    # (model_type, name) -> the server's GET /v1/engines answer (None: it knows no engines for the name).
    # A missing key is a pending check; engines_pending says why.
    engines: dict[tuple[str, str], Any] = field(default_factory=dict)
    engines_pending: str = PENDING_NO_SERVER
    # (source, revision) -> the hub listing (objects with .path and .size), or why it could not be had
    listings: dict[tuple[str, str | None], list | str] = field(default_factory=dict)
    local_files: dict[Path, dict[str, int]] = field(default_factory=dict)  # folder -> relative path -> size
    disk_free: int | None = None  # free bytes where download.models_dir is
    workers: list[str] | None = None  # the cluster's worker addresses (None: not a cluster, or not known)
    workers_source: str = ""  # where they came from, or why they are unknown


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
    disk: str = ""  # what the downloads need against the free space, one line

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
    plan = Plan(manifest=manifest.file, name=manifest.name, server=server, server_reason=server_reason, base_url=url,
                gpus=_gpus_line(observed))
    if not manifest.server.auth and manifest.server.host not in ("127.0.0.1", "localhost", "::1") and not manifest.server.endpoint:
        plan.warnings.append(
            f"server.host {manifest.server.host} opens the Xinference API to the network without "
            "authentication: anyone who can reach the port can launch and delete models"
        )
    if not manifest.server.endpoint and manifest.server.mode == "local":
        placed = sorted({c.uid for i in range(len(manifest.models)) for c in manifest.candidates(i) if c.worker_ip})
        if placed:
            plan.warnings.append(f"worker_ip of {', '.join(placed)} is ignored: xinference-local is a single worker "
                                 "(server.mode: cluster starts several)")

    previous = {m.uid: m for m in observed.previous.models} if observed.previous else {}
    wanted: set[str] = set()
    gpus = _Gpus(observed.gpus)
    active: list[tuple[Candidate, CandidateStep]] = []  # the candidates of models to launch
    for index, spec in enumerate(manifest.models):
        candidates = manifest.candidates(index)
        key = chain_key(candidates)
        wanted.add(spec.uid)
        action, reason = _decide(spec.uid, key, previous.get(spec.uid), observed)
        step = ModelStep(role=spec.role, uid=spec.uid, action=action, reason=reason, chain_key=key)
        for candidate in candidates:
            step.candidates.append(_candidate_step(manifest, candidate, observed))
        if action in (LAUNCH, RELAUNCH):
            # Memory that a relaunch or a server restart frees first is still counted as used.
            soft = action == RELAUNCH or server == "restart"
            for candidate, cstep in zip(candidates, step.candidates):
                _check(candidate, cstep, observed, gpus, soft)
            _choose_first(plan, step, gpus)
            active += zip(candidates, step.candidates)
        plan.steps.append(step)
    for uid, record in previous.items():
        if uid not in wanted and record.status == "running":
            plan.steps.append(
                ModelStep(role=record.role, uid=uid, action=TERMINATE, reason="no longer in the manifest")
            )
    gpus.share_auto(plan)
    gpus.check_colocation(plan)
    for candidate, cstep in active:  # the first candidate is fetched up front, the others when reached
        cstep.weights = _weights_text(manifest, candidate, observed, cstep.bytes_to_fetch, cstep.first,
                                      skipped=cstep.skip_reason is not None)
    plan.disk = _disk(plan, manifest, observed)
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
    weight_bytes, to_fetch = _weights(candidate, observed)
    if candidate.is_vllm and candidate.gpu_memory_utilization != "auto":
        share, defaulted = gpu_memory_utilization(candidate)
        notes.append(f"gpu_memory_utilization {share}" + (" (provision's default for this role)" if defaulted else ""))
    present = folder is not None and folder in observed.folders_with_model
    return CandidateStep(
        label=candidate.label,
        name=candidate.name,
        engine=candidate.engine,
        folder=str(folder) if folder else None,
        weights=_weights_text(manifest, candidate, observed, to_fetch, fetched_first=candidate.position == 0),
        notes=notes,
        bytes_to_fetch=to_fetch if present or candidate.downloadable else None,
        weight_bytes=weight_bytes,
    )


def _weights_text(manifest: Manifest, c: Candidate, observed: Observed, to_fetch: int | None, fetched_first: bool,
                  skipped: bool = False) -> str:
    """present | download <source> from <hub> (size) | downloaded if reached (size) | not fetched: skipped
    | missing: <folder>"""
    if c.folder is not None and c.folder in observed.folders_with_model:
        return "present" + (f" ({human_bytes(to_fetch)} changed on the hub)" if to_fetch else "")
    if not c.downloadable:
        return f"missing: {c.folder}" if c.folder else "no local folder"
    listing = observed.listings.get((c.source, c.revision))
    size = f" ({human_bytes(to_fetch)})" if to_fetch is not None else ""
    size = f" (size unknown: {listing})" if to_fetch is None and isinstance(listing, str) else size
    hub = manifest.download.endpoint or manifest.download.hub
    if skipped:
        return f"not fetched: skipped{size}"
    return f"download {c.source} from {hub}{size}" if fetched_first else f"downloaded if reached{size}"


# --------------------------------------------------------------------------------------------------
# Weights: sizes from the local folder or the hub listing


def weight_bytes(sizes: Mapping[str, int], quantization: str | None = None) -> int | None:
    """Bytes of the weight files among `sizes` (relative path -> size); None when there are none.

    One format only (safetensors before gguf before .bin): repos often carry the same weights twice. Of
    several GGUF files, those naming the quantization, else the largest one.
    """
    for patterns in WEIGHT_GROUPS:
        chosen = [p for p in sizes if any(fnmatch(PurePosixPath(p).name, pat) for pat in patterns)]
        if not chosen:
            continue
        if patterns == ("*.gguf",) and len(chosen) > 1:
            named = [p for p in chosen if quantization and quantization.lower() in p.lower()]
            chosen = named or [max(chosen, key=lambda p: sizes[p])]
        return sum(sizes[p] for p in chosen)
    return None


def bytes_to_fetch(listing: list, local: Mapping[str, int]) -> int:
    """What a download still fetches: listed files missing locally or of another size."""
    return sum(f.size for f in listing if local.get(f.path) != f.size)


def _weights(c: Candidate, observed: Observed) -> tuple[int | None, int | None]:
    """(weight bytes, bytes to fetch); None where not known."""
    local = observed.local_files.get(c.folder, {}) if c.folder is not None else {}
    listing = observed.listings.get((c.source, c.revision)) if c.downloadable else None
    present = c.folder is not None and c.folder in observed.folders_with_model
    if present:
        to_fetch = bytes_to_fetch(listing, local) if isinstance(listing, list) else 0
        return weight_bytes(local, c.quantization), to_fetch
    if isinstance(listing, list) and listing:
        return weight_bytes({f.path: f.size for f in listing}, c.quantization), bytes_to_fetch(listing, local)
    return None, None


def _weights_unknown(c: Candidate, observed: Observed) -> str:
    listing = observed.listings.get((c.source, c.revision)) if c.downloadable else None
    if isinstance(listing, str):
        return f"weight size not known (hub listing: {listing})"
    if c.downloadable:
        return "weight size not known until the download lists the hub (`provision plan` does)"
    return "weight size not known (no weights on disk)"


# --------------------------------------------------------------------------------------------------
# Engine and memory verdicts


def _check(c: Candidate, cs: CandidateStep, observed: Observed, gpus: _Gpus, soft: bool) -> None:
    cs.engine_check, kind, reason = _engine_verdict(c, observed)
    if kind:
        cs.skip_kind, cs.skip_reason = kind, reason
    no_worker = worker_ip_problem(c.worker_ip, observed.workers)
    if no_worker:  # the placement the manifest asks for cannot be had: this is what to fix first
        cs.skip_kind, cs.skip_reason = "no_worker", no_worker
    _memory(c, cs, observed, gpus, soft)


def _engine_verdict(c: Candidate, observed: Observed) -> tuple[str, str | None, str | None]:
    """(verdict, skip kind, skip reason); the texts match launch.engine_check's."""
    key = (c.model_type, c.name)
    if key not in observed.engines:
        return f"pending: {observed.engines_pending}", None, None
    offered = observed.engines[key]
    if not isinstance(offered, dict) or not offered:
        return f"unknown: the server lists no engines for {c.name}; the launch decides", None, None
    verdict = next((v for k, v in offered.items() if k.lower() == c.engine.lower()), None)
    if verdict is None and not any(k.lower() == c.engine.lower() for k in offered):
        names = ", ".join(sorted(offered))
        reason = f"Xinference has no {c.engine} engine for {c.name}; it has: {names}"
        return f"not offered: it has {names}", "engine_unsupported", reason
    if isinstance(verdict, str):
        return f"not usable: {verdict}", "engine_missing", f"engine {c.engine} is not usable on this server: {verdict}"
    return "ok", None, None


def _needs_gpu(c: Candidate) -> bool:
    return c.engine.lower() in GPU_ONLY_ENGINES or (isinstance(c.n_gpu, int) and c.n_gpu > 0) or c.gpu_idx is not None


def _offloads(c: Candidate) -> bool:
    """Xinference loads Transformers LLMs with device_map="auto": accelerate puts what does not fit on the
    GPU into CPU memory instead of failing. Embedding/rerank models go to the GPU whole (CUDA OOM)."""
    return c.model_type == "LLM" and c.engine.lower() == "transformers"


def _gpu_count(c: Candidate) -> int:
    if isinstance(c.gpu_idx, list):
        return len(c.gpu_idx)
    return c.n_gpu if isinstance(c.n_gpu, int) and c.n_gpu > 0 else 1  # Xinference: n_gpu auto = 1 GPU


@dataclass
class _Fit:
    """What a candidate takes on the GPUs it is placed on (kept while planning, not in the plan)."""

    uid: str
    cs: CandidateStep
    placed: list[Gpu]
    need: int | None  # bytes per GPU; None: not known
    auto: bool = False
    min_need: int = 0  # auto: the least share that holds the weights
    step: ModelStep | None = None  # set once it is its model's first candidate


def _memory(c: Candidate, cs: CandidateStep, observed: Observed, gpus: _Gpus, soft: bool) -> None:
    auto = c.is_vllm and c.gpu_memory_utilization == "auto"
    if auto:  # until the facts say better: provision's default for the role
        cs.gpu_memory_utilization = DEFAULT_GPU_MEMORY_UTILIZATION.get(c.model_type, 0.75)
    elif c.is_vllm:
        cs.gpu_memory_utilization = gpu_memory_utilization(c)[0]
    if not c.on_gpu:
        cs.memory = "CPU"
        return
    if observed.gpus is None:
        cs.memory = f"unknown: {observed.gpu_source or 'GPU facts not gathered'}"
        if auto:
            cs.memory += f"; auto -> {cs.gpu_memory_utilization} (provision's default for this role)"
        return
    if not observed.gpus:
        if _needs_gpu(c):
            why = f"{c.engine} needs one" if c.engine.lower() in GPU_ONLY_ENGINES else "n_gpu/gpu_idx ask for one"
            _skip(cs, "no_gpu", f"no GPU: {why} ({observed.gpu_source or 'none found'})", soft=False)
        else:
            cs.memory = "CPU (no GPU found: n_gpu auto runs it on the CPU)"
        return
    placed, problem = gpus.place(c)
    if problem:
        _skip(cs, "no_gpu", problem, soft=False)
        return
    first = min(placed, key=lambda g: g.free_bytes)
    count = len(placed)
    cs.gpu_idx = [g.index for g in placed] if count > 1 else placed[0].index
    cs.placed_by_plan = c.gpu_idx is None and len(gpus.all) > 1 and c.replica == 1
    if cs.placed_by_plan and c.worker_ip is None and len({g.worker for g in gpus.all}) > 1:
        cs.worker_ip = first.worker
    where = _where(first, count)
    weights = cs.weight_bytes
    fit = _Fit(c.uid, cs, placed, None, auto)
    if c.is_vllm:
        min_need = int(weights * VLLM_MIN_OVERHEAD / count) if weights else 0
        if auto:
            share = _auto_share(first.free_bytes, first.total_bytes)
            fit.min_need = min_need
            if share <= 0 or share * first.total_bytes < min_need:
                _skip(cs, "oom", _auto_too_small(share, first, min_need, where), soft)
                if soft:  # what the relaunch frees is not known: provision's default until then
                    share = cs.gpu_memory_utilization
                    cs.memory += f"; auto -> {share} (provision's default for this role)"
            else:
                cs.memory = _auto_text(share, first, where)
            cs.gpu_memory_utilization = share
            fit.need = int(share * first.total_bytes)
        else:
            share = cs.gpu_memory_utilization
            fit.need = int(share * first.total_bytes)
            if fit.need > first.free_bytes:
                reserves = f"vLLM reserves gpu_memory_utilization {share} x {_gib_total(first.total_bytes)}"
                _skip(cs, "oom", f"needs ~{_gib(fit.need)}, {_gib(first.free_bytes)} free on {where} ({reserves})", soft)
            else:
                cs.memory = f"fits: needs ~{_gib(fit.need)} ({share} x {_gib_total(first.total_bytes)}), " \
                            f"{_gib(first.free_bytes)} free on {where}"
                if fit.need < min_need:  # not a skip: vLLM loads float32 weights as float16, half the listing
                    cs.memory += f"; the weights (~{_gib(min_need)} with some KV cache) may not fit in that share"
    elif weights is None:
        cs.memory = f"unknown: {_weights_unknown(c, observed)}; {_gib(first.free_bytes)} free on {where}"
    else:
        fit.need = int(weights * TORCH_OVERHEAD / count)
        free = f"{_gib(first.free_bytes)} free on {where}"
        short = f"needs ~{_gib(fit.need)}, {free} (weights {_gib(weights)} x {TORCH_OVERHEAD})"
        if fit.need > first.free_bytes and _offloads(c):
            fit.need = first.free_bytes
            cs.memory = f"partly on the CPU: {short}; Xinference loads Transformers LLMs with device_map=auto, " \
                        "which offloads what does not fit to CPU memory (slow)"
        elif fit.need > first.free_bytes:
            _skip(cs, "oom", short, soft)
        else:
            cs.memory = f"fits: needs ~{_gib(fit.need)} (weights x {TORCH_OVERHEAD}), {free}"
    gpus.fits[id(cs)] = fit


def _skip(cs: CandidateStep, kind: str, reason: str, soft: bool) -> None:
    if soft and kind == "oom":  # the memory it counts is freed before the launch
        cs.memory = f"may not fit ({reason}); {TRIED_ANYWAY}"
        return
    cs.memory = reason
    if cs.skip_kind is None:  # an engine verdict came first
        cs.skip_kind, cs.skip_reason = kind, reason


def _auto_share(free: int, total: int) -> float:
    """The largest share s (0.01 steps) with s x total <= free - margin."""
    room = free - _margin(total)
    return 0.0 if room <= 0 or total <= 0 else min(1.0, math.floor(room / total * 100) / 100)


def _auto_text(share: float, gpu: Gpu, where: str, note: str = "") -> str:
    return f"auto -> {share:.2f} ({_gib(share * gpu.total_bytes)} of {_gib_total(gpu.total_bytes)}; " \
           f"{_gib(gpu.free_bytes)} free on {where}{note})"


def _margin(total: int) -> int:
    return max(AUTO_MARGIN_BYTES, int(AUTO_MARGIN_SHARE * total))


def _auto_too_small(share: float, gpu: Gpu, min_need: int, where: str, note: str = "") -> str:
    if share <= 0:
        others = " and the other models' shares" if note else ""
        return f"auto: no room: {_gib(gpu.free_bytes)} free on {where}{note}, less a safety margin of " \
               f"{_gib(_margin(gpu.total_bytes))}{others}"
    return f"auto -> at most {share:.2f} ({_gib(share * gpu.total_bytes)} of {_gib_total(gpu.total_bytes)}; " \
           f"{_gib(gpu.free_bytes)} free on {where}{note}), less than the ~{_gib(min_need)} the weights need"


def _where(gpu: Gpu, count: int) -> str:
    text = gpu.label if count == 1 else f"{gpu.label} (the fullest of {count})"
    return text + (" (estimated: the worker reports sums only)" if gpu.estimated else "")


class _Gpus:
    """The GPUs while planning: where each model's first candidate goes and what it takes there."""

    def __init__(self, gpus: list[Gpu] | None):
        self.all = list(gpus or [])
        self.fits: dict[int, _Fit] = {}  # id(CandidateStep) -> its fit
        self.chosen: list[_Fit] = []  # each model's first candidate on a GPU, in manifest order

    def taken(self, gpu: Gpu) -> int:
        """What the first candidates placed so far take on `gpu` (an `auto` share: its least)."""
        return sum((f.min_need if f.auto else f.need or 0) for f in self.chosen if gpu in f.placed)

    def place(self, c: Candidate) -> tuple[list[Gpu], str | None]:
        """The GPUs the candidate goes on, or why there are none."""
        pool = [g for g in self.all if c.worker_ip is None or _same_worker(g.worker, c.worker_ip)]
        if not pool:
            workers = ", ".join(sorted({str(g.worker) for g in self.all}))
            return [], f"no GPU on worker {c.worker_ip} (GPUs found on: {workers})"
        if c.gpu_idx is not None:
            wanted = c.gpu_idx if isinstance(c.gpu_idx, list) else [c.gpu_idx]
            by_worker: dict[str | None, list[Gpu]] = {}
            for g in pool:
                by_worker.setdefault(g.worker, []).append(g)
            for group in sorted(by_worker.values(), key=lambda gs: -sum(g.free_bytes for g in gs)):
                found = [next((g for g in group if g.index == i), None) for i in wanted]
                if all(found):
                    return found, None
            have = ", ".join(str(g.index) for g in pool)
            return [], f"gpu_idx {c.gpu_idx}: no such GPU (found: {have})"
        count = _gpu_count(c)
        best: list[Gpu] = []
        for worker in dict.fromkeys(g.worker for g in pool):  # the GPUs of one replica share a worker
            group = sorted((g for g in pool if g.worker == worker),
                           key=lambda g: (-(g.free_bytes - self.taken(g)), -g.free_bytes, g.index))[:count]
            if len(group) == count and (not best or self.room(group) > self.room(best)):
                best = group
        if not best:
            return [], f"n_gpu {count}: no worker has {count} GPUs ({len(pool)} found)"
        return sorted(best, key=lambda g: g.index), None

    def room(self, group: list[Gpu]) -> int:
        return min(g.free_bytes - self.taken(g) for g in group)

    def share_auto(self, plan: Plan) -> None:
        """`auto` first candidates placed together split what the others leave (less the margin), in steps of
        0.01: each gets the least share that holds its weights, the rest goes by weight. When even the least
        shares do not fit, the models lower in the manifest give way to their next candidate."""
        for gpu in self.all:
            autos = [f for f in self.chosen if f.auto and gpu in f.placed and not f.cs.skip_reason]
            others = [f for f in self.chosen if not f.auto and gpu in f.placed]
            if not autos or (len(autos) == 1 and not others):
                continue  # none, or one with the card to itself: the share computed alone stands
            room = gpu.free_bytes - _margin(gpu.total_bytes) - sum(f.need or 0 for f in others)
            units = math.floor(room / gpu.total_bytes * 100)  # in steps of 0.01
            least = {id(f): max(1, math.ceil(f.min_need / gpu.total_bytes * 100)) for f in autos}
            note = f", shared with {', '.join(f.uid for f in self.chosen if gpu in f.placed)}"
            while autos and sum(least[id(f)] for f in autos) > units:
                f = autos.pop()  # the lowest in the manifest gives way
                left = max(0, units - sum(least[id(g)] for g in autos)) / 100
                reason = _auto_too_small(left, gpu, f.min_need, gpu.label, note)
                if (f.step is not None and f.step.action == RELAUNCH) or plan.server == "restart":
                    f.cs.memory = f"may not fit ({reason}); {TRIED_ANYWAY}"
                    units -= least[id(f)]
                    self.set_share(f, least[id(f)] / 100, gpu, None)
                else:
                    self.drop(plan, f, reason)
            spare = units - sum(least[id(f)] for f in autos)
            weights = {id(f): f.min_need or 1 for f in autos}
            for f in autos:
                extra = spare * weights[id(f)] // sum(weights.values())
                self.set_share(f, (least[id(f)] + extra) / 100, gpu, note)

    @staticmethod
    def set_share(f: _Fit, share: float, gpu: Gpu, note: str | None) -> None:
        if share < (f.cs.gpu_memory_utilization or 1):
            f.cs.gpu_memory_utilization = share
            f.need = f.cs.need_bytes = int(share * gpu.total_bytes)
            if note is not None:
                f.cs.memory = _auto_text(share, gpu, gpu.label, note)

    def drop(self, plan: Plan, fit: _Fit, reason: str) -> None:
        """A first candidate skipped after all: the next one in its chain goes first (placed as it was)."""
        cs = fit.cs
        cs.memory, cs.skip_kind, cs.skip_reason, cs.first = reason, "oom", reason, False
        self.chosen.remove(fit)
        after = fit.step.candidates[fit.step.candidates.index(cs) + 1:]
        following = next((c for c in after if c.skip_reason is None), None)
        if following is None:
            plan.warnings.append(f"{fit.uid}: every candidate is skipped; `up` will report it failed")
            return
        following.first = True
        following.need_bytes = self.fits[id(following)].need if id(following) in self.fits else None

    def check_colocation(self, plan: Plan) -> None:
        """Models whose first candidates together need more than a GPU has free: a warning, and where to
        put them instead."""
        for gpu in self.all:
            here = [f for f in self.chosen if gpu in f.placed and f.need]
            total = sum(f.need for f in here)
            if len(here) < 2 or total <= gpu.free_bytes:
                continue
            parts = " + ".join(f"{f.uid} {_gib(f.need)}" for f in here)
            moves, moved_in = [], {g: 0 for g in self.all}
            for f in sorted(here, key=lambda f: -f.need):
                if total <= gpu.free_bytes:
                    break
                left = {g: g.free_bytes - self.taken(g) - moved_in[g] for g in self.all
                        if g != gpu and g.worker == gpu.worker}
                targets = [g for g, room in left.items() if room >= f.need]
                if targets and len(f.placed) == 1:
                    target = max(targets, key=lambda g: left[g])
                    moves.append(f"gpu_idx: {target.index} on {f.uid} ({_gib(left[target])} free on {target.label})")
                    moved_in[target] += f.need
                    total -= f.need
            advice = "set " + ", ".join(moves) if moves else \
                "no other GPU has room: lower gpu_memory_utilization, or let a model fall back to a smaller candidate"
            plan.warnings.append(f"{gpu.label}: {parts} = {_gib(sum(f.need for f in here))} together, "
                                 f"{_gib(gpu.free_bytes)} free; {advice}")


def _same_worker(address: str | None, worker_ip: str) -> bool:
    if address is None:
        return True
    return address == worker_ip or address.split(":")[0] == worker_ip.split(":")[0]


def _choose_first(plan: Plan, step: ModelStep, gpus: _Gpus) -> None:
    for cs in step.candidates:
        if cs.skip_reason is None:
            cs.first = True
            fit = gpus.fits.get(id(cs))
            if fit is not None:
                cs.need_bytes, fit.step = fit.need, step
                gpus.chosen.append(fit)
            return
    plan.warnings.append(f"{step.uid}: every candidate is skipped; `up` will report it failed")


# --------------------------------------------------------------------------------------------------
# Disk, GPUs: one line each


def _disk(plan: Plan, manifest: Manifest, observed: Observed) -> str:
    where = manifest.models_dir
    need, unknown, seen = 0, [], set()
    for step in plan.steps:
        first = next((c for c in step.candidates if c.first), None)
        if first is None or first.folder is None or first.folder in seen:
            continue
        seen.add(first.folder)
        if first.bytes_to_fetch is None and not first.weights.startswith(("present", "missing", "no local")):
            unknown.append(step.uid)
        need += first.bytes_to_fetch or 0
    free = f"{human_bytes(observed.disk_free)} free" if observed.disk_free is not None else "free space unknown"
    fetch = f"{human_bytes(need)} to fetch" if need or not unknown else "size to fetch unknown"
    text = f"{fetch} into {where}, {free}"
    if unknown and need:
        text += f" (plus {', '.join(unknown)}: size unknown)"
    elif unknown:
        text += f" ({', '.join(unknown)}: not listed)"
    if observed.disk_free is not None and need > observed.disk_free:
        plan.warnings.append(f"not enough disk space in {where}: the downloads need {human_bytes(need)}, "
                             f"{human_bytes(observed.disk_free)} free")
    return text


def _gpus_line(observed: Observed) -> str:
    source = f" ({observed.gpu_source})" if observed.gpu_source else ""
    if observed.gpus is None:
        return f"unknown{source}"
    if not observed.gpus:
        return f"none{source}: GPU candidates are skipped"
    return "; ".join(f"{g.label} {g.name}: {_gib(g.free_bytes)} free of {_gib_total(g.total_bytes)}"
                     for g in observed.gpus) + source


def _gib(count: float | None) -> str:
    return "?" if count is None else f"{count / GiB:.1f} GiB"


def _gib_total(count: float) -> str:
    value = count / GiB
    return f"{value:.0f} GiB" if abs(value - round(value)) < 0.05 else f"{value:.1f} GiB"


# --------------------------------------------------------------------------------------------------
# What `up` tries


@dataclass
class Launchable:
    """The candidates `up` tries, in chain order, and the ones the plan skipped as attempt records."""

    candidates: list[Candidate]
    skipped: list[AttemptRecord]
    total: int  # the chain's length

    def attempts(self, tried: list[AttemptRecord]) -> list[AttemptRecord]:
        """The skipped and the tried attempts together, in chain order."""
        order = {label: i for i, label in enumerate(["primary"] + [f"fallback {n}" for n in range(1, self.total)])}
        return sorted(self.skipped + list(tried), key=lambda a: order.get(a.candidate, self.total))


def launchable(step: ModelStep, candidates: list[Candidate]) -> Launchable:
    """What `up` tries for a model: `auto` resolved, the plan's placement sent, skipped candidates left out.

    Pure: reads only the step the plan made from the same candidates.
    """
    tried, skipped = [], []
    for candidate, cs in zip(candidates, step.candidates):
        if cs.skip_reason:
            skipped.append(AttemptRecord(candidate=candidate.label, name=candidate.name, engine=candidate.engine,
                                         outcome="skipped", reason=cs.skip_reason, kind=cs.skip_kind or ""))
            continue
        changes: dict[str, Any] = {}
        if candidate.is_vllm and candidate.gpu_memory_utilization == "auto":
            changes["gpu_memory_utilization"] = cs.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION.get(
                candidate.model_type, 0.75)
        if cs.placed_by_plan and cs.gpu_idx is not None:
            changes["gpu_idx"] = cs.gpu_idx
            if cs.worker_ip:
                changes["worker_ip"] = cs.worker_ip
        tried.append(replace(candidate, **changes) if changes else candidate)
    return Launchable(tried, skipped, len(candidates))
