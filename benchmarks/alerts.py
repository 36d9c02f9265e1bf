"""Alert delivery benchmarks: ingest-to-webhook latency and fan-out, against real processes.

    .venv/bin/python -m benchmarks.alerts --backend both          # full sizes (docs/benchmarks.md)
    .venv/bin/python -m benchmarks.alerts --backend sqlite --sites 1000 --corridors 100 \
        --subscriptions 100 --duration 10 --fanout 1000            # a quick smoke run

Latency: kidnappings are posted at a steady rate near subscribed sites (each subscription has a
`kidnapping_nearby` event rule and a band threshold rule); for every signed webhook the
receiver gets about such an incident, latency = arrival - the moment the POST was answered.
Fan-out: once the workers run (idle), deliveries are written to the outbox in one transaction;
the receiver counts every `webhook-id` (duplicates and losses are reported). Just before and
just after, the reference: one plain synchronous httpx.Client on one connection posts the same
notifications, signed, to the same receiver; the ratio of the two rates is the figure to watch.
Burst: one endpoint watches 200 sites with a `kidnapping_nearby` rule; every few seconds a new
threshold rule on those sites fires for all 200 at once, while kidnappings near them are posted
at a steady rate: latency of the kidnapping webhooks behind the bulk notices to that endpoint.
Every process binds 127.0.0.1, every wait has a deadline, and everything started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any

import httpx
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from benchmarks.run import (
    ADMIN_KEY,
    BIN,
    RESULTS,
    Database,
    Server,
    free_port,
    log,
    machine,
    pct,
    preload,
    scratch_database,
    start_process,
    stop_process,
    stop_server,
    wait_ready,
)
from services.alerts import outbox, signing
from services.alerts.models import Delivery, Endpoint, EndpointSecret, Rule, Subscription
from services.alerts.schemas import parse_rule
from services.alerts.signing import generate_secret
from services.core.db import make_engine, make_sessionmaker
from services.scoring.models import Target

FAILED_POSTS: list[int] = []  # per latency run: posts that got no 2xx
TARGETS = {"latency_p50_ms": 200.0, "latency_p99_ms": 1000.0, "fanout_per_s": 500.0}


def env_for(db: Database, inline: bool) -> dict[str, str]:
    """The environment of every riskalert process of a run."""
    env = dict(os.environ)
    env.update(
        RISKALERT_DATABASE_URL=db.url,
        RISKALERT_ADMIN_API_KEY=ADMIN_KEY,
        RISKALERT_INLINE_WORKER="true" if inline else "false",
        RISKALERT_AUTO_MIGRATE="false",
        RISKALERT_RESCORE_INTERVAL="P1D",
        RISKALERT_WEBHOOK_ALLOW_HTTP="true",
        RISKALERT_WEBHOOK_ALLOWLIST='["127.0.0.1"]',
        # One key drives the whole load: the benchmark measures capacity, not the per-key limit.
        RISKALERT_RATE_LIMIT="",
    )
    return env


def start_receiver(secret: str, logs: Path) -> Server:
    """The verifying receiver, in its own process."""
    port = free_port()
    log_path = logs / "receiver.log"
    proc = start_process(
        [sys.executable, "-m", "benchmarks.receiver", "--port", str(port), "--secret", secret],
        dict(os.environ),
        log_path,
    )
    server = Server("receiver", proc, port, log_path)
    wait_ready(server, "/stats")
    return server


def sites_of(session: Session, tenant_id: int) -> list[int]:
    """The tenant's site ids."""
    return list(
        session.execute(
            select(Target.id).where(Target.tenant_id == tenant_id, Target.kind == "site")
        ).scalars()
    )


def switch_on_now(session: Session) -> None:
    """Move the alerts service's feed cursors to the feeds' ends: earlier history is not news."""
    for feed in ("score_change", "incident_change"):
        session.execute(
            text(
                f"UPDATE feed_cursor SET position = (SELECT COALESCE(MAX(id), 0) "
                f"FROM {feed}) WHERE name = :name"
            ),
            {"name": feed},
        )


def subscribe(
    db: Database, tenant_id: int, n: int, receiver: Server, secret: str, seed: int,
    radius_km: float,
) -> list[int]:  # fmt: skip
    """n endpoints and subscriptions on random sites, written directly; the subscribed site ids."""
    engine = make_engine(db.url)
    factory = make_sessionmaker(engine)
    rng = Random(seed)
    now = datetime.now(UTC)
    try:
        with factory.begin() as session:
            site_ids = sites_of(session, tenant_id)
            chosen = rng.sample(site_ids, min(n, len(site_ids)))
            for i, site_id in enumerate(chosen):
                endpoint = Endpoint(
                    tenant_id=tenant_id, kind="webhook", name=f"hook {i}",
                    address=f"{receiver.base}/hook/{i}", enabled=True,
                    created_at=now, updated_at=now,
                )  # fmt: skip
                session.add(endpoint)
                session.flush()
                session.add(EndpointSecret(endpoint_id=endpoint.id, secret=secret, created_at=now))
                sub = Subscription(
                    tenant_id=tenant_id, name=f"site {site_id}", scope="target",
                    target_id=site_id, endpoint_ids=[endpoint.id], digest_bands=[],
                    enabled=True, created_at=now, updated_at=now,
                )  # fmt: skip
                session.add(sub)
                session.flush()
                bodies: list[tuple[str, dict[str, Any]]] = [
                    ("threshold", {"kind": "threshold", "metric": "band", "raise_at": "high",
                                   "clear_at": "elevated"}),
                    ("event", {"kind": "event", "trigger": "kidnapping_nearby",
                               "radius_km": radius_km}),
                ]  # fmt: skip
                for kind, params in bodies:
                    session.add(
                        Rule(
                            subscription_id=sub.id, tenant_id=tenant_id, kind=kind,
                            params=_rule_params(kind, params), enabled=True,
                            # Switched on now: earlier history is not news (see the cursor).
                            seeded=True, created_at=now, updated_at=now,
                        )
                    )  # fmt: skip
            switch_on_now(session)
        return chosen
    finally:
        engine.dispose()


def _rule_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    return parse_rule(kind, params).model_dump(mode="json")


def site_points(db: Database, ids: list[int]) -> list[tuple[float, float]]:
    """(lat, lon) of the given sites."""
    engine = make_engine(db.url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Target.id, Target.coordinates).where(Target.id.in_(ids)))
            by_id = {i: c for i, c in rows}
    finally:
        engine.dispose()
    return [(by_id[i][0][1], by_id[i][0][0]) for i in ids if i in by_id]


def start_stack(
    db: Database, logs: Path, roles: list[str], *, wait_workers: bool = False
) -> Server:
    """The API, plus one `riskalert worker --role R` per role; no roles: the inline default.
    With `wait_workers`, each worker serves /healthz on a port of its own and is waited for."""
    workers = len(roles)
    inline = workers == 0
    env = env_for(db, inline)
    port = free_port()
    log_path = logs / f"api-{db.backend}.log"
    proc = start_process(
        [str(BIN / "riskalert"), "serve", "--host", "127.0.0.1", "--port", str(port)], env, log_path
    )
    server = Server(f"riskalert serve ({db.backend})", proc, port, log_path)
    health: list[Server] = []
    for n, role in enumerate(roles):
        # Rescoring is catch-up work and delivery is not: the scoring worker runs at a lower
        # priority, as deploy/README.md recommends, so a backlog cannot starve delivery.
        nice = ["nice", "-n", "10"] if role == "scoring" else []
        ports = ["--metrics-port", str(free_port())] if wait_workers else []
        worker_log = logs / f"worker-{db.backend}-{n}.log"
        worker = start_process(
            [*nice, str(BIN / "riskalert"), "worker", "--role", role, *ports], env, worker_log
        )
        server.extra.append(worker)
        if ports:
            health.append(Server(f"worker {n}", worker, int(ports[1]), worker_log))
    try:
        wait_ready(server, "/readyz")
        for worker_health in health:
            wait_ready(worker_health, "/healthz")
    except Exception:
        stop_server(server)
        raise
    return server


def receiver_stats(receiver: Server) -> dict[str, Any]:
    """Everything the receiver has recorded (large: read it once, at the end)."""
    stats: dict[str, Any] = httpx.get(receiver.base + "/stats", timeout=30).json()
    return stats


def receiver_counts(receiver: Server) -> dict[str, Any]:
    """How much the receiver has recorded (small: cheap enough to poll)."""
    counts: dict[str, Any] = httpx.get(receiver.base + "/count", timeout=30).json()
    return counts


async def _post_incidents(
    api: Server, ingest_key: str, points: list[tuple[float, float]], rate: float, duration: float,
    seed: int,
) -> dict[int, float]:  # fmt: skip
    """Post kidnappings near the points at a steady rate; incident id -> time it was accepted."""
    rng = Random(seed)
    accepted: dict[int, float] = {}
    errors = 0
    headers = {"Authorization": f"Bearer {ingest_key}"}
    now = datetime.now(UTC)
    async with httpx.AsyncClient(base_url=api.base, headers=headers, timeout=30) as client:

        async def one(i: int) -> None:
            nonlocal errors
            lat, lon = rng.choice(points)
            body = {
                "source": "bench-latency",
                "source_id": f"k{i}-{seed}",
                "category": "kidnapping",
                "occurred_at": (now - timedelta(hours=2)).isoformat(),
                "location": {
                    "type": "Point",
                    "coordinates": [lon + rng.uniform(-0.05, 0.05), lat + rng.uniform(-0.05, 0.05)],
                },
                "victim_profile": {"expatriate": True},
                "title": f"bench kidnapping {i}",
            }
            try:
                response = await client.post("/v1/incidents", json=body)
            except httpx.HTTPError:
                errors += 1  # e.g. no answer within the client timeout: the service is saturated
                return
            if response.status_code in (200, 201):
                accepted[response.json()["id"]] = time.time()
            else:
                errors += 1

        started = time.perf_counter()
        tasks = []
        for i in range(int(rate * duration)):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    if errors:
        log(f"{errors} incident posts failed")
    FAILED_POSTS.append(errors)
    return accepted


def latency(
    db: Database, logs: Path, keys: Any, points: list[tuple[float, float]], receiver: Server,
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    """Ingest-to-webhook latency at a steady rate."""
    # Postgres: rescoring and alerts in their own processes, so the operating system, not one
    # interpreter lock, shares the cores between a rescoring backlog and alert delivery.
    roles = (
        []
        if db.backend == "sqlite"
        else ["scoring"] * args.latency_workers + ["alerts"] * args.alerts_workers
    )
    api = start_stack(db, logs, roles)
    try:
        httpx.post(receiver.base + "/reset", timeout=10)
        accepted = asyncio.run(
            _post_incidents(api, keys.ingest, points, args.rate, args.duration, args.seed)
        )
        # Done when every incident has had a webhook and nothing more arrived for 2 s.
        deadline = time.perf_counter() + args.drain_deadline
        last, quiet_since = -1, time.perf_counter()
        while time.perf_counter() < deadline:
            counts = receiver_counts(receiver)
            if counts["records"] != last:
                last, quiet_since = counts["records"], time.perf_counter()
            elif (
                counts["triggered_incidents"] >= len(accepted)
                and time.perf_counter() - quiet_since >= 2.0
            ):
                break
            time.sleep(0.5)
        stats = receiver_stats(receiver)
        triggered = [r for r in stats["records"] if r["type"] == "alert.triggered"]
        got = [
            (r["at"] - accepted[r["incident_id"]]) * 1000
            for r in triggered
            if r["incident_id"] in accepted
        ]
        missing = len(set(accepted) - {r["incident_id"] for r in triggered})
        others = dict(
            Counter(r["type"] for r in stats["records"] if r["type"] != "alert.triggered")
        )
    finally:
        stop_server(api)
    return {
        "incidents": len(accepted),
        "failed_posts": FAILED_POSTS[-1] if FAILED_POSTS else 0,
        "webhooks": len(got),
        "webhooks_per_incident": round(len(got) / len(accepted), 1) if accepted else None,
        "incidents_without_webhook": missing,
        "p50_ms": round(statistics.median(got), 1) if got else None,
        "p90_ms": round(pct(got, 90), 1) if got else None,
        "p99_ms": round(pct(got, 99), 1) if got else None,
        "max_ms": round(max(got), 1) if got else None,
        "threshold_webhooks": others,
        "rejected_signatures": stats["rejected"],
        "workers": ", ".join(roles) if roles else "inline (1 process)",
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fanout_payload(endpoint_id: int, n: int, now: datetime) -> dict[str, Any]:
    """The notification of the fan-out's n-th delivery (the reference posts the same)."""
    return {"type": "endpoint.test", "timestamp": now.isoformat(),
            "data": {"endpoint": {"id": endpoint_id}, "n": n}}  # fmt: skip


def reference(
    receiver: Server, secret: str, targets: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """One plain synchronous httpx.Client on one keep-alive connection POSTs the fan-out's
    notifications to the same receiver, signed and with the headers a delivery has.

    Bodies and message ids are made before the clock starts (the outbox holds them too); each
    request is signed as it is sent, with its own timestamp, as every delivery attempt is.
    Timed like the fan-out: from the first to the last arrival at the receiver.
    """
    prepared = [
        (url, outbox.new_message_id(), json.dumps(p, separators=(",", ":")).encode())
        for url, p in targets
    ]
    httpx.post(receiver.base + "/reset", timeout=10)
    failed = 0
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    headers = {"user-agent": "riskalert-webhooks/1"}
    with httpx.Client(limits=limits, headers=headers, timeout=15, trust_env=False) as client:
        receiver_before, client_before = cpu_seconds(receiver.proc.pid), time.thread_time()
        started = time.perf_counter()
        for url, message_id, body in prepared:
            signed = signing.headers([secret], message_id, int(time.time()), body)
            signed["accept-encoding"] = "identity"
            if client.post(url, content=body, headers=signed).status_code != 204:
                failed += 1
        elapsed = time.perf_counter() - started
        client_cpu = time.thread_time() - client_before
        receiver_cpu = cpu_seconds(receiver.proc.pid) - receiver_before
    arrivals = sorted(r["at"] for r in receiver_stats(receiver)["records"])
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else None
    return {
        "requests": len(prepared),
        "received": len(arrivals),
        "failed": failed,
        "body_bytes_mean": round(statistics.mean(len(b) for _, _, b in prepared), 1),
        "per_s_first_to_last": round(len(arrivals) / span, 1) if span else None,
        "per_s_client": round(len(prepared) / elapsed, 1),
        # Shares of one core over the client's run: together about 1, each request waits for
        # the other side; whichever is larger is what sets the pace.
        "client_cpu_share": round(client_cpu / elapsed, 2),
        "receiver_cpu_share": round(receiver_cpu / elapsed, 2),
        "client_cpu_us_per_request": round(client_cpu / len(prepared) * 1e6),
        "receiver_cpu_us_per_request": round(receiver_cpu / len(prepared) * 1e6),
    }


def fanout(
    db: Database, logs: Path, receiver: Server, secret: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Start the workers and wait until they run, then write n deliveries across every
    endpoint in one transaction and time how they are sent; the reference (one plain client
    posting the same notifications) runs just before and just after."""
    engine = make_engine(db.url)
    factory = make_sessionmaker(engine)
    now = datetime.now(UTC)
    try:
        with factory.begin() as session:
            # Whatever the latency phase left behind is not part of this measurement.
            session.execute(
                update(Delivery)
                .where(Delivery.status.in_(("pending", "sending")))
                .values(status="cancelled")
            )
            endpoints = list(session.execute(select(Endpoint).order_by(Endpoint.id)).scalars())
            session.expunge_all()
        payloads = [
            (
                endpoints[i % len(endpoints)],
                fanout_payload(endpoints[i % len(endpoints)].id, i, now),
            )
            for i in range(args.fanout)
        ]
        log(f"{db.backend}: reference before the fan-out")
        before = reference(receiver, secret, [(e.address, p) for e, p in payloads])
        log(f"{db.backend}: reference {before['per_s_first_to_last']}/s")
        httpx.post(receiver.base + "/reset", timeout=10)
        workers = 0 if db.backend == "sqlite" else args.fanout_workers
        begun = time.perf_counter()
        stack = start_stack(db, logs, ["alerts"] * workers, wait_workers=True)
        ready_s = time.perf_counter() - begun
        senders = [p.pid for p in stack.extra] or [stack.proc.pid]
        try:
            with factory.begin() as session:
                for endpoint, payload in payloads:
                    outbox.enqueue(
                        session, tenant_id=endpoint.tenant_id, endpoints=[endpoint],
                        alert_id=None, event_type="endpoint.test", sequence=0, payload=payload,
                        now=now, flush=False,
                    )  # fmt: skip
            # The commit wakes the workers (NOTIFY on PostgreSQL, polling on SQLite).
            committed = time.time()
            receiver_cpu_before = cpu_seconds(receiver.proc.pid)
            deadline = time.perf_counter() + args.drain_deadline
            # The senders' CPU from the first poll that saw a delivery to the one that saw all.
            first: tuple[int, float] | None = None
            got = 0
            while time.perf_counter() < deadline:
                got = receiver_counts(receiver)["by_type"].get("endpoint.test", 0)
                if got and first is None:
                    first = (got, sum(cpu_seconds(pid) for pid in senders))
                if got >= args.fanout:
                    break
                time.sleep(0.25)
            receiver_cpu = cpu_seconds(receiver.proc.pid) - receiver_cpu_before
            sender_cpu = (
                (sum(cpu_seconds(pid) for pid in senders) - first[1]) / max(1, got - first[0])
                if first
                else None
            )
            # Anything still in flight or duplicated arrives now.
            time.sleep(1.0)
            stats = receiver_stats(receiver)
        finally:
            stop_server(stack)
        with factory() as session:
            by_status = dict(
                session.execute(
                    select(Delivery.status, func.count()).group_by(Delivery.status)
                ).all()
            )
            by_worker: dict[str, int] = dict(
                session.execute(
                    text("SELECT worker, count(*) FROM delivery_attempt GROUP BY worker")
                ).all()
            )
            # What any attempt that did not deliver met (a duplicate is explained here).
            outcomes = {
                f"{outcome}: {error or ''}"[:160]: n
                for outcome, error, n in session.execute(
                    text(
                        "SELECT outcome, COALESCE(error_class, '') || ' ' || COALESCE(error, ''), "
                        "count(*) FROM delivery_attempt WHERE outcome <> 'delivered' "
                        "GROUP BY 1, 2"
                    )
                ).all()
            }
        log(f"{db.backend}: reference after the fan-out")
        after = reference(receiver, secret, [(e.address, p) for e, p in payloads])
        log(f"{db.backend}: reference {after['per_s_first_to_last']}/s")
    finally:
        engine.dispose()
    # Only this phase's notifications: the latency phase may still have alerts in its feeds.
    records = [r for r in stats["records"] if r["type"] == "endpoint.test"]
    ids = [r["id"] for r in records]
    arrivals = sorted(r["at"] for r in records)
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else None
    rate = round(len(ids) / span, 1) if span else None
    references = [r["per_s_first_to_last"] for r in (before, after) if r["per_s_first_to_last"]]
    reference_rate = round(statistics.mean(references), 1) if references else None
    return {
        "deliveries": args.fanout,
        "received": len(ids),
        "unique": len(set(ids)),
        "duplicates": len(ids) - len(set(ids)),
        "lost": args.fanout - len(set(ids)),
        "per_s_first_to_last": rate,
        # From the commit of the outbox rows (the workers running and idle) to the last arrival.
        "per_s_from_commit": round(len(ids) / (arrivals[-1] - committed), 1) if arrivals else None,
        "workers_ready_s": round(ready_s, 1),
        # One plain client posting the same notifications to the same receiver, just before
        # and just after the fan-out; the ratio is against the mean of the two.
        "reference_per_s": reference_rate,
        "ratio_to_reference": round(rate / reference_rate, 2) if rate and reference_rate else None,
        "reference_before": before,
        "reference_after": after,
        "workers": workers or "inline (1 process)",
        "sender_cpu_ms_per_delivery": round(sender_cpu * 1000, 3) if sender_cpu else None,
        # The receiver's CPU from the first to the last arrival, as a share of one core: well
        # under 1, it was not what limited the rate (it is one single-threaded process).
        "receiver_cpu_share": round(receiver_cpu / span, 2) if span else None,
        "attempts_per_worker": sorted(by_worker.values(), reverse=True),
        "attempts_not_delivered": outcomes,
        "status": {str(k): int(v) for k, v in by_status.items()},
        "rejected_signatures": stats["rejected"],
    }


BURST_TAG = "burst"


def subscribe_burst(
    db: Database, tenant_id: int, receiver: Server, secret: str, args: argparse.Namespace
) -> tuple[int, list[int]]:
    """One endpoint watching `--burst-sites` sites (tagged) for kidnappings; (endpoint, sites)."""
    engine = make_engine(db.url)
    factory = make_sessionmaker(engine)
    now = datetime.now(UTC)
    try:
        with factory.begin() as session:
            site_ids = sites_of(session, tenant_id)
            chosen = Random(args.seed + 3).sample(site_ids, min(args.burst_sites, len(site_ids)))
            for target in session.execute(select(Target).where(Target.id.in_(chosen))).scalars():
                target.tags = [*target.tags, BURST_TAG]
            endpoint = Endpoint(
                tenant_id=tenant_id, kind="webhook", name="burst", address=f"{receiver.base}/burst",
                enabled=True, created_at=now, updated_at=now,
            )  # fmt: skip
            if args.burst_endpoint_slots is not None:
                endpoint.max_in_flight = args.burst_endpoint_slots
            session.add(endpoint)
            session.flush()
            session.add(EndpointSecret(endpoint_id=endpoint.id, secret=secret, created_at=now))
            _tag_subscription(
                session, tenant_id, endpoint.id, "kidnappings",
                {"kind": "event", "trigger": "kidnapping_nearby", "radius_km": args.burst_radius},
                seeded=True, now=now,
            )  # fmt: skip
            switch_on_now(session)
            return endpoint.id, chosen
    finally:
        engine.dispose()


def _tag_subscription(
    session: Session, tenant_id: int, endpoint_id: int, name: str, rule: dict[str, Any], *,
    seeded: bool, now: datetime,
) -> None:  # fmt: skip
    """A subscription of the burst-tagged sites to `endpoint_id` with one rule."""
    sub = Subscription(
        tenant_id=tenant_id, name=name, scope="tag", tag=BURST_TAG, endpoint_ids=[endpoint_id],
        digest_bands=[], enabled=True, created_at=now, updated_at=now,
    )  # fmt: skip
    session.add(sub)
    session.flush()
    session.add(
        Rule(
            subscription_id=sub.id, tenant_id=tenant_id, kind=rule["kind"],
            params=_rule_params(rule["kind"], rule), enabled=True, seeded=seeded,
            created_at=now, updated_at=now,
        )
    )  # fmt: skip


def _fire_bursts(
    db: Database, tenant_id: int, endpoint_id: int, every: float, count: int, stop: Any
) -> list[float]:
    """Every `every` s, a new threshold rule over the burst sites that fires for each of them
    when it is seeded (score >= 0); returns when each was written."""
    engine = make_engine(db.url)
    factory = make_sessionmaker(engine)
    written: list[float] = []
    try:
        for n in range(count):
            with factory.begin() as session:
                _tag_subscription(
                    session, tenant_id, endpoint_id, f"burst {n}",
                    {"kind": "threshold", "metric": "score", "raise_at": 0.0},
                    seeded=False, now=datetime.now(UTC),
                )  # fmt: skip
            written.append(time.time())
            if stop.wait(every):
                break
    finally:
        engine.dispose()
    return written


def outbox_empty(db: Database) -> bool:
    """Whether no delivery is pending or being sent."""
    engine = make_engine(db.url)
    try:
        with engine.connect() as conn:
            waiting = conn.execute(
                select(func.count()).where(Delivery.status.in_(("pending", "sending")))
            ).scalar_one()
    finally:
        engine.dispose()
    return int(waiting) == 0


def burst(
    db: Database, logs: Path, keys: Any, receiver: Server, secret: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Kidnapping webhooks to an endpoint that bulk threshold notices keep busy."""
    endpoint_id, sites = subscribe_burst(db, keys.tenant_id, receiver, secret, args)
    points = site_points(db, sites)
    roles = [] if db.backend == "sqlite" else ["scoring", "alerts"]
    api = start_stack(db, logs, roles)
    stop = threading.Event()
    try:
        httpx.post(receiver.base + "/reset", timeout=10)
        bursts = max(1, int(args.duration // args.burst_every))
        firing: list[float] = []
        writer = threading.Thread(
            target=lambda: firing.extend(
                _fire_bursts(db, keys.tenant_id, endpoint_id, args.burst_every, bursts, stop)
            )
        )
        writer.start()
        accepted = asyncio.run(
            _post_incidents(api, keys.ingest, points, args.burst_rate, args.duration, args.seed)
        )
        stop.set()
        writer.join(60)
        # Done when every incident has had a webhook and the outbox is empty (a firing may be
        # superseded by an escalation before it is sent, so counting firings would not end).
        deadline = time.perf_counter() + args.drain_deadline
        while time.perf_counter() < deadline:
            counts = receiver_counts(receiver)
            if counts["triggered_incidents"] >= len(accepted) and outbox_empty(db):
                break
            time.sleep(0.5)
        time.sleep(1.0)  # anything still in flight arrives now
        stats = receiver_stats(receiver)
    finally:
        stop.set()
        stop_server(api)
    mine = [r for r in stats["records"] if r["path"] == "/burst"]
    urgent = [
        (r["at"] - accepted[r["incident_id"]]) * 1000
        for r in mine
        if r["type"] == "alert.triggered" and r["incident_id"] in accepted
    ]
    bulk = [r for r in mine if r["type"] != "alert.triggered"]
    return {
        "sites": len(sites),
        "bursts": len(firing),
        "threshold_notices_received": len(bulk),
        "threshold_notices_by_type": dict(
            Counter(r["type"] for r in mine if r["type"] != "alert.triggered")
        ),
        "incidents": len(accepted),
        "kidnapping_webhooks": len(urgent),
        "incidents_without_webhook": len(
            set(accepted) - {r["incident_id"] for r in mine if r["type"] == "alert.triggered"}
        ),
        "kidnapping_p50_ms": round(statistics.median(urgent), 1) if urgent else None,
        "kidnapping_p90_ms": round(pct(urgent, 90), 1) if urgent else None,
        "kidnapping_p99_ms": round(pct(urgent, 99), 1) if urgent else None,
        "kidnapping_max_ms": round(max(urgent), 1) if urgent else None,
        "endpoint_slots": args.burst_endpoint_slots or "default",
        "rejected_signatures": stats["rejected"],
        "workers": ", ".join(roles) if roles else "inline (1 process)",
    }


def run_backend(backend: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Every phase on one engine."""
    out: dict[str, Any] = {"backend": backend}
    secret = generate_secret()
    receiver = start_receiver(secret, logs)
    try:
        with scratch_database(backend, keep=False) as db:
            started = time.perf_counter()
            keys, figures = preload(db, args.sites, args.corridors, args.seed)
            chosen = subscribe(
                db, keys.tenant_id, args.subscriptions, receiver, secret, args.seed,
                args.event_radius,
            )  # fmt: skip
            out["setup_s"] = round(time.perf_counter() - started, 1)
            out["setup"] = figures
            points = site_points(db, chosen)
            if "latency" in args.phases:
                log(f"{backend}: latency at {args.rate}/s for {args.duration} s")
                out["latency"] = latency(db, logs, keys, points, receiver, args)
                log(f"{backend}: {out['latency']}")
            if "burst" in args.phases:
                log(f"{backend}: burst of {args.burst_sites} every {args.burst_every} s")
                out["burst"] = burst(db, logs, keys, receiver, secret, args)
                log(f"{backend}: {out['burst']}")
            if "fanout" in args.phases:
                log(f"{backend}: fan-out of {args.fanout}")
                out["fanout"] = fanout(db, logs, receiver, secret, args)
                log(f"{backend}: {out['fanout']}")
                f = out["fanout"]
                before, after = f["reference_before"], f["reference_after"]
                log(
                    f"{backend}: fan-out {f['per_s_first_to_last']}/s, reference "
                    f"{f['reference_per_s']}/s (before {before['per_s_first_to_last']}, after "
                    f"{after['per_s_first_to_last']}), ratio {f['ratio_to_reference']}; "
                    f"{f['lost']} lost, {f['duplicates']} duplicated; senders' CPU "
                    f"{f['sender_cpu_ms_per_delivery']} ms per delivery"
                )
    finally:
        stop_process(receiver.proc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--corridors", type=int, default=1_000)
    parser.add_argument("--subscriptions", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=20.0, help="incidents per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of steady load")
    parser.add_argument(
        "--latency-workers", type=int, default=1, help="Postgres rescoring processes (+1 alerts)"
    )
    parser.add_argument(
        "--alerts-workers", type=int, default=1, help="Postgres alerts processes (latency)"
    )
    parser.add_argument(
        "--event-radius", type=float, default=50.0, help="km of each kidnapping_nearby rule"
    )
    parser.add_argument("--fanout", type=int, default=10_000)
    parser.add_argument("--fanout-workers", type=int, default=4)
    parser.add_argument("--burst-sites", type=int, default=200, help="sites on the one endpoint")
    parser.add_argument(
        "--burst-every", type=float, default=10.0, help="seconds between threshold bursts"
    )
    parser.add_argument("--burst-rate", type=float, default=2.0, help="kidnappings per second")
    parser.add_argument(
        "--burst-radius", type=float, default=10.0, help="km of the burst endpoint's event rule"
    )
    parser.add_argument(
        "--burst-endpoint-slots", type=int, default=None,
        help="max_in_flight of the burst endpoint (default: the setting's)",
    )  # fmt: skip
    parser.add_argument("--drain-deadline", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--phases",
        type=lambda text: text.split(","),
        default=["latency", "fanout"],
        help="comma-separated: latency, fanout, burst",
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = RESULTS / "logs-alerts"
    logs.mkdir(exist_ok=True)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "args": vars(args),
        "targets": TARGETS,
        "runs": [run_backend(b, args, logs) for b in backends],
    }
    path = RESULTS / "alerts.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    log(f"results in {path}")


if __name__ == "__main__":
    main()
