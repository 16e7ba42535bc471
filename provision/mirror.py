"""A ModelScope-hub API server over a folder of models: an intranet mirror, and the tests' hub.

Layout: ``DIR/<owner>/<name>/<files...>`` is served as the model ``owner/name``. The real
``modelscope`` client (``snapshot_download(..., endpoint=mirror.url)`` or ``MODELSCOPE_ENDPOINT``)
talks to it unchanged. The routes are the ones that client uses (see reference/modelscope.md §3):

    GET /api/v1/models/{owner}/{name}/repo/files?Revision=..&Recursive=True[&Root=sub]   listing
    GET /api/v1/models/{owner}/{name}/repo?Revision=..&FilePath=<quote_plus path>         file bytes
    GET /api/v1/models/{owner}/{name}                                                     repo info
    GET /api/v1/models/{owner}/{name}/revisions                                           "master" only
    GET /api/v1/repos/internalAccelerationInfo                                            always 404

A folder has no history, so every ``Revision`` is answered with the same files. Hidden entries
(``.git``, ``.cache``...) and partial downloads (``*.incomplete``) are never listed nor served, and
nothing outside DIR is ever served: ``..``, absolute paths and symlinks that leave DIR are refused.

Stdlib only; ``FaultPlan`` lets tests make the server fail on purpose.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ServerError, UsageError

log = logging.getLogger(__name__)

API = ("api", "v1")
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")  # one owner or name: no slash, no leading dot
_CHUNK = 1024 * 1024
_PARTIAL_SUFFIXES = (".incomplete", ".parallel_tmp")


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.endswith(_PARTIAL_SUFFIXES)


class LoggedRequest(NamedTuple):
    """One request the mirror answered, kept in ``MirrorServer.request_log``."""

    method: str
    path: str  # the raw request target, query included
    range: str | None  # the Range header, if any
    status: int

    @property
    def file(self) -> str | None:
        """The decoded ``FilePath`` of a download request, else None."""
        split = urlsplit(self.path)
        if not split.path.endswith("/repo"):
            return None
        values = parse_qs(split.query).get("FilePath")
        return values[0] if values else None


# --------------------------------------------------------------------------- fault injection


@dataclass
class Fault:
    """One failure to inject. Matching requests are answered by the fault instead of normally.

    where:       "listing", "download" or "info" (repo info and revisions).
    model:       "owner/name", or None for any model.
    file:        downloads: only this FilePath (None: any file). Listings with ``bad_sha256``:
                 the entry to corrupt (None: every file).
    status:      answer this HTTP status with a JSON error body.
    drop_after:  downloads: announce the full length, send this many bytes, then cut the connection.
    bad_sha256:  listings: advertise a wrong Sha256.
    delay_s:     sleep this long before answering (stalls, timeouts).
    times:       apply to the first N matching requests only (None: to every one).
    """

    where: str = "download"
    model: str | None = None
    file: str | None = None
    status: int | None = None
    drop_after: int | None = None
    bad_sha256: bool = False
    delay_s: float = 0.0
    times: int | None = None
    hits: int = 0

    def matches(self, where: str, model: str, file: str | None) -> bool:
        if self.where != where or (self.model is not None and self.model != model):
            return False
        if where == "download" and self.file is not None and self.file != file:
            return False
        return self.times is None or self.hits < self.times


class FaultPlan:
    """A thread-safe list of faults; the first active fault that matches a request wins."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault | None = None, /, **fields) -> Fault:
        """``plan.add(Fault(...))`` or ``plan.add(where="listing", status=500)``."""
        fault = fault if fault is not None else Fault(**fields)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, where: str, model: str, file: str | None = None) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(where, model, file):
                    fault.hits += 1
                    return fault
        return None


# --------------------------------------------------------------------------- sha256 cache


class _HashCache:
    """sha256 per (path, size, mtime_ns); concurrent requests for one file hash it once."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, int, int], str] = {}
        self._busy: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def sha256(self, path: Path, st: os.stat_result | None = None) -> str:
        st = st or path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if (hit := self._done.get(key)) is not None:
            return hit
        with self._lock:
            file_lock = self._busy.setdefault(key[0], threading.Lock())
        with file_lock:
            if (hit := self._done.get(key)) is not None:
                return hit
            with path.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            self._done[key] = digest
            return digest


# --------------------------------------------------------------------------- the server


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, mirror: MirrorServer):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.mirror = mirror
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)


class MirrorServer:
    """Serve ``root`` with the ModelScope hub API on ``host:port`` (port 0: a free port).

    ``with MirrorServer(root) as mirror: snapshot_download(id, endpoint=mirror.url, ...)``.
    """

    def __init__(
        self,
        root: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        rate_limit_bytes_per_s: int | None = None,
    ):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise UsageError(f"mirror folder {root} does not exist or is not a directory")
        self.token = token
        self.rate_limit_bytes_per_s = rate_limit_bytes_per_s
        self.faults = FaultPlan()
        self.request_log: list[LoggedRequest] = []
        self.hashes = _HashCache()
        try:
            self._httpd = _HTTPServer((host, port), _Handler, self)
        except OSError as exc:
            raise ServerError(
                f"the mirror cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="pick another --port, or stop whatever holds this one",
            ) from exc
        self.host, self.port = self._httpd.server_address[:2]
        self._thread: threading.Thread | None = None
        self._serving = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def models(self) -> list[str]:
        """The model ids found under root, sorted."""
        found = []
        for owner in sorted(self.root.iterdir()):
            if not (owner.is_dir() and _SEGMENT.match(owner.name)):
                continue
            names = [m.name for m in sorted(owner.iterdir()) if m.is_dir() and _SEGMENT.match(m.name)]
            found += [f"{owner.name}/{name}" for name in names]
        return found

    def warm(self) -> None:
        """Hash every served file now, so the first listing of a big model answers at once."""
        for model in self.models():
            for _rel, path, st in _walk(self.root, self.root / model, recursive=True):
                if st is not None:
                    self.hashes.sha256(path, st)

    def start(self) -> MirrorServer:
        """Serve in a background thread; returns self."""
        if self._thread is None:
            self._serving = True
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="mirror", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until ``stop()`` is called from another thread, or an exception."""
        self._serving = True
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._serving = False

    def stop(self) -> None:
        """Stop serving, cut open connections, close the listening socket. Safe to call twice."""
        if self._serving:
            self._httpd.shutdown()
            self._serving = False
        with self._httpd.connections_lock:
            open_connections = list(self._httpd.connections)
        for conn in open_connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _walk(root: Path, base: Path, *, recursive: bool):
    """Yield (path relative to ``base``, path, stat) for every entry under ``base``; stat is None for
    a folder. Hidden entries, partial downloads and anything resolving outside ``root`` are skipped."""
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if _hidden(entry.name):
            continue
        path = Path(entry.path)
        try:
            resolved = path.resolve()
            if not resolved.is_relative_to(root):
                continue
            if entry.is_dir():
                yield entry.name, path, None
                if recursive:
                    for rel, sub, st in _walk(root, path, recursive=True):
                        yield f"{entry.name}/{rel}", sub, st
            elif entry.is_file():
                yield entry.name, path, path.stat()
        except OSError:
            continue  # vanished or unreadable while we looked


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "provision-mirror"
    timeout = 120  # an idle keep-alive connection is closed after this

    # ---------------------------------------------------------------- plumbing

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_request(self, code="-", size="-") -> None:  # we log once per request ourselves
        pass

    def log_message(self, format, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    @property
    def mirror(self) -> MirrorServer:
        return self.server.mirror

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        self._head = head
        self._status = 0
        self._sent = 0
        self._request_id = self.headers.get("X-Request-ID") or uuid.uuid4().hex
        started = time.monotonic()
        try:
            self._route()
        except ConnectionError:  # the client went away
            self.close_connection = True
        except Exception:  # a bug or an unreadable file must not kill the server thread silently
            log.exception("mirror: error while answering %s", self.path)
            if self._status:  # the head is out: the body cannot be trusted, end the connection
                self.close_connection = True
            else:
                self._error(500, "internal error in the mirror")
        finally:
            self.mirror.request_log.append(
                LoggedRequest(self.command, self.path, self.headers.get("Range"), self._status)
            )
            log.info(
                '%s "%s %s" %s %s%s %.3fs',
                self.client_address[0],
                self.command,
                self.path,
                self._status,
                self._sent,
                f" range={self.headers['Range']}" if self.headers.get("Range") else "",
                time.monotonic() - started,
            )

    def _send_head(self, status: int, headers: dict[str, str]) -> None:
        self._status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self._send_head(status, {"Content-Type": "application/json", "Content-Length": str(len(data))})
        if not self._head:
            self.wfile.write(data)
            self._sent += len(data)

    def _ok(self, data) -> None:
        body = {"Code": 200, "Success": True, "Message": "success", "RequestId": self._request_id, "Data": data}
        self._json(200, body)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"Code": status, "Success": False, "Message": message, "RequestId": self._request_id})

    # ---------------------------------------------------------------- routing

    def _route(self) -> None:
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        if tuple(parts[:2]) != API:
            return self._error(404, f"no such API: {split.path}")
        rest = parts[2:]
        if rest == ["repos", "internalAccelerationInfo"]:
            return self._error(404, "no acceleration info on a mirror")
        if not self._authorized():
            return self._error(401, "a valid token is required: Authorization: Bearer <token>")
        if len(rest) < 3 or rest[0] != "models":
            return self._error(404, f"no such API: {split.path}")
        owner, name, tail = rest[1], rest[2], rest[3:]
        if not (_SEGMENT.match(owner) and _SEGMENT.match(name)):
            return self._error(400, f"invalid model id {owner!r}/{name!r}")
        model_id = f"{owner}/{name}"
        model_dir = self.mirror.root / owner / name
        if not model_dir.is_dir() or not model_dir.resolve().is_relative_to(self.mirror.root):
            return self._error(404, f"model {model_id} not found")
        if tail == ["repo", "files"]:
            return self._listing(model_id, model_dir, query)
        if tail == ["repo"]:
            return self._download(model_id, model_dir, query)
        if tail in ([], ["revisions"]):
            fault = self._fault("info", model_id)
            if fault is not None and fault.status is not None:
                return None
            if tail == ["revisions"]:
                created = int(model_dir.stat().st_mtime)
                branches = [{"Revision": "master", "CreatedAt": created}]
                return self._ok({"RevisionMap": {"Branches": branches, "Tags": []}})
            return self._ok({"Id": model_id, "Path": owner, "Name": name, "Revision": "master", "Private": False})
        return self._error(404, f"no such API: {split.path}")

    def _authorized(self) -> bool:
        token = self.mirror.token
        if not token:
            return True
        offered = []
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            offered.append(auth[7:].strip())
        for cookie in self.headers.get_all("Cookie") or []:
            for part in cookie.split(";"):
                key, _, value = part.strip().partition("=")
                if key == "m_session_id":
                    offered.append(value)
        return any(hmac.compare_digest(o.encode(), token.encode()) for o in offered)

    def _fault(self, where: str, model_id: str, file: str | None = None) -> Fault | None:
        """Take the matching fault, if any: apply its delay, and answer its status if it has one."""
        fault = self.mirror.faults.take(where, model_id, file)
        if fault is not None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.status is not None:
                self._error(fault.status, f"injected fault: HTTP {fault.status}")
        return fault

    # ---------------------------------------------------------------- listing

    def _listing(self, model_id: str, model_dir: Path, query: dict[str, str]) -> None:
        fault = self._fault("listing", model_id)
        if fault is not None and fault.status is not None:
            return
        revision = query.get("Revision") or "master"
        recursive = query.get("Recursive", "True").lower() in ("true", "1", "yes")
        sub = query.get("Root", "").strip("/")
        base = model_dir
        if sub:
            if (rel := _safe_relpath(sub)) is None:
                return self._error(400, f"invalid Root {sub!r}")
            base = model_dir / rel
            if not base.is_dir() or _hidden_path(rel) or not base.resolve().is_relative_to(self.mirror.root):
                return self._error(404, f"folder {sub} not found in {model_id}")
        bad = fault if fault is not None and fault.bad_sha256 else None
        files = []
        for rel, path, st in _walk(self.mirror.root, base, recursive=recursive):
            full = f"{sub}/{rel}" if sub else rel
            if st is None:
                tree = {"Name": path.name, "Path": full, "Type": "tree", "Size": 0, "Sha256": "", "Revision": revision}
                files.append(tree)
                continue
            sha = self.mirror.hashes.sha256(path, st)
            if bad is not None and bad.file in (None, full):
                sha = hashlib.sha256(sha.encode()).hexdigest()  # wrong, but well-formed
            files.append(
                {
                    "Name": path.name,
                    "Path": full,
                    "Type": "blob",
                    "Size": st.st_size,
                    "Sha256": sha,
                    "Revision": revision,
                    "IsLFS": st.st_size > 10 * 1024 * 1024,
                    "CommittedDate": int(st.st_mtime),
                }
            )
        self._ok({"Files": files})

    # ---------------------------------------------------------------- download

    def _download(self, model_id: str, model_dir: Path, query: dict[str, str]) -> None:
        raw = query.get("FilePath")
        if not raw:
            return self._error(400, "FilePath is required")
        rel = _safe_relpath(raw)
        if rel is None:
            return self._error(400, f"invalid FilePath {raw!r}")
        path = model_dir / rel
        try:
            inside = path.resolve().is_relative_to(self.mirror.root)
        except OSError:
            inside = False
        if _hidden_path(rel) or not inside or not path.is_file():
            return self._error(404, f"file {raw} not found in {model_id}")
        fault = self._fault("download", model_id, raw)
        if fault is not None and fault.status is not None:
            return
        drop_after = fault.drop_after if fault is not None else None

        with path.open("rb") as fh:
            st = os.fstat(fh.fileno())
            size = st.st_size
            headers = {
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
                "X-Linked-ETag": f'"{self.mirror.hashes.sha256(path, st)}"',
                "X-Request-ID": self._request_id,
            }
            span = _parse_range(self.headers.get("Range"), size)
            if span == "unsatisfiable":
                headers["Content-Range"] = f"bytes */{size}"
                headers["Content-Length"] = "0"
                return self._send_head(416, headers)
            start, end = span if span else (0, size - 1)
            length = end - start + 1 if size else 0
            headers["Content-Length"] = str(length)
            if span:
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            self._send_head(206 if span else 200, headers)
            if self._head or length == 0:
                return
            to_send = length if drop_after is None else min(length, drop_after)
            self._send_body(fh, start, to_send)
            if to_send < length:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

    def _send_body(self, fh, offset: int, count: int) -> None:
        rate = self.mirror.rate_limit_bytes_per_s
        if not rate:
            self._sent += self.connection.sendfile(fh, offset, count)
            return
        fh.seek(offset)
        started = time.monotonic()
        chunk = max(1, min(_CHUNK, rate // 10 or 1))  # about ten writes a second
        while self._sent < count:
            block = fh.read(min(chunk, count - self._sent))
            if not block:
                break
            self.wfile.write(block)
            self._sent += len(block)
            ahead = self._sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)


def _safe_relpath(raw: str) -> Path | None:
    """A repo-relative path, or None when it could leave the model folder."""
    if not raw or "\x00" in raw or "\\" in raw or raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        return None
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return Path(*parts)


def _hidden_path(rel: Path) -> bool:
    return any(_hidden(part) for part in rel.parts)


def _parse_range(header: str | None, size: int):
    """None (whole file), (start, end) inclusive, or "unsatisfiable". Malformed or multi-range: None."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
    else:  # suffix range: the last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        start, end = max(0, size - n), size - 1
    if start >= size:
        return "unsatisfiable"
    return start, end


# --------------------------------------------------------------------------- CLI entry


def serve(root: Path, host: str = "127.0.0.1", port: int = 8080, token: str | None = None) -> None:
    """Serve ``root`` until Ctrl-C or SIGTERM. Prints the URL, then blocks."""
    mirror = MirrorServer(root, host=host, port=port, token=token)
    models = mirror.models()
    print(f"Serving ModelScope mirror of {mirror.root} at {mirror.url}", flush=True)
    print(
        f"  {len(models)} model(s){': ' + ', '.join(models[:8]) if models else ''}"
        f"{f' and {len(models) - 8} more' if len(models) > 8 else ''}",
        flush=True,
    )
    print(f"  use it with: MODELSCOPE_ENDPOINT={mirror.url}", flush=True)
    threading.Thread(target=_warm_quietly, args=(mirror,), name="mirror-warm", daemon=True).start()

    previous = None
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        mirror.serve_forever()
    except KeyboardInterrupt:
        print("Stopping the mirror.", file=sys.stderr, flush=True)
    finally:
        mirror.stop()
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _warm_quietly(mirror: MirrorServer) -> None:
    started = time.monotonic()
    try:
        mirror.warm()
    except OSError as exc:
        log.warning("mirror: hashing the files failed: %s", exc)
        return
    log.info("mirror: sha256 of every file ready in %.1fs", time.monotonic() - started)
