"""`provision bench`: run the bench on the stack the state records, write its files, compare with a run before."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .. import bench as load
from ..errors import EXIT_FAILED, EXIT_OK
from ..state import StateDir


@dataclass
class BenchResult:
    report: load.BenchReport
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    comparison: load.Comparison | None = None

    @property
    def exit_code(self) -> int:
        """1 when an endpoint failed requests, or (with a report to compare with) something got slower."""
        slower = self.comparison is not None and self.comparison.exit_code != 0
        return EXIT_FAILED if self.report.exit_code or slower else EXIT_OK

    def text_lines(self) -> list[str]:
        """The tables, the comparison, the files; last, one sentence per endpoint."""
        lines = load.text_lines(self.report, sentences=False)
        if self.comparison is not None:
            lines += ["", "Against the earlier run:"] + [f"  {line}" for line in self.comparison.lines()]
        lines += [""] * bool(self.files or self.notes) + [f"Wrote {path}" for path in self.files] + self.notes
        return lines + [""] + [e.sentence for e in self.report.endpoints]

    def to_json(self) -> dict:
        return {"report": self.report.to_json(), "files": self.files, "notes": self.notes,
                "comparison": self.comparison.to_json() if self.comparison is not None else None}


def bench(state_dir: StateDir | str | os.PathLike | None, *, duration: float, concurrency: list[int],
          endpoints: list[str] | None = None, out: str | os.PathLike | None = None,
          compare_with: str | os.PathLike | None = None, max_requests: int = load.MAX_REQUESTS,
          on_level=None) -> BenchResult:
    """Load the stack's endpoints; with `out` (made before anything is loaded), write bench.json and the PNGs
    there; with `compare_with` (an earlier bench.json, read before anything is loaded), say what got slower."""
    earlier = load.load_report(compare_with) if compare_with is not None else None
    if out is not None:
        load.prepare_outputs(out)
    report = load.run(state_dir, duration=duration, concurrency=concurrency, endpoints=endpoints,
                      max_requests=max_requests, on_level=on_level)
    result = BenchResult(report)
    if out is not None:
        files, result.notes = load.write_outputs(report, out)
        result.files = [str(p) for p in files]
    if earlier is not None:
        result.comparison = load.compare(earlier, report)
    return result
