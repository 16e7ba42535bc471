"""pydantic's validation errors -> our problems: the field path, the line, and what is allowed.

An unknown key gets a "did you mean", a missing one the field's description, a number out of range
its bounds; union types report each member's failure, and only the first message per path is kept.
"""

from __future__ import annotations

import difflib
import re

from pydantic import BaseModel, ValidationError

from ..errors import Problem
from .schema import DownloadSpec, FallbackSpec, Manifest, ModelSpec, RagflowSpec, ServerSpec
from .source import format_path, line_of

_UNION_TAG = re.compile(r"^(int|float|str|bool|none|is-instance\[.*\]|.*\[.*\]|function-.*)$")

_MODELS_BY_FIELD = {
    (): Manifest,
    ("server",): ServerSpec,
    ("download",): DownloadSpec,
    ("ragflow",): RagflowSpec,
    ("models", 0): ModelSpec,
    ("models", 0, "fallbacks", 0): FallbackSpec,
}


def _model_at(loc: tuple) -> type[BaseModel] | None:
    shape = tuple(0 if isinstance(p, int) else p for p in loc)
    return _MODELS_BY_FIELD.get(shape)


def from_validation(exc: ValidationError, lines: dict) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p) and p not in _all_fields()))
        kind = err["type"]
        path = format_path(loc)
        line = line_of(lines, loc)
        hint = None
        if kind == "extra_forbidden":
            parent = _model_at(loc[:-1])
            allowed = sorted(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
            message = f"unknown key `{loc[-1]}`"
            hint = f"did you mean `{close[0]}`?" if close else f"allowed keys: {', '.join(allowed)}"
        elif kind == "missing":
            message = "required field is missing"
            parent = _model_at(loc[:-1])
            described = parent.model_fields[str(loc[-1])].description if parent and str(loc[-1]) in (parent.model_fields) else None
            hint = described
        elif kind == "literal_error":
            message = f"invalid value {err['input']!r}"
            hint = "allowed: " + err["ctx"]["expected"] if "ctx" in err else None
        elif kind == "value_error":
            message = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        else:
            message = err["msg"]
            if "input" in err and not isinstance(err["input"], (dict, list)):
                message += f" (got {err['input']!r})"
            hint = _range_hint(loc)
        problems.append(Problem(path, message, line=line, hint=hint))
    return problems


def _range_hint(loc: tuple) -> str | None:
    """'allowed: 0 < gpu_memory_utilization <= 1' for a field with numeric bounds, else None."""
    parent = _model_at(loc[:-1]) if loc else None
    info = parent.model_fields.get(str(loc[-1])) if parent else None
    if info is None:
        return None
    bounds = {a: getattr(b, a) for b in info.metadata for a in ("gt", "ge", "lt", "le") if getattr(b, a, None) is not None}
    low = next(((bounds[a], op) for a, op in (("gt", "<"), ("ge", "<=")) if a in bounds), None)
    high = next(((bounds[a], op) for a, op in (("lt", "<"), ("le", "<=")) if a in bounds), None)
    name = loc[-1]
    if low and high:
        return f"allowed: {low[0]} {low[1]} {name} {high[1]} {high[0]}"
    if low:
        return f"allowed: {name} {low[1].replace('<', '>')} {low[0]}"
    return f"allowed: {name} {high[1]} {high[0]}" if high else None


def _all_fields() -> set[str]:
    names: set[str] = set()
    for model in _MODELS_BY_FIELD.values():
        names |= set(model.model_fields)
    return names


def dedupe(problems: list[Problem]) -> list[Problem]:
    """One problem per path: union types report each member's failure; keep the first message."""
    seen: dict[tuple[str, str], Problem] = {}
    by_path: dict[str, Problem] = {}
    for p in problems:
        if p.path in by_path and p.path:
            continue
        by_path[p.path] = p
        seen[(p.path, p.message)] = p
    return list(seen.values())

