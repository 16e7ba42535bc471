"""Start-up cost of `provision --help` against a bare `python -c "import click"`, both in a clean venv.

    python3 scripts/bench_startup.py [--runs 15] [--venv DIR]

A click CLI cannot start faster than click itself, so that is the baseline. Both run in a fresh venv that
holds only click and provision (installed without its other dependencies: `--help` imports none of them):
the project's .venv has many `.pth` files that slow every interpreter start and would flatter the ratio.
Prints both medians and the ratio; the target is at most 1.3.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = 1.3


def clean_venv(where: Path) -> Path:
    """A venv at `where` with click and provision alone; returns its python."""
    python = where / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "click>=8.1"], check=True)
    subprocess.run([*pip, "--no-deps", "--force-reinstall", str(REPO)], check=True, capture_output=True)
    return python


def median_seconds(command: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def startup(runs: int, venv: Path | None = None) -> dict:
    """Medians of `provision --help` and `python -c "import click"` in a clean venv, and their ratio."""
    with tempfile.TemporaryDirectory(prefix="provision-startup-") as scratch:
        python = clean_venv(venv or Path(scratch) / "venv")
        script = python.with_name("provision")
        click_only = [str(python), "-c", "import click"]
        median_seconds(click_only, 3)  # warm the file cache
        baseline = median_seconds(click_only, runs)
        helped = median_seconds([str(script), "--help"], runs)
    return {"provision_help_ms": helped * 1000, "import_click_ms": baseline * 1000, "ratio": helped / baseline,
            "target": TARGET, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--venv", type=Path, help="reuse this clean venv (created if missing)")
    args = parser.parse_args()
    result = startup(args.runs, args.venv)
    print(f'python -c "import click"  median {result["import_click_ms"]:.1f} ms ({args.runs} runs, clean venv)')
    print(f'provision --help          median {result["provision_help_ms"]:.1f} ms ({args.runs} runs, clean venv)')
    print(f'ratio                     {result["ratio"]:.2f}x (target <= {TARGET}x)')


if __name__ == "__main__":
    main()
