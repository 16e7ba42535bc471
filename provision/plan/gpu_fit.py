"""GPU memory: where each model's first candidate goes and whether it fits there.

vLLM reserves gpu_memory_utilization x the GPU's TOTAL memory and refuses to start when less is free;
other engines on a GPU need about the weights x TORCH_OVERHEAD (a Transformers LLM that does not fit is
not skipped: Xinference offloads the rest to CPU memory). `auto` picks the largest share that leaves
max(1 GiB, 2% of the card) free, shared between the models placed on the same GPU.

A candidate without gpu_idx is placed on the GPU with the most memory left after the models above it;
with several GPUs that placement is sent as gpu_idx, because Xinference itself places by model count,
not by memory. Memory is never a skip reason when the plan relaunches the model or restarts the
server: what those stop frees memory the facts still count as used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..catalog import Catalog, memory
from ..catalog.memory import Estimate
from ..engines import DEFAULT_GPU_MEMORY_UTILIZATION, is_gpu_only
from ..gpu import GiB, Gpu
from ..manifest import Candidate
from ..placement import same_worker
from .model import RELAUNCH, CandidateStep, ModelStep, Plan
from .text import TRIED_ANYWAY, auto_text, auto_too_small, gib, gib_total, where_text
from .weights import weights_unknown

if TYPE_CHECKING:
    from ..observe import Observed

TORCH_OVERHEAD = 1.2  # GPU memory of a torch engine (transformers, sentence_transformers, ...) per weight byte
VLLM_MIN_OVERHEAD = 1.1  # a vLLM share must hold the weights and some KV cache
AUTO_MARGIN_BYTES = 1 * GiB  # `auto` leaves max(1 GiB, 2% of the card) free for others' growth
AUTO_MARGIN_SHARE = 0.02


def _needs_gpu(c: Candidate) -> bool:
    return is_gpu_only(c.engine) or (isinstance(c.n_gpu, int) and c.n_gpu > 0) or c.gpu_idx is not None


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


def fit_memory(c: Candidate, cs: CandidateStep, observed: Observed, gpus: GpuLedger, soft: bool) -> None:
    auto = c.is_vllm and c.gpu_memory_utilization == "auto"
    if auto:  # until the facts say better: provision's default for the role
        cs.gpu_memory_utilization = DEFAULT_GPU_MEMORY_UTILIZATION.get(c.model_type, 0.75)
    elif c.is_vllm:
        cs.gpu_memory_utilization = c.gpu_share()[0]
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
            why = f"{c.engine} needs one" if is_gpu_only(c.engine) else "n_gpu/gpu_idx ask for one"
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
    where = where_text(first, count)
    weights = cs.weight_bytes
    fit = _Fit(c.uid, cs, placed, None, auto)
    if c.is_vllm:
        min_need = int(weights * VLLM_MIN_OVERHEAD / count) if weights else 0
        estimate = gpus.estimate(c, weights)
        if auto and estimate is not None:
            _auto_from_estimate(c, cs, fit, estimate, first, count, where, soft)
        elif auto:
            share = _auto_share(first.free_bytes, first.total_bytes)
            fit.min_need = min_need
            if share <= 0 or share * first.total_bytes < min_need:
                _skip(cs, "oom", auto_too_small(share, first, min_need, where, _margin(first.total_bytes)), soft)
                if soft:  # what the relaunch frees is not known: provision's default until then
                    share = cs.gpu_memory_utilization
                    cs.memory += f"; auto -> {share} (provision's default for this role)"
            else:
                cs.memory = auto_text(share, first, where)
            cs.gpu_memory_utilization = share
            fit.need = int(share * first.total_bytes)
        else:
            share = cs.gpu_memory_utilization
            fit.need = int(share * first.total_bytes)
            if fit.need > first.free_bytes:
                reserves = f"vLLM reserves gpu_memory_utilization {share} x {gib_total(first.total_bytes)}"
                _skip(cs, "oom", f"needs ~{gib(fit.need)}, {gib(first.free_bytes)} free on {where} ({reserves})", soft)
            else:
                cs.memory = f"fits: needs ~{gib(fit.need)} ({share} x {gib_total(first.total_bytes)}), " \
                            f"{gib(first.free_bytes)} free on {where}"
                if estimate is not None and estimate.need / count > fit.need:  # an estimate: no reason to skip
                    cs.memory += (f"; but it needs ~{gib(estimate.need / count)} ({estimate.arithmetic()}): vLLM may "
                                  f"fail with \"No available memory for the cache blocks\"; "
                                  f"{_context_advice(estimate, lambda n: n <= fit.need * count)}")
                elif fit.need < min_need:  # not a skip: vLLM loads float32 weights as float16, half the listing
                    cs.memory += f"; the weights (~{gib(min_need)} with some KV cache) may not fit in that share"
    else:
        said = ""
        if weights is None:  # nothing listed or on disk yet: the catalog spec's size says what the weights are
            estimate = gpus.estimate(c, None)
            if estimate is not None:
                weights, said = estimate.weights, f" from the catalog ({estimate.weights_said})"
        if weights is None:
            cs.memory = f"unknown: {weights_unknown(c, observed)}; {gib(first.free_bytes)} free on {where}"
            gpus.fits[id(cs)] = fit
            return
        fit.need = int(weights * TORCH_OVERHEAD / count)
        free = f"{gib(first.free_bytes)} free on {where}"
        short = f"needs ~{gib(fit.need)}, {free} (weights {gib(weights)}{said} x {TORCH_OVERHEAD})"
        if fit.need > first.free_bytes and _offloads(c):
            fit.need = first.free_bytes
            cs.memory = f"partly on the CPU: {short}; Xinference loads Transformers LLMs with device_map=auto, " \
                        "which offloads what does not fit to CPU memory (slow)"
        elif fit.need > first.free_bytes:
            _skip(cs, "oom", short, soft)
        else:
            cs.memory = f"fits: needs ~{gib(fit.need)} (weights {gib(weights)}{said} x {TORCH_OVERHEAD}), {free}"
    gpus.fits[id(cs)] = fit


def _auto_from_estimate(c: Candidate, cs: CandidateStep, fit: _Fit, estimate: Estimate, gpu: Gpu, count: int,
                        where: str, soft: bool) -> None:
    """`auto` with catalog facts: the smallest share that holds weights + KV cache + the engine, with headroom;
    when that does not fit the free memory, the largest max_model_len that would (by the same test)."""
    room = gpu.free_bytes - _margin(gpu.total_bytes)

    def fits(total_need: int) -> bool:
        return memory.auto_share(total_need // count, gpu.total_bytes) * gpu.total_bytes <= room

    need = int(estimate.need * memory.AUTO_HEADROOM / count)
    share = memory.auto_share(estimate.need // count, gpu.total_bytes)
    said = f"{estimate.arithmetic()}, x {memory.AUTO_HEADROOM} headroom"
    if not fits(estimate.need):
        _skip(cs, "oom", f"auto: needs ~{gib(need)} ({said}), {gib(gpu.free_bytes)} free on {where} less a margin of "
              f"{gib(_margin(gpu.total_bytes))}; {_context_advice(estimate, fits)}", soft)
        if not soft:
            share = cs.gpu_memory_utilization or share
    else:
        cs.memory = (f"auto -> {share:.2f} ({gib(share * gpu.total_bytes)} of {gib_total(gpu.total_bytes)}: {said}; "
                     f"{gib(gpu.free_bytes)} free on {where})")
    cs.gpu_memory_utilization = share
    fit.need, fit.min_need, fit.auto = int(share * gpu.total_bytes), need, False


def _context_advice(estimate: Estimate, fits) -> str:
    largest = estimate.largest_context(fits)
    if largest:
        return f"the largest max_model_len that fits is {largest} (options: {{max_model_len: {largest}}})"
    if estimate.kv is not None:
        return "not even the weights fit: free the card, or pick a smaller model or quantization"
    return "free the card, or pick a smaller model or quantization"


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


def _margin(total: int) -> int:
    return max(AUTO_MARGIN_BYTES, int(AUTO_MARGIN_SHARE * total))


class GpuLedger:
    """The GPUs while planning: where each model's first candidate goes and what it takes there."""

    def __init__(self, gpus: list[Gpu] | None, frees_memory: bool = False, catalog: Catalog | None = None,
                 hub: str | None = None):
        self.all = list(gpus or [])
        self.frees_memory = frees_memory  # a restart or a termination frees memory before any launch
        self.catalog, self.hub = catalog, hub  # the weights and KV cache estimates come from it
        self.fits: dict[int, _Fit] = {}  # id(CandidateStep) -> its fit
        self.chosen: list[_Fit] = []  # each model's first candidate on a GPU, in manifest order

    def estimate(self, c: Candidate, listed_weights: int | None) -> Estimate | None:
        """What a candidate needs (the KV cache: vLLM), from the catalog (None: the catalog does not know the model).
        The spec is the one the candidate's source names, else the one its size, format and quantization pick."""
        family = self.catalog.family(c.model_type, c.name) if self.catalog is not None else None
        if family is None:
            return None
        choice = self.catalog.choose(family, size=c.size_in_billions, format=c.format, quantization=c.quantization,
                                     hub=self.hub, source=c.source)
        return memory.estimate(family, choice.spec, quantization=c.quantization, options=c.options,
                               listed_weights=listed_weights, hub=self.hub)

    def taken(self, gpu: Gpu) -> int:
        """What the first candidates placed so far take on `gpu` (an `auto` share: its least)."""
        return sum((f.min_need if f.auto else f.need or 0) for f in self.chosen if gpu in f.placed)

    def place(self, c: Candidate) -> tuple[list[Gpu], str | None]:
        """The GPUs the candidate goes on, or why there are none."""
        pool = [g for g in self.all if c.worker_ip is None or same_worker(g.worker, c.worker_ip)]
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
                reason = auto_too_small(left, gpu, f.min_need, gpu.label, _margin(gpu.total_bytes), note)
                if (f.step is not None and f.step.action == RELAUNCH) or self.frees_memory:
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
                f.cs.memory = auto_text(share, gpu, gpu.label, note)

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
            parts = " + ".join(f"{f.uid} {gib(f.need)}" for f in here)
            moves, moved_in = [], {g: 0 for g in self.all}
            for f in sorted(here, key=lambda f: -f.need):
                if total <= gpu.free_bytes:
                    break
                left = {g: g.free_bytes - self.taken(g) - moved_in[g] for g in self.all
                        if g != gpu and g.worker == gpu.worker}
                targets = [g for g, room in left.items() if room >= f.need]
                if targets and len(f.placed) == 1:
                    target = max(targets, key=lambda g: left[g])
                    moves.append(f"gpu_idx: {target.index} on {f.uid} ({gib(left[target])} free on {target.label})")
                    moved_in[target] += f.need
                    total -= f.need
            advice = "set " + ", ".join(moves) if moves else \
                "no other GPU has room: lower gpu_memory_utilization, or let a model fall back to a smaller candidate"
            plan.warnings.append(f"{gpu.label}: {parts} = {gib(sum(f.need for f in here))} together, "
                                 f"{gib(gpu.free_bytes)} free; {advice}")

    def choose_first(self, plan: Plan, step: ModelStep) -> None:
        """The first candidate that is not skipped goes first; its memory counts from now on."""
        for cs in step.candidates:
            if cs.skip_reason is None:
                cs.first = True
                fit = self.fits.get(id(cs))
                if fit is not None:
                    cs.need_bytes, fit.step = fit.need, step
                    self.chosen.append(fit)
                return
        plan.warnings.append(f"{step.uid}: every candidate is skipped; `up` will report it failed")
