"""A small REST client for the Xinference API: requests, the retry policy (retry.py), the auth header,
errors mapped to ours.

Only what provision uses: health, model list, launch (asynchronous), instances, progress, terminate,
engines, and the three OpenAI-style endpoints RAGFlow calls.
"""

from __future__ import annotations

import re
import time
from typing import Any

import requests

from . import retry
from .errors import AuthError, XinferenceError

_WORKER_PREFIX = re.compile(r"^\s*\[address=[^\]]*\]\s*")


def clean_detail(detail: Any) -> str:
    """Strip the '[address=HOST:PORT, pid=N] ' prefix worker errors carry."""
    if not isinstance(detail, str):
        detail = "" if detail is None else str(detail)
    return _WORKER_PREFIX.sub("", detail).strip()


class XinferenceClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # a proxy from the environment must not sit between us and loopback
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    # -- plumbing -----------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, timeout: float | None = None, **kwargs) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            return self.session.request(method, url, timeout=timeout or self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise XinferenceError(
                f"cannot reach the Xinference server at {self.base_url}",
                hint="is it running? `provision status` shows what provision knows about it",
            ) from exc
        except requests.Timeout as exc:
            raise XinferenceError(f"{method} {path} timed out after {timeout or self.timeout:.0f} s") from exc

    def call(self, method: str, path: str, **kwargs) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise self.error_from(response, f"{method} {path}")
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    def error_from(self, response: requests.Response, what: str) -> XinferenceError:
        try:
            body = response.json()
            detail = body.get("detail", body) if isinstance(body, dict) else body
        except ValueError:
            detail = response.text
        detail = clean_detail(detail if isinstance(detail, str) else str(detail))
        status = response.status_code
        if status in (401, 403):
            return AuthError(
                f"{what}: the server refused our credentials (HTTP {status}): {detail}",
                status=status,
                detail=detail,
                hint="the server has authentication on; give provision an API key",
            )
        return XinferenceError(f"{what} failed (HTTP {status}): {detail}", status=status, detail=detail)

    def _get_retrying(self, path: str, **kwargs) -> requests.Response:
        """GET, once more on no answer (a GET changes nothing); an answer, whatever its status, is final."""
        timeout = kwargs.pop("timeout", self.timeout)
        for attempt in retry.policy(retry.no_answer):
            with attempt:
                return self.session.get(f"{self.base_url}{path}", timeout=timeout, **kwargs)
        raise AssertionError("unreachable")  # the policy re-raises the last failure

    def get(self, path: str, **kwargs) -> Any:
        try:
            response = self._get_retrying(path, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise XinferenceError(
                f"cannot reach the Xinference server at {self.base_url}",
                hint="is it running? `provision status` shows what provision knows about it",
            ) from exc
        if response.status_code >= 400:
            raise self.error_from(response, f"GET {path}")
        return response.json() if response.content else None

    # -- server -------------------------------------------------------------------------------------

    def answers(self, timeout: float = 2.0) -> int | None:
        """The HTTP status of GET /v1/models, or None when nothing answers (no retries)."""
        try:
            return self.session.get(f"{self.base_url}/v1/models", timeout=timeout).status_code
        except requests.RequestException:
            return None

    def list_models(self) -> list[dict]:
        body = self.get("/v1/models")
        return body.get("data", []) if isinstance(body, dict) else list(body or [])

    def describe(self, uid: str) -> dict | None:
        try:
            return self.get(f"/v1/models/{uid}")
        except AuthError:
            raise
        except XinferenceError as exc:
            if exc.status in (400, 404):
                return None
            raise

    def engines(self, model_type: str, name: str) -> dict | None:
        path = f"/v1/engines/{name}" if model_type == "LLM" else f"/v1/engines/{model_type}/{name}"
        return self.get(path)

    def cluster_info(self, detailed: bool = False) -> Any:
        return self.get("/v1/cluster/info" + ("?detailed=true" if detailed else ""))

    # -- launch -------------------------------------------------------------------------------------

    def launch(self, payload: dict) -> str:
        """Start a launch without waiting (wait_ready is a query parameter, never a body field)."""
        body = self.call("POST", "/v1/models", params={"wait_ready": "false"}, json=payload, timeout=120)
        return body.get("model_uid", payload.get("model_uid")) if isinstance(body, dict) else payload["model_uid"]

    def instances(self, uid: str) -> list[dict]:
        body = self.get("/v1/models/instances", params={"model_uid": uid})
        return body if isinstance(body, list) else []

    def progress(self, uid: str) -> dict | None:
        try:
            return self.get(f"/v1/models/{uid}/progress")
        except AuthError:
            raise
        except XinferenceError:
            return None

    def terminate(self, uid: str) -> bool:
        """DELETE the model; False when the server does not know it (already gone)."""
        try:
            self.call("DELETE", f"/v1/models/{uid}", timeout=120)
            return True
        except AuthError:
            raise
        except XinferenceError as exc:
            if exc.status in (400, 404) and "not found" in exc.detail.lower():
                return False
            raise

    # -- the endpoints RAGFlow uses -----------------------------------------------------------------

    def timed_post(self, path: str, payload: dict, timeout: float = 120) -> tuple[Any, float]:
        started = time.monotonic()
        body = self.call("POST", path, json=payload, timeout=timeout)
        return body, time.monotonic() - started
