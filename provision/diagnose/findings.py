"""What `provision doctor` finds: one Finding per fact, each saying what, why and the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OK, WARNING, BLOCKER = "ok", "warning", "blocker"
SEVERITIES = (BLOCKER, WARNING, OK)  # the order they are shown in


@dataclass
class Finding:
    check: str  # python | packages | torch | vllm | engines | gpu | disk | port | hub | auth | log | attempts
    severity: str  # ok | warning | blocker (blocker: `up` cannot succeed until it is fixed)
    what: str
    why: str = ""
    fix: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def ok(check: str, what: str, **facts) -> Finding:
    return Finding(check, OK, what, facts=facts)


def warning(check: str, what: str, why: str = "", fix: str = "", **facts) -> Finding:
    return Finding(check, WARNING, what, why, fix, facts)


def blocker(check: str, what: str, why: str = "", fix: str = "", **facts) -> Finding:
    return Finding(check, BLOCKER, what, why, fix, facts)
