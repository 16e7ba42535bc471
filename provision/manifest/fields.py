"""What every section of the manifest's schema shares: the name patterns, the strict base model, numbers that
are never booleans, and the host check."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

from .. import netaddr

UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
REPLICA_SUFFIX_RE = re.compile(r"-rep\d+$")
SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# A model's name as users write it: Xinference's names have no '/', but a hub id pasted here is let through
# to the catalog check, which says which built-in name it belongs to.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
VARIABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# Folders that hold a system, never a model: a local_path naming one would be walked and launched from.
SYSTEM_FOLDERS = {"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root", "/run",
                  "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var"}


def _not_a_boolean(value: Any) -> Any:
    """YAML's `true` is no number: pydantic would take it for 1 (`port: true` -> port 1)."""
    if isinstance(value, bool):
        raise ValueError(f"Input should be a valid integer, not a boolean (got {value!r})")
    return value


# A whole number that is written as one (or comes from ${VAR} as text), never a boolean.
Number = Annotated[int, BeforeValidator(_not_a_boolean)]
Seconds = Annotated[float, BeforeValidator(_not_a_boolean)]


def _host(value: str, field: str) -> str:
    problem = netaddr.host_problem(value)
    if problem:
        raise ValueError(f"{field} {problem}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)
