"""A RAGFlow stand-in and a tiny Xinference, both threaded HTTP servers on 127.0.0.1 (free ports), for the
tests of provision/ragflow/api.py and apply.py.

RagflowStandin answers the routes provision uses with the shapes, codes and quirks measured on the real
RAGFlow v0.27.0 (/work/ragflow-real/NOTES.md): HTTP 200 with a non-zero `code` on failure, 401/404 with
their own envelopes, a duplicate instance name renamed to `name(1)`, PUT reconciling the model set (and
its `extra` KeyError with verify:false), the check stopping at the first model that passes (the rest stay
"unknown"), the check's time limit (verify_timeout, 10 s like RAGFlow's LLM_TIMEOUT_SECONDS by default),
discovery silently [] for a base ending in /v1, "Internal server error" for an empty key with chat or
embedding. Its checks REALLY call the Xinference at the Base URL it was given, as RAGFlow does (chat:
streamed "Hi"; embedding: base64; rerank: string booleans at the server root's /v1/rerank, no key for
"" or "x"). version="v0.25.0" (or any < v0.26) gives the llm_app generation instead (add_llm, my_llms,
delete_llm, tenant_info / set_tenant_info; routes as in that version's source).

Every request it gets is in .calls, every request it makes to Xinference in .upstream. Passwords are
RSA-encrypted with the stand-in's own key pair (public_key_pem), not RAGFlow's.

TinyXinference answers /v1/models, /v1/chat/completions (stream or not), /v1/embeddings (float or base64)
and /v1/rerank like Xinference; .fail[uid] = status answers that status, .hold[uid] = threading.Event()
makes the model wait until the event is set (or the server stops), .api_key turns authentication on.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import struct
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urljoin, urlparse, urlunparse

import requests

PROVIDER = "Xinference"


def _version_tuple(text: str) -> tuple[int, int, int]:
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", text)
    assert m, text
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


class _Server:
    """A ThreadingHTTPServer on a free 127.0.0.1 port, run in a thread; a context manager."""

    def __init__(self):
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1  # headers and body leave in one write (no Nagle / delayed-ACK stall per answer)

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                owner._dispatch(self, "GET")

            def do_POST(self):
                owner._dispatch(self, "POST")

            def do_PUT(self):
                owner._dispatch(self, "PUT")

            def do_PATCH(self):
                owner._dispatch(self, "PATCH")

            def do_DELETE(self):
                owner._dispatch(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        if self.thread is not None:
            self.thread.join(timeout=30)
            self.thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @staticmethod
    def _body(handler) -> tuple[object, bytes]:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        if not raw:
            return None, raw
        try:
            return json.loads(raw), raw
        except ValueError:
            return _BAD_JSON, raw

    @staticmethod
    def _send(handler, status: int, payload, headers: dict | None = None, content_type="application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)


_BAD_JSON = object()


# -- a tiny Xinference --------------------------------------------------------------------------------


class TinyXinference(_Server):
    def __init__(self, models: dict[str, dict] | None = None, *, api_key: str | None = None, dim: int = 8):
        """models: uid -> {"model_type": "LLM" | "embedding" | "rerank", "context_length"?, "dimensions"?}."""
        super().__init__()
        self.models = models if models is not None else {
            "chat-1": {"model_type": "LLM", "context_length": 32768},
            "emb-1": {"model_type": "embedding", "dimensions": dim, "max_tokens": 512},
            "rr-1": {"model_type": "rerank"},
        }
        self.api_key = api_key
        self.dim = dim
        self.fail: dict[str, int] = {}
        self.hold: dict[str, threading.Event] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def stop(self):
        for event in self.hold.values():
            event.set()
        super().stop()

    def _dispatch(self, handler, method):
        body, _ = self._body(handler)
        path = urlparse(handler.path).path
        entry = {"method": method, "path": path, "auth": handler.headers.get("Authorization"), "body": body}
        with self.lock:
            self.requests.append(entry)
        if self.api_key and handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._send(handler, 401, {"detail": "Could not validate credentials"})
        if method == "GET" and path == "/v1/models":
            data = [{"id": uid, "object": "model", "owned_by": "xinference", **spec} for uid, spec in self.models.items()]
            return self._send(handler, 200, {"object": "list", "data": data})
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/embeddings", "/v1/rerank"):
            return self._send(handler, 404, {"detail": "Not Found"})
        uid = (body or {}).get("model") if isinstance(body, dict) else None
        event = self.hold.get(uid)
        if event is not None:
            event.wait(timeout=60)
            if self.stopping.is_set():
                return None
        if uid in self.fail:
            return self._send(handler, self.fail[uid], {"detail": f"fake failure {self.fail[uid]}"})
        if uid not in self.models:
            return self._send(handler, 404, {"detail": f"Model not found in the model list, uid: {uid}. "
                                                       f"Available model uids: {list(self.models)}"})
        if path == "/v1/chat/completions":
            return self._chat(handler, uid, body)
        if path == "/v1/embeddings":
            return self._embeddings(handler, uid, body)
        docs = body.get("documents") or []
        results = [{"index": i, "relevance_score": 1.0 / (i + 1), "document": {"text": d} if body.get(
            "return_documents") in (True, "true") else None} for i, d in enumerate(docs)]
        return self._send(handler, 200, {"id": uuid.uuid4().hex, "results": results,
                                         "meta": {"tokens": {"input_tokens": 3, "output_tokens": 3}}})

    def _chat(self, handler, uid, body):
        if body.get("stream"):
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": uid,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": None}]}
            data = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
            return self._send(handler, 200, data, content_type="text/event-stream")
        return self._send(handler, 200, {"id": "c1", "object": "chat.completion", "model": uid, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def _embeddings(self, handler, uid, body):
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        dim = int(self.models[uid].get("dimensions") or self.dim)
        data = []
        for i, text in enumerate(texts):
            vector = [((hash((uid, text, k)) % 1000) / 1000.0) + 0.001 for k in range(dim)]
            if body.get("encoding_format") == "base64":
                value = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
            else:
                value = vector
            data.append({"object": "embedding", "index": i, "embedding": value})
        return self._send(handler, 200, {"object": "list", "model": uid, "data": data,
                                         "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)}})


# -- the RAGFlow stand-in -----------------------------------------------------------------------------


class _Fail(Exception):
    def __init__(self, code: int, message: str, data=None, status: int = 200):
        super().__init__(message)
        self.code, self.message, self.data, self.status = code, message, data, status


INTERNAL = "Internal server error"
UNAUTHORIZED = "<Unauthorized '401: Unauthorized'>"
MODEL_TYPE_WORDS = ("chat", "embedding", "rerank", "vision", "tts", "asr", "ocr")


def ensure_v1(url: str) -> str:
    """RAGFlow 0.27's rule for chat and embedding: append /v1 unless a /v<digit> segment is there."""
    if not url:
        return url
    parsed = urlparse(url)
    path = parsed.path.rstrip("/")
    if re.search(r"/v\d+(?:/|$)", path + "/"):
        return url
    return urlunparse((parsed.scheme, parsed.netloc, (path + "/v1") if path else "/v1", parsed.params,
                       parsed.query, parsed.fragment))


_KEY = []


def _key_pair():
    """The stand-in's RSA key pair (made once per test run: 2048-bit generation is slow)."""
    if not _KEY:
        from cryptography.hazmat.primitives.asymmetric import rsa

        _KEY.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _KEY[0]


class RagflowStandin(_Server):
    def __init__(self, *, version: str = "v0.27.0", api_token: str = "ragflow-standin-token",
                 email: str = "admin@ragflow.local", password: str = "secret", verify_timeout: float = 10.0):
        super().__init__()
        from cryptography.hazmat.primitives import serialization

        self.version = version
        self.number = _version_tuple(version)
        self.legacy = self.number < (0, 26, 0)
        self.api_tokens = {api_token}
        self.api_token = api_token
        self.email, self.password = email, password
        self.jwt: str | None = None
        self.verify_timeout = verify_timeout
        self._key = _key_pair()
        self.public_key_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.tenant_id = uuid.uuid4().hex
        self.calls: list[dict] = []
        self.upstream: list[dict] = []
        self.lock = threading.RLock()
        # providers API state
        self.provider_id: str | None = None
        self.instances: list[dict] = []  # {id, instance_name, api_key, base_url, region, models: {name: {...}}}
        self.defaults: dict[str, tuple[str, str]] = {}  # model_type -> (instance id, model name)
        # llm_app state
        self.llms: dict[str, dict] = {}  # name -> {id, type, api_base, api_key, max_tokens, status}
        self.tenant = {"tenant_id": self.tenant_id, "name": "admin\u2018s Kingdom", "llm_id": "", "embd_id": "",
                       "rerank_id": "", "asr_id": "", "img2txt_id": "", "tts_id": None, "role": "owner",
                       "parser_ids": "naive:General"}
        self.datasets: list[dict] = []

    # -- test helpers -------------------------------------------------------------------------------

    def add_dataset(self, name: str, embedding_model: str, *, chunk_count: int = 3, dim: int = 8,
                    similarity: float = 1.0) -> str:
        """A dataset whose chunks were embedded by embedding_model into `dim` dimensions; an embedding check
        with another model finds `similarity` between those vectors and the candidate's (when the dimensions
        agree), with the same model 1.0."""
        ds_id = uuid.uuid4().hex
        self.datasets.append({"id": ds_id, "name": name, "embedding_model": embedding_model, "chunk_count": chunk_count,
                              "document_count": 1 if chunk_count else 0, "chunk_method": "naive", "_dim": dim,
                              "_similarity": similarity, "_doc_id": uuid.uuid4().hex, "tenant_id": self.tenant_id})
        return ds_id

    def instance(self, name: str) -> dict | None:
        return next((i for i in self.instances if i["instance_name"] == name), None)

    def writes(self) -> list[dict]:
        """The calls that could change something: all but GETs and the checks (connection, verify:true)."""
        out = []
        for call in self.calls:
            if call["method"] == "GET" or call["path"].endswith("/connection") or "/embedding/check" in call["path"]:
                continue
            if call["path"] == "/v1/llm/add_llm" and isinstance(call["body"], dict) and call["body"].get("verify"):
                continue
            out.append(call)
        return out

    # -- plumbing -----------------------------------------------------------------------------------

    def _dispatch(self, handler, method):
        body, _raw = self._body(handler)
        parsed = urlparse(handler.path)
        path = parsed.path
        query = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
        self.calls.append({"method": method, "path": path, "query": query, "body": body,
                           "auth": handler.headers.get("Authorization")})
        if body is _BAD_JSON:
            return self._send(handler, 200, {"code": 100, "data": None, "message": "<BadRequest '400: Bad Request'>"})
        route = self._route(method, path)
        if route is None:
            return self._send(handler, 404, {"code": 404, "data": None, "error": "Not Found",
                                             "message": f"Not Found: {path}"})
        func, args, needs_auth = route
        if needs_auth and not self._authorized(handler.headers.get("Authorization")):
            return self._send(handler, 401, {"code": 401, "data": None, "message": UNAUTHORIZED})
        headers: dict = {}
        try:
            with self.lock:
                payload = func(body, query, headers, *args)
        except _Fail as exc:
            payload = {"code": exc.code, "message": exc.message}
            if exc.data is not None:
                payload["data"] = exc.data
            return self._send(handler, exc.status, payload)
        except Exception:  # noqa: BLE001 - what RAGFlow does with any exception in a route
            payload = {"code": 102, "message": INTERNAL}
        return self._send(handler, 200, payload, headers)

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        token = header.split(None, 1)[1] if header.lower().startswith("bearer ") else header
        return token in self.api_tokens or (self.jwt is not None and token == self.jwt)

    def _route(self, method: str, path: str):
        n = self.number
        table: list[tuple[str, str, object, bool]] = [
            ("POST", r"/api/v1/datasets/([^/]+)/embedding/check", self._check_embedding, True),
            ("GET", r"/api/v1/datasets", self._list_datasets, True),
        ]
        if n >= (0, 25, 0):
            table.append(("GET", r"/api/v1/system/version", self._version, n < (0, 25, 2)))
        else:
            table.append(("GET", r"/v1/system/version", self._version, True))
        table.append(("POST", r"/api/v1/auth/login" if n >= (0, 25, 1) else r"/v1/user/login", self._login, False))
        if self.legacy:
            if n < (0, 25, 2):
                table = [t for t in table if "embedding/check" not in t[1]]
                if n < (0, 25, 1):
                    table.append(("POST", r"/v1/kb/check_embedding", self._legacy_check_embedding, True))
            table += [
                ("POST", r"/v1/llm/add_llm", self._add_llm, True),
                ("GET", r"/v1/llm/my_llms", self._my_llms, True),
                ("POST", r"/v1/llm/delete_llm", self._delete_llm, True),
            ]
            if n >= (0, 25, 1):
                table += [("GET", r"/api/v1/users/me/models", self._tenant_info, True),
                          ("PATCH", r"/api/v1/users/me/models", self._set_tenant_info, True)]
            else:
                table += [("GET", r"/v1/user/tenant_info", self._tenant_info, True),
                          ("POST", r"/v1/user/set_tenant_info", self._set_tenant_info, True)]
        else:
            p = r"/api/v1/providers/([^/]+)"
            table += [
                ("GET", r"/api/v1/providers", self._list_providers, True),
                ("PUT", r"/api/v1/providers", self._put_provider, True),
                ("DELETE", p, self._delete_provider, True),
                ("GET", p + r"/models", self._discover, True),
                ("POST", p + r"/connection", self._connection, True),
                ("GET", p + r"/instances", self._list_instances, True),
                ("POST", p + r"/instances", self._create_instance, True),
                ("DELETE", p + r"/instances", self._delete_instances, True),
                ("GET", p + r"/instances/([^/]+)", self._get_instance, True),
                ("PUT", p + r"/instances/([^/]+)", self._update_instance, True),
                ("GET", p + r"/instances/([^/]+)/models", self._list_models, True),
                ("POST", p + r"/instances/([^/]+)/models", self._add_model, True),
                ("DELETE", p + r"/instances/([^/]+)/models", self._delete_models, True),
                ("PATCH", p + r"/instances/([^/]+)/models/(.+)", self._patch_model, True),
                ("GET", r"/api/v1/models/default", self._get_defaults, True),
                ("PATCH", r"/api/v1/models/default", self._set_default, True),
                ("GET", r"/api/v1/models", self._tenant_models, True),
            ]
        for m, pattern, func, auth in table:
            match = re.fullmatch(pattern, path)
            if m == method and match:
                return func, [unquote(g) for g in match.groups()], auth
        return None

    # -- system and login ---------------------------------------------------------------------------

    def _version(self, body, query, headers):
        return {"code": 0, "data": self.version, "message": "success"}

    def _login(self, body, query, headers):
        from cryptography.hazmat.primitives.asymmetric import padding

        body = body or {}
        if body.get("email") != self.email:
            raise _Fail(109, f"Email: {body.get('email')} is not registered!")
        try:
            inner = self._key.decrypt(base64.b64decode(body.get("password") or ""), padding.PKCS1v15())
            password = base64.b64decode(inner, validate=True).decode()  # a wrong key gives random bytes
        except Exception:  # noqa: BLE001
            raise _Fail(500, "Fail to crypt password") from None
        if password != self.password:
            raise _Fail(109, "Email and password do not match!")
        self.jwt = secrets.token_urlsafe(40)  # every login voids the previous login token
        headers["Authorization"] = self.jwt
        headers["Access-Control-Expose-Headers"] = "Authorization"
        return {"code": 0, "data": {"email": self.email, "id": self.tenant_id, "nickname": "admin"},
                "message": "Welcome back!"}

    # -- providers ----------------------------------------------------------------------------------

    def _list_providers(self, body, query, headers):
        entry = {"model_types": [], "name": PROVIDER, "url": {"default": ""}}
        if query.get("available") == "true":
            return {"code": 0, "data": [entry]}
        if not self.provider_id:
            return {"code": 0, "data": []}
        return {"code": 0, "data": [{"has_instance": bool(self.instances), **entry}]}

    def _put_provider(self, body, query, headers):
        name = (body or {}).get("provider_name")
        if not name:
            raise _Fail(101, "provider_name is required")
        if name != PROVIDER:
            raise _Fail(102, f"Provider '{name}' is not allowed")
        if self.provider_id:
            raise _Fail(102, f"Provider {name} already exists")
        self.provider_id = uuid.uuid4().hex
        return {"code": 0}

    def _delete_provider(self, body, query, headers, provider):
        if provider != PROVIDER or not self.provider_id:
            raise _Fail(102, f"Provider {provider} not found")
        self.provider_id, self.instances = None, []
        return {"code": 0}

    def _need_provider(self, provider: str, message: str) -> None:
        if provider != PROVIDER or not self.provider_id:
            raise _Fail(102, message.format(provider=provider))

    def _find_instance(self, provider: str, id_or_name: str) -> dict:
        self._need_provider(provider, "No provider found for provider '{provider}'")
        found = next((i for i in self.instances if i["id"] == id_or_name), None) or self.instance(id_or_name)
        if found is None:
            raise _Fail(102, f"No instance found for provider '{provider}' and instance '{id_or_name}'")
        return found

    def _discover(self, body, query, headers, provider):
        base, key = query.get("base_url") or "", query.get("api_key") or ""
        if not base:
            return {"code": 0, "data": []}
        try:
            answer = self._upstream("GET", base.rstrip("/") + "/v1/models", {"Authorization": f"Bearer {key}"},
                                    None, timeout=300)
        except requests.RequestException:
            raise _Fail(102, INTERNAL) from None
        if answer.status_code != 200:
            return {"code": 0, "data": []}
        mapping = {"LLM": "chat", "chat": "chat", "embedding": "embedding", "rerank": "rerank", "image": "vision",
                   "TTS": "tts", "asr": "asr"}
        out = []
        for model in answer.json().get("data") or []:
            if not model.get("id"):
                continue
            out.append({"name": model["id"], "model_types": [mapping.get(model.get("model_type") or "", "chat")],
                        "features": None,
                        "max_tokens": model.get("context_length") or model.get("max_tokens") or 8192})
        return {"code": 0, "data": sorted(out, key=lambda m: m["name"])}

    def _connection(self, body, query, headers, provider):
        if not body or "api_key" not in body:
            raise _Fail(101, "api_key is required")
        ok, msg, results = self._verify(body.get("base_url") or "", body.get("api_key") or "", body.get("model_info"))
        if not ok:
            raise _Fail(102, msg)
        if body.get("instance_id"):
            try:
                inst = self._find_instance(provider, body["instance_id"])
                for name, verdict in results.items():
                    if name in inst["models"]:
                        inst["models"][name]["extra"]["verify"] = verdict
            except _Fail:
                pass
        return {"code": 0}

    def _list_instances(self, body, query, headers, provider):
        self._need_provider(provider, "No provider found for provider '{provider}'")
        return {"code": 0, "data": [{"id": i["id"], "instance_name": i["instance_name"], "provider_id": self.provider_id,
                                     "region": i["region"], "status": "active"} for i in reversed(self.instances)]}

    def _get_instance(self, body, query, headers, provider, name):
        i = self._find_instance(provider, name)
        return {"code": 0, "data": {"api_key": i["api_key"], "base_url": i["base_url"], "id": i["id"],
                                    "instance_name": i["instance_name"], "provider_id": self.provider_id,
                                    "region": i["region"], "status": "active"}}

    def _new_instance(self, name: str, api_key: str, base_url: str, region: str) -> dict:
        unique, n = name, 0
        while self.instance(unique) is not None:  # RAGFlow's duplicate_name: name(1), name(2), ...
            n += 1
            unique = f"{name}({n})"
        inst = {"id": uuid.uuid4().hex, "instance_name": unique, "api_key": api_key, "base_url": base_url,
                "region": region, "models": {}}
        self.instances.append(inst)
        return inst

    def _create_instance(self, body, query, headers, provider):
        if not body or "instance_name" not in body:
            raise _Fail(101, "instance_name is required")
        name = body["instance_name"]
        if set(body) == {"instance_name"}:
            if name == "default":
                raise _Fail(102, "Instance name cannot be 'default'")
            self._need_provider(provider, "Provider '{provider}' does not exist")
            self._new_instance(name, "", "", "")
            return {"code": 0}
        self._need_provider(provider, "Provider '{provider}' does not exist")
        if name == "default":
            raise _Fail(102, "Instance name cannot be 'default'")
        base, key, region = body.get("base_url") or "", body.get("api_key") or "", body.get("region") or ""
        ok, msg, results = self._verify(base, key, body.get("model_info"))
        if not ok:
            raise _Fail(102, msg)
        self._new_instance(name, key, base, region)
        target = self.instance(name)  # the ORIGINAL name: after a rename this is the older instance
        msg = ""
        for model in body.get("model_info") or []:
            extra = dict(model.get("extra") or {})
            extra["verify"] = results.get(model.get("model_name"), "unknown")
            msg += self._store_model(target, name, model.get("model_name"), model.get("model_type"),
                                     model.get("max_tokens", 8192), extra)
        if msg:
            raise _Fail(102, msg)
        return {"code": 0}

    def _store_model(self, inst: dict, inst_label: str, name, model_type, max_tokens, extra) -> str:
        if name in inst["models"]:
            return f"Model '{name}' already exists for provider '{PROVIDER}' and instance '{inst_label}'"
        types = [model_type] if isinstance(model_type, str) else list(model_type or [])
        inst["models"][name] = {"id": uuid.uuid4().hex, "model_type": [t for t in types if t in MODEL_TYPE_WORDS],
                                "status": "active", "extra": {"max_tokens": max_tokens, **(extra or {})}}
        return ""

    def _update_instance(self, body, query, headers, provider, name):
        if not body:
            raise _Fail(101, "Request body is required")
        missing = [k for k in ("instance_name", "api_key", "base_url", "model_info") if k not in body]
        if missing:
            raise _Fail(101, f"Missing required fields: {', '.join(missing)}")
        self._need_provider(provider, "Provider '{provider}' does not exist")
        inst = self._find_instance(provider, name)
        verify = body.get("verify", True)
        model_info = body["model_info"]
        results: dict = {}
        if verify:
            ok, msg, results = self._verify(body["base_url"], body["api_key"], model_info)
            if not ok:
                raise _Fail(102, msg)
        inst["api_key"] = body["api_key"] or ""
        if body["instance_name"] != inst["instance_name"]:
            inst["instance_name"] = body["instance_name"]
        if body["base_url"]:
            inst["base_url"] = body["base_url"]
        inst["region"] = body.get("region", "default") or inst["region"]
        submitted = {m.get("model_name") for m in model_info or [] if m.get("model_name")}
        for gone in [n for n in inst["models"] if n not in submitted]:
            del inst["models"][gone]
        msg = ""
        for model in model_info or []:
            model_name = model.get("model_name")
            if not model_name:
                continue
            if verify:
                model.setdefault("extra", {})
                model["extra"] = {**(model["extra"] or {}), "verify": results.get(model_name, "unknown")}
            if model_name in inst["models"]:
                stored = inst["models"][model_name]
                if isinstance(model.get("model_type"), (str, list)):
                    types = [model["model_type"]] if isinstance(model["model_type"], str) else model["model_type"]
                    stored["model_type"] = [t for t in types if t in MODEL_TYPE_WORDS]
                stored["extra"].update(model["extra"])  # KeyError without `extra` and verify:false, as in 0.27
                if "max_tokens" in model:
                    stored["extra"]["max_tokens"] = model["max_tokens"]
            else:
                msg += self._store_model(inst, inst["instance_name"], model_name, model.get("model_type"),
                                         model.get("max_tokens", 8192), model.get("extra"))
        if msg:
            raise _Fail(102, msg)
        return {"code": 0}

    def _delete_instances(self, body, query, headers, provider):
        names = (body or {}).get("instances")
        if not names:
            raise _Fail(101, "instances is required")
        self._need_provider(provider, "No provider found for provider '{provider}'")
        found = [next((i for i in self.instances if i["id"] == n), None) or self.instance(n) for n in names]
        missing = [n for n, i in zip(names, found) if i is None]
        if missing:
            raise _Fail(102, f"No instance found for provider '{provider}' and instance '{missing}'")
        for inst in found:
            self.instances.remove(inst)
        return {"code": 0}

    def _list_models(self, body, query, headers, provider, name):
        inst = self._find_instance(provider, name)
        out = [{"name": n, "model_type": m["model_type"], "max_tokens": m["extra"].get("max_tokens", 8192),
                "status": m["status"], "verify": m["extra"].get("verify", "unknown"), "features": [], "rank": 500,
                "extra": dict(m["extra"])} for n, m in inst["models"].items()]
        return {"code": 0, "data": sorted(out, key=lambda m: m["name"])}

    def _add_model(self, body, query, headers, provider, name):
        body = body or {}
        if not body.get("model_name") or not body.get("model_type"):
            raise _Fail(101, "model_name and model_type are required")
        inst = self._find_instance(provider, name)
        msg = self._store_model(inst, name, body["model_name"], body["model_type"], body.get("max_tokens", 8192),
                                body.get("extra"))
        if msg:
            raise _Fail(102, msg)
        return {"code": 0}

    def _delete_models(self, body, query, headers, provider, name):
        inst = self._find_instance(provider, name)
        names = set((body or {}).get("model_name") or [])  # a string becomes a set of characters, as in RAGFlow
        missing = names - set(inst["models"])
        if missing:
            raise _Fail(102, f"Models {missing} not found for provider '{provider}' and instance '{name}'")
        for n in names:
            del inst["models"][n]
        return {"code": 0}

    def _patch_model(self, body, query, headers, provider, name, model):
        if not body or not any(k in body for k in ("status", "max_tokens", "model_type", "extra")):
            raise _Fail(101, "At least one of status, max_tokens, model_type, or extra is required.")
        if body.get("status") and body["status"] not in ("active", "inactive"):
            raise _Fail(101, "status must be 'active' or 'inactive'")
        inst = self._find_instance(provider, name)
        stored = inst["models"][model]  # KeyError -> Internal server error, as in RAGFlow
        if "status" in body:
            stored["status"] = body["status"]
        stored["extra"].update(body.get("extra") or {})
        if "max_tokens" in body:
            stored["extra"]["max_tokens"] = body["max_tokens"]
        if "model_type" in body:
            types = [body["model_type"]] if isinstance(body["model_type"], str) else body["model_type"]
            stored["model_type"] = [t for t in types if t in MODEL_TYPE_WORDS]
        return {"code": 0}

    def _get_defaults(self, body, query, headers):
        out = []
        for model_type in ("chat", "embedding", "rerank", "asr", "vision", "tts", "ocr"):
            if model_type not in self.defaults:
                continue
            inst_id, name = self.defaults[model_type]
            inst = next((i for i in self.instances if i["id"] == inst_id), None)
            model = inst["models"].get(name) if inst else None
            if model is None or model["status"] != "active":
                continue  # RAGFlow leaves a stale default out
            out.append({"enable": True, "model_id": model["id"], "model_instance": inst["instance_name"],
                        "model_name": name, "model_provider": PROVIDER, "model_type": model_type})
        return {"code": 0, "data": {"models": out}}

    def _set_default(self, body, query, headers):
        body = body or {}
        model_type = body.get("model_type")
        if not model_type:
            raise _Fail(101, "model_type is required")
        if model_type not in MODEL_TYPE_WORDS:
            raise _Fail(102, f"model type '{model_type}' is invalid")
        if not any(k in body for k in ("model_provider", "model_instance", "model_name", "model_id")):
            self.defaults.pop(model_type, None)
            return {"code": 0}
        provider = body.get("model_provider")
        if provider != PROVIDER or not self.provider_id:
            raise _Fail(102, f"Provider '{provider}' not found")
        inst = self.instance(body.get("model_instance") or "")
        if inst is None:
            raise _Fail(102, f"Instance '{body.get('model_instance')}' not found for provider '{provider}'")
        model = inst["models"][body.get("model_name")]  # unknown -> Internal server error, as in RAGFlow
        if model_type not in model["model_type"]:
            raise _Fail(102, f"Model '{body.get('model_name')}' isn't a {model_type} model")
        if model["status"] != "active":
            raise _Fail(102, f"Model '{body.get('model_name')}' isn't available")
        self.defaults[model_type] = (inst["id"], body["model_name"])
        return {"code": 0}

    def _tenant_models(self, body, query, headers):
        out = []
        for inst in self.instances:
            for name, model in inst["models"].items():
                if query.get("type") and query["type"] not in model["model_type"]:
                    continue
                out.append({"model_id": model["id"], "name": name, "model_type": model["model_type"],
                            "provider_id": self.provider_id, "provider_name": PROVIDER, "instance_id": inst["id"],
                            "instance_name": inst["instance_name"], "tenant_id": self.tenant_id,
                            "tenant_name": self.tenant["name"], "rank": 500})
        return {"code": 0, "data": out}

    # -- datasets -----------------------------------------------------------------------------------

    def _list_datasets(self, body, query, headers):
        page, size = int(query.get("page") or 1), int(query.get("page_size") or 30)
        shown = [{k: v for k, v in d.items() if not k.startswith("_")} for d in self.datasets]
        return {"code": 0, "data": shown[(page - 1) * size: page * size], "total_datasets": len(shown)}

    def _embedding_target(self, embd_id: str) -> tuple[str, str, str]:
        """(base_url, api_key, uid) of a stored embedding model reference."""
        if self.legacy:
            uid = embd_id.rsplit("@", 1)[0]
            llm = self.llms.get(uid)
            if llm is None or llm["type"] != "embedding":
                raise _Fail(102, f"Model {embd_id} not found for model embedding")
            return llm["api_base"], llm["api_key"], uid
        parts = embd_id.split("@")
        inst = self.instance(parts[1]) if len(parts) == 3 else None
        model = inst["models"].get(parts[0]) if inst else None
        if model is None or "embedding" not in model["model_type"]:
            raise _Fail(102, f"Model {embd_id} not found for model embedding")
        return inst["base_url"], inst["api_key"], parts[0]

    def _check_embedding(self, body, query, headers, dataset_id):
        body = body or {}
        if not body.get("embd_id"):
            raise _Fail(102, "`embd_id` is required.")
        dataset = next((d for d in self.datasets if d["id"] == dataset_id), None)
        if dataset is None:
            raise _Fail(102, "no authorization")
        base, key, uid = self._embedding_target(body["embd_id"])
        if not dataset["chunk_count"]:
            raise _Fail(102, "No embedded chunks are available to compare.")
        results, sims = [], []
        for i in range(min(int(body.get("check_num", 5)), dataset["chunk_count"])):
            ok, vectors = self._embed(base, key, uid, ["doc.txt", f"chunk {i} of {dataset['name']}"])
            if not ok:
                raise _Fail(102, f"Embedding failure. {vectors}")
            if len(vectors[1]) != dataset["_dim"]:
                raise _Fail(102, f"Embedding failure. The dimension ({len(vectors[1])}) of given embedding model is "
                                 f"different from the original ({dataset['_dim']})")
            sim = 1.0 if body["embd_id"] == dataset["embedding_model"] else dataset["_similarity"]
            sims.append(sim)
            results.append({"chunk_id": uuid.uuid4().hex[:16], "cos_sim": sim, "doc_id": dataset["_doc_id"],
                            "doc_name": "doc.txt", "vector_dim": dataset["_dim"],
                            "vector_field": f"q_{dataset['_dim']}_vec"})
        avg = round(sum(sims) / len(sims), 6)
        summary = {"avg_cos_sim": avg, "kb_id": dataset_id, "match_mode": "title+content", "max_cos_sim": max(sims),
                   "min_cos_sim": min(sims), "model": body["embd_id"], "sampled": len(sims), "valid": len(sims)}
        data = {"results": results, "summary": summary}
        if avg >= 0.9:
            return {"code": 0, "data": data}
        raise _Fail(10, "Embedding model switch failed: the average similarity between old and new vectors is below "
                        "0.9, indicating incompatible vector spaces.", data=data)

    def _legacy_check_embedding(self, body, query, headers):
        body = dict(body or {})
        return self._check_embedding(body, query, headers, body.get("kb_id", ""))

    # -- the checks RAGFlow makes (they call Xinference) --------------------------------------------

    def _upstream(self, method: str, url: str, headers: dict, body, timeout: float, stream: bool = False):
        self.upstream.append({"method": method, "url": url, "auth": headers.get("Authorization"), "body": body})
        session = requests.Session()
        session.trust_env = False
        return session.request(method, url, headers=headers, json=body, timeout=timeout, stream=stream)

    def _chat_url(self, base: str) -> str:
        if self.legacy:  # 0.19-0.26: urljoin(base, "v1"), so ".../v1/" becomes ".../v1/v1"
            return urljoin(base, "v1")
        return ensure_v1(base)

    def _embed(self, base: str, key: str, uid: str, texts: list[str]):
        if not key:
            raise _NoKey()
        url = self._chat_url(base).rstrip("/") + "/embeddings"
        try:
            answer = self._upstream("POST", url, {"Authorization": f"Bearer {key}"},
                                    {"input": texts, "model": uid, "encoding_format": "base64"}, timeout=600)
        except requests.RequestException:
            return False, "Embedding request failed for XinferenceEmbed. Error: Connection error."
        if answer.status_code != 200:
            try:
                detail = answer.json()
            except ValueError:
                detail = answer.text
            return False, f"Embedding request failed for XinferenceEmbed. Error: Error code: {answer.status_code} - {detail!r}"
        vectors = []
        for item in sorted(answer.json().get("data") or [], key=lambda d: d.get("index", 0)):
            raw = base64.b64decode(item["embedding"])
            vectors.append(list(struct.unpack(f"<{len(raw) // 4}f", raw)))
        return True, vectors

    def _check_one(self, base: str, key: str, uid: str, model_type: str) -> tuple[bool, str]:
        """(passed, RAGFlow's failure text) for one model and type, within verify_timeout."""
        label = f"embedding model({uid})" if model_type == "embedding" else f"model({PROVIDER}/{uid})"
        if model_type in ("chat", "embedding") and not key:
            raise _NoKey()  # the OpenAI client refuses an empty key before any call
        outcome: dict = {}

        def work():
            try:
                outcome["value"] = getattr(self, f"_try_{model_type}")(base, key, uid)
            except Exception as exc:  # noqa: BLE001
                outcome["error"] = exc

        if model_type not in ("chat", "embedding", "rerank"):
            return False, ""  # RAGFlow checks no unknown type word (a type given as a string is iterated)
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(self.verify_timeout)
        if worker.is_alive():
            return False, f"\nTimeout accessing {label}."
        if "error" in outcome:
            return False, f"\nFail to access {label}.{outcome['error']}"
        ok, text = outcome["value"]
        if ok:
            return True, ""
        return False, f"\nFail to access {label}.{text}"

    def _try_embedding(self, base, key, uid):
        ok, result = self._embed(base, key, uid, ["Test if the api key is available"])
        if not ok:
            return False, result
        return (bool(result and result[0]), "")

    def _try_chat(self, base, key, uid):
        body = {"messages": [{"role": "user", "content": "Hi"}], "model": uid, "stream": True, "temperature": 0.9}
        if "qwen3" in uid:
            body["enable_thinking"] = False
        url = self._chat_url(base).rstrip("/") + "/chat/completions"
        while not self.stopping.is_set():
            try:
                answer = self._upstream("POST", url, {"Authorization": f"Bearer {key}"}, body, timeout=600, stream=True)
            except requests.RequestException:
                return False, "No valid response received"
            if answer.status_code >= 500:  # the SDK and RAGFlow retry a 5xx until the time limit
                self.stopping.wait(0.05)
                continue
            if answer.status_code != 200:
                return False, "No valid response received"
            for line in answer.iter_lines():
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    delta = json.loads(line[6:])["choices"][0].get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content"):
                        return True, ""
            return False, "No valid response received"
        return False, "stopped"

    def _try_rerank(self, base, key, uid):
        if "/rerank" in base:
            url = base
        else:
            url = urljoin(base, "/v1/rerank")  # absolute: any path prefix is dropped
        headers = {"Content-Type": "application/json", "accept": "application/json"}
        if key and key != "x":
            headers["Authorization"] = f"Bearer {key}"
        query, docs = ("Hello~ RAGFlower!", ["Hi, there!", "Ohh, my friend!"]) if self.legacy else \
            ("What's the weather?", ["Is it sunny today?"])
        try:
            answer = self._upstream("POST", url, headers, {"model": uid, "query": query, "return_documents": "true",
                                                           "return_len": "true", "documents": docs}, timeout=30)
            answer.raise_for_status()
        except requests.RequestException as exc:
            return False, str(exc)
        return True, ""  # rerank passes even without `results`: the token count is local

    def _verify(self, base: str, key: str, model_info) -> tuple[bool, str, dict]:
        """RAGFlow's verify_api_key: models in order, each type once, stop at the first that passes."""
        if model_info:
            todo = [(m.get("model_name", ""), t) for m in model_info if m for t in m.get("model_type", [])]
            if not todo:
                return False, f"No valid models found for provider '{PROVIDER}'", {}
        else:
            found = []
            try:
                answer = self._upstream("GET", base.rstrip("/") + "/v1/models", {"Authorization": f"Bearer {key}"},
                                        None, timeout=300) if base else None
                if answer is not None and answer.status_code == 200:
                    found = [(m["id"], {"LLM": "chat"}.get(m.get("model_type"), m.get("model_type") or "chat"))
                             for m in answer.json().get("data") or [] if m.get("id")]
            except requests.RequestException:
                pass
            if not found:
                return False, f"No models found for provider '{PROVIDER}'", {}
            todo = found
        results: dict[str, str] = {}
        msg, passed = "", False
        for name, model_type in todo:
            try:
                ok, text = self._check_one(base, key, name, model_type)
            except _NoKey:
                raise _Fail(102, INTERNAL) from None
            results[name] = "success" if ok else "fail"
            if ok:
                passed = True
                break
            msg += text
        if passed:
            return True, "success", results
        return False, msg or "No model passed verification", results

    # -- <= v0.25: llm_app --------------------------------------------------------------------------

    def _add_llm(self, body, query, headers):
        body = body or {}
        if "llm_factory" not in body:
            raise _Fail(101, "required argument are missing: llm_factory; ")
        if body["llm_factory"] != PROVIDER:
            raise _Fail(102, f"LLM factory {body['llm_factory']} is not allowed")
        name, model_type = body.get("llm_name"), body.get("model_type")
        key = body.get("api_key", "x")
        base = body.get("api_base", "")
        if model_type in ("chat", "embedding") and not key:
            # the model client is built outside the check's try: the route's error handler answers
            raise _Fail(100, "OpenAIError('The api_key client option must be set either by passing api_key to the "
                             "client or by setting the OPENAI_API_KEY environment variable')")
        ok, text = self._check_one(base, key, name, model_type)
        msg = "" if ok else text
        if body.get("verify"):
            return {"code": 0, "data": {"message": msg, "success": not msg.strip()}, "message": "success"}
        if msg:
            raise _Fail(102, msg, data=False)
        old = self.llms.get(name)
        self.llms[name] = {"id": old["id"] if old else len(self.llms) + 1, "type": model_type, "api_base": base,
                           "api_key": key, "max_tokens": body.get("max_tokens"), "status": "1"}
        return {"code": 0, "data": True, "message": "success"}

    def _my_llms(self, body, query, headers):
        detailed = query.get("include_details") == "true"
        llm = []
        for name, m in self.llms.items():
            entry = {"id": m["id"], "type": m["type"], "name": name, "used_token": 0, "status": m["status"]}
            if detailed:
                entry.update({"api_base": m["api_base"] or "", "max_tokens": m["max_tokens"] or 8192})
            llm.append(entry)
        data = {PROVIDER: {"tags": "LLM,TEXT EMBEDDING,TEXT RE-RANK", "llm": llm}} if llm else {}
        return {"code": 0, "data": data, "message": "success"}

    def _delete_llm(self, body, query, headers):
        body = body or {}
        self.llms.pop(body.get("llm_name"), None)
        return {"code": 0, "data": True, "message": "success"}

    def _tenant_info(self, body, query, headers):
        return {"code": 0, "data": dict(self.tenant), "message": "success"}

    def _set_tenant_info(self, body, query, headers):
        body = dict(body or {})
        missing = [k for k in ("tenant_id", "asr_id", "embd_id", "img2txt_id", "llm_id") if k not in body]
        if missing:
            raise _Fail(101, "required argument are missing: " + "; ".join(missing) + "; ", data=None)
        body.pop("tenant_id")
        self.tenant.update(body)
        return {"code": 0, "data": True, "message": "success"}


class _NoKey(Exception):
    """The OpenAI client refuses an empty key (RAGFlow answers "Internal server error")."""
