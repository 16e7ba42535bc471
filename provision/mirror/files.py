"""The mirror's view of its folder: which files it serves (never outside the folder, never hidden or
partial ones), their sha256 (cached), and byte ranges."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path

from ..modelfiles import is_hidden

SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")  # one owner or name: no slash, no leading dot


class HashCache:
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



def walk(root: Path, base: Path, *, recursive: bool):
    """Yield (path relative to ``base``, path, stat) for every entry under ``base``; stat is None for
    a folder. Hidden entries, partial downloads and anything resolving outside ``root`` are skipped."""
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if is_hidden(entry.name):
            continue
        path = Path(entry.path)
        try:
            resolved = path.resolve()
            if not resolved.is_relative_to(root):
                continue
            if entry.is_dir():
                yield entry.name, path, None
                if recursive:
                    for rel, sub, st in walk(root, path, recursive=True):
                        yield f"{entry.name}/{rel}", sub, st
            elif entry.is_file():
                yield entry.name, path, path.stat()
        except OSError:
            continue  # vanished or unreadable while we looked



def safe_relpath(raw: str) -> Path | None:
    """A repo-relative path, or None when it could leave the model folder."""
    if not raw or "\x00" in raw or "\\" in raw or raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        return None
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return Path(*parts)


def hidden_path(rel: Path) -> bool:
    return any(is_hidden(part) for part in rel.parts)


def parse_range(header: str | None, size: int):
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

