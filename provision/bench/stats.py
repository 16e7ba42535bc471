"""From samples to figures: percentiles, one level's statistics, and the sentence that says how much
concurrency an endpoint holds before its p99 latency doubles. Pure: no I/O."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable


@dataclass
class Sample:
    """One request: when it started (seconds into its level), how long it took, and how it ended."""

    start: float
    latency: float
    ok: bool
    error: str = ""
    ttft: float | None = None  # chat: seconds to the first streamed token
    tokens: int | None = None  # chat: output tokens (usage, else the streamed chunks that carried text)
    tpot: float | None = None  # chat: seconds per output token after the first


@dataclass
class Percentiles:
    p50: float
    p90: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Percentiles | None:
        ordered = sorted(v for v in values if v is not None and math.isfinite(v))
        if not ordered:
            return None
        return cls(percentile(ordered, 50), percentile(ordered, 90), percentile(ordered, 99),
                   sum(ordered) / len(ordered), ordered[-1])


def percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile of sorted values, interpolated between the closest ranks (numpy's "linear"):
    monotonic in q, so p50 <= p90 <= p99 always."""
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class LevelStats:
    concurrency: int
    requests: int  # that finished, ok or not
    errors: int
    seconds: float  # from the level's first request to its last answer
    rps: float  # successful requests per second
    latency: Percentiles | None  # of the successful requests, seconds
    error_samples: list[str] = field(default_factory=list)  # the first distinct errors
    ttft: Percentiles | None = None  # chat
    tpot: Percentiles | None = None  # chat
    tokens: int | None = None  # chat: output tokens of the level
    tokens_per_s: float | None = None  # chat: output tokens per second, all streams together
    stopped_by: str = ""  # duration | max_requests

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> LevelStats:
        data = dict(data)
        for key in ("latency", "ttft", "tpot"):
            data[key] = Percentiles(**data[key]) if data.get(key) else None
        return cls(**data)


def summarize(concurrency: int, samples: list[Sample], seconds: float, *, chat: bool = False,
              stopped_by: str = "") -> LevelStats:
    good = [s for s in samples if s.ok]
    errors = [s for s in samples if not s.ok]
    distinct = list(dict.fromkeys(s.error for s in errors))[:3]
    wall = max(seconds, 1e-9)
    stats = LevelStats(concurrency, len(samples), len(errors), seconds, len(good) / wall,
                       Percentiles.of(s.latency for s in good), distinct, stopped_by=stopped_by)
    if chat:
        stats.ttft = Percentiles.of(s.ttft for s in good if s.ttft is not None)
        stats.tpot = Percentiles.of(s.tpot for s in good if s.tpot is not None)
        stats.tokens = sum(s.tokens or 0 for s in good)
        stats.tokens_per_s = stats.tokens / wall
    return stats


def holds_sentence(name: str, levels: list[LevelStats]) -> str:
    """One plain sentence: the concurrency the endpoint holds before its p99 doubles (against concurrency 1,
    or the lowest level measured), or before it starts failing requests."""
    measured = sorted((lv for lv in levels if lv.requests), key=lambda lv: lv.concurrency)
    base = next((lv for lv in measured if lv.latency is not None and not lv.errors), None)
    if base is None:
        return f"{name}: no level answered every request, so it holds no concurrency."
    against = "" if base.concurrency == 1 else f" (measured against concurrency {base.concurrency}, the lowest that worked)"
    held, broke, why = base, None, ""
    for level in measured:
        if level.concurrency <= base.concurrency:
            continue
        if level.errors:
            broke, why = level, f"{level.errors} of {level.requests} requests failed at {level.concurrency}"
            break
        if level.latency is None or level.latency.p99 > 2 * base.latency.p99:
            broke = level
            why = (f"p99 doubles at {level.concurrency} ({seconds_text(base.latency.p99)} at {base.concurrency}, "
                   f"{seconds_text(level.latency.p99)} at {level.concurrency})")
            break
        held = level
    if broke is None:
        top = held
        if top is base:
            return f"{name} was measured at concurrency {base.concurrency} only (p99 {seconds_text(base.latency.p99)}){against}."
        return (f"{name} holds concurrency {top.concurrency}, the highest measured, without p99 doubling "
                f"({seconds_text(base.latency.p99)} at {base.concurrency}, {seconds_text(top.latency.p99)} at {top.concurrency}){against}.")
    if held is base:
        return f"{name} holds concurrency {base.concurrency} only: {why}{against}."
    return f"{name} holds concurrency {held.concurrency} before {why}{against}."


def seconds_text(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"
