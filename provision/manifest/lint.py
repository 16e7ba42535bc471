"""Warnings about a valid manifest: an API open to the network without authentication, and secrets
written into the file instead of referenced as ${VAR} or a *_env field.

They read the YAML as written (`Manifest.raw`, before ${VAR} expansion), kept by load(): the file is
not read again.
"""

from __future__ import annotations

import re
from typing import Any

from .. import netaddr
from ..redact import is_secret_name
from .interpolate import ENV_VAR_RE
from .schema import Manifest
from .source import format_path

_SECRET_VALUE = re.compile(r"^(?:xf-|sk-|hf_|ms-)[A-Za-z0-9_\-]{16,}$")
_URL_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")


def manifest_warnings(manifest: Manifest) -> list[str]:
    """What `validate`, `plan` and `up` warn about in the manifest itself."""
    warnings = []
    spec = manifest.server
    if not spec.endpoint and not spec.auth and not netaddr.is_loopback(spec.host):
        warnings.append(f"server.auth is false and server.host is {spec.host}: anyone who can reach port {spec.port} "
                        "can launch and delete models (allow_open: true)")
    unreachable = netaddr.docker_cannot_reach(spec.host, manifest.ragflow.docker_host) if manifest.ragflow.docker else None
    if unreachable and not spec.endpoint:
        warnings.append(f"ragflow.docker is true but server.host is {spec.host}: {unreachable}")
    return warnings + secret_warnings(manifest.raw)


def secret_warnings(raw: Any, path: tuple = ()) -> list[str]:
    """Secrets written into the manifest's text (before ${VAR} expansion) instead of referenced."""
    if isinstance(raw, dict):
        return [w for key, value in raw.items() for w in secret_warnings(value, path + (str(key),))]
    if isinstance(raw, list):
        return [w for i, value in enumerate(raw) for w in secret_warnings(value, path + (i,))]
    if not isinstance(raw, str):
        return []
    literal = ENV_VAR_RE.sub("", raw).strip()
    if not literal:
        return []
    name = str(path[-1]) if path and isinstance(path[-1], str) else ""
    where = format_path(path)
    if _URL_PASSWORD.search(raw) and _URL_PASSWORD.search(literal):
        return [f"{where} has a password in its URL: put the URL in a variable and write ${{VARIABLE}}"]
    named = is_secret_name(name)
    looks_secret = len(literal) >= 8 and not literal.isdigit() and not literal.startswith(("/", "~", "."))
    if (named and looks_secret) or _SECRET_VALUE.match(literal):
        variable = name.upper() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and named else "VARIABLE"
        return [f"{where} holds a secret written into the manifest: write ${{{variable}}} and export it "
                "(or use a *_env field), so the manifest can be shared and committed without it"]
    return []
