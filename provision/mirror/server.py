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

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
from collections import deque
from http.server import ThreadingHTTPServer
from pathlib import Path

from ..errors import ServerError, UsageError
from .faults import FaultPlan
from .files import SEGMENT, HashCache, walk
from .handler import Handler, LoggedRequest

log = logging.getLogger("provision.mirror")


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
        log_limit: int = 10_000,
        hash_limit: int = 4096,
    ):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise UsageError(f"mirror folder {root} does not exist or is not a directory")
        self.token = token
        self.rate_limit_bytes_per_s = rate_limit_bytes_per_s
        self.faults = FaultPlan()
        self.request_log: deque[LoggedRequest] = deque(maxlen=log_limit)  # the latest requests, for tests and logs
        self.hashes = HashCache(hash_limit)
        try:
            self._httpd = _HTTPServer((host, port), Handler, self)
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
            if not (owner.is_dir() and SEGMENT.match(owner.name)):
                continue
            names = [m.name for m in sorted(owner.iterdir()) if m.is_dir() and SEGMENT.match(m.name)]
            found += [f"{owner.name}/{name}" for name in names]
        return found

    def warm(self) -> None:
        """Hash every served file now, so the first listing of a big model answers at once."""
        for model in self.models():
            for _rel, path, st in walk(self.root, self.root / model, recursive=True):
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
