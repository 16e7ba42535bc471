"""First-run setup of a server provision started, the admin login, and the API key RAGFlow uses.

Xinference 4.x starts with authentication on. On a server provision starts (server.auth: true):

    GET  /v1/admin/setup/status   {"needs_setup": true, "password_min_length": 8}   (no credentials)
    POST /v1/admin/setup          {setup_token, username, password} -> 201; the token is printed in the
                                  server log ("Setup token: ...") and kept in $XINFERENCE_HOME/auth/auth.db
                                  (table system_config, key setup_token) until the first account exists
    POST /token                   {username, password} -> {access_token: a JWT valid 30 min, ...}
    POST /v1/admin/keys           {name} with Bearer <access_token> -> 201 {key: "xf-...", ...}

An API key may only call the model query and inference endpoints (scopes models:list / models:read):
verify and RAGFlow use it. Launching and terminating models (models:write) needs the admin's JWT, so
the client that manages models logs in with the admin password and renews the JWT before it expires.

Where the secrets live:
    server provision started   <state>/credentials.json (0600), one entry per server home; state.json
                               only records `auth: true`
    server.endpoint            the environment variables named by server.api_key_env and
                               server.admin_password_env; state.json records the names, never the values

Secrets are never printed: messages name where a secret comes from, not its value, and the repr of
Credentials leaves them out. Xinference bans a client address for an hour after 10 refused keys or
tokens within 5 minutes, so nothing here retries a refused secret.
"""

from __future__ import annotations


from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Callable

from ..errors import AuthError, ServerError, XinferenceError
from ..state import StateDir
from ..xinference import XinferenceClient
from .credentials import Credentials, credentials_path, load_credentials, save_credentials

ADMIN_USER = "admin"
KEY_NAME = "provision-ragflow"
_SETUP_TOKEN_RE = re.compile(r"Setup token:\s*(\S+)")


def setup_tokens(log_path: str | os.PathLike | None, home: str | os.PathLike) -> list[str]:
    """Setup token candidates: the last one the server log printed, then the one in its auth database."""
    found: list[str] = []
    if log_path:
        with contextlib.suppress(OSError), open(log_path, "rb") as handle:
            matches = _SETUP_TOKEN_RE.findall(handle.read(8 << 20).decode("utf-8", "replace"))
            if matches:
                found.append(matches[-1])
    database = Path(home) / "auth" / "auth.db"
    if database.exists():
        row = None
        with contextlib.suppress(sqlite3.Error):
            with contextlib.closing(sqlite3.connect(database.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)) as db:
                row = db.execute("SELECT value FROM system_config WHERE key = 'setup_token'").fetchone()
        if row and row[0] and row[0] not in found:
            found.append(row[0])
    return found


def ensure_credentials(
    url: str,
    home: str | os.PathLike,
    log_path: str | os.PathLike | None,
    state_dir: StateDir,
    *,
    username: str = ADMIN_USER,
    on_event: Callable[[str], None] | None = None,
) -> Credentials:
    """Credentials for the server at `url`, reusing the stored ones while their key works.

    Otherwise: the first-run setup when the server needs it (admin with a generated password), a login
    with the stored password, and a new API key. The password is saved before the key is minted, so an
    interruption never loses it.
    """
    say = on_event or (lambda text: None)
    home = str(home)
    where = credentials_path(state_dir)
    stored = load_credentials(state_dir, home)
    client = XinferenceClient(url)
    if stored is not None and stored.api_key and _key_status(url, stored.api_key) == 200:
        say(f"authentication: reusing the API key in {where}")
        return stored
    status = _setup_status(client)
    if status.get("needs_setup"):
        credentials = _first_run_setup(client, home, log_path, username, int(status.get("password_min_length") or 8))
        save_credentials(state_dir, credentials)
        say(f"authentication: first-run setup done, admin `{credentials.username}` created (password in {where})")
    elif stored is None:
        raise AuthError(
            f"the server at {url} was set up before, but {where} holds no login for it (XINFERENCE_HOME {home})",
            hint=f"stop it (`provision down`), remove {Path(home) / 'auth'} (its accounts and API keys) and run "
            "`provision up` again: provision then sets it up anew",
        )
    else:
        credentials = stored
    token, _ = login(client, credentials.username, credentials.password, source=f"the admin login in {where}",
                     hint=f"if the server's accounts were reset, remove {Path(home) / 'auth'} while it is stopped, "
                     f"and the entry for {home} in {where}, then run `provision up` again")
    replaced = credentials.key_name
    credentials.api_key, credentials.key_name, credentials.key_id = mint_key(client, token)
    credentials.url = url
    save_credentials(state_dir, credentials)
    if _key_status(url, credentials.api_key) != 200:
        raise AuthError(f"the server at {url} refuses the API key it has just issued")
    say(f"authentication: API key `{credentials.key_name}` minted for RAGFlow (kept in {where}, mode 0600)")
    revoked, problem = revoke_replaced(client, token, credentials, replaced)
    if revoked:
        say(f"authentication: revoked {revoked} API key{'s' if revoked != 1 else ''} it replaces (one key per stack)")
    if problem:
        say(f"authentication: the keys it replaces could not be revoked ({problem}); revoke them in the web UI")
    return credentials


def _key_status(url: str, key: str) -> int | None:
    status = XinferenceClient(url, api_key=key).answers(timeout=10)
    if status is None:
        raise XinferenceError(f"cannot reach the Xinference server at {url}", hint="is it running? see `provision status`")
    return status


def _setup_status(client: XinferenceClient) -> dict:
    try:
        body = client.get("/v1/admin/setup/status")
    except AuthError:
        raise
    except XinferenceError as exc:
        if exc.status == 404:
            raise ServerError(
                f"the server at {client.base_url} has no first-run setup (GET /v1/admin/setup/status: HTTP 404): "
                "its authentication is off, or it is not Xinference 4.x",
                hint="set server.auth: false for a server without authentication",
            ) from exc
        raise
    return body if isinstance(body, dict) else {}


def _first_run_setup(client: XinferenceClient, home: str, log_path, username: str, min_length: int) -> Credentials:
    tokens = setup_tokens(log_path, home)
    if not tokens:
        raise ServerError(
            f"the server at {client.base_url} needs its first-run setup, but its setup token is neither in "
            f"{log_path} nor in {Path(home) / 'auth' / 'auth.db'}",
            hint="the server prints it at start as `Setup token: ...`; is server.home its XINFERENCE_HOME?",
        )
    password = secrets.token_urlsafe(max(24, min_length))
    refused = ""
    for token in tokens:
        try:
            client.call("POST", "/v1/admin/setup", json={"setup_token": token, "username": username, "password": password})
        except XinferenceError as exc:
            if exc.status == 403 and "setup token" in exc.detail.lower():
                refused = exc.detail
                continue  # a stale token in the log: try the one in the database
            if exc.status == 403:
                raise AuthError(
                    f"the first-run setup of {client.base_url} was refused: {exc.detail}",
                    status=403, detail=exc.detail,
                    hint="another client created the first account first: remove the server's auth folder while "
                    "it is stopped, and run `provision up` again",
                ) from None
            raise XinferenceError(f"the first-run setup of {client.base_url} failed (HTTP {exc.status}): {exc.detail}",
                                  status=exc.status, detail=exc.detail) from None
        return Credentials(username=username, password=password, created_at=time.time(), url=client.base_url, home=home)
    raise AuthError(f"the server at {client.base_url} refused every setup token provision found ({refused})",
                    status=403, detail=refused, hint="is server.home this server's XINFERENCE_HOME?")


def login(client: XinferenceClient, username: str, password: str, *, source: str, hint: str | None = None) -> tuple[str, float]:
    """POST /token: the admin's access token (a JWT) and when it expires (epoch seconds)."""
    try:
        body = client.call("POST", "/token", json={"username": username, "password": password})
    except AuthError as exc:
        raise AuthError(f"{source} was refused by the server at {client.base_url} (HTTP {exc.status}: {exc.detail})",
                        status=exc.status, detail=exc.detail, hint=hint) from None
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise XinferenceError(f"POST /token at {client.base_url} answered without an access_token")
    if body.get("must_change_password"):
        raise AuthError(f"{source}: the account `{username}` must change its password before it can be used",
                        hint="change it in the Xinference web UI, then update where provision reads it from")
    return token, _expiry(token)


def _expiry(token: str) -> float:
    """The `exp` claim of a JWT (not verified: only to renew it in time); 10 minutes when unreadable."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return time.time() + 600


def mint_key(client: XinferenceClient, access_token: str) -> tuple[str, str, int | None]:
    """POST /v1/admin/keys as the admin: a new API key (for all models, no expiry), its name and id."""
    name = f"{KEY_NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(2):
        try:
            body = client.call("POST", "/v1/admin/keys", json={"name": name},
                               headers={"Authorization": f"Bearer {access_token}"})
        except XinferenceError as exc:
            if exc.status == 409 and attempt == 0:
                name += f"-{secrets.token_hex(3)}"  # the name is taken
                continue
            raise XinferenceError(f"creating an API key at {client.base_url} failed (HTTP {exc.status}): {exc.detail}",
                                  status=exc.status, detail=exc.detail) from None
        key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(key, str) or not key:
            raise XinferenceError(f"POST /v1/admin/keys at {client.base_url} answered without a key")
        key_id = body.get("id")
        return key, name, key_id if isinstance(key_id, int) and not isinstance(key_id, bool) else None
    raise AssertionError("unreachable")


def revoke_replaced(client: XinferenceClient, access_token: str, current: Credentials,
                    replaced: str) -> tuple[int, str | None]:
    """Delete the keys provision minted for this server before `current` (named `provision-ragflow-...`, or
    `replaced`): one key per stack. Best effort: (how many were revoked, why not all, or None)."""
    headers = {"Authorization": f"Bearer {access_token}"}
    try:
        keys = client.call("GET", "/v1/admin/keys", headers=headers)
    except XinferenceError as exc:
        return 0, exc.message
    revoked = 0
    for key in keys if isinstance(keys, list) else []:
        if not isinstance(key, dict) or not isinstance(key.get("id"), int):
            continue
        name = str(key.get("name") or "")
        ours = (bool(replaced) and name == replaced) or name.startswith(f"{KEY_NAME}-")
        if not ours or key["id"] == current.key_id or name == current.key_name:
            continue
        try:
            client.call("DELETE", f"/v1/admin/keys/{key['id']}", headers=headers)
            revoked += 1
        except XinferenceError as exc:
            return revoked, exc.message
    return revoked, None

