"""What a person sees while a command works: event lines and per-model progress, on stderr (stdout stays
clean for --json).

Several models download and launch at once, so progress is kept per key (a model's uid, "server"):

- on a terminal, each key has a live line of its own at the bottom (rich, imported only then, so
  `provision --help` stays fast), and event lines scroll above them;
- elsewhere (CI, logs, a pipe) each key's progress is printed as a plain line at most every few
  seconds, so long work shows life without flooding the log.

Every method may be called from any thread.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO


class Console:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False, min_interval: float = 5.0,
                 live: bool | None = None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.live = tty if live is None else live
        self.min_interval = min_interval
        self._lock = threading.RLock()
        self._last: dict[str, float] = {}  # key -> when its last plain progress line was printed
        self._status: dict[str, str] = {}  # key -> its live line
        self._display: Any = None  # rich.live.Live while any key has a live line
        self._rich: Any = None

    # -- events -------------------------------------------------------------------------------------

    def line(self, text: str = "") -> None:
        if self.quiet:
            return
        with self._lock:
            if self._display is not None:
                self._rich.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def warn(self, text: str) -> None:
        self.line(f"warning: {text}")

    # -- progress -----------------------------------------------------------------------------------

    def progress(self, key: str, text: str, *, final: bool = False) -> None:
        """The latest progress of `key`; `final` prints it as a line and ends the key's live line."""
        if self.quiet:
            return
        with self._lock:
            if final:
                self._drop(key)
                self.line(text)
                return
            if self.live:
                self._status[key] = text
                self._refresh()
                return
            now = time.monotonic()
            if now - self._last.get(key, -self.min_interval) < self.min_interval:
                return
            self._last[key] = now
            self.line(text)

    def done(self, key: str) -> None:
        """`key` has no progress to show any more."""
        with self._lock:
            self._drop(key)

    def close(self) -> None:
        with self._lock:
            self._status.clear()
            self._refresh()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the live display ---------------------------------------------------------------------------

    def _drop(self, key: str) -> None:
        self._last.pop(key, None)
        if self._status.pop(key, None) is not None:
            self._refresh()

    def _refresh(self) -> None:
        if not self._status:
            if self._display is not None:
                self._display.update("", refresh=True)
                self._display.stop()
                self._display = None
            return
        if self._display is None:
            from rich.console import Console as RichConsole
            from rich.live import Live

            self._rich = self._rich or RichConsole(file=self.stream, highlight=False, soft_wrap=True)
            self._display = Live(console=self._rich, refresh_per_second=8, transient=True,
                                 redirect_stdout=False, redirect_stderr=False)
            self._display.start()
        from rich.text import Text

        self._display.update(Text("\n".join(self._status.values()), no_wrap=True, overflow="ellipsis"))
