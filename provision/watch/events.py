"""`watch`'s log: one timestamped line per event on the console, and with --json-log one JSON object per line
(ts, event, subject, detail, and the event's facts) appended to a file.

Events: start, up (the first `up`'s outcome), ok (all healthy; summarised, at most every OK_EVERY_S), drift (a
subject is not healthy, and why), still (a drift's reason changed), waiting (Xinference brings it back
itself), ended (a watched process ended between checks), recovered (back without a repair), repair (an `up` starts, and for what), repaired (back, in N s),
repair_failed (not back; next try in N s), stable (healthy long enough: its backoff starts afresh), stop.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from typing import Callable, TextIO

from ..errors import UsageError

OK_EVERY_S = 600.0  # an "ok" line at most this often while nothing happens


class EventLog:
    def __init__(self, write_line: Callable[[str], None], json_path: str | None = None,
                 clock: Callable[[], float] = time.time):
        self.write_line = write_line
        self.clock = clock
        self.lock = threading.Lock()
        self.json: TextIO | None = None
        if json_path:
            try:
                fd = os.open(json_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise UsageError(f"--json-log {json_path}: {exc.strerror or exc}",
                                 hint="give a file in a folder that exists and that you may write") from exc
            self.json = os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def emit(self, event: str, subject: str = "", detail: str = "", **facts) -> None:
        self.emit_many(event, [subject], detail, [facts])

    def emit_many(self, event: str, subjects: list[str], detail: str, facts: list[dict]) -> None:
        """The same event for several subjects: one console line naming them all, one JSON line each."""
        stamp = datetime.fromtimestamp(self.clock(), timezone.utc).astimezone()
        named = ", ".join(s for s in subjects if s)
        text = f"{stamp:%Y-%m-%d %H:%M:%S} {event}" + (f" {named}" if named else "") + (f": {detail}" if detail else "")
        with self.lock:
            self.write_line(text)
            if self.json is None:
                return
            for subject, more in zip(subjects, facts):
                record = {"ts": stamp.isoformat(timespec="milliseconds"), "event": event, "subject": subject,
                          "detail": detail, **{k: v for k, v in more.items() if v is not None}}
                self.json.write(json.dumps(record, default=str) + "\n")

    def close(self) -> None:
        with self.lock:
            if self.json is not None:
                self.json.close()
                self.json = None
