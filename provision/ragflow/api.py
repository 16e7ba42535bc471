"""A small client for RAGFlow's HTTP API: what `provision ragflow apply` and `status` call.

Two generations of routes, told apart by the version (GET /api/v1/system/version):
  >= v0.26   "providers": /api/v1/providers/Xinference/{instances,connection,models}, /api/v1/models/default;
             a model is referenced as uid@instance@Xinference
  <= v0.25   "llm_app":   /v1/llm/{add_llm,my_llms,delete_llm}; defaults through set_tenant_info
             (/v1/user/set_tenant_info up to v0.25.0, PATCH /api/v1/users/me/models from v0.25.1);
             a model is referenced as uid@Xinference
The version route itself moved: /v1/system/version (login required) up to v0.24, /api/v1/system/version
from v0.25 (login required in v0.25.0-0.25.1, open from v0.25.2).

Every answer is HTTP 200 with a JSON envelope {"code": N, "message", "data"}: code != 0 is a failure even
so. The exceptions are HTTP 401 (a missing, unknown or stale credential) and HTTP 404 (no such route).
Both become RagflowError (RagflowAuthError for a refused credential), carrying code, status and a hint.

Credentials: a RAGFlow API token (`Authorization: Bearer ragflow-...`, survives logins), or email +
password: POST /api/v1/auth/login with the password RSA-encrypted (PKCS#1 v1.5) with the public key
every RAGFlow install ships, over base64(password). The login answer's `Authorization` header is the
JWT. Every login voids the user's earlier JWTs (the browser is logged out): prefer an API token.

Retries (provision/retry.py): only when RAGFlow did not answer, and a POST only when the request
cannot have been sent (connection refused), since a repeated create makes a second instance. A refused
credential is an answer and is never retried.
"""

from __future__ import annotations

import base64
from typing import Any

import requests

from .. import retry
from .calls import (FIRST_PROVIDERS_VERSION, LLM_APP, PROVIDERS, Call, P, Verdict, Version, calls, parse_version,
                    segment)
from .errors import AUTH_CODES, RagflowAuthError, RagflowError, failed_verdict, is_not_found
from .routes import DatasetRoutes, LegacyRoutes

# conf/public.pem of RAGFlow (the same in every install; the web UI encrypts passwords with it).
PUBLIC_KEY_PEM = """\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEArq9XTUSeYr2+N1h3Afl/
z8Dse/2yD0ZGrKwx+EEEcdsBLca9Ynmx3nIB5obmLlSfmskLpBo0UACBmB5rEjBp
2Q2f3AG3Hjd4B+gNCG6BDaawuDlgANIhGnaTLrIqWrrcm4EMzJOnAOI1fgzJRsOO
UEfaS318Eq9OVO3apEyCCt0lOQK6PuksduOjVxtltDav+guVAA068NrPYmRNabVK
RNLJpL8w4D44sfth5RvZ3q9t+6RTArpEtc5sh5ChzvqPOzKGMXW83C95TxmXqpbK
6olN4RevSfVjEAgCydH6HN6OhtOQEcnrU97r9H0iZOWwbw3pVrZiUkuRD1R56Wzs
2wIDAQAB
-----END PUBLIC KEY-----
"""

TOKEN_HINT = ("make an API token in RAGFlow (avatar -> API -> API key) and give it to provision; "
              "a login token dies at the next login, in the browser too")


def encrypt_password(password: str, public_key_pem: str = PUBLIC_KEY_PEM) -> str:
    """What RAGFlow's login wants: base64(RSA-PKCS1v1.5(public key, base64(password)))."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import padding
    except ImportError as exc:  # pragma: no cover - cryptography is a dependency
        raise RagflowError("a RAGFlow password login needs the `cryptography` package",
                           hint="pip install cryptography, or give provision a RAGFlow API token instead") from exc
    key = serialization.load_pem_public_key(public_key_pem.encode())
    inner = base64.b64encode(password.encode("utf-8"))
    return base64.b64encode(key.encrypt(inner, padding.PKCS1v15())).decode("ascii")


def _not_sent(exc: BaseException) -> bool:
    """The request cannot have reached the server: safe to send again even when it creates something."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        import urllib3

        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


class RagflowClient(DatasetRoutes, LegacyRoutes):
    def __init__(self, url: str, *, api_token: str | None = None, timeout: float = 30.0,
                 slow_timeout: float = 300.0, public_key_pem: str = PUBLIC_KEY_PEM):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.slow_timeout = slow_timeout  # RAGFlow's own model calls: 10 s each, discovery up to 300 s
        self.public_key_pem = public_key_pem
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy from the environment between us and RAGFlow
        self._version: Version | None = None
        self.tenant_route: str | None = None  # "api" or "v1": where tenant_info answered (<= v0.25)
        if api_token:
            self.session.headers["Authorization"] = f"Bearer {api_token}"

    @classmethod
    def connect(cls, url: str, *, api_token: str | None = None, email: str | None = None,
                password: str | None = None, **kwargs: Any) -> RagflowClient:
        """A client with an API token, or logged in with email + password (which voids the user's other
        login tokens: prefer a token)."""
        client = cls(url, api_token=api_token, **kwargs)
        if not api_token:
            if not (email and password):
                raise RagflowAuthError("RAGFlow needs a credential: an API token, or an email and a password",
                                       hint=TOKEN_HINT)
            client.login(email, password)
        return client

    # -- plumbing -----------------------------------------------------------------------------------

    def _send(self, call: Call, timeout: float | None = None) -> requests.Response:
        timeout = timeout or (self.slow_timeout if call.slow else self.timeout)
        retry_on = _not_sent if call.method == "POST" else retry.no_answer
        try:
            for attempt in retry.policy(retry_on):
                with attempt:
                    return self.session.request(call.method, self.url + call.path, json=call.body,
                                                params=call.params, timeout=timeout)
        except requests.Timeout as exc:
            raise RagflowError(f"RAGFlow did not answer {call.method} {call.path} within {timeout:.0f} s",
                               path=call.path, hint="is RAGFlow overloaded, or waiting on a model that hangs?") from exc
        except requests.RequestException as exc:
            raise RagflowError(f"cannot reach RAGFlow at {self.url}", path=call.path,
                               hint="is it running, and is this its API address (port 9380; the web UI's "
                                    "port 80 proxies /api too)?") from exc
        raise AssertionError("unreachable")  # the policy re-raises the last failure

    def envelope(self, call: Call, timeout: float | None = None) -> dict:
        """The answer's JSON object when its code is 0; RagflowError otherwise."""
        return self._read(self._send(call, timeout), call)

    def _read(self, response: requests.Response, call: Call) -> dict:
        what = f"{call.method} {call.path}"
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 401:
            raise RagflowAuthError(f"RAGFlow refused the credential (HTTP 401) for {what}", status=401, code=401,
                                   path=call.path, detail=_message(body), hint=TOKEN_HINT)
        if response.status_code == 404 and (body is None or _code(body) in (None, 404)):
            raise RagflowError(f"RAGFlow has no route {what} (HTTP 404)", status=404, code=404, path=call.path,
                               detail=_message(body),
                               hint=f"is {self.url} RAGFlow? this route depends on RAGFlow's version")
        if not isinstance(body, dict) or "code" not in body:
            sample = (response.text or "")[:200].strip()
            raise RagflowError(f"RAGFlow's answer to {what} is not its JSON envelope (HTTP {response.status_code}): "
                               f"{sample!r}", status=response.status_code, path=call.path,
                               hint=f"is {self.url} RAGFlow's address?")
        code = _code(body)
        if code != 0:
            message = _message(body)
            cls = RagflowAuthError if code in AUTH_CODES else RagflowError
            error = cls(f"RAGFlow refused {what}: {message} (code {code})", code=code,
                        status=response.status_code, path=call.path, detail=message,
                        hint=TOKEN_HINT if cls is RagflowAuthError else None)
            error.body = body
            raise error
        return body

    def send(self, call: Call, timeout: float | None = None) -> Any:
        """The answer's `data` (None for RAGFlow's bare {"code": 0})."""
        return self.envelope(call, timeout).get("data")

    def get(self, path: str, params: dict | None = None) -> Any:
        return self.send(Call("GET", path, params=params))

    # -- authentication and version -----------------------------------------------------------------

    def login(self, email: str, password: str) -> None:
        """Log in; the JWT from the answer's Authorization header is sent from now on."""
        body = {"email": email, "password": encrypt_password(password, self.public_key_pem)}
        self.session.headers.pop("Authorization", None)
        paths = ("/api/v1/auth/login", "/v1/user/login")  # the second: <= v0.25.0
        for path in paths:
            call = Call("POST", path, body)
            response = self._send(call)
            try:
                self._read(response, call)
            except RagflowError as exc:
                if is_not_found(exc) and path != paths[-1]:
                    continue
                if exc.code in AUTH_CODES or exc.code == 500:
                    hint = ("RAGFlow could not decrypt the password: does this RAGFlow use another key pair?"
                            if exc.code == 500 else "check the email and the password")
                    raise RagflowAuthError(f"RAGFlow refused the login of {email}: {exc.detail}", code=exc.code,
                                           path=path, detail=exc.detail, hint=hint) from exc
                raise
            token = response.headers.get("Authorization")
            if not token:
                raise RagflowAuthError("RAGFlow's login answer carries no token (Authorization header)", path=path)
            self.session.headers["Authorization"] = token
            return

    def version(self) -> Version:
        """RAGFlow's version and route generation (asked once, then remembered)."""
        if self._version is not None:
            return self._version
        try:
            text = self.get("/api/v1/system/version")
        except RagflowError as exc:
            if not is_not_found(exc):
                raise
            text = self.get("/v1/system/version")  # <= v0.24
        number = parse_version(text)
        if number is not None:
            generation = PROVIDERS if number >= FIRST_PROVIDERS_VERSION else LLM_APP
        else:  # "unknown" (no VERSION file) or a dev build: ask the routes themselves
            generation = PROVIDERS
            try:
                self.list_providers()
            except RagflowError as exc:
                if not is_not_found(exc):
                    raise
                generation = LLM_APP
        self._version = Version(str(text), number, generation)
        return self._version

    # -- providers (v0.26+) ---------------------------------------------------------------------------

    def list_providers(self, available: bool = False) -> list[dict]:
        return self.get("/api/v1/providers", {"available": "true"} if available else None) or []

    def add_provider(self) -> None:
        self.send(calls.put_provider())

    def delete_provider(self) -> None:
        self.send(Call("DELETE", P))

    def discover(self, base_url: str, api_key: str) -> list[dict]:
        """What RAGFlow finds at base_url (it asks base_url + /v1/models): [{name, model_types, max_tokens}].
        RAGFlow answers [] for a wrong key or a base_url that ends in /v1 (it asks /v1/v1/models)."""
        return self.send(Call("GET", f"{P}/models", params={"base_url": base_url, "api_key": api_key},
                              slow=True)) or []

    def verify(self, base_url: str, api_key: str, model_info: list[dict],
               instance_id: str | None = None) -> Verdict:
        """RAGFlow's check of the models (it stops at the first that passes). A failure is a verdict,
        not an exception; a refused credential is an exception."""
        try:
            self.send(calls.verify(base_url, api_key, model_info, instance_id))
            return Verdict(True)
        except RagflowError as exc:
            return failed_verdict(exc)

    def list_instances(self) -> list[dict]:
        return self.get(f"{P}/instances") or []

    def get_instance(self, name_or_id: str) -> dict | None:
        """The instance with its base_url and api_key, or None when RAGFlow has no such instance (or no
        Xinference provider)."""
        try:
            return self.get(f"{P}/instances/{segment(name_or_id)}")
        except RagflowAuthError:
            raise
        except RagflowError as exc:
            if exc.code == 102 and ("No instance found" in exc.detail or "No provider found" in exc.detail):
                return None
            raise

    def create_instance(self, name: str, base_url: str | None = None, api_key: str | None = None,
                        model_info: list[dict] | None = None) -> None:
        """Name only (no model is called), or with everything (RAGFlow verifies first). Check first with
        get_instance: RAGFlow renames a duplicate to `name(1)` instead of refusing it."""
        if base_url is None and api_key is None and model_info is None:
            self.send(calls.create_instance(name))
        else:
            self.send(calls.create_instance_verified(name, base_url or "", api_key or "", model_info or []))

    def update_instance(self, name_or_id: str, *, instance_name: str, base_url: str, api_key: str,
                        model_info: list[dict], verify: bool = False) -> None:
        """PUT: sets key and base URL, renames, and makes the stored models exactly model_info."""
        self.send(calls.update_instance(name_or_id, instance_name=instance_name, base_url=base_url,
                                        api_key=api_key, model_info=model_info, verify=verify))

    def delete_instances(self, names: list[str]) -> None:
        self.send(calls.delete_instances(names))

    def list_models(self, instance: str) -> list[dict]:
        """[{name, model_type: [...], max_tokens, status, verify, extra}] of one instance."""
        return self.get(f"{P}/instances/{segment(instance)}/models") or []

    def add_model(self, instance: str, name: str, model_type: str, max_tokens: int) -> None:
        """Stores the model without calling it (verify stays "unknown")."""
        self.send(calls.add_model(instance, name, model_type, max_tokens))

    def delete_models(self, instance: str, names: list[str]) -> None:
        self.send(calls.delete_models(instance, names))

    def patch_model(self, instance: str, name: str, **fields: Any) -> None:
        self.send(calls.patch_model(instance, name, **fields))

    def list_tenant_models(self, model_type: str | None = None) -> list[dict]:
        return self.get("/api/v1/models", {"type": model_type} if model_type else None) or []

    def get_defaults(self) -> list[dict]:
        """[{model_type, model_provider, model_instance, model_name, model_id, enable}]; a default whose
        model or instance is gone is left out by RAGFlow."""
        data = self.get("/api/v1/models/default") or {}
        return list(data.get("models") or []) if isinstance(data, dict) else []

    def set_default(self, model_type: str, instance: str, model_name: str) -> None:
        self.send(calls.set_default(model_type, instance, model_name))

    def clear_default(self, model_type: str) -> None:
        self.send(calls.clear_default(model_type))


def _code(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    try:
        return int(body.get("code"))
    except (TypeError, ValueError):
        return None


def _message(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    message = body.get("message")
    return str(message).strip() if message not in (None, "") else str(body.get("error") or "")
