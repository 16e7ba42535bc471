"""What may be shown, logged or written where others can read it: secrets replaced, one set of rules.

A key whose name says it holds a secret (token, password, api_key, ...) has its value hidden; a URL loses
its `user:password@`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "(hidden)"
SECRET_NAME = re.compile(r"(?i)(token|secret|passw(?:or)?d|passwd|api[_-]?key|access[_-]?key|private[_-]?key|credential)")


def is_secret_name(name: str) -> bool:
    """`api_key`, `HF_TOKEN`, `password`: the value is a secret. `*_env` names a variable, not a secret."""
    return bool(SECRET_NAME.search(name)) and not name.lower().endswith("_env")


def secret_values(mapping: dict[str, Any]) -> dict[str, Any]:
    """A copy with the value of every secret-looking key hidden (nested mappings too)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out[key] = secret_values(value)
        elif is_secret_name(str(key)) and value not in (None, ""):
            out[key] = HIDDEN
        else:
            out[key] = value
    return out


def url(text: str) -> str:
    """The URL with any user:password@ replaced by `***@`."""
    if not isinstance(text, str) or "@" not in text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return text.rsplit("@", 1)[-1]
    if not parts.netloc or "@" not in parts.netloc:
        return text
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
