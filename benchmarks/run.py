"""Benchmarks of the riskalert API against real server processes on SQLite and PostgreSQL.

    .venv/bin/python -m benchmarks.run --backend both            # full sizes (docs/benchmarks.md)
    .venv/bin/python -m benchmarks.run --backend sqlite --sites 1000 --corridors 100 \
        --incidents 1000 --single 50 --fresh 5 --reads 500     # a quick smoke run

Every server binds 127.0.0.1 on a free port, every loop has a count or a deadline, and every
process and scratch database this script starts is stopped or dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine

from benchmarks import data
from services.core.auth import Role, generate_key
from services.core.clock import utc_now
from services.core.db import make_engine, make_sessionmaker, upgrade_to_head
from services.core.models import ApiKey, Tenant
from services.scoring import jobs, schemas, scores, targets
from services.scoring.models import CurrentScore
from services.scoring.settings import ScoringSettings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
POSTGRES_ADMIN = os.environ.get(
    "RISKALERT_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ADMIN_KEY = "rak_bench_admin_key"
TARGETS = {
    "bulk_scores_current_s": 20.0,
    "single_p99_ms": 100.0,
    "read_ratio": 0.5,
    "backtest_s": 10.0,
}


def log(msg: str) -> None:
    """Progress on stderr, timestamped."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank on sorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------
# Databases


@dataclass
class Database:
    """A scratch database: its SQLAlchemy URL and how to remove it."""

    backend: str
    url: str
    drop: Callable[[], None]


@contextlib.contextmanager
def scratch_database(backend: str, keep: bool, label: str = "") -> Iterator[Database]:
    """A fresh, migrated database (`riskalert_bench_<label><pid>` on PostgreSQL), removed
    afterwards unless `keep`."""
    if backend == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="riskalert-bench-"))
        db = Database(backend, f"sqlite:///{folder / 'bench.db'}", lambda: shutil.rmtree(folder))
    else:
        name = f"riskalert_bench_{label}{os.getpid()}"
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        db = Database(backend, f"{base}/{name}", drop)
    try:
        upgrade_to_head(db.url)
        yield db
    finally:
        if keep:
            log(f"kept database {db.url}")
        else:
            db.drop()


@dataclass
class Keys:
    """Raw API keys of the benchmark tenant."""

    tenant_id: int
    reader: str
    ingest: str


def preload(db: Database, n_sites: int, n_corridors: int, seed: int) -> tuple[Keys, dict[str, Any]]:
    """Insert the tenant, keys, sites and corridors directly, then score them all once."""
    engine = make_engine(db.url)
    factory = make_sessionmaker(engine)
    settings = ScoringSettings(database_url=db.url)
    figures: dict[str, Any] = {}
    now = utc_now()
    site_bodies = [schemas.SiteIn.model_validate(b) for b in data.sites(n_sites, seed=seed)]
    corridor_bodies = [
        schemas.CorridorIn.model_validate(b) for b in data.corridors(n_corridors, seed=seed + 1)
    ]
    try:
        with factory.begin() as session:
            tenant = Tenant(name="bench", created_at=now)
            session.add(tenant)
            session.flush()
            reader, p1, h1 = generate_key()
            ingest, p2, h2 = generate_key()
            session.add_all(
                [
                    ApiKey(tenant_id=tenant.id, name="reader", prefix=p1, key_hash=h1,
                           roles=[Role.SCORES_READ.value, Role.TARGETS_WRITE.value],
                           created_at=now),
                    ApiKey(tenant_id=None, name="ingest", prefix=p2, key_hash=h2,
                           roles=[Role.INCIDENTS_WRITE.value], created_at=now),
                ]
            )  # fmt: skip
            scores.ensure_model(session, now)
            keys = Keys(tenant.id, reader, ingest)
        started = time.perf_counter()
        with factory.begin() as session:
            bodies: list[schemas.SiteIn | schemas.CorridorIn] = [*site_bodies, *corridor_bodies]
            for body in bodies:
                targets.create(session, keys.tenant_id, body, now)
        figures["insert_targets_s"] = time.perf_counter() - started
        started = time.perf_counter()
        jobs.queue_decay(factory)
        figures["initial_scoring_targets"] = jobs.drain(factory, settings)
        figures["initial_scoring_s"] = time.perf_counter() - started
    finally:
        engine.dispose()
    return keys, figures


def queue_depth(engine: Engine) -> int:
    """Rescoring work waiting (committed): targets queued, plus incident feed entries the
    rescoring worker has not read yet (it queues their targets when it reads them)."""
    # One statement, so one snapshot: counted apart, a worker committing in between (reading
    # the feed entry and queueing its targets at once) could be missed by both counts.
    with engine.connect() as conn:
        depth = conn.exec_driver_sql(
            "SELECT (SELECT count(*) FROM rescore_mark) + (SELECT count(*) FROM incident_change"
            " WHERE id > COALESCE((SELECT position FROM feed_cursor WHERE name = 'rescore'), 0))"
        ).scalar_one()
    return int(depth)


def rescored_since(engine: Engine, moment: datetime) -> int:
    """Targets whose current score was computed at or after `moment`: what one incident
    made the worker rescore (the queue itself holds one feed entry until the worker reads it)."""
    query = select(func.count()).select_from(CurrentScore).where(CurrentScore.as_of >= moment)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def wait_queue_empty(
    engine: Engine, deadline_s: float, poll_s: float = 0.05
) -> tuple[float | None, list[tuple[float, int]]]:
    """Seconds until the queue is empty (None past the deadline), and (t, depth) samples."""
    started = time.perf_counter()
    trace: list[tuple[float, int]] = []
    while True:
        depth = queue_depth(engine)
        elapsed = time.perf_counter() - started
        if not trace or trace[-1][1] != depth:
            trace.append((round(elapsed, 3), depth))
        if depth == 0:
            return elapsed, trace
        if elapsed > deadline_s:
            return None, trace
        time.sleep(poll_s)


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class Server:
    """A server subprocess listening on 127.0.0.1:port."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, *(p.pid for p in self.extra)]


def start_process(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a child with its output in a log file."""
    out = log_path.open("ab")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(server: Server, path: str, deadline_s: float = 90.0) -> None:
    """Poll `path` until it answers 200; fail when the process dies or the deadline passes."""
    started = time.perf_counter()
    while time.perf_counter() - started < deadline_s:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited early; see {server.log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base + path, timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready after {deadline_s} s; see {server.log_path}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait, then SIGKILL this one process."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def start_api(
    db: Database, worker: str, logs: Path, worker_processes: int = 1, serve_workers: int = 1
) -> Server:
    """`riskalert serve` (with `serve_workers` uvicorn processes, and `riskalert worker`s when
    separate) on a free loopback port."""
    env = dict(os.environ)
    env.update(
        RISKALERT_DATABASE_URL=db.url,
        RISKALERT_ADMIN_API_KEY=ADMIN_KEY,
        RISKALERT_INLINE_WORKER="true" if worker == "inline" else "false",
        # The 10-minute decay tick would requeue every target in the middle of a phase; the
        # cost of one such pass is measured on its own (full_rescore).
        RISKALERT_RESCORE_INTERVAL="P1D",
        # One key drives the whole load: the benchmark measures capacity, not the per-key limit.
        RISKALERT_RATE_LIMIT="",
    )
    port = free_port()
    log_path = logs / f"api-{db.backend}-{serve_workers}.log"
    command = [str(BIN / "riskalert"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = start_process([*command, "--workers", str(serve_workers)], env, log_path)
    server = Server(f"riskalert serve ({db.backend})", proc, port, log_path)
    if worker == "separate":
        for n in range(worker_processes):
            server.extra.append(
                start_process(
                    [str(BIN / "riskalert"), "worker"], env, logs / f"worker-{db.backend}-{n}.log"
                )
            )
    try:
        wait_ready(server, "/readyz")
    except Exception:
        stop_server(server)
        raise
    return server


def start_bare(logs: Path, workers: int = 1) -> Server:
    """The bare FastAPI baseline, served the same way."""
    port = free_port()
    log_path = logs / f"bare-{workers}.log"
    proc = start_process(
        [
            sys.executable,
            "-m",
            "benchmarks.bare_app",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        dict(os.environ),
        log_path,
    )
    server = Server("bare app", proc, port, log_path)
    try:
        wait_ready(server, "/constant")
    except Exception:
        stop_server(server)
        raise
    return server


def stop_server(server: Server) -> None:
    """Stop a server and its helper processes."""
    for proc in [*server.extra, server.proc]:
        stop_process(proc)


class Profiler:
    """py-spy sampling the server processes during one phase (non-blocking, 100 Hz)."""

    def __init__(self, enabled: bool, pids: list[int], out_dir: Path, phase: str) -> None:
        self.paths: list[Path] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        spy = BIN / "py-spy"
        if not enabled or not spy.exists():
            return
        for pid in pids:
            path = out_dir / f"profile-{phase}-{pid}.txt"
            self.paths.append(path)
            self.procs.append(
                subprocess.Popen(
                    [str(spy), "record", "--pid", str(pid), "--rate", "100", "--duration",
                     "1200", "--format", "raw", "--function", "--threads", "--nonblocking",
                     "-o", str(path)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip

    def stop(self) -> list[dict[str, Any]]:
        """Stop sampling and summarise where the time went."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return [summarise_profile(p) for p in self.paths if p.exists()]


# Leaf frames of a thread that is waiting, not working (py-spy --nonblocking cannot tell idle).
IDLE_LEAVES = ("Condition.wait ", "Event.wait ", "Queue.get ", "Runner.run ", "select ", "sleep ")


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Busy-sample shares per thread and function (inclusive, self) from py-spy raw output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        if not frames or frames[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        total += count
        threads[thread.split(": ", 1)[-1].strip()] += count
        for f in set(frames):
            inclusive[f] += count
        own[frames[-1]] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return (
            [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)] if total else []
        )

    return {
        "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "busy_samples": total,
        "idle_samples": idle,
        "threads_pct": share(threads),
        "inclusive_pct": share(inclusive),
        "self_pct": share(own),
    }


def print_profile(summary: dict[str, Any], top: int = 25) -> None:
    """A profile summary as text."""
    print(f"== {summary['file']}: {summary['busy_samples']} busy samples at 100 Hz "
          f"({summary['idle_samples']} idle dropped)")  # fmt: skip
    print("  threads: " + ", ".join(f"{k} {v}%" for k, v in summary["threads_pct"]))
    print("  inclusive:")
    for k, v in summary["inclusive_pct"][:top]:
        print(f"    {v:5.1f}%  {k}")
    print("  self:")
    for k, v in summary["self_pct"][:12]:
        print(f"    {v:5.1f}%  {k}")


# ---------------------------------------------------------------------------------------------
# Phases


def bulk_ingest(
    server: Server, engine: Engine, keys: Keys, bodies: list[dict[str, Any]], batch: int
) -> dict[str, Any]:
    """POST batches in order; time until all are accepted and until the queue is empty."""
    headers = {"Authorization": f"Bearer {keys.ingest}"}
    per_batch: list[float] = []
    created = 0
    with httpx.Client(base_url=server.base, headers=headers, timeout=600.0) as client:
        started = time.perf_counter()
        for k in range(0, len(bodies), batch):
            t0 = time.perf_counter()
            r = client.post("/v1/incidents/batch", json={"items": bodies[k : k + batch]})
            per_batch.append(time.perf_counter() - t0)
            r.raise_for_status()
            result = r.json()
            created += result["created"]
            if result["rejected"]:
                bad = next(x for x in result["results"] if x["status"] == "rejected")
                raise RuntimeError(f"batch rejected {result['rejected']} items, e.g. {bad}")
        accepted = time.perf_counter() - started
        depth_at_accept = queue_depth(engine)
        drained, trace = wait_queue_empty(engine, deadline_s=1800.0)
    return {
        "incidents": len(bodies),
        "created": created,
        "batch_size": batch,
        "batch_s": [round(x, 3) for x in per_batch],
        "accepted_s": accepted,
        "queue_depth_at_accept": depth_at_accept,
        "scores_current_s": None if drained is None else accepted + drained,
        "queue_trace": trace,
    }


def score_reads(
    api: Server, bare: Server, keys: Keys, site_ids: list[int], rounds: int, seconds: int,
    seed: int,
) -> dict[str, Any]:  # fmt: skip
    """GET /v1/sites/{id}/score against the bare async endpoint, with wrk (benchmarks.reads)."""
    import random

    from benchmarks import reads

    rng = random.Random(seed)
    paths = [f"/v1/sites/{rng.choice(site_ids)}/score" for _ in range(1000)]
    headers = {"Authorization": f"Bearer {keys.reader}"}
    return reads.compare(api, bare, paths, headers, rounds=rounds, seconds=seconds)


def backtest(
    api: Server, keys: Keys, n_points: int, n_times: int, requests: int, end: datetime, seed: int
) -> dict[str, Any]:
    """POST /v1/backtests `requests` times with n_points x n_times pairs over the last year."""
    points = data.backtest_points(n_points, seed=seed)
    times = [(end - timedelta(days=365 * (1 - k / n_times))).isoformat() for k in range(n_times)]
    body = {"points": points, "times": times, "radius_km": 25.0}
    took: list[float] = []
    with httpx.Client(base_url=api.base, headers={"Authorization": f"Bearer {keys.reader}"},
                      timeout=600.0) as client:  # fmt: skip
        for _ in range(requests):
            t0 = time.perf_counter()
            r = client.post("/v1/backtests", json=body)
            took.append(time.perf_counter() - t0)
            r.raise_for_status()
    result = r.json()
    flat = [v for row in result["scores"] for v in row]
    return {
        "pairs_per_request": n_points * n_times,
        "requests": requests,
        "request_s": [round(x, 3) for x in took],
        "median_s": statistics.median(took),
        "pairs_per_s": n_points * n_times / statistics.median(took),
        "nonzero_share": sum(v > 0 for v in flat) / len(flat),
    }


def single_ingest(
    api: Server, engine: Engine, keys: Keys, bodies: list[dict[str, Any]], fresh: int
) -> dict[str, Any]:
    """Single POSTs back to back (latency), then `fresh` more, each awaited until scores settle."""
    headers = {"Authorization": f"Bearer {keys.ingest}"}
    back_to_back, bodies_fresh = bodies[: len(bodies) - fresh], bodies[len(bodies) - fresh :]
    latencies: list[float] = []
    with httpx.Client(base_url=api.base, headers=headers, timeout=600.0) as client:
        started = time.perf_counter()
        for body in back_to_back:
            t0 = time.perf_counter()
            r = client.post("/v1/incidents", json=body)
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 201:
                raise RuntimeError(f"single POST answered {r.status_code}: {r.text[:300]}")
        posted_s = time.perf_counter() - started
        depth = queue_depth(engine)
        backlog_s, _ = wait_queue_empty(engine, deadline_s=1800.0)

        fresh_latency: list[float] = []
        current: list[float] = []
        rescored: list[int] = []
        timeouts = 0
        for body in bodies_fresh:
            posted_at = datetime.now(UTC)
            t0 = time.perf_counter()
            r = client.post("/v1/incidents", json=body)
            fresh_latency.append(time.perf_counter() - t0)
            if r.status_code != 201:
                raise RuntimeError(f"single POST answered {r.status_code}: {r.text[:300]}")
            waited, _ = wait_queue_empty(engine, deadline_s=300.0, poll_s=0.01)
            if waited is None:
                timeouts += 1
                break
            current.append(time.perf_counter() - t0)
            rescored.append(rescored_since(engine, posted_at))
    return {
        "back_to_back": {
            "requests": len(back_to_back),
            "p50_ms": 1000 * pct(latencies, 50),
            "p90_ms": 1000 * pct(latencies, 90),
            "p99_ms": 1000 * pct(latencies, 99),
            "max_ms": 1000 * max(latencies),
            "wall_s": posted_s,
            "queue_depth_after": depth,
            "backlog_drain_s": backlog_s,
        },
        "one_at_a_time": {
            "requests": len(bodies_fresh),
            "latency_p50_ms": 1000 * pct(fresh_latency, 50),
            "targets_rescored_median": statistics.median(rescored) if rescored else None,
            "scores_current_median_s": statistics.median(current) if current else None,
            "scores_current_p90_s": pct(current, 90) if current else None,
            "scores_current_max_s": max(current) if current else None,
            "timeouts": timeouts,
        },
    }


def full_rescore(engine_url: str, engine: Engine) -> dict[str, Any]:
    """Queue every target (the decay tick) and time the server's worker until the queue is empty."""
    queue_engine = make_engine(engine_url)
    try:
        jobs.queue_decay(make_sessionmaker(queue_engine))
    finally:
        queue_engine.dispose()
    depth = queue_depth(engine)
    took, _ = wait_queue_empty(engine, deadline_s=1800.0)
    return {"targets": depth, "s": took}


# ---------------------------------------------------------------------------------------------
# Driver


def run_backend(backend: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Every phase on one backend, with its own scratch database and servers."""
    out: dict[str, Any] = {"worker": args.worker if backend == "postgresql" else "inline"}
    with scratch_database(backend, args.keep) as db:
        log(f"{backend}: preloading {args.sites} sites and {args.corridors} corridors")
        keys, out["preload"] = preload(db, args.sites, args.corridors, args.seed)
        log(f"{backend}: preload {out['preload']}")
        end = datetime.now(UTC) - timedelta(minutes=1)
        incidents = data.incidents(args.incidents, end, seed=args.seed + 2)
        singles = data.incidents(args.single, end, days=14, seed=args.seed + 3, source="single")
        poll_engine = create_engine(db.url)
        with poll_engine.connect() as conn:
            site_ids = [
                int(i)
                for i in conn.execute(text("SELECT id FROM target WHERE kind = 'site'")).scalars()
            ]
            if backend == "postgresql":
                out["db_version"] = conn.exec_driver_sql("SHOW server_version").scalar_one()
            else:
                out["db_version"] = sqlite3.sqlite_version
        api = start_api(db, out["worker"], logs, args.worker_processes)
        out["worker_processes"] = args.worker_processes if out["worker"] == "separate" else 0
        bare = start_bare(logs)
        profiles: dict[str, Any] = {}
        try:
            log(f"{backend}: bulk ingest of {len(incidents)} incidents")
            prof = Profiler(args.profile, api.pids, logs, f"{backend}-bulk")
            out["bulk"] = bulk_ingest(api, poll_engine, keys, incidents, args.batch)
            profiles["bulk"] = prof.stop()
            log(f"{backend}: bulk accepted {out['bulk']['accepted_s']:.1f} s, "
                f"current {out['bulk']['scores_current_s']}")  # fmt: skip

            log(f"{backend}: score reads")
            prof = Profiler(args.profile, [api.proc.pid], logs, f"{backend}-reads")
            out["reads"] = score_reads(
                api, bare, keys, site_ids, args.rounds, args.read_seconds, args.seed
            )
            profiles["reads"] = prof.stop()
            log(f"{backend}: reads {out['reads']['score_rps']:.0f}/s, "
                f"ratio {out['reads']['ratio']:.2f}")  # fmt: skip

            log(f"{backend}: backtests")
            prof = Profiler(args.profile, [api.proc.pid], logs, f"{backend}-backtest")
            out["backtest"] = backtest(
                api,
                keys,
                args.backtest_points,
                args.backtest_times,
                args.backtest_requests,
                end,
                args.seed,
            )
            profiles["backtest"] = prof.stop()
            log(f"{backend}: backtest median {out['backtest']['median_s']:.2f} s")

            log(f"{backend}: single-incident ingest")
            prof = Profiler(args.profile, api.pids, logs, f"{backend}-single")
            out["single"] = single_ingest(api, poll_engine, keys, singles, args.fresh)
            profiles["single"] = prof.stop()
            log(f"{backend}: single {out['single']}")

            if args.full_rescore:
                log(f"{backend}: full rescore (decay tick)")
                out["full_rescore"] = full_rescore(db.url, poll_engine)
                log(f"{backend}: full rescore {out['full_rescore']}")
        finally:
            stop_server(bare)
            stop_server(api)
            poll_engine.dispose()
        out["profiles"] = profiles
    return out


def machine() -> dict[str, Any]:
    """Where the figures were taken."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()  # fmt: skip

    return {
        "git_head": git("rev-parse", "--short", "HEAD"),
        "git_dirty_services": git("status", "--porcelain", "services").splitlines(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_total": free.splitlines()[1].split()[1] if free else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def table(results: dict[str, Any]) -> str:
    """The headline figures, one column per backend."""
    rows: list[tuple[str, list[str]]] = []
    backends = list(results["backends"])

    def row(label: str, get: Callable[[dict[str, Any]], Any], fmt: str = "{:.2f}") -> None:
        cells = []
        for b in backends:
            try:
                v = get(results["backends"][b])
                cells.append("-" if v is None else (fmt.format(v) if not isinstance(v, str) else v))
            except (KeyError, TypeError):
                cells.append("-")
        rows.append((label, cells))

    t = TARGETS
    row("insert targets directly (s)", lambda r: r["preload"]["insert_targets_s"])
    row("initial scoring, no incidents (s)", lambda r: r["preload"]["initial_scoring_s"])
    row("bulk: incidents accepted (s)", lambda r: r["bulk"]["accepted_s"])
    row("bulk: queue depth at accept", lambda r: r["bulk"]["queue_depth_at_accept"], "{}")
    row("bulk: scores current (s)", lambda r: r["bulk"]["scores_current_s"])
    row(f"  target < {t['bulk_scores_current_s']:.0f} s", lambda r: verdict(
        r["bulk"]["scores_current_s"] is not None
        and r["bulk"]["scores_current_s"] < t["bulk_scores_current_s"]))  # fmt: skip
    row("single: p50 latency (ms)", lambda r: r["single"]["back_to_back"]["p50_ms"], "{:.1f}")
    row("single: p90 latency (ms)", lambda r: r["single"]["back_to_back"]["p90_ms"], "{:.1f}")
    row("single: p99 latency (ms)", lambda r: r["single"]["back_to_back"]["p99_ms"], "{:.1f}")
    row(f"  target p99 < {t['single_p99_ms']:.0f} ms",
        lambda r: verdict(r["single"]["back_to_back"]["p99_ms"] < t["single_p99_ms"]))  # fmt: skip
    row(
        "single: backlog drained after (s)",
        lambda r: r["single"]["back_to_back"]["backlog_drain_s"],
    )
    row("single: targets rescored per incident",
        lambda r: r["single"]["one_at_a_time"]["targets_rescored_median"],
        "{:.0f}")  # fmt: skip
    row("single: POST to scores current, median (s)",
        lambda r: r["single"]["one_at_a_time"]["scores_current_median_s"])  # fmt: skip
    row("reads: GET site score (req/s, wrk -c64)", lambda r: r["reads"]["score_rps"], "{:.0f}")
    row("reads: bare async endpoint (req/s, wrk -c64)", lambda r: r["reads"]["bare_rps"], "{:.0f}")
    row("reads: ratio vs bare async", lambda r: r["reads"]["ratio"])
    row("reads: server CPU per request (ms)",
        lambda r: r["reads"]["score_server_ms_per_request"])  # fmt: skip
    row("reads: wrk cores, score runs", lambda r: r["reads"]["score_wrk_cores"])
    row("reads: wrk cores, bare runs", lambda r: r["reads"]["bare_wrk_cores"])
    row(f"  target ratio >= {t['read_ratio']}",
        lambda r: verdict(r["reads"]["ratio"] >= t["read_ratio"]))  # fmt: skip
    row("backtest: pairs per request", lambda r: r["backtest"]["pairs_per_request"], "{}")
    row("backtest: median request (s)", lambda r: r["backtest"]["median_s"])
    row(f"  target < {t['backtest_s']:.0f} s",
        lambda r: verdict(r["backtest"]["median_s"] < t["backtest_s"]))  # fmt: skip
    row("full rescore, decay tick (s)", lambda r: r["full_rescore"]["s"])
    width = max(len(label) for label, _ in rows) + 2
    lines = [" " * width + "".join(f"{b:>14}" for b in backends)]
    lines += [label.ljust(width) + "".join(f"{c:>14}" for c in cells) for label, cells in rows]
    return "\n".join(lines)


def main() -> None:
    """Parse the options, run each backend, print the table and write the JSON results."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--sites", type=int, default=10_000)
    p.add_argument("--corridors", type=int, default=1_000)
    p.add_argument("--incidents", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=1_000, help="incidents per batch POST")
    p.add_argument("--single", type=int, default=300, help="single-incident POSTs in all")
    p.add_argument(
        "--fresh",
        type=int,
        default=20,
        help="of --single, how many are each waited on until scores are current",
    )
    p.add_argument("--read-seconds", type=int, default=10, help="seconds of each wrk run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of reads")
    p.add_argument("--backtest-points", type=int, default=300)
    p.add_argument("--backtest-times", type=int, default=100)
    p.add_argument("--backtest-requests", type=int, default=3)
    p.add_argument(
        "--worker",
        choices=["inline", "separate"],
        default="inline",
        help="PostgreSQL only: rescoring in the API process, or a `riskalert worker`",
    )
    p.add_argument(
        "--worker-processes",
        type=int,
        default=1,
        help="with --worker separate: how many `riskalert worker` processes share the queue",
    )
    p.add_argument("--full-rescore", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sample the servers with py-spy during each phase",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the scratch databases")
    p.add_argument(
        "--summarise",
        nargs="+",
        type=Path,
        metavar="RAW",
        help="only print summaries of py-spy raw profiles written by a run",
    )
    args = p.parse_args()  # fmt: skip
    if args.summarise:
        for path in args.summarise:
            print_profile(summarise_profile(path.resolve()))
        return
    if args.fresh >= args.single:
        p.error("--fresh must be smaller than --single")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results: dict[str, Any] = {"machine": machine(), "args": vars(args), "targets": TARGETS,
                               "backends": {}}  # fmt: skip
    for backend in backends:
        try:
            results["backends"][backend] = run_backend(backend, args, run_dir)
        except Exception as exc:  # report and go on with the other backend
            log(f"{backend} FAILED: {exc!r}")
            results["backends"][backend] = {"error": repr(exc)}
        (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    text_table = table(results)
    (run_dir / "table.txt").write_text(text_table + "\n")
    shutil.copy(run_dir / "results.json", RESULTS / "latest.json")
    print(text_table)
    log(f"results in {run_dir.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
