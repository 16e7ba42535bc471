"""`provision bench`: load the stack's endpoints the way RAGFlow does and say what they hold.

    run(state_dir, duration=..., concurrency=[1, 2, 4]) -> BenchReport
    write_outputs(report, out_dir)                       -> (files written, notes)
    compare(old_report_json, new)                        -> Comparison (what got slower)

The stack comes from the state (the server `up` recorded, its API key, each role's uid); only that
server or a loopback address is ever loaded. Each endpoint is warmed up with one request, then loaded at
each concurrency in turn, for `duration` seconds or `max_requests` requests, whichever comes first.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

from .. import auth, netaddr
from ..errors import StateError, UsageError
from ..state import StateDir
from . import plot
from .report import BenchReport, Comparison, EndpointReport, compare, load_report, text_lines
from .runner import Endpoint, run_level
from .stats import holds_sentence
from .workload import Requests, Workload

__all__ = ["BenchReport", "Comparison", "EndpointReport", "Workload", "compare", "holds_sentence", "load_report",
           "prepare_outputs", "run", "text_lines", "write_outputs"]

ROLES_ORDER = ("embedding", "rerank", "chat")
MAX_REQUESTS = 1000  # per level
REQUEST_TIMEOUT_S = 120.0  # one request; the level waits at most this long for its last answers
MAX_CONCURRENCY = 256


def run(state_dir: StateDir | str | os.PathLike | None, *, duration: float, concurrency: list[int],
        endpoints: Iterable[str] | None = None, max_requests: int = MAX_REQUESTS, base_url: str | None = None,
        workload: Workload | None = None, timeout: float = REQUEST_TIMEOUT_S,
        on_level=None) -> BenchReport:
    """Bench the running models the state records. endpoints: roles or uids (default: every running
    model); base_url: another address of the same server (loopback only); on_level(name, LevelStats)
    is called after each level (progress)."""
    state_dir = state_dir if isinstance(state_dir, StateDir) else StateDir(state_dir)
    levels = _levels(concurrency)
    if duration <= 0 or max_requests < 1:
        raise UsageError("the duration must be above 0 s and max_requests at least 1")
    state = state_dir.require()
    if state.server is None:
        raise StateError(f"no server is recorded in {state_dir.path}: nothing to bench",
                         hint="run `provision up MANIFEST` first")
    url = _allowed_url(base_url, state.server.url)
    targets = _targets(state.models, endpoints)
    key = auth.api_key_for(state_dir, state.server)
    workload = workload or Workload()
    bodies = Requests(workload)
    report = BenchReport(state.name, url, time.time(), duration, max_requests, levels)
    started = time.monotonic()
    several = {role: sum(m.role == role for m in targets) > 1 for role in ROLES_ORDER}
    for model in targets:
        name = f"{model.role}:{model.uid}" if several.get(model.role) else model.role
        endpoint = Endpoint(url, model.role, model.uid, key, bodies, timeout)
        result = EndpointReport(name, model.role, model.uid, workload.describe(model.role))
        report.endpoints.append(result)
        warm = run_level(endpoint, 1, 0, 1)  # one request: loads what loads lazily, and proves the endpoint
        if warm.errors:
            result.error = warm.error_samples[0] if warm.error_samples else "the request failed"
            continue
        for level in levels:
            stats = run_level(endpoint, level, duration, max_requests)
            result.levels.append(stats)
            if on_level is not None:
                on_level(name, stats)
    report.seconds = time.monotonic() - started
    return report


def _levels(concurrency: Iterable[int]) -> list[int]:
    levels = sorted({int(c) for c in concurrency})
    if not levels or levels[0] < 1 or levels[-1] > MAX_CONCURRENCY:
        raise UsageError(f"concurrency levels must be between 1 and {MAX_CONCURRENCY} (got {list(concurrency)})",
                         hint="e.g. --concurrency 1,2,4,8")
    return levels


def _allowed_url(base_url: str | None, server_url: str) -> str:
    """The state's server, or another URL of it on loopback; any other host is refused."""
    if base_url is None:
        return server_url.rstrip("/")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{base_url!r} is not an http:// URL")
    if base_url.rstrip("/") != server_url.rstrip("/") and not netaddr.is_loopback(parts.hostname):
        raise UsageError(f"bench loads only the stack's own server ({server_url}) or a loopback address, "
                         f"not {parts.hostname}", hint="a load test is an attack on a server that is not yours")
    return base_url.rstrip("/")


def _targets(models, endpoints: Iterable[str] | None) -> list:
    running = sorted((m for m in models if m.status == "running" and m.role in ROLES_ORDER),
                     key=lambda m: ROLES_ORDER.index(m.role))
    if endpoints is None:
        chosen = running
    else:
        wanted = list(endpoints)
        unknown = [w for w in wanted if not any(w in (m.role, m.uid) for m in running)]
        if unknown:
            names = ", ".join(sorted({m.role for m in running} | {m.uid for m in running})) or "none"
            raise UsageError(f"no running model is {', '.join(unknown)} (running: {names})",
                             hint="`provision status` shows what runs")
        chosen = [m for m in running if m.role in wanted or m.uid in wanted]
    if not chosen:
        raise StateError("no model is running: nothing to bench", hint="run `provision up MANIFEST` first")
    return chosen


def prepare_outputs(out_dir: str | os.PathLike) -> Path:
    """The --out folder, made now and checked writable, so a bad folder fails before the load, not after it."""
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot make {folder}: {exc.strerror or exc}", hint="give --out a folder you may write") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write into {folder}: permission denied", hint="give --out a folder you may write")
    return folder


def write_outputs(report: BenchReport, out_dir: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """bench.json, and one PNG per endpoint where matplotlib is installed; (files written, notes)."""
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "bench.json"
        path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write into {folder}: {exc.strerror or exc}", hint="give --out a folder you may write") from exc
    if not plot.available():
        return [path], [plot.MISSING]
    return [path, *plot.write_plots(report, folder)], []
