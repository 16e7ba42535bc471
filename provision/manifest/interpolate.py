"""`${VAR}` and `${VAR:-default}` in manifest string values; `$$` is a literal `$`.

A variable that is not set and has no default is a problem of the manifest, reported with the others.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import Problem
from .source import format_path, line_of

ENV_VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, loc: tuple, environ: dict, problems: list[Problem], lines: dict,
                resolved: dict[str, str] | None = None) -> Any:
    """Expand ${VAR} and ${VAR:-default} in string values; $$ is a literal $. `resolved` collects each
    expanded value with the text it was written as, so that messages can show the text instead."""
    resolved = {} if resolved is None else resolved
    if isinstance(value, dict):
        return {k: interpolate(v, loc + (k,), environ, problems, lines, resolved) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, loc + (i,), environ, problems, lines, resolved) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def expand(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(
            Problem(
                format_path(loc),
                f"environment variable {name} is not set",
                line=line_of(lines, loc),
                hint=f"export {name}=... or write ${{{name}:-default}}",
            )
        )
        return ""

    expanded = ENV_VAR_RE.sub(expand, value)
    if expanded != value and expanded:
        resolved[expanded] = value
    # `key: ${VAR:-}` means "unset unless the environment says otherwise", not an empty string.
    if expanded == "" and ENV_VAR_RE.fullmatch(value.strip()):
        return None
    return expanded

