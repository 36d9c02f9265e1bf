"""Faults under a steady load of incident POSTs: a worker killed, an API process killed, the
database restarted. Every accepted incident is stored once and every due delivery is made.

The client posts kidnappings near a subscribed site at a steady rate, each with its own
Idempotency-Key, and retries a POST that fails (no answer, or a 5xx) with the same key and body
against the next API process, as a load balancer's client would. The last two tests pin down
what the soak (`benchmarks/soak.py`) found: a stall of ingest under load with Idempotency-Keys.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import DBAPIError

from services.alerts.models import Rule
from services.app import create_app
from services.core import idempotency
from services.core.auth import Principal, Role
from services.core.db import make_engine, make_sessionmaker
from services.core.models import FeedCursor
from services.scoring import incidents, schemas
from services.scoring.models import Incident, IncidentChange, RescoreMark, ScoreChange
from tests.conftest import ADMIN_KEY as APP_ADMIN_KEY
from tests.conftest import make_settings
from tests.scenarios.conftest import _STACK
from tests.scenarios.harness import (
    Api,
    Database,
    Mailbox,
    Receiver,
    Reply,
    Riskalert,
    Server,
    free_port,
    run_migrate,
    seconds,
    wait_until,
)
from tests.test_rescoring import east_of_base

RATE = 3.0  # incidents per second
COUNT = 40  # 13 s of load
SOURCE = "faults"
PATH = "/faults"
# A killed worker's rescoring leases come back after this (the default, 60 s, is beyond a test).
WORKER_ENV = {"RISKALERT_RESCORE_LEASE": seconds(3)}
# Due deliveries that will never be (or need not be) sent.
NOT_DUE = ("superseded", "cancelled")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


# --------------------------------------------------------------------------------------------
# The client


@dataclass
class Post:
    """One incident the client posts (one Idempotency-Key), and what became of it."""

    n: int
    key: str
    body: dict[str, Any]
    tries: list[str] = field(default_factory=list)  # "<api>:<status>" or "<api>:<error class>"
    status: int | None = None  # of the answer that accepted it
    incident_id: int | None = None


@dataclass(frozen=True)
class Refusal:
    """A non-2xx answer the client got."""

    status: int
    content_type: str
    text: str


def kidnapping(n: int, run: str, now: datetime) -> dict[str, Any]:
    """A kidnapping 3-12 km east of the subscribed site, distinct from every other one."""
    lat, lon = east_of_base(3 + n % 10)
    return {
        "source": SOURCE,
        "source_id": f"{run}-{n}",
        "category": "kidnapping",
        "occurred_at": (now - timedelta(hours=2, minutes=n)).isoformat(),
        "location": {"type": "Point", "coordinates": [lon, lat + (n % 7) * 0.001]},
        "victim_profile": {"expatriate": True},
        "title": f"kidnapping {n} of run {run}",
    }


class Load:
    """Posts `count` kidnappings at `rate` per second, to the API processes in turn.

    A POST that gets no answer or a 5xx is retried with the same Idempotency-Key and body
    against the next process, until accepted or `retry_for` seconds have passed.
    """

    def __init__(
        self,
        servers: Sequence[Server],
        ingest: dict[str, str],
        *,
        rate: float = RATE,
        count: int = COUNT,
        retry_for: float = 30.0,
    ) -> None:
        self.names = [s.proc.name for s in servers]
        self.clients = [httpx.Client(base_url=s.url, timeout=10.0) for s in servers]
        self.ingest = ingest
        self.rate = rate
        self.retry_for = retry_for
        run = uuid.uuid4().hex[:8]
        now = datetime.now(UTC)
        self.posts = [Post(n, f"faults-{run}-{n}", kidnapping(n, run, now)) for n in range(count)]
        self.refusals: list[Refusal] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="load")
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._done = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def accepted(self) -> list[Post]:
        with self._lock:
            return [p for p in self.posts if p.incident_id is not None]

    def finished(self) -> bool:
        return self._done.is_set()

    def statuses(self) -> Counter[str]:
        """Every answer (or error) the client saw, by status, over every try."""
        with self._lock:
            return Counter(t.split(":", 1)[1] for p in self.posts for t in p.tries)

    def refused(self, status: int) -> list[Post]:
        """Posts answered `status` at least once."""
        with self._lock:
            return [p for p in self.posts if any(t.endswith(f":{status}") for t in p.tries)]

    def retried(self) -> list[Post]:
        with self._lock:
            return [p for p in self.posts if len(p.tries) > 1]

    def close(self) -> None:
        self._done.wait(self.retry_for + 15)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for client in self.clients:
            client.close()

    def _run(self) -> None:
        started = time.monotonic()
        futures = []
        for post in self.posts:
            delay = started + post.n / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the load's own pace, not a wait for a condition
            futures.append(self._pool.submit(self._post, post))
        for future in futures:
            future.result()
        self._done.set()

    def _post(self, post: Post) -> None:
        deadline = time.monotonic() + self.retry_for
        headers = {**self.ingest, "Idempotency-Key": post.key}
        for attempt in range(1000):  # bounded by the deadline long before
            which = (post.n + attempt) % len(self.clients)
            name = self.names[which]
            try:
                response = self.clients[which].post(
                    "/v1/incidents", json=post.body, headers=headers
                )
            except httpx.TransportError as exc:
                with self._lock:
                    post.tries.append(f"{name}:{type(exc).__name__}")
            else:
                with self._lock:
                    post.tries.append(f"{name}:{response.status_code}")
                    if response.status_code in (200, 201):
                        post.status = response.status_code
                        post.incident_id = int(response.json()["id"])
                        return
                    self.refusals.append(
                        Refusal(
                            response.status_code,
                            response.headers.get("content-type", ""),
                            response.text,
                        )
                    )
                if response.status_code < 500:
                    return  # not worth retrying: the test reports it
            if time.monotonic() >= deadline:
                return
            time.sleep(0.1 + 0.05 * min(attempt, 8))  # back-off between retries


# --------------------------------------------------------------------------------------------
# Setting up and checking


def watch_site(api: Api, receiver: Receiver) -> int:
    """A site with a webhook subscription: a kidnapping rule and a low threshold rule."""
    site = api.create_site("Faults mine", *east_of_base(0))
    hook = api.create_webhook("ops", receiver.url(PATH))
    receiver.expect(PATH, hook["secret"])
    rules = [
        {"kind": "event", "trigger": "kidnapping_nearby", "radius_km": 50},
        {"kind": "threshold", "raise_at": 5, "clear_at": 2},
    ]
    api.subscribe([hook["id"]], rules, target_id=site)
    return site


def quietly(database: Database) -> bool:
    """`database.idle()`, False while the database does not answer."""
    try:
        return database.idle()
    except DBAPIError:
        return False


def unfinished(database: Database) -> dict[str, Any]:
    """What keeps the pipeline from being idle, for a failure message."""
    with database.reader() as session:
        marks = session.execute(select(func.count()).select_from(RescoreMark)).scalar()
        cursors = dict(session.execute(select(FeedCursor.name, FeedCursor.position)).all())
        heads = {
            "score_change": session.execute(select(func.max(ScoreChange.id))).scalar(),
            "incident_change": session.execute(select(func.max(IncidentChange.id))).scalar(),
        }
        unseeded = session.execute(
            select(func.count()).select_from(Rule).where(Rule.seeded.is_(False))
        ).scalar()
    deliveries = Counter(d.status for d in database.deliveries())
    return {"rescore_marks": marks, "cursors": cursors, "feed_heads": heads,
            "unseeded_rules": unseeded, "deliveries": dict(deliveries)}  # fmt: skip


def stored_incidents(database: Database) -> Counter[str]:
    """How many incidents are stored per source id, for the load's source."""
    with database.reader() as session:
        rows = session.execute(
            select(Incident.source_id, func.count())
            .where(Incident.source == SOURCE)
            .group_by(Incident.source_id)
        ).all()
    return Counter({source_id: count for source_id, count in rows})


def triggered(receiver: Receiver) -> set[int]:
    """Incidents a kidnapping alert has been received (answered 200) for."""
    return {
        r.json["data"]["incident"]["id"]
        for r in receiver.answered(PATH)
        if r.event_type == "alert.triggered"
    }


def assert_everything_accepted_stored_once_and_delivered(
    load: Load, database: Database, receiver: Receiver
) -> None:
    wait_until(load.finished, timeout=load.retry_for + 30, what="the load to finish")
    accepted = load.accepted()
    missing = [(p.n, p.tries) for p in load.posts if p.incident_id is None]
    assert not missing, f"POSTs never accepted: {missing}"
    # A retry replays the first answer (201), never "unchanged" (200) from the upsert.
    assert {p.status for p in accepted} == {201}, Counter(p.status for p in accepted)
    ids = {p.incident_id for p in accepted}
    assert len(ids) == len(load.posts)

    stored = stored_incidents(database)
    assert set(stored) == {p.body["source_id"] for p in load.posts}
    assert set(stored.values()) == {1}

    wait_until(
        lambda: ids <= triggered(receiver),
        timeout=30,
        what=lambda: (
            f"a kidnapping alert for each incident ({len(ids - triggered(receiver))} "
            "still without one)"
        ),
    )
    wait_until(
        lambda: quietly(database),
        timeout=30,
        what=lambda: f"the pipeline to go idle (still: {unfinished(database)})",
    )
    due = [d for d in database.deliveries() if d.status not in NOT_DUE]
    assert {d.status for d in due} == {"succeeded"}, Counter(d.status for d in due)
    received = {r.webhook_id for r in receiver.answered(PATH)}
    assert {d.message_id for d in due} <= received
    # Everything received is a delivery of ours, signed; a resend carries the same webhook-id.
    assert {r.webhook_id for r in receiver.got(PATH)} <= {
        d.message_id for d in database.deliveries()
    }
    assert all(r.verified for r in receiver.got(PATH))


# --------------------------------------------------------------------------------------------
# (1) and (2): on SQLite and on PostgreSQL


def test_worker_killed_under_load_then_replaced_loses_no_incident_and_no_delivery(
    riskalert: Riskalert, database: Database, receiver: Receiver
) -> None:
    # Started together: interpreters take seconds to start on a busy machine.
    server = riskalert.serve(inline_worker=False, wait=False)
    worker = riskalert.worker("all", wait=False, **WORKER_ENV)
    server.wait_ready()
    api = Api(server)
    watch_site(api, receiver)
    # Each answer takes a moment, so the worker is killed with deliveries in flight.
    receiver.script(PATH, [], then=Reply(200, delay=0.2))
    worker.wait_for_output("worker running")
    wait_until(lambda: quietly(database), what="the site scored and the rules seeded")

    load = Load([api.server], api.ingest)
    load.start()
    try:
        wait_until(
            lambda: receiver.inflight[PATH] > 0 and len(load.accepted()) >= COUNT // 3,
            what="a third of the load accepted and a delivery in flight",
        )
        worker.kill9()
        riskalert.worker("all", **WORKER_ENV)
        assert_everything_accepted_stored_once_and_delivered(load, database, receiver)
    finally:
        load.close()
    assert set(load.statuses()) == {"201"}, load.statuses()


def test_api_process_killed_under_load_its_posts_retried_on_the_other_are_stored_once(
    riskalert: Riskalert, database: Database, receiver: Receiver
) -> None:
    first = riskalert.serve(inline_worker=False, wait=False)
    second = riskalert.serve(inline_worker=False, wait=False)
    worker = riskalert.worker("all", wait=False, **WORKER_ENV)
    first.wait_ready()
    second.wait_ready()
    api = Api(second)
    watch_site(api, receiver)
    worker.wait_for_output("worker running")
    wait_until(lambda: quietly(database), what="the site scored and the rules seeded")

    load = Load([first, second], api.ingest)
    load.start()
    try:
        wait_until(lambda: len(load.accepted()) >= COUNT // 3, what="a third of the load")
        first.proc.kill9()
        assert_everything_accepted_stored_once_and_delivered(load, database, receiver)
    finally:
        load.close()
    # Every POST sent to the killed process from then on failed and went to the other one.
    retried = load.retried()
    assert len(retried) >= COUNT // 5, [p.tries for p in retried]
    assert all(t.startswith(f"{first.proc.name}:") for p in retried for t in p.tries[:-1])
    assert set(load.statuses()) - {"201"} <= {"ConnectError", "RemoteProtocolError", "ReadError"}

    # A key sent again to the survivor replays its first answer; nothing new is stored.
    for post in [*retried, *load.posts[::4]]:
        again = second.http.post(
            "/v1/incidents", json=post.body, headers={**api.ingest, "Idempotency-Key": post.key}
        )
        assert (again.status_code, again.json()["id"]) == (201, post.incident_id)
    assert set(stored_incidents(database).values()) == {1}


# --------------------------------------------------------------------------------------------
# (3) PostgreSQL restarted: a private cluster, so the shared server other tests use stays up


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own on a free loopback port (trust auth)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.sockets = directory / "sockets"
        self.log = directory / "postgres.log"
        self.port = free_port()
        self.sockets.mkdir()
        if os.geteuid() == 0:
            # The server refuses to run as root: give the cluster to the postgres user.
            for path in (directory, self.sockets):
                shutil.chown(path, "postgres")
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                 "--no-sync")  # fmt: skip

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.sockets} -c fsync=off"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30",
                 "-o", options, "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        done = subprocess.run(
            self._as_owner("pg_ctl", "-D", str(self.data), "status"),
            capture_output=True,
            timeout=30,
        )
        return done.returncode == 0

    def create_database(self, name: str) -> str:
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _as_owner(self, program: str, *args: str) -> list[str]:
        runas = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return [*runas, str(PG_BIN / program), *args]

    def _pg(self, program: str, *args: str) -> None:
        done = subprocess.run(
            self._as_owner(program, *args), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{program} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private cluster, stopped and removed afterwards."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries in {PG_BIN}")
    # Not under tmp_path: pytest's folders are private to root, and the server runs as postgres.
    directory = Path(tempfile.mkdtemp(prefix="riskalert-faults-pg-"))
    try:
        cluster = PrivatePostgres(directory)
        cluster.start()
        try:
            yield cluster
        finally:
            if cluster.running():
                cluster.stop("immediate")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def private_stack(
    request: pytest.FixtureRequest,
    private_postgres: PrivatePostgres,
    mailbox: Mailbox,
    tmp_path: Path,
) -> Iterator[Riskalert]:
    """riskalert processes on a migrated database of the private cluster."""
    logs = tmp_path / "logs"
    logs.mkdir()
    url = private_postgres.create_database("riskalert")
    run_migrate(url, logs / "migrate.log")
    database = Database(url)
    stack = Riskalert(database, logs, mailbox.port)
    request.node.stash[_STACK] = stack
    try:
        yield stack
    finally:
        stack.stop_all()
        database.close()


@pytest.fixture
def private_receiver(private_stack: Riskalert) -> Iterator[Receiver]:
    """The webhook receiver, torn down before the processes (as the shared fixture is)."""
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_postgres_restart_under_load_answers_503_then_recovers_without_loss_or_duplicates(
    private_postgres: PrivatePostgres, private_stack: Riskalert, private_receiver: Receiver
) -> None:
    receiver, database = private_receiver, private_stack.database
    server = private_stack.serve(inline_worker=False, wait=False)
    worker = private_stack.worker("all", wait=False, **WORKER_ENV)
    server.wait_ready()
    api = Api(server)
    site = watch_site(api, receiver)
    worker.wait_for_output("worker running")
    wait_until(lambda: quietly(database), what="the site scored and the rules seeded")

    load = Load([server], api.ingest)
    load.start()
    try:
        wait_until(lambda: len(load.accepted()) >= COUNT // 4, what="a quarter of the load")
        worker_log = len(worker.output())
        private_postgres.stop("fast")
        try:
            # Down for a few seconds: until POSTs spread over ~2 s of the load were refused
            # and the worker has run into the outage too.
            wait_until(
                lambda: (
                    len(load.refused(503)) >= 6
                    and "OperationalError" in worker.output()[worker_log:]
                ),
                what=lambda: (
                    f"clients and the worker to meet the outage "
                    f"(statuses so far: {dict(load.statuses())})"
                ),
            )
            ready = server.http.get("/readyz")
            read = api.request("GET", f"/v1/sites/{site}/score")
        finally:
            private_postgres.start()
        database.engine.dispose()  # the test's own connections died with the server
        assert_everything_accepted_stored_once_and_delivered(load, database, receiver)
    finally:
        load.close()

    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    assert (read.status_code, read.headers["content-type"]) == (503, "application/problem+json")
    refused = [*load.refusals, Refusal(read.status_code, read.headers["content-type"], read.text)]
    assert {r.status for r in refused} == {503}, Counter(r.status for r in refused)
    for refusal in refused:
        assert refusal.content_type == "application/problem+json"
        doc = json.loads(refusal.text)
        assert doc["status"] == 503
        assert doc["type"].endswith("/database-unavailable"), doc
        assert "Traceback" not in refusal.text
        assert "psycopg" not in refusal.text
    assert set(load.statuses()) <= {"201", "503"}, load.statuses()
    assert load.retried(), "no POST was refused while the database was down"
    for proc in private_stack.procs:
        assert proc.running, proc.exited_early()


def test_answers_received_during_a_long_outage_are_recorded_after_it_not_sent_again(
    private_postgres: PrivatePostgres, private_stack: Riskalert, private_receiver: Receiver
) -> None:
    receiver, database = private_receiver, private_stack.database
    server = private_stack.serve(inline_worker=False)
    api = Api(server)
    # Leases far longer than the outage: a delivery whose answer was dropped would stay
    # `sending` until its lease ran out, then go out again.
    worker = private_stack.worker(
        "alerts", RISKALERT_ALERTS_LEASE=seconds(60), RISKALERT_WEBHOOK_TIMEOUT=seconds(20)
    )
    hook = api.create_webhook("ops", receiver.url("/slow"))
    receiver.expect("/slow", hook["secret"])
    # Each answer comes 3 s after its request: once the database has gone.
    receiver.script("/slow", [Reply(status=204, delay=3.0)] * 4)
    sent = [api.send_test(hook["id"])["id"] for _ in range(4)]
    wait_until(lambda: len(receiver.got("/slow")) == 4, what="four deliveries in flight")
    private_postgres.stop("fast")
    stopped = time.monotonic()
    try:
        wait_until(lambda: len(receiver.answered("/slow", 204)) == 4, what="the four answers")
        # The outage's length (the old dispatcher gave finished attempts up after about
        # 10 s), not a wait for work.
        time.sleep(max(0.0, 15.0 - (time.monotonic() - stopped)))
    finally:
        private_postgres.start()
    database.engine.dispose()  # the test's own connections died with the server

    # Recorded from memory once the database is back, long before any lease runs out.
    wait_until(
        lambda: all(database.delivery(i).status == "succeeded" for i in sent),
        timeout=20,
        what="the four deliveries recorded as made",
    )
    assert len(receiver.got("/slow")) == 4, "an answered delivery was sent again"
    assert [len(database.attempts(i)) for i in sent] == [1, 1, 1, 1]
    streak = worker.output()
    assert streak.count("settling and claiming deliveries failed (1 in a row)") == 1
    assert "settling and claiming deliveries works again" in streak


# --------------------------------------------------------------------------------------------
# What the soak found (docs/benchmarks.md, "Soak and faults")


def test_a_request_finding_no_free_database_connection_gets_a_503_problem_not_a_500(
    db_url: str,
) -> None:
    app = create_app(make_settings(db_url))
    admin = {"Authorization": f"Bearer {APP_ADMIN_KEY}"}
    body = kidnapping(0, uuid.uuid4().hex[:8], datetime.now(UTC))
    # One connection, held by the test: every request waits for it and gives up after 0.2 s,
    # as requests did when a stall held every connection of the process.
    busy = create_engine(db_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        # Raising server exceptions: the pool's timeout must be answered, not re-raised.
        with TestClient(app, raise_server_exceptions=True) as client, busy.connect():
            app.state.sessions = make_sessionmaker(busy)
            app.state.read_sessions = make_sessionmaker(busy, read_only=True)
            responses = [
                client.post("/v1/incidents", json=body, headers=admin),
                client.get("/v1/incidents", headers=admin),
            ]
    finally:
        busy.dispose()
    for response in responses:
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "5"
        assert response.json()["type"].endswith("/database-unavailable")
        assert "Traceback" not in response.text


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_ingest_with_an_idempotency_key_takes_the_incident_feed_lock_only_at_commit(
    db_url: str,
) -> None:
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    now = datetime.now(UTC)
    body = schemas.IncidentIn.model_validate(kidnapping(0, uuid.uuid4().hex[:8], now))
    caller = Principal(key_id=None, tenant_id=None, roles=frozenset({Role.INCIDENTS_WRITE}))
    held = text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    )
    try:
        with factory.begin() as session:
            # What POST /v1/incidents does with an Idempotency-Key, up to its commit.
            stored = incidents.upsert(session, body, now)
            fingerprint = idempotency.request_fingerprint("/v1/incidents", body)
            response = idempotency.StoredResponse(201, {"id": stored.incident.id})
            idempotency.remember(session, caller, "lock-key", fingerprint, response, now)
            locks_before_commit = session.execute(held).scalar()
        with factory() as session:
            entries = session.execute(
                select(func.count())
                .select_from(IncidentChange)
                .where(IncidentChange.incident_id == stored.incident.id)
            ).scalar()
    finally:
        engine.dispose()
    assert entries == 1  # the feed entry went in, with the unit of work
    assert locks_before_commit == 0, "the feed lock is held before the unit of work commits"
