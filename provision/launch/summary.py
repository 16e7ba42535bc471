"""A failed chain in one message: the most specific cause first, then one line per distinct outcome."""

from __future__ import annotations

from ..state import AttemptRecord
from .classify import FailureKind, failure_kind, short


def summarize_failure(uid: str, attempts: list[AttemptRecord], total: int) -> str:
    """One message: the most specific cause first, then one line per distinct attempt outcome."""
    failed = [a for a in attempts if a.outcome == "failed"]
    tried = sum(a.outcome != "skipped" for a in attempts)
    if failed:
        lead = min(failed, key=lambda a: list(FailureKind).index(failure_kind(a.kind)))  # first of equals wins
        lines = [f"{uid} could not be launched: {failure_kind(lead.kind).label}: {lead.reason}"]
    else:
        lines = [f"{uid} could not be launched: no candidate was tried"]
    lines.append(f"tried {tried} of {total} candidate{'s' if total != 1 else ''}:")
    groups: dict[tuple[str, str, str], list[AttemptRecord]] = {}
    for a in attempts:  # identical outcomes merge into one line
        groups.setdefault((a.outcome, a.kind, a.reason), []).append(a)
    entries = []
    for (outcome, kind, reason), group in groups.items():
        who = ", ".join(f"{a.candidate} {a.name} on {a.engine}" for a in group)
        what = failure_kind(kind).label if outcome == "failed" else outcome
        entries.append(f"  {who}: {what}" + (f": {short(reason, 160)}" if reason else ""))
    if len(entries) > 5:
        entries = entries[:5] + [f"  and {len(entries) - 5} more"]
    return "\n".join(lines + entries)
