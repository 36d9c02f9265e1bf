"""Fan-out delivery: lanes, batched claims and settles, the sender's transport (issue: fan-out
at 0.8 of one plain client). Real receivers on loopback, both engines."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from random import Random
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, text

from services.alerts import jobs as alert_jobs
from services.alerts import outbox
from services.alerts.models import Delivery, DeliveryAttempt, Endpoint, EndpointSecret
from services.alerts.signing import generate_secret
from services.alerts.webhooks import AttemptResult
from tests import httpd
from tests.conftest import Api
from tests.scenarios.harness import wait_until

# The receiver holds each request until this many are in flight at once, or this long.
HOLD_UNTIL, HOLD_S = 3, 0.3


class Receiver:
    """A threaded HTTP server on 127.0.0.1: records requests and how many were in flight at
    once; sets a cookie on every answer; holds requests to /hang until released."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.in_flight = self.most_in_flight = 0
        self.hold = False  # hold each request until HOLD_UNTIL are in flight, or HOLD_S
        self.changed = threading.Condition()
        self.release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.changed:
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                    receiver.paths.append(self.path)
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                    receiver.changed.notify_all()
                    if receiver.hold:
                        receiver.changed.wait_for(
                            lambda: receiver.in_flight >= HOLD_UNTIL, timeout=HOLD_S
                        )
                if self.path == "/hang":
                    receiver.release.wait(10)
                with receiver.changed:
                    receiver.in_flight -= 1
                httpd.send(self, 200, {"set-cookie": "session=from-the-first; Path=/"}, b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.release.set()
        r.server.shutdown()
        r.server.server_close()


@pytest.fixture
def hooks(api_factory: Callable[..., Api]) -> Api:
    """The app with loopback webhooks allowed and the worker's timers compressed."""
    return api_factory(
        webhook_allow_http=True,
        webhook_allowlist=["127.0.0.1"],
        poll_interval=timedelta(seconds=0.05),
        shutdown_grace=timedelta(seconds=2),
    )


def _endpoints(api: Api, addresses: list[str]) -> list[Endpoint]:
    """One webhook endpoint per address, each with a secret."""
    now = datetime.now(UTC)
    with api.app.state.sessions.begin() as session:
        made = [
            Endpoint(
                tenant_id=api.tenant_a,
                kind="webhook",
                name=f"hook {n}",
                address=address,
                enabled=True,
                created_at=now,
                updated_at=now,
            )
            for n, address in enumerate(addresses)
        ]
        session.add_all(made)
        session.flush()
        for endpoint in made:
            session.add(
                EndpointSecret(endpoint_id=endpoint.id, secret=generate_secret(), created_at=now)
            )
        session.flush()
        session.expunge_all()
    return made


def _enqueue(api: Api, endpoints: list[Endpoint], per_endpoint: int = 1) -> None:
    """`per_endpoint` test notifications to each endpoint, all due at the same moment."""
    now = datetime.now(UTC)
    with api.app.state.sessions.begin() as session:
        for n in range(per_endpoint):
            for endpoint in endpoints:
                outbox.enqueue(
                    session, tenant_id=api.tenant_a, endpoints=[endpoint], alert_id=None,
                    event_type="endpoint.test", sequence=0,
                    payload={"type": "endpoint.test", "data": {"n": n}}, now=now, flush=False,
                )  # fmt: skip


def _claimed(api: Api, endpoint: Endpoint, n: int) -> outbox.Claimed:
    """A claimed delivery to `endpoint`, built by hand (sending needs no database)."""
    now = datetime.now(UTC)
    return outbox.Claimed(
        id=n, token="t", attempt=1, endpoint_id=endpoint.id, kind="webhook",
        address=endpoint.address, secrets=(generate_secret(),), message_id=f"msg_{n:024d}",
        event_type="endpoint.test", payload={"type": "endpoint.test"}, unsubscribe_token=None,
        leased_at=now, lease_expires_at=now + timedelta(seconds=45),
    )  # fmt: skip


def _statuses(api: Api) -> list[str]:
    with api.app.state.sessions() as session:
        return list(session.execute(select(Delivery.status)).scalars())


def test_a_cookie_one_receiver_sets_is_not_sent_to_the_next_endpoint(
    hooks: Api, receiver: Receiver
) -> None:
    # Two tenants' endpoints can share a host; a sender thread's HTTP client must not carry
    # what one receiver set to the next.
    first, second = _endpoints(hooks, [f"{receiver.base}/a", f"{receiver.base}/b"])
    worker = alert_jobs.AlertsWorker(hooks.app.state.sessions, hooks.settings, name="w1")
    try:
        done = [worker._attempt(_claimed(hooks, e, n)) for n, e in enumerate([first, second])]
    finally:
        worker._pool.shutdown()

    assert [d.result.outcome for d in done] == ["delivered", "delivered"]
    assert receiver.paths == ["/a", "/b"]
    assert "cookie" not in receiver.headers[1]
    assert receiver.headers[1]["user-agent"] == "riskalert-webhooks/1"


def _run_worker(api: Api, until: Callable[[], Any], what: str) -> alert_jobs.AlertsWorker:
    """Start a worker, wait until `until` holds, stop it."""
    worker = alert_jobs.AlertsWorker(api.app.state.sessions, api.settings, name="w1")
    worker.start()
    try:
        wait_until(until, timeout=20, what=what)
    finally:
        worker.stop(timeout=10)
    return worker


def test_a_worker_sends_no_more_than_active_sends_at_once_while_answers_come_promptly(
    api_factory: Callable[..., Api], receiver: Receiver
) -> None:
    # Threads of one process that all have an answer to read mostly wait for each other: a
    # process keeps `active_sends` attempts going, not `concurrency`.
    api = api_factory(
        webhook_allow_http=True, webhook_allowlist=["127.0.0.1"],
        poll_interval=timedelta(seconds=0.05), concurrency=8, active_sends=2,
        slow_send_after=timedelta(seconds=30),
    )  # fmt: skip
    receiver.hold = True
    _enqueue(api, _endpoints(api, [f"{receiver.base}/{n}" for n in range(6)]))

    _run_worker(
        api, lambda: _statuses(api) == ["succeeded"] * 6, "all six deliveries to be recorded"
    )

    assert len(receiver.paths) == 6
    assert receiver.most_in_flight == 2


def test_an_attempt_to_a_slow_endpoint_stops_counting_so_the_next_one_is_sent(
    api_factory: Callable[..., Api], receiver: Receiver
) -> None:
    # Property 6 with one active send: the hanging endpoint does not hold up the other one.
    api = api_factory(
        webhook_allow_http=True, webhook_allowlist=["127.0.0.1"],
        poll_interval=timedelta(seconds=0.05), concurrency=8, active_sends=1,
        slow_send_after=timedelta(milliseconds=50), shutdown_grace=timedelta(seconds=1),
    )  # fmt: skip
    hang, prompt = _endpoints(api, [f"{receiver.base}/hang", f"{receiver.base}/prompt"])
    _enqueue(api, [hang])
    _enqueue(api, [prompt])

    def prompt_one_arrived_while_the_other_hangs() -> bool:
        with receiver.changed:
            return "/prompt" in receiver.paths and receiver.in_flight == 1

    worker = alert_jobs.AlertsWorker(api.app.state.sessions, api.settings, name="w1")
    worker.start()
    try:
        wait_until(prompt_one_arrived_while_the_other_hangs, timeout=10, what="/prompt served")
    finally:
        receiver.release.set()
        worker.stop(timeout=10)

    assert receiver.paths[0] == "/hang"


def _count_statements(engine: Engine) -> list[str]:
    """Every statement `engine` runs from now on (BEGIN/COMMIT are not statements here)."""
    seen: list[str] = []

    def before(*args: Any) -> None:
        if not args[2].startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE
            seen.append(args[2])

    event.listen(engine, "before_cursor_execute", before)
    return seen


def test_one_cycle_settles_and_claims_many_deliveries_in_a_few_statements(
    hooks: Api, receiver: Receiver
) -> None:
    endpoints = _endpoints(hooks, [f"{receiver.base}/{n}" for n in range(20)])
    _enqueue(hooks, endpoints, per_endpoint=2)
    factory = hooks.app.state.sessions
    args: dict[str, Any] = {"owner": "w1", "settings": hooks.settings, "rng": Random(1)}
    first = alert_jobs.settle_and_claim(factory, [], 20, **args)
    done = [
        outbox.Attempted(c, AttemptResult("delivered", 204, None, None, "", 1.0), c.leased_at)
        for c in first
    ]
    statements = _count_statements(factory.kw["bind"])

    second = alert_jobs.settle_and_claim(factory, done, 20, **args)

    # Claiming: candidates, (PostgreSQL) the endpoints' locks, what is in flight, the leases
    # with what sending needs, the endpoints with their secrets; settling: the deliveries, their
    # attempts, their endpoints' health. Before: 11 on PostgreSQL, 10 on SQLite.
    postgres = factory.kw["bind"].dialect.name == "postgresql"
    assert len(statements) <= (8 if postgres else 7), statements
    assert len(first) == len(second) == 20
    assert {c.endpoint_id for c in second} == {e.id for e in endpoints}
    with factory() as session:
        assert sorted(_statuses(hooks)) == ["sending"] * 20 + ["succeeded"] * 20
        attempts = session.execute(select(DeliveryAttempt.delivery_id)).scalars().all()
        assert sorted(attempts) == sorted(c.id for c in first)


def test_an_attempt_past_its_lease_and_the_next_claims_attempt_settle_in_one_batch(
    hooks: Api,
) -> None:
    # The same delivery twice in one batch: the stale attempt is recorded in place of the
    # reaper's placeholder and decides nothing, the current one closes the delivery.
    [endpoint] = _endpoints(hooks, ["https://hooks.example.com/x"])
    _enqueue(hooks, [endpoint])
    factory = hooks.app.state.sessions
    args: dict[str, Any] = {"owner": "w1", "settings": hooks.settings, "rng": Random(1)}
    [stale] = alert_jobs.settle_and_claim(factory, [], 10, **args)
    later = stale.lease_expires_at + timedelta(seconds=1)
    alert_jobs.reap(factory, lambda: later)
    [current] = alert_jobs.settle_and_claim(factory, [], 10, clock=lambda: later, **args)
    delivered = AttemptResult("delivered", 204, None, None, "", 1.0)
    batch = [outbox.Attempted(c, delivered, c.leased_at) for c in (stale, current)]

    with factory.begin() as session:
        settled = outbox.settle(
            session, batch, now=later, owner="w1", settings=hooks.settings, rng=Random(1)
        )

    assert sorted(s.status for s in settled) == sorted([outbox.LEASE_LOST, outbox.SUCCEEDED])
    with factory() as session:
        row = session.execute(select(Delivery)).scalar_one()
        log = session.execute(
            select(DeliveryAttempt.number, DeliveryAttempt.error_class).order_by(
                DeliveryAttempt.number
            )
        ).all()
    assert (row.status, row.attempts, row.lease_token) == ("succeeded", 2, None)
    assert [tuple(r) for r in log] == [(1, "lease_expired"), (2, None)]


def test_claiming_reads_about_as_many_due_rows_as_it_claims(hooks: Api) -> None:
    # A fan-out enqueued in one transaction is due at one instant; the claim must not read and
    # sort all of it to take the first few (it did on PostgreSQL, with `id` in the ORDER BY).
    factory = hooks.app.state.sessions
    engine: Engine = factory.kw["bind"]
    endpoints = _endpoints(hooks, [f"https://hooks.example.com/{n}" for n in range(50)])
    _enqueue(hooks, endpoints, per_endpoint=40)
    # Naive on SQLite, as the column stores it there; the plan does not depend on it.
    now = datetime.now(UTC)
    due = now if engine.dialect.name == "postgresql" else now.replace(tzinfo=None)
    state = outbox._CANDIDATES.compile(dialect=engine.dialect).construct_expanded_state(
        {"now": due, "n": 40, "full": [0]}
    )
    with factory.begin() as session:
        cursor = session.connection().connection.cursor()
        if engine.dialect.name == "postgresql":
            session.execute(text("ANALYZE delivery"))
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + state.statement, state.parameters)
            read = _rows_read(cursor.fetchone()[0][0]["Plan"])
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + state.statement, state.positional_parameters)
            plan = " ".join(str(row[-1]) for row in cursor.fetchall())
            # Without a sort, SQLite walks the index in claim order and stops at the LIMIT.
            read = 2000 if "TEMP B-TREE" in plan.upper() else 0

    assert read <= 4 * 40, read


def _rows_read(plan: dict[str, Any]) -> int:
    """How many rows of `delivery` (not its `older` alias) a PostgreSQL plan read."""
    read, nodes = 0, [plan]
    for _ in range(1000):
        if not nodes:
            break
        node = nodes.pop()
        if node.get("Relation Name") == "delivery" and node.get("Alias") == "delivery":
            read += int(node["Actual Rows"]) * int(node.get("Actual Loops", 1))
        nodes.extend(node.get("Plans", []))
    return read
