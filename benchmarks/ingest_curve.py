"""Bulk ingest batch after batch: does a batch cost more as the history already stored grows?

    .venv/bin/python -m benchmarks.ingest_curve --backend both          # docs/benchmarks.md
    .venv/bin/python -m benchmarks.ingest_curve --backend sqlite --batches 10 --sites 500

`riskalert serve` (one process, no rescoring worker, so that only accepting is measured) on
a scratch database with the run's sites and corridors; then `--batches` POSTs of `--batch`
incidents each to `/v1/incidents/batch`, one after another, each timed from the client. The
incidents are the rescoring benchmark's (clustered near towns and roads, over one year).

Two orders, each on a fresh database:
- `time`: the year in order, as a backfill or a feed catching up sends it. Batch k covers
  about one week, after k-1 batches of history.
- `spread`: every batch spans the whole year (batch k takes incidents k, k+n, k+2n, ...), the
  worst case for a lookup by day: each batch's days hold all the history stored so far.

It prints each run's first and last batches, the median of the first and of the last ten
and their ratio, and a least-squares slope (ms per batch), and draws every batch's time
against the history stored before it (matplotlib, `--plot`). Loopback only; every loop has a
count; the servers and scratch databases it starts are stopped or dropped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import data
from benchmarks.run import (
    log,
    machine,
    preload,
    scratch_database,
    start_api,
    stop_server,
)

ORDERS = ("time", "spread")


def ordered(bodies: list[dict[str, Any]], order: str, batches: int) -> list[list[dict[str, Any]]]:
    """The bodies cut into `batches` batches in the given order."""
    if order == "time":
        size = len(bodies) // batches
        return [bodies[k * size : (k + 1) * size] for k in range(batches)]
    return [bodies[k::batches] for k in range(batches)]


def run_one(backend: str, order: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """One order on one backend, on a database of its own."""
    with scratch_database(backend, keep=False, label=f"curve-{order}") as db:
        log(f"{backend}/{order}: preloading {args.sites} sites and {args.corridors} corridors")
        keys, _ = preload(db, args.sites, args.corridors, args.seed)
        end = datetime.now(UTC) - timedelta(minutes=1)
        bodies = data.incidents(args.batches * args.batch, end, seed=args.seed + 2)
        # Accepting only: rescoring would share the cores and blur what the lookup costs.
        api = start_api(db, "separate", logs, worker_processes=0)
        seconds: list[float] = []
        try:
            headers = {"Authorization": f"Bearer {keys.ingest}"}
            with httpx.Client(base_url=api.base, headers=headers, timeout=600.0) as client:
                for batch in ordered(bodies, order, args.batches):
                    started = time.perf_counter()
                    response = client.post("/v1/incidents/batch", json={"items": batch})
                    seconds.append(time.perf_counter() - started)
                    response.raise_for_status()
                    result = response.json()
                    if result["rejected"]:
                        raise RuntimeError(f"a batch rejected {result['rejected']} items")
        finally:
            stop_server(api)
    first, last = statistics.median(seconds[:10]), statistics.median(seconds[-10:])
    slope = float(np.polyfit(np.arange(len(seconds)), seconds, 1)[0])
    out = {
        "backend": backend,
        "order": order,
        "batch": args.batch,
        "batches": len(seconds),
        "seconds": [round(s, 4) for s in seconds],
        "first_ten_median_s": round(first, 4),
        "last_ten_median_s": round(last, 4),
        "last_over_first": round(last / first, 2),
        "slope_ms_per_batch": round(slope * 1000, 2),
        "total_s": round(sum(seconds), 2),
    }
    log(f"{backend}/{order}: {json.dumps({k: v for k, v in out.items() if k != 'seconds'})}")
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Every batch's time against the incidents stored before it, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for r in results:
        stored = [k * r["batch"] for k in range(r["batches"])]
        ax.plot(stored, r["seconds"], marker=".", label=f"{r['backend']}, {r['order']} order")
    ax.set_xlabel("incidents already stored before the batch")
    ax.set_ylabel(f"seconds to accept a batch of {results[0]['batch']}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Bulk ingest: batch time against the history stored")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def table(results: list[dict[str, Any]]) -> str:
    """The runs as a markdown table."""
    lines = [
        "| engine | order | batches | first ten, median (s) | last ten, median (s) "
        "| last / first | slope (ms per batch) | total (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['order']} | {r['batches']} x {r['batch']} "
            f"| {r['first_ten_median_s']:.3f} | {r['last_ten_median_s']:.3f} "
            f"| **{r['last_over_first']:.2f}** | {r['slope_ms_per_batch']:+.1f} "
            f"| {r['total_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--order", choices=(*ORDERS, "both"), default="both")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--corridors", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=Path("docs/img/ingest-batches.png"))
    args = parser.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    orders = ORDERS if args.order == "both" else (args.order,)
    results = []
    with tempfile.TemporaryDirectory(prefix="riskalert-curve-") as tmp:
        for backend in backends:
            for order in orders:
                results.append(run_one(backend, order, args, Path(tmp)))
    plot(results, args.plot)
    print(json.dumps(machine()), file=sys.stderr)
    print(table(results))
    log(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
