"""Faults the mirror injects on purpose, for tests: an error status, a cut connection, a wrong sha256, a delay."""

from __future__ import annotations

import threading
from dataclasses import dataclass


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
    body:        listings: answer 200 with these bytes as the body (a listing that lies, or is no listing).
    delay_s:     sleep this long before answering (stalls, timeouts).
    times:       apply to the first N matching requests only (None: to every one).
    """

    where: str = "download"
    model: str | None = None
    file: str | None = None
    status: int | None = None
    drop_after: int | None = None
    bad_sha256: bool = False
    body: bytes | None = None
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

