"""The mirror's view of its folder: which files it serves (never outside the folder, never hidden or
partial ones), their sha256 (cached), and byte ranges."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

from ..modelfiles import is_hidden

SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")  # one owner or name: no slash, no leading dot


class HashCache:
    """sha256 per (path, size, mtime_ns), the `limit` most recently used kept; concurrent requests for one
    file hash it once."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._done: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        self._busy: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._done)

    def sha256(self, path: Path, st: os.stat_result | None = None) -> str:
        st = st or path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if (hit := self._get(key)) is not None:
            return hit
        with self._lock:
            file_lock = self._busy.setdefault(key[0], threading.Lock())
        try:
            with file_lock:
                if (hit := self._get(key)) is not None:
                    return hit
                digest = _sha256_of(path)
                with self._lock:
                    self._done[key] = digest
                    while len(self._done) > self.limit:
                        self._done.popitem(last=False)
                return digest
        finally:
            with self._lock:
                self._busy.pop(key[0], None)

    def _get(self, key: tuple[str, int, int]) -> str | None:
        with self._lock:
            hit = self._done.get(key)
            if hit is not None:
                self._done.move_to_end(key)
            return hit


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()  # hashlib.file_digest needs Python 3.11; the package runs on 3.10
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()



def walk(root: Path, base: Path, *, recursive: bool, _seen: frozenset = frozenset()):
    """Yield (path relative to ``base``, path, stat) for every entry under ``base``; stat is None for
    a folder. Hidden entries, partial downloads, anything resolving outside ``root``, links that loop and
    folders already on the way down are skipped."""
    seen = _seen | {os.path.realpath(base)}
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if is_hidden(entry.name):
            continue
        path = Path(entry.path)
        try:
            resolved = path.resolve(strict=True)
            if not resolved.is_relative_to(root):
                continue
            if entry.is_dir():
                if str(resolved) in seen:
                    continue  # a link back up: walking it would never end
                yield entry.name, path, None
                if recursive:
                    for rel, sub, st in walk(root, path, recursive=True, _seen=seen):
                        yield f"{entry.name}/{rel}", sub, st
            elif entry.is_file():
                yield entry.name, path, path.stat()
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Path.resolve)
            continue  # vanished or unreadable while we looked



def hidden_path(rel: Path) -> bool:
    return any(is_hidden(part) for part in rel.parts)


def parse_range(header: str | None, size: int):
    """None (whole file), (start, end) inclusive, or "unsatisfiable". Malformed or multi-range: None."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = _position(m.group(1)), _position(m.group(2))
    if first is not None:
        start = first
        end = min(last, size - 1) if last is not None else size - 1
        if last is not None and last < start:
            return None
    else:  # suffix range: the last N bytes
        n = last
        if n == 0:
            return "unsatisfiable"
        start, end = max(0, size - n), size - 1
    if start >= size:
        return "unsatisfiable"
    return start, end


def _position(digits: str) -> int | None:
    """A byte position of a Range header; more digits than any file has bytes count as "past the end"."""
    if not digits:
        return None
    return int(digits) if len(digits) <= 18 else 10**18
