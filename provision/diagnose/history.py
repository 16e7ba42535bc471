"""What already happened: the server's (and workers') logs and each model's recorded attempts, scanned for
the error signatures launch/classify.py knows, each mapped to its remedy."""

from __future__ import annotations

import os
from pathlib import Path

from ..launch.classify import Match, failure_kind, match_line, scan
from ..state import State, StateDir
from .findings import Finding, ok, warning

SCAN_BYTES = 16 << 20  # the end of a log that is scanned; the lines before it are only counted
LINES_SHOWN = 5


def read_log(path: Path, limit: int = SCAN_BYTES) -> tuple[str, int]:
    """(the last `limit` bytes of the log from a line start, the line number they start at)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        skip = max(0, size - limit)
        handle.seek(0)
        lines_before = 0
        left = skip
        while left > 0:  # count the lines that are not scanned, so numbers stay the file's
            chunk = handle.read(min(left, 1 << 20))
            if not chunk:
                break
            lines_before += chunk.count(b"\n")
            left -= len(chunk)
        data = handle.read()
    if skip and not data.startswith(b"\n"):  # drop the partial first line
        cut = data.find(b"\n")
        data = data[cut + 1:] if cut >= 0 else b""
        lines_before += 1
    elif skip:
        data = data[1:]
        lines_before += 1
    return data.decode("utf-8", "replace"), lines_before + 1


def log_files(state_dir: StateDir, state: State | None) -> list[Path]:
    """The server log (the recorded one, else the last one in logs/) and each cluster worker's, once each."""
    found: list[Path] = []
    if state is not None and state.server is not None and state.server.log:
        found.append(Path(state.server.log))
        found += [Path(w.log) for w in state.server.workers if w.log]
    found += [state_dir.logs / "server.log", *sorted(state_dir.logs.glob("worker-*.log"))]
    unique: dict[Path, Path] = {}
    for path in found:
        if path.is_file():
            unique.setdefault(path.resolve(), path)
    return list(unique.values())


def log_findings(state_dir: StateDir, state: State | None, *, virtual_env: bool | None = None) -> list[Finding]:
    """One finding per signature found in each log (how often, on which lines, the last text, the remedy)."""
    found = []
    for path in log_files(state_dir, state):
        try:
            text, first = read_log(path)
        except OSError as exc:
            found.append(warning("log", f"{path}: cannot be read ({exc.strerror or exc})"))
            continue
        matches = scan(text, first_line=first)
        if not matches:
            found.append(ok("log", f"{path}: no known error signature", file=str(path)))
            continue
        for name, group in _grouped(matches).items():
            found.append(_log_finding(path, name, group, virtual_env))
    return found


def _grouped(matches: list[Match]) -> dict[str, list[Match]]:
    groups: dict[str, list[Match]] = {}
    for match in matches:
        groups.setdefault(match.signature.name, []).append(match)
    return groups


def _log_finding(path: Path, name: str, group: list[Match], virtual_env: bool | None) -> Finding:
    last = group[-1]
    lines = [m.line for m in group]
    shown = ", ".join(map(str, lines[-LINES_SHOWN:])) + (f" (and {len(lines) - LINES_SHOWN} earlier)"
                                                          if len(lines) > LINES_SHOWN else "")
    times = f"{len(group)} time{'s' if len(group) != 1 else ''}"
    fix = last.signature.hint or ""
    if "virtual_env: false" in fix and virtual_env is False:
        fix += "; the manifest already says server.virtual_env: false: this log is from an earlier start"
    return warning("log", f"{path.name}: {name} ({times}, line{'s' if len(lines) != 1 else ''} {shown})",
                   last.excerpt, fix, file=str(path), signature=name, kind=last.signature.kind.value, lines=lines[-20:])


def attempt_findings(state: State | None) -> list[Finding]:
    """Each model's recorded attempts: why a model did not come up, or which fallback it runs on and why."""
    if state is None:
        return []
    found = []
    for model in state.models:
        failed = [a for a in model.attempts if a.outcome == "failed"]
        if model.status == "failed" or (model.status != "running" and failed):
            reasons = [f"{a.candidate} {a.name} on {a.engine}: {failure_kind(a.kind).label}: {_reason(a.reason)}"
                       for a in failed] or [model.error or model.status]
            found.append(warning("attempts", f"{model.role} {model.uid} did not come up ({len(failed)} failed "
                                 f"attempt{'s' if len(failed) != 1 else ''})", "; ".join(reasons),
                                 _remedy(failed, model.error), uid=model.uid))
        elif model.status == "running" and failed:
            lead = "; ".join(f"{a.candidate} {a.engine}: {failure_kind(a.kind).label}" for a in failed)
            found.append(ok("attempts", f"{model.role} {model.uid} runs on {model.candidate} ({model.engine}); "
                            f"before it: {lead}", uid=model.uid))
        elif model.status == "running":
            found.append(ok("attempts", f"{model.role} {model.uid} runs on {model.candidate} ({model.engine})",
                            uid=model.uid))
    return found


def _reason(reason: str) -> str:
    return reason.split(" (hint: ")[0]


def _remedy(failed: list, error: str | None) -> str:
    """The hint of the most telling failure: the signature's, else the one the attempt recorded."""
    for attempt in sorted(failed, key=lambda a: list(type(failure_kind(a.kind))).index(failure_kind(a.kind))):
        sig = match_line(attempt.reason)
        if sig is not None and sig.hint:
            return sig.hint
        if " (hint: " in attempt.reason:
            return attempt.reason.split(" (hint: ", 1)[1].rstrip(")")
    sig = match_line(error or "")
    return sig.hint if sig is not None and sig.hint else "`provision status` shows every attempt; the server log has more"
