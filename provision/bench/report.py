"""A bench run as data (BenchReport, JSON in and out), as text (a table per endpoint, then one sentence
each), and against an earlier run (compare: what got slower)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..report import table
from .stats import LevelStats, holds_sentence, seconds_text

REPORT_VERSION = 1
SLOWER = 0.10  # a figure more than 10% worse than before is a regression


@dataclass
class EndpointReport:
    name: str  # the role, or role:uid where a stack has several models of one role
    role: str
    uid: str
    workload: dict[str, Any]
    levels: list[LevelStats] = field(default_factory=list)
    error: str | None = None  # the warm-up request failed: nothing was measured

    @property
    def sentence(self) -> str:
        if self.error:
            return f"{self.name}: not measured, the first request failed ({self.error})."
        return holds_sentence(self.name, self.levels)

    def level(self, concurrency: int) -> LevelStats | None:
        return next((lv for lv in self.levels if lv.concurrency == concurrency), None)

    def to_json(self) -> dict:
        return {"name": self.name, "role": self.role, "uid": self.uid, "workload": self.workload,
                "levels": [lv.to_json() for lv in self.levels], "error": self.error, "sentence": self.sentence}

    @classmethod
    def from_json(cls, data: dict) -> EndpointReport:
        return cls(data["name"], data["role"], data["uid"], data.get("workload") or {},
                   [LevelStats.from_json(lv) for lv in data.get("levels") or []], data.get("error"))


@dataclass
class BenchReport:
    stack: str
    url: str
    started_at: float
    duration: float  # seconds per level
    max_requests: int  # per level
    concurrency: list[int]
    endpoints: list[EndpointReport] = field(default_factory=list)
    seconds: float = 0.0  # the whole run
    version: int = REPORT_VERSION

    def endpoint(self, name: str) -> EndpointReport | None:
        return next((e for e in self.endpoints if e.name == name), None)

    @property
    def exit_code(self) -> int:
        """1 when an endpoint could not be measured or a level had errors."""
        return 1 if any(e.error or any(lv.errors for lv in e.levels) for e in self.endpoints) else 0

    def to_json(self) -> dict:
        return {"version": self.version, "stack": self.stack, "url": self.url, "started_at": self.started_at,
                "duration": self.duration, "max_requests": self.max_requests, "concurrency": self.concurrency,
                "seconds": self.seconds, "endpoints": [e.to_json() for e in self.endpoints]}

    @classmethod
    def from_json(cls, data: Any) -> BenchReport:
        if not isinstance(data, dict) or data.get("version") != REPORT_VERSION or "endpoints" not in data:
            raise UsageError("this is not a report of `provision bench` (version 1)",
                             hint="give the bench.json a `provision bench --out DIR` wrote")
        try:
            return cls(str(data.get("stack", "")), str(data.get("url", "")), float(data.get("started_at") or 0),
                       float(data.get("duration") or 0), int(data.get("max_requests") or 0),
                       [int(c) for c in data.get("concurrency") or []],
                       [EndpointReport.from_json(e) for e in data["endpoints"]], float(data.get("seconds") or 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"the bench report is damaged: {type(exc).__name__}: {exc}") from None


def load_report(source: BenchReport | dict | str | os.PathLike) -> BenchReport:
    """A report from itself, its JSON document, or the path of its file."""
    if isinstance(source, BenchReport):
        return source
    if isinstance(source, dict):
        return BenchReport.from_json(source)
    try:
        return BenchReport.from_json(json.loads(Path(source).read_text(encoding="utf-8")))
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UsageError(f"{source} is not JSON: {exc}") from exc


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def text_lines(report: BenchReport, *, sentences: bool = True) -> list[str]:
    """A table per endpoint (latencies in ms), then (unless told not to) one sentence per endpoint."""
    lines = [f"Bench of {report.stack} at {report.url}: {report.duration:g} s per level (at most {report.max_requests} "
             f"requests), concurrency {', '.join(map(str, report.concurrency))}; {report.seconds:.0f} s in all"]
    for e in report.endpoints:
        lines += ["", f"{e.name} ({e.uid}): " + ", ".join(f"{k} {v}" for k, v in e.workload.items())]
        if e.error:
            lines.append(f"  not measured: {e.error}")
            continue
        chat = e.role == "chat"
        headers = ["conc", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms"]
        headers += ["ttft p50", "ttft p99", "tpot ms", "tok/s"] if chat else []
        rows = []
        for lv in e.levels:
            lat = lv.latency
            row = [lv.concurrency, lv.requests, lv.errors, _num(lv.rps, 2), _ms(lat and lat.p50), _ms(lat and lat.p90),
                   _ms(lat and lat.p99)]
            if chat:
                row += [_ms(lv.ttft and lv.ttft.p50), _ms(lv.ttft and lv.ttft.p99), _ms(lv.tpot and lv.tpot.p50),
                        _num(lv.tokens_per_s)]
            rows.append(row)
        lines.append(table(headers, rows))
        for lv in e.levels:
            lines += [f"  at {lv.concurrency}: {message}" for message in lv.error_samples]
    if sentences:
        lines += [""] + [e.sentence for e in report.endpoints]
    return lines


# -- compare ------------------------------------------------------------------------------------------


@dataclass
class Change:
    endpoint: str
    concurrency: int
    metric: str  # p50 | p99 | rps | ttft_p99 | tokens_per_s
    old: float
    new: float
    higher_is_worse: bool

    @property
    def change(self) -> float:
        """The relative change, positive when worse."""
        if self.old == 0:
            return 0.0
        delta = (self.new - self.old) / self.old
        return delta if self.higher_is_worse else -delta

    def worse(self, threshold: float = SLOWER) -> bool:
        return self.change > threshold

    def line(self) -> str:
        show = seconds_text if self.metric in ("p50", "p99", "ttft_p99") else (lambda v: f"{v:.2f}/s")
        return (f"{self.endpoint} at concurrency {self.concurrency}: {self.metric} {show(self.old)} -> {show(self.new)} "
                f"({self.change * 100:+.0f}% worse)")


@dataclass
class Comparison:
    changes: list[Change]
    threshold: float = SLOWER
    missing: list[str] = field(default_factory=list)  # endpoints or levels only one of the runs has

    @property
    def slower(self) -> list[Change]:
        return [c for c in self.changes if c.worse(self.threshold)]

    @property
    def exit_code(self) -> int:
        return 1 if self.slower else 0

    def lines(self) -> list[str]:
        if not self.changes:
            return ["nothing to compare: the runs share no endpoint and concurrency"] + self.missing
        head = (f"{len(self.slower)} figure{'s' if len(self.slower) != 1 else ''} worse by more than "
                f"{self.threshold * 100:.0f}%" if self.slower else f"nothing is worse by more than {self.threshold * 100:.0f}%")
        return [head] + [c.line() for c in self.slower] + [f"  not compared: {m}" for m in self.missing]

    def to_json(self) -> dict:
        return {"threshold": self.threshold, "slower": [vars(c) | {"change": c.change} for c in self.slower],
                "changes": [vars(c) | {"change": c.change, "worse": c.worse(self.threshold)} for c in self.changes],
                "missing": self.missing}


_METRICS = [
    ("p50", lambda lv: lv.latency and lv.latency.p50, True),
    ("p99", lambda lv: lv.latency and lv.latency.p99, True),
    ("rps", lambda lv: lv.rps if lv.latency else None, False),
    ("ttft_p99", lambda lv: lv.ttft and lv.ttft.p99, True),
    ("tokens_per_s", lambda lv: lv.tokens_per_s if lv.ttft else None, False),
]


def compare(old_report_json: BenchReport | dict | str | os.PathLike, new: BenchReport | dict | str | os.PathLike,
            threshold: float = SLOWER) -> Comparison:
    """Each endpoint and concurrency both runs measured, figure by figure; `slower` holds those worse by
    more than `threshold` (latency up, throughput down)."""
    old_report, new_report = load_report(old_report_json), load_report(new)
    changes, missing = [], []
    for endpoint in new_report.endpoints:
        before = old_report.endpoint(endpoint.name)
        if before is None:
            missing.append(f"{endpoint.name} (new)")
            continue
        for level in endpoint.levels:
            earlier = before.level(level.concurrency)
            if earlier is None:
                missing.append(f"{endpoint.name} at concurrency {level.concurrency} (new)")
                continue
            for metric, read, higher_is_worse in _METRICS:
                old_value, new_value = read(earlier), read(level)
                if old_value is not None and new_value is not None:
                    changes.append(Change(endpoint.name, level.concurrency, metric, float(old_value), float(new_value),
                                          higher_is_worse))
    missing += [f"{e.name} (gone)" for e in old_report.endpoints if new_report.endpoint(e.name) is None]
    return Comparison(changes, threshold, missing)
