"""The HTTP side of the mirror: the ModelScope routes the real `modelscope` client uses."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import socket
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from .faults import Fault
from ..modelfiles import safe_relpath
from .files import SEGMENT, hidden_path, parse_range, walk

if TYPE_CHECKING:
    from .server import MirrorServer, _HTTPServer

log = logging.getLogger("provision.mirror")

API = ("api", "v1")
_CHUNK = 1024 * 1024
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


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



class Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body go out in separate writes: no 40 ms delayed-ACK stall
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
        offered = self.headers.get("X-Request-ID") or ""
        # Echoed in a header: only a plain token, never a folded or otherwise crafted value.
        self._request_id = offered if _REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
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
        if not (SEGMENT.match(owner) and SEGMENT.match(name)):
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
        if fault is not None and fault.body is not None:
            self._send_head(200, {"Content-Type": "application/json", "Content-Length": str(len(fault.body))})
            self.wfile.write(fault.body)
            self._sent += len(fault.body)
            return
        revision = query.get("Revision") or "master"
        recursive = query.get("Recursive", "True").lower() in ("true", "1", "yes")
        sub = query.get("Root", "").strip("/")
        base = model_dir
        if sub:
            if (rel := safe_relpath(sub)) is None:
                return self._error(400, f"invalid Root {sub!r}")
            base = model_dir / rel
            if not base.is_dir() or hidden_path(rel) or not base.resolve().is_relative_to(self.mirror.root):
                return self._error(404, f"folder {sub} not found in {model_id}")
        bad = fault if fault is not None and fault.bad_sha256 else None
        files = []
        for rel, path, st in walk(self.mirror.root, base, recursive=recursive):
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
        rel = safe_relpath(raw)
        if rel is None:
            return self._error(400, f"invalid FilePath {raw!r}")
        path = model_dir / rel
        try:
            inside = path.resolve().is_relative_to(self.mirror.root)
        except OSError:
            inside = False
        if hidden_path(rel) or not inside or not path.is_file():
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
            span = parse_range(self.headers.get("Range"), size)
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

