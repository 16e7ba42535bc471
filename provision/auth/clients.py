"""Clients that carry a server's secrets: the API key (what RAGFlow and verify use) and the admin login
(launching and terminating models: an API key may only list and call them). A refused secret is
reported with where it came from and what to set, never its value.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import requests

from ..errors import AuthError, StateError, XinferenceError
from ..manifest import Manifest
from ..state import ServerRecord, StateDir
from ..xinference import XinferenceClient
from .credentials import Credentials, credentials_path, load_credentials
from .setup import ADMIN_USER, login

NO_KEY = ("", "x")  # RAGFlow sends no Authorization header for these keys
RENEW_BEFORE_S = 120.0  # renew the admin JWT this long before it expires
_KEY_SCOPE = "api keys can only access model query and inference endpoints"


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

