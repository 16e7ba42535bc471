"""Start-up cost of `provision --help` against `python -c pass` (median of N runs each).

    .venv/bin/python scripts/bench_startup.py [--runs 15]

Prints both medians and the ratio; the target is a ratio of at most 3.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_seconds(command: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    script = Path(sys.executable).with_name("provision")
    provision = [str(script)] if script.exists() else [sys.executable, "-m", "provision"]
    median_seconds([sys.executable, "-c", "pass"], 3)  # warm the file cache
    baseline = median_seconds([sys.executable, "-c", "pass"], args.runs)
    helped = median_seconds([*provision, "--help"], args.runs)
    print(f"python -c pass      median {baseline * 1000:.1f} ms ({args.runs} runs)")
    print(f"provision --help    median {helped * 1000:.1f} ms ({args.runs} runs)")
    print(f"ratio               {helped / baseline:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
