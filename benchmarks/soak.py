"""Soak: two API processes and two workers on PostgreSQL under a steady incident load, webhooks
to a receiver that fails some requests and answers others too late.

    .venv/bin/python -m benchmarks.soak                     # 5 minutes (docs/benchmarks.md)
    .venv/bin/python -m benchmarks.soak --duration 30 --sites 1000 --subscriptions 100 \
        --hot-sites 20 --baseline-duration 10               # a quick smoke run

Setup: a fresh `riskalert_bench_soak_<pid>` database, the scoring benchmark's sites scored once,
webhook endpoints and subscriptions written directly (each on a random site: a band threshold
rule, raise at `high`, and a `kidnapping_nearby` rule), a verifying receiver in its own process.
Then two `riskalert serve` (RISKALERT_INLINE_WORKER=false) and two `riskalert worker`. Kidnappings
are POSTed at a steady rate near a set of "hot" subscribed sites (so their scores climb across
the threshold rules), alternating between the two APIs, each with an Idempotency-Key; a POST
that fails (no answer, 5xx, 429, 409) is retried with the same key on the other API. A baseline
phase first runs at a low rate with a receiver that never fails. After each phase the run
waits (bounded) until nothing is queued, unread or due.

Latency: from the moment a POST was answered to the first 2xx receipt of each alert it caused.
Exact for `alert.triggered` (the body names the incident); for threshold alerts (`alert.firing`,
`alert.escalated`) approximate, from the newest posted incident among the alert's top
contributions. Lost: due deliveries (not superseded or cancelled) never received with a 2xx.
Every process binds 127.0.0.1; every wait has a deadline; everything started is stopped and
the database dropped (unless --keep).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any

import httpx
import uvicorn
from sqlalchemy import Engine, text
from standardwebhooks.webhooks import Webhook

from benchmarks.alerts import env_for, site_points, subscribe
from benchmarks.receiver import answer, headers_of, read_body, verified
from benchmarks.run import (
    BIN,
    RESULTS,
    Database,
    Server,
    free_port,
    log,
    machine,
    pct,
    preload,
    queue_depth,
    scratch_database,
    start_process,
    stop_process,
    wait_ready,
)
from services.alerts import pipeline
from services.alerts.signing import generate_secret
from services.core.db import make_engine
from services.scoring import queue

SOURCE = "bench-soak"
# Tries of one POST (the first and its retries on the other API) before it counts as refused.
POST_TRIES = 6
# POSTs in flight at once, over both APIs. Beyond it new POSTs wait their turn (the wait counts
# in their latency): httpcore's pool slows down quadratically with thousands of queued requests,
# which made the client, not the service, the bottleneck when the service stalled.
IN_FLIGHT = 160
NOT_DUE = ("superseded", "cancelled")
THRESHOLD_TYPES = ("alert.firing", "alert.escalated")


# ---------------------------------------------------------------------------------------------
# The receiver (run in its own process: `--serve-receiver PORT`)

Scope = MutableMapping[str, Any]


class FaultyReceiver:
    """Verifies every request with `standardwebhooks` and records it; answers a share 500, a
    share only after a delay past the sender's timeout, the rest 204 at once.

    POST /config {phase, fail, slow, slow_delay} changes the faults; GET /count is cheap to
    poll; GET /stats returns every record (read it once, at the end).
    """

    def __init__(self, secret: str, seed: int) -> None:
        self._webhook = Webhook(secret)
        self._rng = Random(seed)
        self.phase = "setup"
        self.fail = self.slow = self.slow_delay = 0.0
        self.records: list[dict[str, Any]] = []
        self.fates: Counter[str] = Counter()
        self.rejected = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        arrived = time.time()
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/count":
            counts = {"records": len(self.records), "fates": self.fates, "phase": self.phase}
            await answer(send, 200, json.dumps(counts))
            return
        if method == "GET" and path == "/stats":
            await answer(
                send, 200, json.dumps({"records": self.records, "rejected": self.rejected})
            )
            return
        if method == "POST" and path == "/config":
            config = json.loads(body)
            self.phase = str(config["phase"])
            self.fail, self.slow = float(config["fail"]), float(config["slow"])
            self.slow_delay = float(config["slow_delay"])
            await answer(send, 204, "")
            return
        headers = headers_of(scope)
        payload = await verified(self._webhook, body, headers, send)
        if payload is None:
            self.rejected += 1
            return
        draw = self._rng.random()
        fate = "failed" if draw < self.fail else "late" if draw < self.fail + self.slow else "ok"
        self.fates[fate] += 1
        data = payload.get("data") or {}
        incident = data.get("incident") or {}
        self.records.append(
            {
                "id": headers.get("webhook-id"),
                "at": arrived,
                "fate": fate,
                "phase": self.phase,
                "type": payload.get("type"),
                "incident_id": incident.get("id"),
                "top": [t.get("incident_id") for t in data.get("top_incidents") or []],
            }
        )
        if fate == "failed":
            await answer(send, 500, "")
            return
        if fate == "late":
            await asyncio.sleep(self.slow_delay)
        # A late answer goes to a sender that has given up: nothing to do if the socket is gone.
        with contextlib.suppress(OSError):
            await answer(send, 204, "")


def serve_receiver(port: int, secret: str, seed: int) -> None:
    """Run the receiver in this process until SIGTERM."""
    uvicorn.run(
        FaultyReceiver(secret, seed),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=120,
    )


def start_receiver(secret: str, seed: int, logs: Path) -> Server:
    port = free_port()
    log_path = logs / "receiver.log"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.soak",
        "--serve-receiver",
        str(port),
        "--secret",
        secret,
        "--seed",
        str(seed),
    ]
    server = Server("receiver", start_process(cmd, dict(os.environ), log_path), port, log_path)
    wait_ready(server, "/count")
    return server


def configure(receiver: Server, phase: str, fail: float, slow: float, slow_delay: float) -> None:
    body = {"phase": phase, "fail": fail, "slow": slow, "slow_delay": slow_delay}
    httpx.post(receiver.base + "/config", json=body, timeout=10).raise_for_status()


# ---------------------------------------------------------------------------------------------
# The database and the processes


@dataclass
class Stack:
    """The API processes and the workers."""

    apis: list[Server]
    workers: dict[str, Any] = field(default_factory=dict)  # name -> Popen

    def processes(self) -> dict[str, int]:
        pids = {api.name: api.proc.pid for api in self.apis}
        pids.update({name: proc.pid for name, proc in self.workers.items()})
        return pids

    def stop(self) -> None:
        for proc in self.workers.values():
            stop_process(proc)
        for api in self.apis:
            stop_process(api.proc)


def stack_env(db: Database, args: argparse.Namespace) -> dict[str, str]:
    env = env_for(db, inline=False)
    env.update(
        RISKALERT_WEBHOOK_TIMEOUT=str(args.webhook_timeout),
        RISKALERT_ALERTS_RETRY_SCHEDULE=json.dumps(args.retry_schedule),
        RISKALERT_ALERTS_THROTTLE_FLOOR=str(args.throttle_floor),
        # Far above the soak's rate: the limit (per key, per process) is not under test here.
        RISKALERT_RATE_LIMIT="1000000/minute",
        RISKALERT_RATE_LIMIT_UNAUTHENTICATED="1000000/minute",
    )
    return env


def start_stack(db: Database, args: argparse.Namespace, logs: Path) -> Stack:
    env = stack_env(db, args)
    stack = Stack(apis=[])
    try:
        for n in range(args.apis):
            port = free_port()
            log_path = logs / f"api-{n + 1}.log"
            cmd = [str(BIN / "riskalert"), "serve", "--host", "127.0.0.1", "--port", str(port)]
            proc = start_process(
                cmd, {**env, "RISKALERT_PUBLIC_URL": f"http://127.0.0.1:{port}"}, log_path
            )
            stack.apis.append(Server(f"api-{n + 1}", proc, port, log_path))
        for n, role in enumerate(args.roles):
            # Rescoring is catch-up work and delivery is not: as deploy/README.md recommends,
            # a scoring worker runs at a lower priority so its backlog cannot starve delivery.
            nice = ["nice", "-n", "10"] if role == "scoring" else []
            name = f"worker-{n + 1}-{role}"
            log_path = logs / f"{name}.log"
            cmd = [*nice, str(BIN / "riskalert"), "worker", "--role", role]
            stack.workers[name] = start_process(cmd, env, log_path)
        for api in stack.apis:
            wait_ready(api, "/readyz")
        for name, proc in stack.workers.items():
            wait_for_line(proc, logs / f"{name}.log", "worker running")
    except Exception:
        stack.stop()
        raise
    return stack


def wait_for_line(proc: Any, path: Path, line: str, deadline_s: float = 90.0) -> None:
    """Wait until a process has logged `line`; fail if it exits or the deadline passes."""
    started = time.perf_counter()
    while time.perf_counter() - started < deadline_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{path.name}: exited early; see {path}")
        if line in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{path.name}: no {line!r} after {deadline_s} s; see {path}")


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def backlog(engine: Engine) -> dict[str, int]:
    """What is still to do, from one snapshot: rescoring, feeds unread, deliveries open."""
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        cursors = dict(conn.execute(text("SELECT name, position FROM feed_cursor")).all())
        last_scores = conn.execute(text("SELECT COALESCE(MAX(id), 0) FROM score_change")).scalar()
        last_incidents = conn.execute(
            text("SELECT COALESCE(MAX(id), 0) FROM incident_change")
        ).scalar()
        open_deliveries = conn.execute(
            text("SELECT count(*) FROM delivery WHERE status IN ('pending', 'sending')")
        ).scalar()
        unseeded = conn.execute(text("SELECT count(*) FROM rule WHERE NOT seeded")).scalar()
    return {
        "rescoring": queue_depth(engine),
        "alerts_scores_unread": int(last_scores or 0) - int(cursors.get(pipeline.SCORE_FEED, 0)),
        "alerts_incidents_unread": int(last_incidents or 0)
        - int(cursors.get(pipeline.INCIDENT_FEED, 0)),
        "rescore_feed_unread": int(last_incidents or 0) - int(cursors.get(queue.FEED_CURSOR, 0)),
        "deliveries_open": int(open_deliveries or 0),
        "rules_unseeded": int(unseeded or 0),
    }


def waits(engine: Engine) -> dict[str, float]:
    """What the database's sessions wait on now (a stall shows here first)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT CASE WHEN wait_event_type = 'Lock' THEN 'lock:' || wait_event "
                "ELSE state END, count(*), "
                "COALESCE(EXTRACT(EPOCH FROM max(now() - xact_start)), 0) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND (wait_event_type = 'Lock' OR state = 'idle in transaction') GROUP BY 1"
            )
        ).all()
    out: dict[str, float] = {}
    for what, n, oldest in rows:
        out[str(what)] = int(n)
        out["oldest_tx_s"] = max(out.get("oldest_tx_s", 0.0), round(float(oldest), 1))
    return out


def wait_drained(engine: Engine, deadline_s: float) -> float | None:
    """Seconds until nothing is left to do (twice in a row, 1 s apart); None past the deadline."""
    started = time.perf_counter()
    quiet = 0
    last_report = started
    while time.perf_counter() - started < deadline_s:
        left = backlog(engine)
        quiet = quiet + 1 if not any(left.values()) else 0
        if quiet >= 2:
            return round(time.perf_counter() - started - 1.0, 1)
        if time.perf_counter() - last_report > 15:
            log(f"draining: {left}")
            last_report = time.perf_counter()
        time.sleep(1.0)
    log(f"not drained after {deadline_s} s: {backlog(engine)}")
    return None


# ---------------------------------------------------------------------------------------------
# The load


@dataclass
class PhaseLoad:
    """What the client did in one phase."""

    posted: int = 0
    accepted: dict[int, float] = field(default_factory=dict)  # incident id -> accepted (epoch)
    statuses: Counter[str] = field(default_factory=Counter)  # every answer, retries included
    retried: int = 0  # POSTs accepted only after a retry
    refused: int = 0  # POSTs never accepted
    abandoned: int = 0  # POSTs still unanswered at the deadline after the load, cancelled
    post_ms: list[float] = field(default_factory=list)  # due to accepted, retries included
    source_ids: set[str] = field(default_factory=set)
    elapsed_s: float = 0.0  # until the last answer
    sending_s: float = 0.0  # until the last POST was sent
    # The machine's 1-minute load average every 15 s: the VM is shared, and this says how much.
    loadavg: list[float] = field(default_factory=list)
    waits: list[dict[str, float]] = field(default_factory=list)  # `waits()` every 15 s


def kidnapping(i: int, phase: str, lat: float, lon: float, rng: Random) -> dict[str, Any]:
    """A kidnapping of expatriates within about 3 km of (lat, lon), two hours ago."""
    return {
        "source": SOURCE,
        "source_id": f"{phase}-{i}",
        "category": "kidnapping",
        "occurred_at": (datetime.now(UTC) - timedelta(hours=2)).isoformat(),
        "location": {
            "type": "Point",
            "coordinates": [lon + rng.uniform(-0.02, 0.02), lat + rng.uniform(-0.02, 0.02)],
        },
        "victim_profile": {"expatriate": True},
        "title": f"soak kidnapping {phase} {i}",
    }


async def post_load(
    apis: list[Server],
    ingest_key: str,
    points: list[tuple[float, float]],
    rate: float,
    duration: float,
    phase: str,
    seed: int,
    receiver: Server,
    engine: Engine,
    deadline_s: float,
) -> PhaseLoad:
    """POST kidnappings near `points` (in turn) at `rate`, alternating APIs; retry on the other.

    POSTs still unanswered `deadline_s` after the last one was sent are cancelled (abandoned).
    """
    rng = Random(seed)
    load = PhaseLoad()
    headers = {"Authorization": f"Bearer {ingest_key}"}
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=40)
    turns = asyncio.Semaphore(IN_FLIGHT)
    clients = [
        httpx.AsyncClient(base_url=api.base, headers=headers, timeout=30.0, limits=limits)
        for api in apis
    ]

    async def one(i: int, due: float) -> None:
        lat, lon = points[i % len(points)]
        body = kidnapping(i, phase, lat, lon, rng)
        load.source_ids.add(body["source_id"])
        key = f"soak-{phase}-{i}-{uuid.uuid4().hex}"
        # From when the POST was due: time spent waiting for a turn is the service's too.
        first = due
        for attempt in range(POST_TRIES):
            client = clients[(i + attempt) % len(clients)]
            try:
                async with turns:
                    response = await client.post(
                        "/v1/incidents", json=body, headers={"Idempotency-Key": key}
                    )
            except httpx.HTTPError as exc:
                load.statuses[type(exc).__name__] += 1
            else:
                load.statuses[str(response.status_code)] += 1
                if response.status_code in (200, 201):
                    load.accepted[int(response.json()["id"])] = time.time()
                    load.post_ms.append((time.perf_counter() - first) * 1000)
                    load.retried += attempt > 0
                    return
                # 409: the same key is still being processed (or raced); 429 and 5xx: later.
                if response.status_code < 500 and response.status_code not in (409, 429):
                    break  # the request itself is wrong: retrying will not help
            await asyncio.sleep(min(0.25 * 2**attempt, 4.0))
        load.refused += 1

    async def progress() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            for _ in range(int(duration / 15) + 1):
                await asyncio.sleep(15)
                load.loadavg.append(os.getloadavg()[0])
                try:
                    counts = (await http.get(receiver.base + "/count")).json()["fates"]
                    left = await asyncio.to_thread(backlog, engine)
                    waiting = await asyncio.to_thread(waits, engine)
                except Exception as exc:  # a progress line is not worth ending the run for
                    counts, left, waiting = repr(exc), {}, {}
                load.waits.append(waiting)
                log(
                    f"{phase}: {load.posted} posted, {len(load.accepted)} accepted, "
                    f"{len(tasks) - sum(t.done() for t in tasks)} unanswered, "
                    f"receiver {counts}, backlog {left}, db waits {waiting}, "
                    f"load {load.loadavg[-1]:.1f}"
                )

    started = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []
    reporter = asyncio.create_task(progress())
    try:
        for i in range(int(rate * duration)):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            load.posted += 1
            tasks.append(asyncio.create_task(one(i, due)))
        load.sending_s = time.perf_counter() - started
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=deadline_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            load.abandoned = len(pending)
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        for client in clients:
            await client.aclose()
    load.elapsed_s = time.perf_counter() - started
    return load


# ---------------------------------------------------------------------------------------------
# Figures


def summary(values: list[float]) -> dict[str, float | int | None]:
    """Count, p50, p90, p99 and max of latencies in seconds."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 3),
        "p90": round(pct(values, 90), 3),
        "p99": round(pct(values, 99), 3),
        "max": round(max(values), 3),
    }


def figures(
    records: list[dict[str, Any]],
    accepted: dict[str, dict[int, float]],
    deliveries: list[tuple[str, str, str]],
) -> dict[str, Any]:
    """Latencies per phase, losses and duplicates, from the receiver's records and the outbox."""
    phase_of = {i: phase for phase, ids in accepted.items() for i in ids}
    accepted_at = {i: t for ids in accepted.values() for i, t in ids.items()}
    records = sorted(records, key=lambda r: r["at"])
    first_ok: dict[str, dict[str, Any]] = {}
    failed_before: set[str] = set()
    for r in records:
        if r["fate"] == "ok":
            first_ok.setdefault(r["id"], r)
        elif r["id"] not in first_ok:
            failed_before.add(r["id"])
    out: dict[str, Any] = {}
    for phase in accepted:
        event_all, event_first, event_retried, threshold = [], [], [], []
        for message_id, r in first_ok.items():
            if r["type"] == "alert.triggered" and phase_of.get(r["incident_id"]) == phase:
                latency = r["at"] - accepted_at[r["incident_id"]]
                event_all.append(latency)
                (event_retried if message_id in failed_before else event_first).append(latency)
            elif r["type"] in THRESHOLD_TYPES and r["phase"] == phase:
                causes = [
                    accepted_at[i]
                    for i in r["top"]
                    if i in accepted_at and accepted_at[i] <= r["at"] and phase_of[i] == phase
                ]
                if causes:
                    threshold.append(r["at"] - max(causes))
        out[phase] = {
            "event_alerts": summary(event_all),
            "event_alerts_first_attempt": summary(event_first),
            "event_alerts_after_retries": summary(event_retried),
            "threshold_alerts_approx": summary(threshold),
            "incidents_with_alert": len(
                {
                    first_ok[m]["incident_id"]
                    for m in first_ok
                    if first_ok[m]["type"] == "alert.triggered"
                    and phase_of.get(first_ok[m]["incident_id"]) == phase
                }
            ),
        }
    ok = [r["id"] for r in records if r["fate"] == "ok"]
    due = [(m, kind) for m, kind, status in deliveries if status not in NOT_DUE]
    lost = [m for m, _ in due if m not in first_ok]
    late_then_sent = {r["id"] for r in records if r["fate"] == "late"} & set(first_ok)
    out["deliveries"] = {
        "rows": len(deliveries),
        "by_status": dict(Counter(status for _, _, status in deliveries)),
        "by_type": dict(Counter(kind for _, kind, _ in deliveries)),
        "due": len(due),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "received_requests": len(records),
        "receipts_by_fate": dict(Counter(r["fate"] for r in records)),
        "ok_receipts": len(ok),
        "duplicates_among_ok": len(ok) - len(set(ok)),
        "late_then_sent_again": len(late_then_sent),
        "unknown_ids": len({r["id"] for r in records} - {m for m, _, _ in deliveries}),
    }
    return out


def attempts_summary(engine: Engine) -> dict[str, int]:
    """Attempts by outcome and error class."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT outcome || COALESCE(' ' || error_class, ''), count(*) "
                "FROM delivery_attempt GROUP BY 1 ORDER BY 2 DESC"
            )
        ).all()
    return {str(k): int(v) for k, v in rows}


def read_deliveries(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT message_id, event_type, status FROM delivery WHERE endpoint_id IN "
                "(SELECT id FROM endpoint WHERE kind = 'webhook')"
            )
        ).all()
    return [(str(m), str(k), str(s)) for m, k, s in rows]


def stored_incidents(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT count(*), count(DISTINCT source_id) FROM incident WHERE source = :s"),
            {"s": SOURCE},
        ).one()
    return {"rows": int(rows[0]), "distinct_source_ids": int(rows[1])}


# ---------------------------------------------------------------------------------------------
# The run


def run_phase(
    phase: str,
    stack: Stack,
    keys: Any,
    points: list[tuple[float, float]],
    rate: float,
    duration: float,
    receiver: Server,
    engine: Engine,
    args: argparse.Namespace,
) -> dict[str, Any]:
    log(f"{phase}: {rate}/s for {duration} s over {len(points)} sites")
    load = asyncio.run(
        post_load(
            stack.apis,
            keys.ingest,
            points,
            rate,
            duration,
            phase,
            args.seed,
            receiver,
            engine,
            args.post_deadline,
        )
    )
    log(f"{phase}: load done in {load.elapsed_s:.1f} s; waiting for the queues to drain")
    drained = wait_drained(engine, args.drain_deadline)
    return {"load": load, "drained_s": drained}


def run(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    secret = generate_secret()
    receiver = start_receiver(secret, args.seed, logs)
    try:
        with scratch_database("postgresql", args.keep, label="soak_") as db:
            started = time.perf_counter()
            keys, setup = preload(db, args.sites, args.corridors, args.seed)
            chosen = subscribe(
                db,
                keys.tenant_id,
                args.subscriptions,
                receiver,
                secret,
                args.seed,
                args.event_radius,
            )
            points = site_points(db, chosen)
            Random(args.seed).shuffle(points)
            baseline_points = points[: args.hot_sites // 2]
            soak_points = points[args.hot_sites // 2 : args.hot_sites // 2 + args.hot_sites]
            setup["setup_s"] = round(time.perf_counter() - started, 1)
            log(f"setup done in {setup['setup_s']} s")
            engine = make_engine(db.url)
            stack = start_stack(db, args, logs)
            phases: dict[str, dict[str, Any]] = {}
            try:
                if args.baseline_duration > 0:
                    configure(receiver, "baseline", 0.0, 0.0, 0.0)
                    phases["baseline"] = run_phase(
                        "baseline",
                        stack,
                        keys,
                        baseline_points,
                        args.baseline_rate,
                        args.baseline_duration,
                        receiver,
                        engine,
                        args,
                    )
                configure(receiver, "soak", args.fail, args.slow, args.slow_delay)
                phases["soak"] = run_phase(
                    "soak",
                    stack,
                    keys,
                    soak_points,
                    args.rate,
                    args.duration,
                    receiver,
                    engine,
                    args,
                )
                rss = {name: peak_rss_mb(pid) for name, pid in stack.processes().items()}
                rss["receiver"] = peak_rss_mb(receiver.proc.pid)
                alive = {name: proc.poll() is None for name, proc in stack.workers.items()}
                alive.update({api.name: api.proc.poll() is None for api in stack.apis})
            finally:
                stack.stop()
            stats = httpx.get(receiver.base + "/stats", timeout=60).json()
            deliveries = read_deliveries(engine)
            out = figures(
                stats["records"],
                {p: r["load"].accepted for p, r in phases.items()},
                deliveries,
            )
            out["attempts"] = attempts_summary(engine)
            out["incidents_stored"] = stored_incidents(engine)
            engine.dispose()
    finally:
        stop_process(receiver.proc)
    out["rejected_signatures"] = stats["rejected"]
    out["setup"] = setup
    out["peak_rss_mb"] = rss
    out["alive_at_end"] = alive
    for phase, result in phases.items():
        load: PhaseLoad = result["load"]
        out[phase]["client"] = {
            "posted": load.posted,
            "accepted": len(load.accepted),
            "refused": load.refused,
            "abandoned": load.abandoned,
            "retried_then_accepted": load.retried,
            "statuses": dict(load.statuses),
            # The first POST goes at 0 s: n POSTs span n - 1 intervals.
            "achieved_rate": round((load.posted - 1) / load.sending_s, 2)
            if load.sending_s
            else None,
            "post_s": summary([ms / 1000 for ms in load.post_ms]),
            "distinct_source_ids": len(load.source_ids),
            "loadavg_1min": load.loadavg,
            "db_waits": load.waits,
        }
        out[phase]["drained_s"] = result["drained_s"]
    return out


def fmt(summary_: dict[str, Any], unit: float = 1.0, digits: int = 2) -> str:
    if not summary_["n"]:
        return "none"
    return (
        " / ".join(f"{summary_[k] * unit:.{digits}f}" for k in ("p50", "p90", "p99", "max"))
        + f" (n={summary_['n']:,})"
    )


def table(out: dict[str, Any], args: argparse.Namespace) -> str:
    """The figures as a markdown table, one column per phase."""
    phases = [p for p in ("baseline", "soak") if p in out]
    heads = {
        "baseline": f"baseline: {args.baseline_rate:g}/s for {args.baseline_duration:g} s, "
        "receiver always 204",
        "soak": f"soak: {args.rate:g}/s for {args.duration:g} s, receiver {args.fail:.0%} 500, "
        f"{args.slow:.0%} late by {args.slow_delay:g} s",
    }
    rows: list[tuple[str, list[str]]] = []

    def row(name: str, get: Any) -> None:
        rows.append((name, [get(out[p]) for p in phases]))

    row(
        "incidents posted / accepted / refused after every try / unanswered at the deadline",
        lambda o: (
            f"{o['client']['posted']:,} / {o['client']['accepted']:,} / "
            f"{o['client']['refused']} / {o['client']['abandoned']}"
        ),
    )
    row("POSTs sent per second", lambda o: f"{o['client']['achieved_rate']}")
    row(
        "HTTP statuses seen by the client (every try)",
        lambda o: ", ".join(f"{k}: {v:,}" for k, v in sorted(o["client"]["statuses"].items())),
    )
    row("POSTs accepted only on a retry", lambda o: f"{o['client']['retried_then_accepted']}")
    row(
        "POST due to accepted (retries included), p50 / p90 / p99 / max (ms)",
        lambda o: fmt(o["client"]["post_s"], 1000, 1),
    )
    row(
        "**ingest to webhook, kidnapping alerts** p50 / p90 / p99 / max (s)",
        lambda o: "**" + fmt(o["event_alerts"]) + "**",
    )
    row("... delivered at the first attempt (s)", lambda o: fmt(o["event_alerts_first_attempt"]))
    row("... delivered after failed attempts (s)", lambda o: fmt(o["event_alerts_after_retries"]))
    row(
        "ingest to webhook, threshold alerts, approx. (s)",
        lambda o: fmt(o["threshold_alerts_approx"]),
    )
    row("incidents with a kidnapping alert received", lambda o: f"{o['incidents_with_alert']:,}")
    row("drained after the load (s)", lambda o: str(o["drained_s"]))
    row(
        "machine load average (1 min) during the load, min / median / max",
        lambda o: (
            " / ".join(
                f"{f(o['client']['loadavg_1min']):.1f}" for f in (min, statistics.median, max)
            )
            if o["client"]["loadavg_1min"]
            else "n/a"
        ),
    )
    lines = [
        "| figure | " + " | ".join(heads[p] for p in phases) + " |",
        "|---|" + "---:|" * len(phases),
        *(f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows),
    ]
    d = out["deliveries"]
    stored = out["incidents_stored"]
    accepted = sum(out[p]["client"]["accepted"] for p in phases)
    lines += [
        "",
        "| whole run | |",
        "|---|---:|",
        f"| incidents accepted / stored rows / distinct source ids | {accepted:,} / "
        f"{stored['rows']:,} / {stored['distinct_source_ids']:,} |",
        f"| webhook deliveries (outbox rows) | {d['rows']:,} "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(d['by_status'].items()))}) |",
        f"| by type | {', '.join(f'{k} {v:,}' for k, v in sorted(d['by_type'].items()))} |",
        f"| requests at the receiver | {d['received_requests']:,} "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(d['receipts_by_fate'].items()))}) |",
        f"| **due deliveries / lost** | **{d['due']:,} / {d['lost']}** |",
        f"| **duplicates by webhook-id among 2xx receipts** | **{d['duplicates_among_ok']}** |",
        f"| answered late (after the sender's timeout), then sent again | "
        f"{d['late_then_sent_again']:,} |",
        "| attempts by outcome | "
        + ", ".join(f"{k}: {v:,}" for k, v in out["attempts"].items())
        + " |",
        f"| signatures rejected / ids not in the outbox | {out['rejected_signatures']} / "
        f"{d['unknown_ids']} |",
        "| peak RSS (VmHWM, MB) | "
        + ", ".join(f"{k} {v}" for k, v in out["peak_rss_mb"].items())
        + " |",
        "| processes alive at the end | "
        + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in out["alive_at_end"].items())
        + " |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--corridors", type=int, default=0)
    parser.add_argument("--subscriptions", type=int, default=1_000)
    parser.add_argument(
        "--hot-sites",
        type=int,
        default=100,
        help="subscribed sites the soak's kidnappings are placed near",
    )
    parser.add_argument(
        "--event-radius", type=float, default=10.0, help="km of each kidnapping_nearby rule"
    )
    parser.add_argument("--rate", type=float, default=20.0, help="incidents per second")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of soak")
    parser.add_argument("--baseline-rate", type=float, default=5.0)
    parser.add_argument("--baseline-duration", type=float, default=60.0, help="0: no baseline")
    parser.add_argument("--fail", type=float, default=0.10, help="share answered 500")
    parser.add_argument("--slow", type=float, default=0.05, help="share answered too late")
    parser.add_argument(
        "--slow-delay",
        type=float,
        default=3.0,
        help="seconds a late answer waits (past --webhook-timeout)",
    )
    parser.add_argument("--webhook-timeout", type=float, default=2.0, help="seconds")
    parser.add_argument(
        "--retry-schedule",
        type=json.loads,
        default=[0, 1, 2, 5, 10, 20, 30, 60],
        help="seconds before each attempt, JSON (production: 0, 5, 300, ...)",
    )
    parser.add_argument(
        "--throttle-floor",
        type=float,
        default=5.0,
        help="least wait after a timeout, seconds (production: 60)",
    )
    parser.add_argument("--apis", type=int, default=2)
    parser.add_argument(
        "--roles",
        type=lambda s: s.split(","),
        default=["scoring", "alerts"],
        help="one `riskalert worker --role R` per entry",
    )
    parser.add_argument(
        "--post-deadline",
        type=float,
        default=120.0,
        help="seconds after the last POST to wait for the others' answers",
    )
    parser.add_argument("--drain-deadline", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--serve-receiver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver:
        serve_receiver(args.serve_receiver, args.secret, args.seed)
        return
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = RESULTS / f"soak-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    began = datetime.now(UTC)
    out = run(args, logs)
    results = {
        "date": began.isoformat(timespec="seconds"),
        "ended": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "args": vars(args),
        "results": out,
    }
    (logs / "soak.json").write_text(json.dumps(results, indent=2, default=str))
    print(table(out, args))
    log(f"results and logs in {logs}")


if __name__ == "__main__":
    main()
