"""Authentication of the Xinference server: first-run setup, the admin login, the API key RAGFlow uses.

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

import base64
import contextlib
import json
import os
import re
import secrets
import sqlite3
import stat
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests
import yaml

from .errors import AuthError, ServerError, StateError, XinferenceError
from .manifest import ENV_VAR_RE, Manifest, format_path, is_loopback_host
from .state import ServerRecord, StateDir, write_atomic
from .xinference import XinferenceClient

CREDENTIALS_FILE = "credentials.json"
CREDENTIALS_VERSION = 1
ADMIN_USER = "admin"
KEY_NAME = "provision-ragflow"
NO_KEY = ("", "x")  # RAGFlow sends no Authorization header for these keys
RENEW_BEFORE_S = 120.0  # renew the admin JWT this long before it expires
_SETUP_TOKEN_RE = re.compile(r"Setup token:\s*(\S+)")
_KEY_SCOPE = "api keys can only access model query and inference endpoints"


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


# -- credentials.json ---------------------------------------------------------------------------------


def credentials_path(state_dir: StateDir) -> Path:
    return state_dir.path / CREDENTIALS_FILE


def _entries(state_dir: StateDir) -> dict[str, dict]:
    path = credentials_path(state_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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


# -- first-run setup, login, key ----------------------------------------------------------------------


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
    credentials.api_key, credentials.key_name = mint_key(client, token)
    credentials.url = url
    save_credentials(state_dir, credentials)
    if _key_status(url, credentials.api_key) != 200:
        raise AuthError(f"the server at {url} refuses the API key it has just issued")
    say(f"authentication: API key `{credentials.key_name}` minted for RAGFlow (kept in {where}, mode 0600)")
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


def mint_key(client: XinferenceClient, access_token: str) -> tuple[str, str]:
    """POST /v1/admin/keys as the admin: a new API key (for all models, no expiry) and its name."""
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
        return key, name
    raise AssertionError("unreachable")


# -- clients that carry the secrets -------------------------------------------------------------------


class AuthClient(XinferenceClient):
    """A client that says where its secret comes from when the server refuses it.

    With `login` it sends the admin's JWT (logged in on first use, renewed before it expires) instead
    of an API key: only the admin may launch and terminate models.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, login: tuple[str, str] | None = None,
                 secret: str = "", hint: str | None = None, login_hint: str | None = None, timeout: float = 30.0):
        super().__init__(base_url, api_key=None if api_key in NO_KEY else api_key, timeout=timeout)
        self._login = login
        self.secret = secret  # e.g. "the API key in $XINFERENCE_API_KEY (server.api_key_env)"
        self.auth_hint = hint
        self._login_hint = login_hint
        self._expires = 0.0
        self._lock = threading.Lock()

    def _fresh_login(self) -> None:
        if self._login is None:
            return
        with self._lock:
            if time.time() < self._expires - RENEW_BEFORE_S:
                return
            token, self._expires = login(XinferenceClient(self.base_url, timeout=self.timeout), *self._login,
                                         source=self.secret, hint=self._login_hint)
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        self._fresh_login()
        return super().request(method, path, **kwargs)

    def _get_retrying(self, path: str, **kwargs) -> requests.Response:
        self._fresh_login()
        return super()._get_retrying(path, **kwargs)

    def error_from(self, response: requests.Response, what: str) -> XinferenceError:
        error = super().error_from(response, what)
        if not isinstance(error, AuthError):
            return error
        hint = self.auth_hint
        if error.status == 403 and _KEY_SCOPE in error.detail.lower():
            hint = ("an API key cannot launch or terminate models: set server.admin_password_env to the name of a "
                    "variable holding the password of an admin account (server.admin_user)")
        refused = f"refused {self.secret}" if self.secret else "asks for credentials"
        return AuthError(f"{what}: the server {refused} (HTTP {error.status}): {error.detail}",
                         status=error.status, detail=f"{error.detail}; {hint}" if hint else error.detail, hint=hint)


def api_key_for(state_dir: StateDir, record: ServerRecord) -> str | None:
    """The API key RAGFlow and verify use for the recorded server (None: the server wants none)."""
    if record.managed:
        if not record.auth:
            return None
        credentials = _stored(state_dir, record)
        if not credentials.api_key:
            raise StateError(f"{credentials_path(state_dir)} holds no API key for {record.url}",
                             hint="run `provision up` again: it mints one")
        return credentials.api_key
    if record.api_key_env:
        return _from_env(record.api_key_env, "server.api_key_env", f"an API key of the server at {record.url}")
    return None


def has_key(record: ServerRecord | None) -> bool:
    """Whether the recorded server is reached with an API key (without loading it)."""
    return record is not None and ((record.managed and record.auth) or (not record.managed and bool(record.api_key_env)))


def key_client(state_dir: StateDir, record: ServerRecord) -> AuthClient:
    """Calls models the way RAGFlow does: Bearer <API key>, no header when the key is empty or `x`."""
    key = api_key_for(state_dir, record)
    if record.managed:
        return AuthClient(record.url, api_key=key, secret=f"the API key in {credentials_path(state_dir)}",
                          hint="run `provision up` again: it mints a new key when the stored one stops working")
    if record.api_key_env:
        variable = record.api_key_env
        return AuthClient(record.url, api_key=key, secret=f"the API key in ${variable} (server.api_key_env)",
                          hint=f"export {variable}=<a valid API key of the server at {record.url}>")
    return AuthClient(record.url, hint=(
        f"the server at {record.url} has authentication on: set server.api_key_env to the name of a variable "
        "holding one of its API keys (e.g. XINFERENCE_API_KEY) and export it; launching models also needs "
        "server.admin_password_env"))


def admin_client(state_dir: StateDir, record: ServerRecord) -> XinferenceClient:
    """Launches and terminates models: as the admin (JWT) where provision knows an admin password."""
    if record.managed:
        if not record.auth:
            return XinferenceClient(record.url)
        credentials = _stored(state_dir, record)
        where = credentials_path(state_dir)
        return AuthClient(record.url, login=(credentials.username, credentials.password),
                          secret=f"the admin login in {where}",
                          hint="run `provision up` again, which checks the stored login",
                          login_hint=f"if the server's accounts were reset, remove the entry for {record.home} in "
                          f"{where} and the server's auth folder while it is stopped, then run `provision up`")
    if record.admin_password_env:
        variable, user = record.admin_password_env, record.admin_user or ADMIN_USER
        password = _from_env(variable, "server.admin_password_env", f"the password of `{user}` on {record.url}")
        hint = f"export {variable}=<the password of `{user}`> (server.admin_password_env, server.admin_user)"
        return AuthClient(record.url, login=(user, password), secret=f"the login of `{user}` with the password in "
                          f"${variable}", hint=hint, login_hint=hint)
    return key_client(state_dir, record)


def _stored(state_dir: StateDir, record: ServerRecord) -> Credentials:
    credentials = load_credentials(state_dir, record.home or "")
    if credentials is None:
        raise StateError(f"{credentials_path(state_dir)} holds no credentials for the server at {record.url}",
                         hint="run `provision up` again; if the server was set up elsewhere, see `provision up`'s message")
    return credentials


def _from_env(variable: str, field_name: str, what: str) -> str:
    value = os.environ.get(variable, "").strip()
    if not value:
        raise AuthError(f"{field_name} names {variable}, which is not set", hint=f"export {variable}=<{what}>")
    return value


def server_record_fields(manifest: Manifest) -> dict[str, Any]:
    """The ServerRecord fields that say where the secrets of the manifest's server come from."""
    spec = manifest.server
    if spec.endpoint:
        return {"auth": False, "api_key_env": spec.api_key_env, "admin_user": spec.admin_user,
                "admin_password_env": spec.admin_password_env}
    return {"auth": spec.auth}


# -- security checks (validate / plan) ----------------------------------------------------------------

_SECRET_NAME = re.compile(r"(?i)(token|secret|passw(?:or)?d|passwd|api[_-]?key|access[_-]?key|private[_-]?key|credential)")
_SECRET_VALUE = re.compile(r"^(?:xf-|sk-|hf_|ms-)[A-Za-z0-9_\-]{16,}$")
_URL_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")


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
    named = bool(_SECRET_NAME.search(name)) and not name.lower().endswith("_env")
    looks_secret = len(literal) >= 8 and not literal.isdigit() and not literal.startswith(("/", "~", "."))
    if (named and looks_secret) or _SECRET_VALUE.match(literal):
        variable = name.upper() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and named else "VARIABLE"
        return [f"{where} holds a secret written into the manifest: write ${{{variable}}} and export it "
                "(or use a *_env field), so the manifest can be shared and committed without it"]
    return []


def state_folder_warnings(state_dir: StateDir) -> list[str]:
    """The state folder and its secret files must not be readable by other users."""
    warnings = []
    paths = [state_dir.path, credentials_path(state_dir), state_dir.ragflow_dir,
             state_dir.ragflow_dir / "provider.json", state_dir.ragflow_dir / "service_conf.user_default_llm.yaml"]
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            continue
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077 and (path == state_dir.path or not stat.S_ISDIR(info.st_mode)):
            fix = "700" if stat.S_ISDIR(info.st_mode) else "600"
            warnings.append(f"{path} is open to other users (mode {mode:o}) and holds or will hold credentials: "
                            f"chmod {fix} {path}")
    return warnings


def security_warnings(manifest: Manifest, state_dir: StateDir | None = None, *, exposure: bool = True) -> list[str]:
    """What `validate` and `plan` warn about: an open API, secrets in the manifest, an open state folder."""
    warnings = []
    spec = manifest.server
    if exposure and not spec.endpoint and not spec.auth and not is_loopback_host(spec.host):
        warnings.append(f"server.auth is false and server.host is {spec.host}: anyone who can reach port {spec.port} "
                        "can launch and delete models (allow_open: true)")
    if manifest.file and Path(manifest.file).is_file():
        with contextlib.suppress(OSError, yaml.YAMLError, UnicodeDecodeError):
            warnings += secret_warnings(yaml.safe_load(Path(manifest.file).read_text(encoding="utf-8")))
    if state_dir is not None:
        warnings += state_folder_warnings(state_dir)
    return warnings
