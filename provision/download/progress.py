"""Download progress: the folder's growth (finished files + `*.incomplete` partials) against the listing
total, reported from a small thread (the hub client has no byte-progress hook we want to depend on)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import hub
from .folder import file_size

PROGRESS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class DownloadProgress:
    """One progress event; callbacks may be called from a background thread."""

    uid: str
    state: str  # listing, downloading, done, failed, skipped
    bytes_done: int = 0
    bytes_total: int | None = None  # from the listing; None when unknown
    message: str = ""


ProgressFn = Callable[[DownloadProgress], None]


@dataclass(frozen=True)
class Emit:
    uid: str
    progress: ProgressFn | None

    def __call__(self, state: str, done: int = 0, total: int | None = None, message: str = "") -> None:
        if self.progress is not None:
            self.progress(DownloadProgress(self.uid, state, done, total, message))



class ProgressWatcher:
    """Reports the folder's growth (finished files + `*.incomplete` partials) against the listing total
    from a small thread: the client has no byte-progress hook we want to depend on."""

    def __init__(self, folder: Path, files: list[hub.RepoFile], emit: Emit):
        self.folder, self.files, self.emit = folder, files, emit
        self.total = sum(f.size for f in files)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"download-progress-{emit.uid}", daemon=True)

    def bytes_done(self) -> int:
        done = 0
        for f in self.files:
            path = self.folder / f.path
            done += f.size if file_size(path) == f.size else file_size(path.with_name(path.name + ".incomplete"))
        return min(done, self.total)

    def _run(self) -> None:
        last = None
        while True:
            if (done := self.bytes_done()) != last:
                self.emit("downloading", done, self.total)
                last = done
            if self._stop.wait(PROGRESS_INTERVAL_S):
                return

    def __enter__(self) -> ProgressWatcher:
        if self.emit.progress is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

