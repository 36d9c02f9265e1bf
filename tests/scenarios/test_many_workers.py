"""Scenario 7: several worker processes share the outbox; each delivery is sent exactly once."""

from __future__ import annotations

import re
from collections import Counter

from services.alerts.models import Delivery
from tests.scenarios.harness import Database, Receiver, Riskalert, seconds, wait_until

ENDPOINTS = 100


def test_four_workers_send_2000_deliveries_each_exactly_once_and_all_take_part(
    riskalert: Riskalert, database: Database, receiver: Receiver
) -> None:
    # Postgres: four processes (claims with SKIP LOCKED); SQLite: two (BEGIN IMMEDIATE, WAL).
    postgres = database.engine_name == "postgresql"
    processes, total = (4, 2000) if postgres else (2, 400)
    tenant = database.add_tenant("Fan-out firm")
    paths = [f"/fan/{i}" for i in range(ENDPOINTS)]
    endpoints = database.add_webhooks(tenant, [receiver.url(p) for p in paths])
    for path, (_, secret) in zip(paths, endpoints, strict=True):
        receiver.expect(path, secret)
    # A lease far longer than any attempt, and a timeout no busy receiver reaches: this
    # scenario is about claiming, not about lost leases or attempts timed out after the
    # receiver read them (each a legitimate duplicate under at-least-once, tested elsewhere).
    workers = [
        riskalert.worker(
            "alerts",
            wait=False,
            RISKALERT_ALERTS_LEASE=seconds(30),
            RISKALERT_WEBHOOK_TIMEOUT=seconds(20),
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.wait_for_output("worker running")

    ids = database.enqueue(tenant, [e for e, _ in endpoints], copies=total // ENDPOINTS)
    assert len(ids) == total

    wait_until(
        lambda: len(receiver.answered()) >= total,
        timeout=90,
        what=lambda: f"{total} requests (got {len(receiver.answered())})",
    )

    def all_succeeded() -> list[Delivery]:
        rows = database.deliveries()
        return rows if all(r.status == "succeeded" for r in rows) else []

    rows = wait_until(all_succeeded, timeout=30, what="every delivery recorded as succeeded")

    received = Counter(r.webhook_id for r in receiver.got())
    assert set(received) == {r.message_id for r in rows}
    assert max(received.values()) == 1, received.most_common(3)
    assert all(r.verified for r in receiver.got())
    attempts = database.attempts()
    delivered = Counter(a.delivery_id for a in attempts if a.outcome == "delivered")
    assert set(delivered) == set(ids)
    assert max(delivered.values()) == 1
    # Any other attempt is a connection the loopback stack reset before the receiver read the
    # request (it never saw it): retried, as at-least-once requires.
    others = [(a.outcome, a.status_code, a.error) for a in attempts if a.outcome != "delivered"]
    assert all(outcome == "retry" and code is None for outcome, code, _ in others), others
    by_pid = Counter(int(re.sub(r".*-(\d+)-[0-9a-f]+$", r"\1", a.worker)) for a in attempts)
    assert set(by_pid) == {w.pid for w in workers}, by_pid
    for worker in workers:
        assert "database is locked" not in worker.output()
