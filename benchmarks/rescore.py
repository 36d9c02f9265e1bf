"""Rescoring by a real `riskalert worker` process: a full pass, one threat, one attack.

Usage:
    python -m benchmarks.rescore --backend both                       # 10,000 sites
    python -m benchmarks.rescore --backend postgresql --sites 50000 --corridors 5000
    python -m benchmarks.rescore --baseline /tmp/riskalert-base       # and an older checkout

The database is prepared in this process (benchmarks.run.preload, then `--incidents` generated
incidents, all scored once). Then, for each round, a `riskalert worker --role scoring` process
is started (with `--baseline DIR`, also one running DIR's code on the same database, in turn)
and, once its /healthz answers:

1. **full pass**: every target queued (what the decay tick does), timed until the queue is
   empty;
2. **one threat**: an explicit threat to foreign firms at the town with the most sites;
3. **one attack**: an armed assault at the same place.

The generated history ends 40 days before the run, so the phases' incidents (one source, two
hours apart) are never merged into an event it already holds.

For 2 and 3 the incident is written in this process (as an ingest request would) and timed
until the worker has emptied the queue; *targets* counts the current scores computed since.
The worker's own CPU seconds over each phase (from /proc) give the CPU per target, which the
other load on the machine changes much less than the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from benchmarks import data
from benchmarks.run import (
    BIN,
    Database,
    free_port,
    log,
    preload,
    queue_depth,
    rescored_since,
    scratch_database,
    start_process,
    stop_process,
    wait_queue_empty,
)
from services.core.clock import utc_now
from services.core.db import make_engine, make_sessionmaker
from services.feeds.synth import TOWNS
from services.scoring import incidents, jobs, schemas
from services.scoring.settings import ScoringSettings

DEADLINE_S = 1800.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prepare(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    """Targets, incidents, every score current; the busiest town."""
    _, figures = preload(db, args.sites, args.corridors, args.seed)
    engine = make_engine(db.url)
    factory = make_sessionmaker(engine)
    now = utc_now()
    # The history ends 40 days ago: the phases' own incidents must not be taken for reports of
    # an event it holds (merge.py: a month's slack at most), or they would move no score.
    bodies = data.incidents(args.incidents, now - timedelta(days=40), seed=args.seed + 2)
    started = time.perf_counter()
    try:
        for start in range(0, len(bodies), 1000):
            batch = [schemas.IncidentIn.model_validate(b) for b in bodies[start : start + 1000]]
            with factory.begin() as session:
                incidents.upsert_many(session, batch, now)
        jobs.drain(factory, ScoringSettings(database_url=db.url))
    finally:
        engine.dispose()
    figures["incidents_scored_s"] = time.perf_counter() - started
    towns = Counter(body["properties"]["name"].split(" near ", 1)[1] for body in data.sites(
        args.sites, seed=args.seed
    ))  # fmt: skip
    figures["town"] = towns.most_common(1)[0][0]
    return figures


def start_worker(db: Database, code: Path | None, logs: Path, label: str) -> Any:
    """`riskalert worker --role scoring` from this checkout, or from `code`; ready when its
    /healthz answers."""
    env = dict(os.environ)
    env.update(RISKALERT_DATABASE_URL=db.url, RISKALERT_RESCORE_INTERVAL="P1D")
    port = free_port()
    args = ["worker", "--role", "scoring", "--metrics-port", str(port)]
    if code is None:
        command = [str(BIN / "riskalert"), *args]
    else:
        # `python -c` puts the working directory first on sys.path: the checkout goes there.
        boot = f"import sys; sys.path[0] = {str(code)!r}; from services.cli import app; app()"
        command = [sys.executable, "-c", boot, *args]
    proc = start_process(command, env, logs / f"worker-{db.backend}-{label}.log")
    deadline = time.monotonic() + 120.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {label} exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(proc)
    raise RuntimeError(f"worker {label} not ready in 120 s")


def incident_at(town: str, category: str, n: int) -> schemas.IncidentIn:
    """One fresh report at a town: an attack, or a threat to foreign firms."""
    place = next(t for t in TOWNS if t.name == town)
    now = utc_now()
    body: dict[str, Any] = {
        "source": "rescore-bench",
        "source_id": f"{category}-{n}-{time.time_ns()}",
        "category": category,
        # Two hours apart for each run, from one source (whose reports never merge), and
        # more than a month after the generated history (so none of it is the same event).
        "occurred_at": (now - timedelta(minutes=5, hours=2 * n)).isoformat(),
        "reported_at": now.isoformat(),
        "location": {"type": "Point", "coordinates": [place.lon, place.lat]},
        "location_precision": "exact",
        "country": place.country,
        "source_reliability": 0.8,
        "title": f"benchmark {category}",
    }
    if category == "explicit_threat":
        body["target_profile"] = {"foreign_owned_only": True, "sectors": []}
        body["target_type"] = "foreign_firm"
    return schemas.IncidentIn.model_validate(body)


def phase(db: Database, pid: int, work: Any) -> dict[str, Any]:
    """Run `work` (which gives the worker something to do) and wait for an empty queue: the
    time from the start of `work`, the targets computed and the worker's CPU per target."""
    engine = make_engine(db.url)
    try:
        cpu = cpu_seconds(pid)
        moment = datetime.now(UTC) - timedelta(seconds=1)
        started = time.perf_counter()
        work(engine)
        waited, _ = wait_queue_empty(engine, deadline_s=DEADLINE_S, poll_s=0.02)
        if waited is None:
            raise RuntimeError(f"the queue was not empty after {DEADLINE_S} s")
        took = time.perf_counter() - started
        used = cpu_seconds(pid) - cpu
        targets = rescored_since(engine, moment)
    finally:
        engine.dispose()
    return {
        "s": round(took, 3),
        "targets": targets,
        "ms_per_target": round(1000.0 * took / targets, 3) if targets else None,
        "cpu_ms_per_target": round(1000.0 * used / targets, 3) if targets else None,
    }


def full_pass(engine: Any) -> None:
    """Queue every target, as the decay tick does."""
    jobs.queue_decay(make_sessionmaker(engine))


def one(town: str, category: str, n: int) -> Any:
    """Write one incident at a town, as an ingest request would."""

    def work(engine: Any) -> None:
        with make_sessionmaker(engine).begin() as session:
            incidents.upsert_many(session, [incident_at(town, category, n)], utc_now())

    return work


def run_backend(backend: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with scratch_database(backend, args.keep) as db:
        log(f"{backend}: preparing {args.sites} sites, {args.corridors} corridors, "
            f"{args.incidents} incidents")  # fmt: skip
        out["prepare"] = prepare(db, args)
        log(f"{backend}: prepared {out['prepare']}")
        codes: list[tuple[str, Path | None]] = [("current", None)]
        if args.baseline:
            codes.append(("baseline", Path(args.baseline)))
        results: dict[str, dict[str, list[dict[str, Any]]]] = {
            label: {"full_pass": [], "threat": [], "attack": []} for label, _ in codes
        }
        town = out["prepare"]["town"]
        for r in range(args.rounds):
            for k, (label, code) in enumerate(codes):
                run = r * len(codes) + k
                proc = start_worker(db, code, logs, f"{label}-{r}")
                try:
                    engine = make_engine(db.url)
                    try:
                        wait_queue_empty(engine, deadline_s=DEADLINE_S)
                        depth = queue_depth(engine)
                    finally:
                        engine.dispose()
                    assert depth == 0, depth
                    found = results[label]
                    found["full_pass"].append(phase(db, proc.pid, full_pass))
                    found["threat"].append(phase(db, proc.pid, one(town, "explicit_threat", run)))
                    found["attack"].append(phase(db, proc.pid, one(town, "armed_assault", run)))
                    log(f"{backend}: round {r} {label}: "
                        f"{json.dumps({k: v[-1] for k, v in found.items()})}")  # fmt: skip
                finally:
                    stop_process(proc)
        out["results"] = results
        out["medians"] = {
            label: {
                name: {
                    key: statistics.median(run[key] for run in runs)
                    for key in ("s", "targets", "ms_per_target", "cpu_ms_per_target")
                    if all(run[key] is not None for run in runs)
                }
                for name, runs in phases.items()
            }
            for label, phases in results.items()
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--corridors", type=int, default=1_000)
    parser.add_argument("--incidents", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="a checkout whose worker runs in turn, same database")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logs = Path("benchmarks/results") / f"rescore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    logs.mkdir(parents=True, exist_ok=True)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = {b: run_backend(b, args, logs) for b in backends}
    print(json.dumps({b: r["medians"] for b, r in results.items()}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
