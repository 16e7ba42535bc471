"""The plan's sentences about memory: sizes in GiB, what `auto` chose, why a share is too small."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..gpu import GiB, Gpu

if TYPE_CHECKING:
    from ..observe import Observed

TRIED_ANYWAY = "tried anyway: what the relaunch, restart or termination stops frees memory first"


def gpus_line(observed: Observed) -> str:
    source = f" ({observed.gpu_source})" if observed.gpu_source else ""
    if observed.gpus is None:
        return f"unknown{source}"
    if not observed.gpus:
        return f"none{source}: GPU candidates are skipped"
    return "; ".join(f"{g.label} {g.name}: {gib(g.free_bytes)} free of {gib_total(g.total_bytes)}"
                     for g in observed.gpus) + source


def gib(count: float | None) -> str:
    return "?" if count is None else f"{count / GiB:.1f} GiB"


def gib_total(count: float) -> str:
    value = count / GiB
    return f"{value:.0f} GiB" if abs(value - round(value)) < 0.05 else f"{value:.1f} GiB"


def auto_text(share: float, gpu: Gpu, where: str, note: str = "") -> str:
    return f"auto -> {share:.2f} ({gib(share * gpu.total_bytes)} of {gib_total(gpu.total_bytes)}; " \
           f"{gib(gpu.free_bytes)} free on {where}{note})"


def auto_too_small(share: float, gpu: Gpu, min_need: int, where: str, margin: int, note: str = "") -> str:
    if share <= 0:
        others = " and the other models' shares" if note else ""
        return f"auto: no room: {gib(gpu.free_bytes)} free on {where}{note}, less a safety margin of " \
               f"{gib(margin)}{others}"
    return f"auto -> at most {share:.2f} ({gib(share * gpu.total_bytes)} of {gib_total(gpu.total_bytes)}; " \
           f"{gib(gpu.free_bytes)} free on {where}{note}), less than the ~{gib(min_need)} the weights need"


def where_text(gpu: Gpu, count: int) -> str:
    text = gpu.label if count == 1 else f"{gpu.label} (the fullest of {count})"
    return text + (" (estimated: the worker reports sums only)" if gpu.estimated else "")
