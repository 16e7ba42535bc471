"""One PNG per endpoint: latency percentiles (top) and throughput (bottom) against concurrency.

matplotlib is optional (the `plot` extra) and imported only here, only when a plot is asked for.
"""

from __future__ import annotations

import re
from pathlib import Path

from .report import BenchReport, EndpointReport

MISSING = "matplotlib is not installed (pip install 'provision[plot]'): only the JSON was written"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def file_name(endpoint: EndpointReport) -> str:
    return "bench-" + re.sub(r"[^A-Za-z0-9._-]+", "-", endpoint.name) + ".png"


def write_plots(report: BenchReport, folder: Path) -> list[Path]:
    """The PNGs of the endpoints that were measured; ImportError when matplotlib is missing."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: no display needed
    from matplotlib import pyplot

    written = []
    for endpoint in report.endpoints:
        levels = [lv for lv in endpoint.levels if lv.latency is not None]
        if not levels:
            continue
        x = [lv.concurrency for lv in levels]
        figure, (top, bottom) = pyplot.subplots(2, 1, figsize=(7, 6.5), sharex=True)
        try:
            for label, pick in (("p50", lambda p: p.p50), ("p90", lambda p: p.p90), ("p99", lambda p: p.p99)):
                top.plot(x, [pick(lv.latency) * 1000 for lv in levels], marker="o", label=label)
            if endpoint.role == "chat" and any(lv.ttft for lv in levels):
                top.plot(x, [lv.ttft.p50 * 1000 if lv.ttft else float("nan") for lv in levels], marker="s",
                         linestyle="--", label="time to first token p50")
            top.set_ylabel("latency (ms)")
            top.set_title(f"{endpoint.name} ({endpoint.uid}) - {report.stack}")
            top.grid(True, alpha=0.3)
            top.legend()
            bottom.plot(x, [lv.rps for lv in levels], marker="o", color="tab:green", label="requests/s")
            bottom.set_ylabel("requests/s")
            bottom.set_xlabel("concurrency")
            bottom.grid(True, alpha=0.3)
            if endpoint.role == "chat" and any(lv.tokens_per_s for lv in levels):
                tokens = bottom.twinx()
                tokens.plot(x, [lv.tokens_per_s or 0 for lv in levels], marker="s", color="tab:purple",
                            label="output tokens/s")
                tokens.set_ylabel("output tokens/s")
                tokens.set_ylim(bottom=0)  # from 0 like the other axes: a drop is not drawn larger than it is
                tokens.legend(loc="lower right")
            bottom.legend(loc="upper left")
            if len(x) > 1:
                bottom.set_xscale("log", base=2)  # levels usually double: 1, 2, 4, 8
            bottom.set_xticks(x, [str(c) for c in x])
            bottom.minorticks_off()
            top.set_ylim(bottom=0)
            bottom.set_ylim(bottom=0)
            figure.tight_layout()
            path = folder / file_name(endpoint)
            figure.savefig(path, dpi=100)
            written.append(path)
        finally:
            pyplot.close(figure)
    return written
