"""Prometheus metrics as an operator and an outsider meet them: the token and the limit on both
metrics ports, gauges read from the database at most once per TTL, process and build metrics,
the worker's /healthz, and the age of what an endpoint has not received yet."""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, event, update
from sqlalchemy.orm import Session, sessionmaker

from services.alerts import jobs as alert_jobs
from services.alerts import outbox
from services.alerts.models import Delivery, DeliveryAttempt
from services.core import metrics
from services.core.db import make_engine, make_sessionmaker
from services.core.ratelimit import Limiter
from services.scoring import jobs as scoring_jobs
from services.settings import Settings
from tests.conftest import Api, assert_problem
from tests.scenarios.harness import Database, Riskalert, free_port, holds_for, wait_until
from tests.test_operations import samples

TOKEN = "scrape-me"
SCRAPER = {"Authorization": f"Bearer {TOKEN}"}


class Queries:
    """Statements an engine runs, counted by a SQLAlchemy event listener."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)
        self._engine = engine

    def _seen(self, *_: Any) -> None:
        self.count += 1

    def during(self, action: Callable[[], object]) -> int:
        """How many statements `action` ran."""
        before = self.count
        action()
        return self.count - before

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


@pytest.fixture
def queries_of() -> Iterator[Callable[[Api], Queries]]:
    made: list[Queries] = []

    def attach(api: Api) -> Queries:
        made.append(Queries(api.app.state.engine))
        return made[-1]

    yield attach
    for q in made:
        q.close()


# --------------------------------------------------------------------------------------------
# Who may scrape, and how often


def test_scrapes_with_a_wrong_token_are_rate_limited_per_address(
    api_factory: Callable[..., Api],
) -> None:
    api = api_factory(metrics_token=TOKEN, rate_limit_unauthenticated="3/minute")
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
        assert_problem(api.client.get("/metrics", headers=headers), 401)

    refused = assert_problem(
        api.client.get("/metrics", headers={"Authorization": "Bearer no"}), 429
    )

    assert "Retry-After" in api.client.get("/metrics").headers
    assert refused["type"].endswith("/rate-limited")
    # The token holder is not held up by someone else's guesses.
    for _ in range(5):
        assert api.client.get("/metrics", headers=SCRAPER).status_code == 200
    assert (
        api.client.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    )


def test_open_metrics_count_every_scrape_against_the_anonymous_limit(
    api_factory: Callable[..., Api],
) -> None:
    api = api_factory(rate_limit_unauthenticated="2/minute")
    assert [api.client.get("/metrics").status_code for _ in range(2)] == [200, 200]

    assert_problem(api.client.get("/metrics"), 429)


def test_a_scrape_within_the_cache_ttl_runs_no_query(
    api_factory: Callable[..., Api], queries_of: Callable[[Api], Queries]
) -> None:
    api = api_factory(metrics_token=TOKEN, metrics_cache_ttl=timedelta(minutes=1))
    queries = queries_of(api)

    def scrape() -> None:
        assert api.client.get("/metrics", headers=SCRAPER).status_code == 200

    assert queries.during(scrape) >= 3
    assert queries.during(scrape) == 0
    assert queries.during(scrape) == 0


def test_without_a_cache_ttl_every_scrape_reads_the_database(
    api_factory: Callable[..., Api], queries_of: Callable[[Api], Queries]
) -> None:
    api = api_factory(metrics_token=TOKEN, metrics_cache_ttl=0)
    queries = queries_of(api)

    counts = [queries.during(lambda: api.client.get("/metrics", headers=SCRAPER)) for _ in range(2)]

    assert all(count >= 3 for count in counts)


def test_the_cached_reading_is_read_again_once_older_than_the_ttl(
    sessions: sessionmaker[Session],
) -> None:
    queries = Queries(sessions.kw["bind"])
    now = [100.0]
    gauges = metrics.DatabaseGauges(lambda: datetime.now(UTC), ttl=5.0, monotonic=lambda: now[0])
    try:
        first = queries.during(lambda: gauges.read(sessions))
        now[0] += 4.9
        within = queries.during(lambda: gauges.read(sessions))
        now[0] += 0.2
        after = queries.during(lambda: gauges.read(sessions))
    finally:
        queries.close()

    assert (first > 0, within, after > 0) == (True, 0, True)


# --------------------------------------------------------------------------------------------
# What every scrape shows


def test_metrics_show_the_build_and_the_process(api: Api) -> None:
    text = api.client.get("/metrics").text

    info = samples(text, "riskalert_build_info")
    expected = f'{{python="{platform.python_version()}",version="{version("riskalert")}"}}'
    assert info == {expected: 1.0}
    assert samples(text, "process_resident_memory_bytes")[""] > 0
    assert "process_cpu_seconds_total" in text


def test_in_multiprocess_mode_the_answering_process_reports_itself_by_pid(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "prometheus"  # not tmp_path: the SQLite file is a .db there too
    directory.mkdir()
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(directory))

    text = api.client.get("/metrics").text

    assert samples(text, "process_resident_memory_bytes")[f'{{pid="{os.getpid()}"}}'] > 0
    assert f'process_cpu_seconds_total{{pid="{os.getpid()}"}}' in text
    assert "riskalert_build_info{" in text


@pytest.mark.slow
def test_several_uvicorn_workers_each_report_their_process(db_url: str, tmp_path: Path) -> None:
    stack = Riskalert(Database(db_url), tmp_path, smtp_port=free_port())
    try:
        server = stack.serve("--workers", "2", inline_worker=False)

        def both() -> set[str]:
            with httpx.Client(base_url=server.url, timeout=10) as fresh:
                text = fresh.get("/metrics").text
            pids = set(samples(text, "process_resident_memory_bytes"))
            return pids if len(pids) == 2 else set()

        pids = wait_until(both, what="process metrics of both uvicorn workers")
        assert str(server.proc.pid) not in "".join(pids)  # the workers, not their supervisor
        assert server.proc.terminate() == 0
    finally:
        stack.stop_all()
        stack.database.close()


# --------------------------------------------------------------------------------------------
# A worker's metrics port


@pytest.fixture
def port_of() -> Iterator[Callable[..., metrics.MetricsServer]]:
    servers: list[metrics.MetricsServer] = []

    def start(**kwargs: Any) -> metrics.MetricsServer:
        values: dict[str, Any] = {
            "token": None,
            "limiter": Limiter("", "requests without a valid key"),
            "stalled": list,
        }
        values.update(kwargs)
        server = metrics.MetricsServer("127.0.0.1", 0, **values)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_the_metrics_port_answers_healthz_by_the_loops_it_is_told_about(
    port_of: Callable[..., metrics.MetricsServer],
) -> None:
    stalled: list[str] = []
    server = port_of(stalled=lambda: list(stalled))
    url = f"http://127.0.0.1:{server.port}"

    ok = httpx.get(f"{url}/healthz")
    stalled.append("alerts-dispatch")
    down = httpx.get(f"{url}/healthz")

    assert (ok.status_code, ok.json()) == (200, {"status": "ok"})
    assert down.status_code == 503
    assert down.json()["stalled"] == ["alerts-dispatch"]
    assert httpx.get(f"{url}/elsewhere").status_code == 404
    # No token set: open, as the API's.
    assert httpx.get(f"{url}/metrics").status_code == 200


def test_the_metrics_port_needs_the_token_and_limits_failed_scrapes(
    port_of: Callable[..., metrics.MetricsServer],
) -> None:
    server = port_of(
        token=SecretStr(TOKEN), limiter=Limiter("2/minute", "requests without a valid key")
    )
    url = f"http://127.0.0.1:{server.port}/metrics"

    statuses = [
        httpx.get(url, headers={"Authorization": "Bearer no"}).status_code for _ in range(3)
    ]
    ok = httpx.get(url, headers=SCRAPER)

    assert statuses == [401, 401, 429]
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("text/plain")
    assert "riskalert_build_info{" in ok.text
    assert "process_resident_memory_bytes" in ok.text
    # Liveness probes carry no token.
    assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").status_code == 200


@pytest.mark.slow
def test_a_worker_process_serves_healthz_and_guards_metrics_with_the_token(
    db_url: str, tmp_path: Path
) -> None:
    stack = Riskalert(Database(db_url), tmp_path, smtp_port=free_port())
    port = free_port()
    try:
        stack.worker("all", "--metrics-port", str(port), RISKALERT_METRICS_TOKEN=TOKEN)
        url = f"http://127.0.0.1:{port}"

        def healthy() -> httpx.Response | None:
            answer = httpx.get(f"{url}/healthz", timeout=5)
            return answer if answer.status_code == 200 else None

        answer = wait_until(healthy, what="the worker's /healthz")
        assert answer.json() == {"status": "ok"}
        assert_problem(httpx.get(f"{url}/metrics", timeout=5), 401)
        scraped = httpx.get(f"{url}/metrics", headers=SCRAPER, timeout=5)
        assert scraped.status_code == 200
        assert "riskalert_build_info{" in scraped.text
        assert "riskalert_ticks_total" in scraped.text
    finally:
        stack.stop_all()
        stack.database.close()


# --------------------------------------------------------------------------------------------
# Worker liveness: the loops turn, whatever the database does

# How long a loop may go without turning, here (the worker's own bound is minutes).
BOUND = 2.5
UNREACHABLE = {
    "sqlite": "sqlite:////nonexistent-riskalert-dir/riskalert.db",
    "postgresql": "postgresql+psycopg://nobody@127.0.0.1:1/riskalert",
}


def _outage_settings(engine_name: str) -> Settings:
    return Settings(
        database_url=UNREACHABLE[engine_name],
        poll_interval=timedelta(seconds=0.05),
        worker_poll_interval=timedelta(seconds=0.05),
        shutdown_grace=timedelta(seconds=1),
    )


@pytest.mark.parametrize("engine_name", ["sqlite", "postgresql"])
def test_worker_loops_keep_turning_while_the_database_is_away(engine_name: str) -> None:
    settings = _outage_settings(engine_name)
    engine = make_engine(settings.database_url)
    factory = make_sessionmaker(engine)
    alerts = alert_jobs.AlertsWorker(factory, settings)
    rescorer = scoring_jobs.RescoreWorker(factory, settings)
    # Not started: not alive.
    assert alerts.stalled(5.0)
    assert rescorer.stalled(5.0)
    alerts.start()
    rescorer.start()
    try:
        wait_until(
            lambda: not alerts.stalled(BOUND) and not rescorer.stalled(BOUND),
            what="every loop to turn although each pass fails",
        )
        # Longer than the bound (and the dispatcher's longest back-off): only loops that keep
        # turning stay healthy.
        holds_for(
            lambda: not alerts.stalled(BOUND) and not rescorer.stalled(BOUND),
            seconds=BOUND + 1,
            what="every loop turning",
        )
    finally:
        alerts.stop(timeout=5)
        rescorer.stop(timeout=5)
        engine.dispose()

    assert sorted(alerts.stalled(60)) == ["alerts-dispatch", "alerts-events", "alerts-thresholds"]
    assert rescorer.stalled(60) == ["rescore-worker"]


def test_a_loop_stuck_in_a_pass_is_reported_stalled(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def stuck(*_: Any, **__: Any) -> int:
        release.wait(10)
        return 0

    monkeypatch.setattr(alert_jobs, "consume", stuck)
    monkeypatch.setattr(scoring_jobs, "rescore_pending", stuck)
    settings = Settings(database_url=db_url, poll_interval=0.05, worker_poll_interval=0.05)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    alerts = alert_jobs.AlertsWorker(factory, settings)
    rescorer = scoring_jobs.RescoreWorker(factory, settings)
    alerts.start()
    rescorer.start()
    rescorer.wake()
    try:
        wait_until(
            lambda: len(alerts.stalled(0.3) + rescorer.stalled(0.3)) == 3,
            what="the stuck loops to be reported",
        )
        stalled = sorted(alerts.stalled(0.3) + rescorer.stalled(0.3))
        # The dispatcher is not stuck: it goes on turning.
        assert stalled == ["alerts-events", "alerts-thresholds", "rescore-worker"]
    finally:
        release.set()
        alerts.stop(timeout=5)
        rescorer.stop(timeout=5)
        engine.dispose()


# --------------------------------------------------------------------------------------------
# What an endpoint has not received yet


def _undelivered(db: Database, tenant_id: int, endpoint_id: int, *, age: timedelta) -> int:
    """A delivery created `age` ago, waiting for a retry an hour from now (not overdue)."""
    (delivery_id,) = db.enqueue(tenant_id, [endpoint_id])
    now = datetime.now(UTC)
    with db.sessions.begin() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(created_at=now - age, attempts=3, next_attempt_at=now + timedelta(hours=1))
        )
    return delivery_id


def _attempt(db: Database, delivery_id: int, outcome: str, started: timedelta) -> None:
    with db.sessions.begin() as session:
        session.add(
            DeliveryAttempt(
                delivery_id=delivery_id,
                number=1,
                started_at=datetime.now(UTC) - started,
                duration_ms=5.0,
                outcome=outcome,
                status_code=503 if outcome == "retry" else 200,
                error_class=None,
                error=None,
                response_body=None,
                worker="test",
            )
        )


@pytest.fixture
def db(api: Api) -> Iterator[Database]:
    database = Database(api.settings.database_url)
    yield database
    database.close()


def test_an_endpoint_failing_forever_shows_the_age_of_its_oldest_undelivered_notification(
    api: Api, db: Database
) -> None:
    failing, healthy = db.add_webhooks(api.tenant_a, ["https://a.example/1", "https://a.example/2"])
    _undelivered(db, api.tenant_a, failing[0], age=timedelta(hours=2))
    _undelivered(db, api.tenant_a, failing[0], age=timedelta(minutes=10))
    done = _undelivered(db, api.tenant_a, healthy[0], age=timedelta(days=1))
    with db.sessions.begin() as session:
        session.execute(update(Delivery).where(Delivery.id == done).values(status=outbox.SUCCEEDED))

    text = api.client.get("/metrics").text

    # Waiting for its retry, it is not overdue: the queue's own gauge never sees it.
    assert samples(text, "riskalert_queue_oldest_seconds")['{queue="delivery"}'] == 0
    ages = samples(text, "riskalert_endpoint_oldest_undelivered_seconds")
    assert set(ages) == {f'{{endpoint_id="{failing[0]}",tenant_id="{api.tenant_a}"}}'}
    # The older of its two: two hours, counted from its creation.
    assert 7190 < next(iter(ages.values())) < 7300


def test_settled_deliveries_leave_the_age_gauge(api: Api, db: Database) -> None:
    endpoints = db.add_webhooks(api.tenant_a, [f"https://a.example/{i}" for i in range(4)])
    ids = [_undelivered(db, api.tenant_a, e, age=timedelta(hours=1)) for e, _ in endpoints]
    with db.sessions.begin() as session:
        for delivery_id, status in zip(
            ids, (outbox.SUCCEEDED, outbox.FAILED, outbox.CANCELLED, outbox.SENDING), strict=True
        ):
            session.execute(
                update(Delivery).where(Delivery.id == delivery_id).values(status=status)
            )

    ages = samples(api.client.get("/metrics").text, "riskalert_endpoint_oldest_undelivered_seconds")

    # Only the one being sent is still undelivered.
    assert list(ages) == [f'{{endpoint_id="{endpoints[3][0]}",tenant_id="{api.tenant_a}"}}']


def test_the_age_gauge_names_only_the_endpoints_waiting_longest(
    api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "AGE_SERIES", 2)
    endpoints = db.add_webhooks(api.tenant_b, [f"https://b.example/{i}" for i in range(3)])
    for hours, (endpoint_id, _) in zip((1, 3, 2), endpoints, strict=True):
        _undelivered(db, api.tenant_b, endpoint_id, age=timedelta(hours=hours))

    ages = samples(api.client.get("/metrics").text, "riskalert_endpoint_oldest_undelivered_seconds")

    assert {labels.split('"')[1] for labels in ages} == {str(endpoints[1][0]), str(endpoints[2][0])}


def test_recent_attempts_are_counted_by_outcome_from_the_database(api: Api, db: Database) -> None:
    ((endpoint_id, _),) = db.add_webhooks(api.tenant_a, ["https://a.example/1"])
    delivery_id = _undelivered(db, api.tenant_a, endpoint_id, age=timedelta(hours=1))
    for outcome, ago in (
        ("retry", timedelta(minutes=1)),
        ("retry", timedelta(minutes=5)),
        ("delivered", timedelta(minutes=2)),
        ("retry", timedelta(hours=2)),  # before the window
    ):
        _attempt(db, delivery_id, outcome, ago)

    recent = samples(api.client.get("/metrics").text, "riskalert_delivery_attempts_recent")

    assert recent['{outcome="retry"}'] == 2
    assert recent['{outcome="delivered"}'] == 1
    # Every outcome has its series, zero or not, so a ratio never divides by an absent one.
    assert recent['{outcome="failed"}'] == 0
