"""What a person or a script reads: tables, sizes and durations, and the --json envelope."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, TextIO

STATUS_BY_EXIT = {0: "success", 1: "error", 2: "error", 3: "partial"}


def envelope(command: str, exit_code: int, data: dict | None = None, errors: Iterable[dict] = ()) -> dict:
    """One JSON document per command: status, the command's data, and every error."""
    doc = {"command": command, "status": STATUS_BY_EXIT.get(exit_code, "error"), "exit_code": exit_code}
    doc.update(data or {})
    doc["errors"] = list(errors)
    return doc


def print_json(doc: Any, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(doc, indent=2, default=str) + "\n")
    stream.flush()


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain, aligned text table (no colours: logs and CI keep it readable)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 100 else f"{value / 60:.1f}m"


def human_bytes(count: float | None) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
