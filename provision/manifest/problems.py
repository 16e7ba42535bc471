"""pydantic's validation errors -> our problems: the field path, the line, and what is allowed.

An unknown key gets a "did you mean", a missing one the field's description, a number out of range
its bounds; union types report each member's failure, and only the first message per path is kept.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

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


ECHO_CHARS = 60  # a bad value is shown up to this length


def echo(value: Any) -> str:
    """A bad value as a message shows it: its repr, cut to ECHO_CHARS."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 4] + "..." + text[-1]


def masked(problem: Problem, resolved: dict[str, str]) -> Problem:
    """The problem with every value a ${VAR} became shown as the ${VAR} text written in the file."""
    message, hint = problem.message, problem.hint
    for value, written in sorted(resolved.items(), key=lambda item: -len(item[0])):
        if len(value) < 3:
            continue
        for old, new in ((repr(value), repr(written)), (value, written)):
            message = message.replace(old, new)
            hint = hint.replace(old, new) if hint else hint
    return Problem(problem.path, message, line=problem.line, hint=hint)


def _real_path(loc: tuple, data: Any) -> tuple:
    """The error location without pydantic's union-member tags (`int`, `literal['auto']`, ...): a part is
    kept when it is a key or an index of the data at that point."""
    path, node = [], data
    for part in loc:
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif not (isinstance(part, str) and _UNION_TAG.match(part) and part not in _all_fields()):
            path.append(part)  # a key that is missing (or extra, where the node is not a mapping)
            node = None
    return tuple(path)


def from_validation(exc: ValidationError, lines: dict, data: Any = None) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = _real_path(err["loc"], data)
        if not loc:
            loc = tuple(str(p) for p in err["loc"][:1])
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
            message = f"invalid value {echo(err['input'])}"
            hint = "allowed: " + err["ctx"]["expected"] if "ctx" in err else None
        elif kind == "value_error":
            message = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        else:
            message = err["msg"]
            if "input" in err and not isinstance(err["input"], (dict, list)):
                message += f" (got {echo(err['input'])})"
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

