"""Where the secrets of a server provision set up live: `<state>/credentials.json` (0600), one entry per
server home; state.json only records `auth: true`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import StateError
from ..state import StateDir, read_private, write_atomic

CREDENTIALS_FILE = "credentials.json"
CREDENTIALS_VERSION = 1


@dataclass
class Credentials:
    """The admin login and API key of one server provision set up. repr() shows no secret."""

    username: str
    password: str = field(repr=False)
    api_key: str | None = field(default=None, repr=False)
    created_at: float = 0.0
    url: str = ""
    home: str = ""  # XINFERENCE_HOME: the accounts live in its auth database
    key_name: str = ""
    key_id: int | None = None  # the server's id of api_key: the key this one replaces is revoked by it


def credentials_path(state_dir: StateDir) -> Path:
    return state_dir.path / CREDENTIALS_FILE


def _entries(state_dir: StateDir) -> dict[str, dict]:
    path = credentials_path(state_dir)
    try:
        data = json.loads(read_private(path))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {path}: {type(exc).__name__}", hint="restore it, or remove it and the "
                         "server's auth folder to set the server up anew") from None
    servers = data.get("servers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise StateError(f"{path} is damaged: it has no `servers` mapping")
    return servers


def load_credentials(state_dir: StateDir, home: str | os.PathLike) -> Credentials | None:
    """The stored credentials of the server whose XINFERENCE_HOME is `home`, if any."""
    entry = _entries(state_dir).get(str(home))
    if entry is None:
        return None
    try:
        return Credentials(**entry)
    except TypeError:
        raise StateError(f"{credentials_path(state_dir)} is damaged: its entry for {home} is incomplete") from None


def save_credentials(state_dir: StateDir, credentials: Credentials) -> Path:
    """Merge one server's credentials into credentials.json, written atomically with mode 0600."""
    entries = _entries(state_dir)
    entries[credentials.home] = asdict(credentials)
    state_dir.ensure()
    path = credentials_path(state_dir)
    write_atomic(path, json.dumps({"version": CREDENTIALS_VERSION, "servers": entries}, indent=2) + "\n", mode=0o600)
    return path
