"""Reading the logs of the processes provision started: the tail that explains a failure."""

from __future__ import annotations

import os


def log_tail(path: str | os.PathLike, lines: int = 20) -> str:
    """The last `lines` lines of a log ("" when it is missing), read from its end only."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines()) or "    (the log is empty)"

