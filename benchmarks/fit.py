"""Benchmark of the model fit: `riskalert model fit` on a generated history, in its own process.

    .venv/bin/python -m benchmarks.fit                      # full size (docs/benchmarks.md)
    .venv/bin/python -m benchmarks.fit --rows 5000 --places 300 --origins 20 --runs 1   # smoke

The issue's size: 30,000 incidents (ten years, three countries and their neighbours, from the
generator), up to 2,000 places and 60 origins, in under 3 minutes. Each run is a fresh
`riskalert model fit --generated ... --dry-run` process; the figures are its wall time (median
of the runs), its peak memory, and the fit's own validation scores against the decay baseline
of the same run (printed by the command, read back from its --report file).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.run import BIN, ROOT

LIMIT_S = 180.0


def one_run(args: argparse.Namespace, report: Path) -> tuple[float, float]:
    """One fit process: (wall seconds, peak resident MB of that process)."""
    command = [
        str(BIN / "riskalert"), "model", "fit", "--generated", str(args.seed),
        "--rows", str(args.rows), "--start", args.start, "--end", args.end,
        "--origins", str(args.origins), "--places", str(args.places), "--report", str(report),
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    began = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=LIMIT_S * 3)
    wall = time.perf_counter() - began
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024.0
    return wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--start", default="2015-01-01")
    parser.add_argument("--end", default="2025-01-01")
    parser.add_argument("--places", type=int, default=2000)
    parser.add_argument("--origins", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    walls: list[float] = []
    peaks: list[float] = []
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "report.json"
        for k in range(args.runs):
            wall, peak = one_run(args, path)
            walls.append(wall)
            peaks.append(peak)
            print(f"run {k + 1}: {wall:.1f} s, peak {peak:.0f} MB", flush=True)
        report = json.loads(path.read_text())
    data, validation = report["data"], report["validation"]
    median = statistics.median(walls)
    print(f"machine: {platform.node()} {platform.machine()}, Python {platform.python_version()}")
    print(
        f"history: {data['incidents']} incidents, {data['places']} places x {data['origins']}"
        f" origins = {data['rows']} rows"
    )
    print(
        f"fit wall time, median of {len(walls)}: {median:.1f} s "
        f"(limit {LIMIT_S:.0f} s: {'met' if median < LIMIT_S else 'MISSED'}); "
        f"peak memory {max(peaks):.0f} MB"
    )
    for name in ("model", "baseline"):
        m = validation[name]
        print(
            f"{name:>8}: ROC AUC {m['roc_auc']}, average precision {m['average_precision']},"
            f" Brier {m['brier']}, Brier skill {m['brier_skill']}"
        )
    worst = max(abs(r["mean_predicted"] - r["observed"]) for r in report["reliability"])
    print(f"largest reliability gap over the deciles: {worst:.3f}")


if __name__ == "__main__":
    main()
