"""Benchmark of importing incident files against a running service, on SQLite and PostgreSQL.

    .venv/bin/python -m benchmarks.feeds --backend both        # full size (docs/benchmarks.md)
    .venv/bin/python -m benchmarks.feeds --backend sqlite --rows 5000 --sites 500 \
        --corridors 50                                        # a quick smoke run

With 10,000 sites and 1,000 corridors registered and scored, and the service running
(`riskalert serve` with its in-process worker on SQLite; `serve` plus a `nice`d
`riskalert worker` on PostgreSQL), it generates a seeded ACLED file, imports it with
`riskalert import acled` in its own process, and measures:

- the import process's wall time and peak memory (its own rusage);
- the time from the import's start until every score is current (nothing queued or unread);
- a re-import of the same file (it must change nothing);
- an import of the UCDP rows of the same events (merged into the ACLED incidents).

Every process and scratch database it starts is stopped or dropped at the end; every wait has
a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from benchmarks.run import (
    BIN,
    ROOT,
    Database,
    log,
    machine,
    preload,
    scratch_database,
    start_api,
    stop_server,
    wait_queue_empty,
)
from services.feeds import synth

TARGET_IMPORT_S = 60.0
TARGET_REIMPORT_S = 20.0


def peak_kb(pid: int) -> int | None:
    """A live process's peak resident memory (VmHWM), in KB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def run_import(db: Database, fmt: str, path: Path, logs: Path) -> dict[str, Any]:
    """`riskalert import FMT FILE` in its own process: wall time, peak memory, summary."""
    env = {**os.environ, "RISKALERT_DATABASE_URL": db.url, "COLUMNS": "120"}
    started = time.perf_counter()
    with (logs / f"import-{fmt}-{db.backend}.log").open("ab") as out:
        proc = subprocess.Popen(
            [str(BIN / "riskalert"), "import", fmt, str(path)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"import {fmt} failed ({proc.returncode}); see {logs}")
    engine = create_engine(db.url)
    with engine.connect() as conn:
        summary = conn.execute(
            text("SELECT summary FROM import_run ORDER BY id DESC LIMIT 1")
        ).scalar_one()
    engine.dispose()
    if isinstance(summary, str):
        summary = json.loads(summary)
    counts = {k: v for k, v in summary.items() if isinstance(v, int)}
    return {"wall_s": round(elapsed, 1), "peak_mb": round(usage.ru_maxrss / 1024), **counts}


def run_backend(backend: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Every phase on one engine."""
    out: dict[str, Any] = {"backend": backend}
    folder = Path(tempfile.mkdtemp(prefix="riskalert-feeds-"))
    acled_file, ucdp_file = folder / "acled.csv", folder / "ucdp.csv"
    started = time.perf_counter()
    events = synth.generate(args.seed, args.rows, date(2016, 1, 1), date(2026, 1, 1))
    with acled_file.open("w", newline="", encoding="utf-8") as handle:
        synth.write_acled_csv(events, handle)
    lethal = synth.ucdp_events(events, args.seed)
    with ucdp_file.open("w", newline="", encoding="utf-8") as handle:
        synth.write_ucdp_csv(lethal, handle)
    out["generate_s"] = round(time.perf_counter() - started, 1)
    out["rows"] = {"acled": len(events), "ucdp": len(lethal)}
    try:
        with scratch_database(backend, keep=False) as db:
            log(f"{backend}: registering {args.sites} sites and {args.corridors} corridors")
            _, figures = preload(db, args.sites, args.corridors, args.seed)
            out["setup"] = figures
            server = start_api(db, "inline" if backend == "sqlite" else "separate", logs)
            engine = create_engine(db.url)
            try:
                log(f"{backend}: importing {len(events)} ACLED rows")
                started = time.perf_counter()
                out["import"] = run_import(db, "acled", acled_file, logs)
                current, trace = wait_queue_empty(engine, deadline_s=args.deadline)
                total = time.perf_counter() - started
                out["import"]["scores_current_s"] = round(total, 1) if current is not None else None
                out["import"]["rescore_after_import_s"] = (
                    round(current, 1) if current is not None else None
                )
                out["import"]["queue_trace"] = trace[:: max(1, len(trace) // 20)]
                log(f"{backend}: {out['import']}")
                log(f"{backend}: re-importing the same file")
                out["reimport"] = run_import(db, "acled", acled_file, logs)
                current, _ = wait_queue_empty(engine, deadline_s=args.deadline)
                out["reimport"]["queue_empty"] = current is not None
                log(f"{backend}: {out['reimport']}")
                log(f"{backend}: importing {len(lethal)} UCDP rows of the same events")
                started = time.perf_counter()
                out["ucdp"] = run_import(db, "ucdp", ucdp_file, logs)
                current, _ = wait_queue_empty(engine, deadline_s=args.deadline)
                out["ucdp"]["scores_current_s"] = (
                    round(time.perf_counter() - started, 1) if current is not None else None
                )
                expected = sum(1 for e in lethal if e.event_key is not None)
                out["ucdp"]["matching_events"] = expected
                log(f"{backend}: {out['ucdp']}")
                out["service_peak_mb"] = {
                    f"pid{pid}": round((peak_kb(pid) or 0) / 1024) for pid in server.pids
                }
            finally:
                engine.dispose()
                stop_server(server)
    finally:
        for path in (acled_file, ucdp_file):
            path.unlink(missing_ok=True)
        folder.rmdir()
    return out


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "missed (deadline)"
    return "met" if value < target else "missed"


def table(results: list[dict[str, Any]]) -> str:
    """The figures as a Markdown table."""
    lines = [
        "| | " + " | ".join(r["backend"] for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]

    def row(name: str, cells: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("ACLED rows / UCDP rows", [f"{r['rows']['acled']} / {r['rows']['ucdp']}" for r in results])
    row("import process (wall)", [f"{r['import']['wall_s']} s" for r in results])
    row(
        f"import until scores current (target < {TARGET_IMPORT_S:g} s)",
        [
            f"{r['import']['scores_current_s']} s, "
            f"{verdict(r['import']['scores_current_s'], TARGET_IMPORT_S)}"
            for r in results
        ],
    )
    row("import peak memory", [f"{r['import']['peak_mb']} MB" for r in results])
    row(
        f"re-import (target < {TARGET_REIMPORT_S:g} s)",
        [
            f"{r['reimport']['wall_s']} s, {verdict(r['reimport']['wall_s'], TARGET_REIMPORT_S)}"
            for r in results
        ],
    )
    row(
        "re-import changed",
        [
            f"{r['reimport'].get('inserted', 0) + r['reimport'].get('updated', 0)} rows"
            for r in results
        ],
    )
    row(
        "UCDP import: merged / matching events",
        [f"{r['ucdp'].get('merged', 0)} / {r['ucdp']['matching_events']}" for r in results],
    )
    row("UCDP import until scores current", [f"{r['ucdp']['scores_current_s']} s" for r in results])
    row("service peak memory", [", ".join(f"{v} MB" for v in r["service_peak_mb"].values())
                                for r in results])  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--corridors", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--deadline", type=float, default=600.0, help="Longest wait, seconds.")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    logs = Path(tempfile.mkdtemp(prefix="riskalert-feeds-logs-"))
    results = [run_backend(b, args, logs) for b in backends]
    print(json.dumps({"machine": machine(), "results": results}, indent=1, default=str))
    print(table(results))
    print(f"logs: {logs}", file=sys.stderr)


if __name__ == "__main__":
    main()
