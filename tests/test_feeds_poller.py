"""Feed polling against a loopback server replaying recorded pages: watermarks and paging,
retries, the circuit, leases, credentials kept out of errors and logs, and the health API; on
SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from random import Random
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.core import http, ticks
from services.core.db import make_engine, make_sessionmaker
from services.feeds import poller
from services.feeds.models import FeedState
from services.feeds.settings import FeedConfig, FeedsSettings
from services.scoring.models import ImportRun, Incident
from tests import httpd
from tests.conftest import Api, assert_problem

RECORDED = Path(__file__).parent / "fixtures" / "feeds" / "recorded"
T0 = datetime(2025, 7, 1, tzinfo=UTC)
KEY = "acled-key-5f3a9c0d1e"
TOKEN = "bearer-token-7b2e41aa90"
EMAIL = "analyst@example.org"
ACLED = "/acled/read"
DELETED = "/deleted/read"
UCDP = "/api/gedevents/25.1"


def day(text: str) -> datetime:
    """Midnight UTC of an ISO date."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def unix(moment: datetime) -> str:
    """Unix seconds as ACLED's API takes them."""
    return str(int(moment.timestamp()))


# The loopback source --------------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted answer; with `hold`, sent only once the event is set (at most 5 s later)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None


def page(name: str) -> Reply:
    """A recorded page, as the source sent it."""
    return Reply(body=(RECORDED / name).read_bytes(), headers={"content-type": "application/json"})


def document(value: Any) -> Reply:
    """A page made here (an empty result, an error document)."""
    return Reply(body=json.dumps(value).encode(), headers={"content-type": "application/json"})


@dataclass(frozen=True)
class Seen:
    """A request the source got."""

    path: str
    params: dict[str, str]
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up on a held reply is expected here."""


class Replay:
    """A loopback HTTP server answering each path with its scripted replies in turn."""

    def __init__(self) -> None:
        self.replies: dict[str, deque[Reply]] = {}
        self.seen: list[Seen] = []
        self.unscripted = 0
        self.arrived = threading.Condition()
        self.holds: list[threading.Event] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                with replay.arrived:
                    replay.seen.append(Seen(parts.path, params, headers))
                    queue = replay.replies.get(parts.path)
                    if queue:
                        reply = queue.popleft()
                    else:
                        replay.unscripted += 1
                        reply = Reply(status=418, body=b"unscripted")
                    replay.arrived.notify_all()
                if reply.hold is not None:
                    reply.hold.wait(5)
                httpd.send(self, reply.status, reply.headers, reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        # A short select timeout, so shutdown() returns at once rather than after 0.5 s.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        with self.arrived:
            self.replies.setdefault(path, deque()).extend(replies)

    def hold(self) -> threading.Event:
        """An event a held reply waits on; set at the latest when the server closes."""
        event = threading.Event()
        self.holds.append(event)
        return event

    def requests(self, path: str | None = None) -> list[Seen]:
        with self.arrived:
            return [s for s in self.seen if path is None or s.path == path]

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.seen) >= count, timeout)

    def close(self) -> None:
        for event in self.holds:
            event.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def replay() -> Iterator[Replay]:
    source = Replay()
    yield source
    source.close()
    assert source.unscripted == 0, "a request got no scripted reply"
    assert not any(source.replies.values()), "scripted replies left unsent"


# Harness --------------------------------------------------------------------------------------


class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)

    def to(self, moment: datetime | None) -> None:
        assert moment is not None
        self.now = moment


class Sleeps(list[float]):
    """The injected sleep: records the waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


def acled_feed(replay: Replay, **fields: Any) -> dict[str, Any]:
    """The ACLED events feed on the loopback source, two rows a page, from 1 May 2025."""
    return {
        "name": "acled-sahel",
        "kind": "acled",
        "url": replay.url(ACLED),
        "page_size": 2,
        "start": "2025-05-01",
        "query": {"iso": "466|854|562"},
        **fields,
    }


def feeds_settings(*feeds: dict[str, Any], **overrides: Any) -> FeedsSettings:
    """Polling settings for tests: short timeouts, no retries unless asked."""
    values: dict[str, Any] = {
        "feeds": list(feeds),
        "feed_request_timeout": 2,
        "feed_retries": 0,
        "feed_retry_base": 1,
        "feed_max_retry_wait": 60,
    }
    values.update(overrides)
    return FeedsSettings(**values)


def poll(
    sessions: sessionmaker[Session],
    settings: FeedsSettings,
    clock: Clock,
    *,
    name: str | None = None,
    force: bool = False,
    sleeps: Sleeps | None = None,
) -> poller.Outcome:
    """Poll one feed (the first configured, or `name`) with its own client."""
    config = settings.feeds[0] if name is None else settings.feed(name)
    assert config is not None
    with poller.make_client(settings) as client:
        return poller.poll(
            sessions, config, settings, clock, client, force=force,
            sleep=sleeps if sleeps is not None else Sleeps(), rng=Random(1),
        )  # fmt: skip


def tick(sessions: sessionmaker[Session], settings: FeedsSettings, clock: Clock) -> int:
    """One scheduler tick."""
    return poller.poll_due(sessions, settings, clock, sleep=Sleeps())


def state(sessions: sessionmaker[Session], name: str = "acled-sahel") -> FeedState:
    with sessions() as session:
        found = session.get(FeedState, name)
        assert found is not None
        return found


def count(sessions: sessionmaker[Session], model: type[Any]) -> int:
    with sessions() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


# Incremental polling and paging ---------------------------------------------------------------


def test_polls_page_by_page_then_asks_only_for_rows_edited_since_the_watermark(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    settings = feeds_settings(acled_feed(replay))
    replay.script(ACLED, page("acled_page1.json"), page("acled_page2.json"))

    first = poll(sessions, settings, clock)

    assert first.status == "succeeded"
    assert first.summary is not None
    assert (first.summary["read"], first.summary["inserted"]) == (3, 3)
    sent = replay.requests()
    assert [r.params["page"] for r in sent] == ["1", "2"]
    assert all(r.params["limit"] == "2" and r.params["iso"] == "466|854|562" for r in sent)
    assert sent[0].params["timestamp"] == unix(day("2025-05-01"))  # the feed's start
    assert sent[0].params["timestamp_where"] == ">="
    stored = state(sessions)
    assert stored.watermark == day("2025-05-28")  # the newest row's `timestamp`
    assert stored.next_poll_at == T0 + timedelta(hours=1)
    assert stored.lease_until is None
    assert stored.last_summary is not None
    assert stored.last_summary["inserted"] == 3

    # Not due before its interval: the tick sends nothing.
    clock.advance(minutes=59)
    assert tick(sessions, settings, clock) == 0
    assert len(replay.requests()) == 2

    clock.advance(minutes=1)
    replay.script(ACLED, page("acled_next.json"), page("acled_empty.json"))
    assert tick(sessions, settings, clock) == 1

    again = replay.requests()[2:]
    assert [r.params["page"] for r in again] == ["1", "2"]
    assert again[0].params["timestamp"] == unix(day("2025-05-28"))
    stored = state(sessions)
    assert stored.watermark == day("2025-06-13")
    assert stored.last_summary is not None
    assert stored.last_summary["inserted"] == 1  # MLI7002 is new
    assert stored.last_summary["unchanged"] == 1  # NER5101, at the watermark, comes again
    assert count(sessions, Incident) == 4
    assert count(sessions, ImportRun) == 2

    # Nothing new: the poll succeeds, the watermark stays, and no import run is started.
    clock.advance(hours=1)
    replay.script(ACLED, page("acled_empty.json"))
    assert tick(sessions, settings, clock) == 1
    stored = state(sessions)
    assert stored.watermark == day("2025-06-13")
    assert stored.last_success_at == clock.now
    assert stored.last_summary is not None
    assert stored.last_summary["read"] == 0
    assert count(sessions, ImportRun) == 2


def test_acled_deletions_are_polled_by_deleted_timestamp_and_retract(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    deleted = {"name": "acled-deleted", "kind": "acled-deleted", "url": replay.url(DELETED),
               "start": "2025-06-01"}  # fmt: skip
    settings = feeds_settings(acled_feed(replay), deleted)
    replay.script(ACLED, page("acled_page1.json"), page("acled_page2.json"))
    replay.script(DELETED, page("acled_deleted.json"))

    assert tick(sessions, settings, clock) == 2

    (sent,) = replay.requests(DELETED)
    assert sent.params["deleted_timestamp"] == unix(day("2025-06-01"))
    assert sent.params["deleted_timestamp_where"] == ">="
    assert sent.params["limit"] == "5000"
    stored = state(sessions, "acled-deleted")
    assert stored.last_summary is not None
    assert stored.last_summary["retracted"] == 1
    assert stored.watermark == day("2025-06-20")


def test_ucdp_pages_until_the_last_page_and_reads_a_month_back_from_the_watermark(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    feed = {"name": "ucdp-ged", "kind": "ucdp", "url": replay.url(UCDP), "page_size": 2,
            "token": TOKEN, "start": "2025-05-01", "query": {"Country": "432,439,436"}}  # fmt: skip
    settings = feeds_settings(feed)
    assert settings.feeds[0].page_size == 2
    replay.script(UCDP, page("ucdp_page0.json"), page("ucdp_page1.json"))

    outcome = poll(sessions, settings, clock)

    assert outcome.status == "succeeded"
    assert outcome.summary is not None
    assert outcome.summary["inserted"] == 3
    sent = replay.requests()
    assert [(r.params["page"], r.params["pagesize"]) for r in sent] == [("0", "2"), ("1", "2")]
    assert all(r.params["StartDate"] == "2025-05-01" for r in sent)
    assert all(r.params["Country"] == "432,439,436" for r in sent)
    assert all(r.headers["x-ucdp-access-token"] == TOKEN for r in sent)
    assert all("authorization" not in r.headers for r in sent)
    assert state(sessions, "ucdp-ged").watermark == day("2025-06-02")

    clock.advance(hours=1)
    replay.script(UCDP, document({"TotalCount": 0, "TotalPages": 0, "Result": []}))
    assert tick(sessions, settings, clock) == 1
    # Candidate events are revised for a month: read back 31 days from the newest seen.
    assert replay.requests()[-1].params["StartDate"] == "2025-05-02"


def test_a_poll_reading_more_pages_than_allowed_fails(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    settings = feeds_settings(acled_feed(replay), feed_max_pages=1)
    replay.script(ACLED, page("acled_page1.json"))

    outcome = poll(sessions, settings, clock)

    assert outcome.status == "failed"
    assert outcome.error is not None
    assert "more than 1 full pages" in outcome.error
    assert state(sessions).watermark is None  # a failure never moves the watermark


# Retries within a poll ------------------------------------------------------------------------


def test_a_429_waits_as_long_as_retry_after_asks_within_the_cap(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    settings = feeds_settings(acled_feed(replay, page_size=5), feed_retries=3)
    date = format_datetime(T0 + timedelta(seconds=20), usegmt=True)
    for retry_after, waited in (("7", 7.0), (date, 20.0), ("3600", 60.0)):  # the cap: 60 s
        replay.script(
            ACLED, Reply(429, headers={"Retry-After": retry_after}), page("acled_page1.json")
        )
        sleeps = Sleeps()

        outcome = poll(sessions, settings, clock, sleeps=sleeps, force=True)

        assert outcome.status == "succeeded"
        assert sleeps == [waited]
    assert len(replay.requests()) == 6


def test_server_errors_are_retried_after_growing_jittered_waits(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    settings = feeds_settings(acled_feed(replay, page_size=5), feed_retries=3)
    replay.script(ACLED, Reply(500), Reply(503), page("acled_page1.json"))
    sleeps = Sleeps()

    outcome = poll(sessions, settings, clock, sleeps=sleeps)

    assert outcome.status == "succeeded"
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0  # base 1 s, half to all of it
    assert 1.0 <= sleeps[1] <= 2.0  # doubled
    assert state(sessions).consecutive_failures == 0


def test_a_source_that_does_not_answer_in_time_is_asked_again(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    settings = feeds_settings(
        acled_feed(replay, page_size=5), feed_retries=1, feed_request_timeout=0.2
    )
    replay.script(ACLED, Reply(hold=replay.hold()), page("acled_page1.json"))
    sleeps = Sleeps()
    began = time.monotonic()

    outcome = poll(sessions, settings, clock, sleeps=sleeps)

    assert outcome.status == "succeeded"
    assert len(sleeps) == 1
    assert len(replay.requests()) == 2
    assert time.monotonic() - began < 3


def test_retries_spent_fail_the_poll_and_the_next_waits_an_interval(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    settings = feeds_settings(acled_feed(replay), feed_retries=2)
    replay.script(ACLED, Reply(500), Reply(502), Reply(500))

    outcome = poll(sessions, settings, clock)

    assert outcome.status == "failed"
    stored = state(sessions)
    assert stored.last_error is not None
    assert stored.last_error.startswith("HTTP 500 from http://127.0.0.1:")
    assert "3 attempts" in stored.last_error
    assert (stored.consecutive_failures, stored.last_error_at) == (1, T0)
    assert stored.next_poll_at == T0 + timedelta(hours=1)
    assert stored.watermark is None
    assert stored.last_success_at is None


def test_truncated_json_fails_the_poll_at_once_and_records_why(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    settings = feeds_settings(acled_feed(replay), feed_retries=3)
    body = (RECORDED / "acled_page1.json").read_bytes()[:700]
    replay.script(ACLED, Reply(body=body, headers={"content-type": "application/json"}))
    sleeps = Sleeps()

    outcome = poll(sessions, settings, clock, sleeps=sleeps)

    assert outcome.status == "failed"
    assert (sleeps, len(replay.requests())) == ([], 1)  # a complete answer: not retried
    stored = state(sessions)
    assert stored.last_error is not None
    assert stored.last_error.startswith("invalid JSON")
    assert stored.watermark is None
    assert count(sessions, Incident) == 0
    assert count(sessions, ImportRun) == 0


def test_a_refusal_fails_the_poll_without_retry(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    settings = feeds_settings(acled_feed(replay), feed_retries=3)
    replay.script(ACLED, Reply(401), page("acled_refused.json"))

    assert poll(sessions, settings, clock).status == "failed"
    assert state(sessions).last_error == (
        f"HTTP 401 from {replay.url(ACLED)}: check the feed's credentials"
    )
    assert poll(sessions, settings, clock, force=True).status == "failed"
    assert state(sessions).last_error == (
        "the source refused the request: Access denied: the account has no API access."
    )
    assert len(replay.requests()) == 2


def test_malformed_rows_are_rejected_but_the_poll_succeeds(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    settings = feeds_settings(acled_feed(replay, page_size=5))
    replay.script(ACLED, page("acled_malformed.json"))

    outcome = poll(sessions, settings, clock)

    assert outcome.status == "succeeded"
    assert outcome.summary is not None
    assert (outcome.summary["read"], outcome.summary["inserted"]) == (3, 1)
    assert outcome.summary["rejected"] == 2
    stored = state(sessions)
    assert stored.consecutive_failures == 0
    # Rejected rows move the watermark too: they come again only once edited at the source.
    assert stored.watermark == day("2025-06-09")


# Circuit --------------------------------------------------------------------------------------


def circuit_settings(replay: Replay) -> FeedsSettings:
    return feeds_settings(
        acled_feed(replay, page_size=5, interval=60),
        feed_failure_threshold=3,
        feed_circuit_open=600,
        feed_max_backoff=3600,
    )


def test_the_circuit_opens_after_the_threshold_and_no_request_is_sent_while_open(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    settings = circuit_settings(replay)
    replay.script(ACLED, Reply(503), Reply(503), Reply(503))

    for failures, wait in ((1, 60), (2, 120)):
        assert tick(sessions, settings, clock) == 1
        stored = state(sessions)
        assert stored.consecutive_failures == failures
        assert stored.next_poll_at == clock.now + timedelta(seconds=wait)
        assert stored.circuit_open_until is None
        clock.to(stored.next_poll_at)
    assert tick(sessions, settings, clock) == 1
    stored = state(sessions)
    assert stored.circuit_open_until == clock.now + timedelta(minutes=10)
    assert stored.next_poll_at == stored.circuit_open_until
    opened_until = stored.circuit_open_until
    assert poller.feed_health(settings.feeds[0], stored, clock.now).state == "circuit_open"

    for _ in range(4):
        clock.advance(minutes=2, seconds=29)
        assert tick(sessions, settings, clock) == 0
    assert clock.now < opened_until
    assert len(replay.requests()) == 3

    # Half-open: one trial poll; it fails, and the circuit opens again.
    clock.to(opened_until)
    replay.script(ACLED, Reply(503))
    assert tick(sessions, settings, clock) == 1
    stored = state(sessions)
    assert stored.consecutive_failures == 4
    assert stored.circuit_open_until == clock.now + timedelta(minutes=10)
    clock.advance(minutes=9)
    assert tick(sessions, settings, clock) == 0
    assert len(replay.requests()) == 4


def test_a_successful_trial_poll_closes_the_circuit(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    settings = circuit_settings(replay)
    replay.script(ACLED, Reply(503), Reply(503), Reply(503), page("acled_page1.json"))
    for _ in range(3):
        assert tick(sessions, settings, clock) == 1
        clock.to(state(sessions).next_poll_at)

    assert tick(sessions, settings, clock) == 1

    stored = state(sessions)
    assert (stored.consecutive_failures, stored.circuit_open_until) == (0, None)
    assert stored.next_poll_at == clock.now + timedelta(seconds=60)
    health = poller.feed_health(settings.feeds[0], stored, clock.now)
    assert health.state == "ok"
    assert health.last_error is not None  # the last failure stays on show


# Leases and restarts --------------------------------------------------------------------------


def test_poll_state_survives_a_restart(db_url: str, replay: Replay, clock: Clock) -> None:
    replay.script(ACLED, page("acled_page1.json"), page("acled_page2.json"))
    engine = make_engine(db_url)
    try:
        assert tick(make_sessionmaker(engine), feeds_settings(acled_feed(replay)), clock) == 1
    finally:
        engine.dispose()

    # A new process: new engine, new settings, nothing kept in memory.
    engine = make_engine(db_url)
    try:
        sessions = make_sessionmaker(engine)
        settings = feeds_settings(acled_feed(replay))
        clock.advance(minutes=30)
        assert tick(sessions, settings, clock) == 0
        clock.advance(minutes=30)
        replay.script(ACLED, page("acled_empty.json"))
        assert tick(sessions, settings, clock) == 1
        assert replay.requests()[-1].params["timestamp"] == unix(day("2025-05-28"))
    finally:
        engine.dispose()


def test_only_one_of_two_processes_polls_a_feed_at_a_time(
    db_url: str, replay: Replay, clock: Clock
) -> None:
    settings = feeds_settings(acled_feed(replay, page_size=5))
    release = replay.hold()
    replay.script(ACLED, Reply(hold=release, body=page("acled_page1.json").body))
    engines = [make_engine(db_url), make_engine(db_url)]
    first, second = (make_sessionmaker(e) for e in engines)
    outcomes: list[poller.Outcome] = []
    try:
        polling = threading.Thread(target=lambda: outcomes.append(poll(first, settings, clock)))
        polling.start()
        replay.wait_for(1)  # the first process holds the lease, its request in flight

        assert poll(second, settings, clock).status == "busy"
        assert poll(second, settings, clock, force=True).status == "busy"
        assert tick(second, settings, clock) == 0
        assert state(second).lease_until == clock.now + settings.feed_lease

        release.set()
        polling.join(10)
        assert [o.status for o in outcomes] == ["succeeded"]
        assert len(replay.requests()) == 1
        assert state(second).lease_until is None
    finally:
        for engine in engines:
            engine.dispose()


def test_a_lease_left_by_a_dead_process_is_taken_once_it_expires(
    sessions: sessionmaker[Session], replay: Replay, clock: Clock
) -> None:
    settings = feeds_settings(acled_feed(replay, page_size=5))
    with sessions.begin() as session:
        session.add(
            FeedState(name="acled-sahel", kind="acled", consecutive_failures=0,
                      lease_until=T0 + timedelta(minutes=1), updated_at=T0)
        )  # fmt: skip

    assert poll(sessions, settings, clock, force=True).status == "busy"
    clock.advance(minutes=2)
    replay.script(ACLED, page("acled_page1.json"))
    assert poll(sessions, settings, clock).status == "succeeded"


# Credentials ----------------------------------------------------------------------------------


def test_credentials_never_appear_in_errors_health_or_logs(
    sessions: sessionmaker[Session],
    replay: Replay,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")
    feed = acled_feed(replay, key=KEY, email=EMAIL, token=TOKEN)
    settings = feeds_settings(feed, feed_retries=2, feed_request_timeout=0.2)
    echo = {"status": 403, "success": False, "error": {"message": f"key {KEY} unknown for {EMAIL}"}}
    replay.script(ACLED, Reply(503), Reply(hold=replay.hold()), Reply(403), document(echo))

    assert poll(sessions, settings, clock).status == "failed"
    first_error = state(sessions).last_error
    assert poll(sessions, settings, clock, force=True).status == "failed"
    stored = state(sessions)

    sent = replay.requests()
    assert all(r.params["key"] == KEY and r.params["email"] == EMAIL for r in sent)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in sent)
    assert "HTTP Request: GET" in caplog.text  # httpx logged each request, query string dropped
    health = poller.feed_health(settings.feeds[0], stored, clock.now)
    shown = [first_error or "", stored.last_error or "", caplog.text, repr(health)]
    for secret in (KEY, TOKEN, EMAIL):
        assert not any(secret in text for text in shown), secret
    assert KEY not in repr(settings)
    assert TOKEN not in repr(settings)
    assert stored.last_error == "the source refused the request: key *** unknown for ***"


# Decisions ------------------------------------------------------------------------------------


def test_backoff_doubles_the_interval_per_failure_up_to_the_cap() -> None:
    hour = timedelta(hours=1)
    waits = [poller.backoff(n, hour, timedelta(hours=6)) for n in range(1, 6)]
    assert waits == [hour, 2 * hour, 4 * hour, 6 * hour, 6 * hour]
    assert poller.backoff(10_000, timedelta(days=3650), hour) == hour


def test_the_circuit_opens_at_the_threshold_for_at_least_its_period() -> None:
    def fail(failures: int, interval: timedelta) -> poller.Next:
        return poller.after_failure(
            failures, T0, interval, threshold=3, circuit_open=timedelta(minutes=30),
            max_backoff=timedelta(hours=6),
        )  # fmt: skip

    assert fail(1, timedelta(minutes=1)) == poller.Next(2, None, T0 + timedelta(minutes=2))
    opened = fail(2, timedelta(minutes=1))
    assert opened == poller.Next(3, T0 + timedelta(minutes=30), T0 + timedelta(minutes=30))
    longer = fail(2, timedelta(hours=1))  # the backoff is already longer than the circuit
    assert longer.circuit_open_until == T0 + timedelta(hours=4)
    hour = timedelta(hours=1)
    assert poller.after_success(T0, hour) == poller.Next(0, None, T0 + hour)


def test_retry_delay_takes_retry_after_within_the_cap_and_jitters_otherwise() -> None:
    rng = Random(7)
    cap = timedelta(seconds=60)
    base = timedelta(seconds=2)
    ask = timedelta(seconds=5)
    assert poller.retry_delay(1, base=base, cap=cap, retry_after=ask, rng=rng) == ask
    long = timedelta(hours=1)
    assert poller.retry_delay(1, base=base, cap=cap, retry_after=long, rng=rng) == cap
    for retry, low in ((1, 1.0), (2, 2.0), (3, 4.0)):
        wait = poller.retry_delay(retry, base=base, cap=cap, retry_after=None, rng=rng)
        assert low <= wait.total_seconds() <= 2 * low
    assert poller.retry_delay(30, base=base, cap=cap, retry_after=None, rng=rng) <= cap


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    assert http.parse_retry_after("120", T0) == timedelta(seconds=120)
    later = format_datetime(T0 + timedelta(minutes=2), usegmt=True)
    assert http.parse_retry_after(later, T0) == timedelta(minutes=2)
    past = format_datetime(T0 - timedelta(minutes=2), usegmt=True)
    assert http.parse_retry_after(past, T0) == timedelta(0)
    assert http.parse_retry_after("soon", T0) is None
    assert http.parse_retry_after(None, T0) is None


def test_a_feed_url_is_shown_without_its_query_or_user_info() -> None:
    url = "https://user:pw@api.acleddata.com:8443/acled/read?key=abc&email=x@y.z#top"
    assert poller.public_url(url) == "https://api.acleddata.com:8443/acled/read"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"name": "Acled Sahel"}, "slug"),
        ({"url": "ftp://example.org/acled"}, "http"),
        ({"url": "https://u:p@example.org/acled"}, "credentials"),
        ({"key": KEY}, "go together"),
        ({"query": {"page": "3"}}, "set by the poller"),
        ({"kind": "ucdp", "page_size": 5000}, "1000"),
        ({"kind": "ucdp", "key": KEY, "email": EMAIL}, "UCDP takes a token"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_a_bad_feed_configuration_is_refused(change: dict[str, Any], reason: str) -> None:
    base: dict[str, Any] = {"name": "acled-sahel", "kind": "acled", "url": "https://x.org/a"}
    with pytest.raises(ValidationError, match=reason):
        FeedConfig.model_validate({**base, **change})


def test_page_size_defaults_by_kind_and_names_are_unique() -> None:
    ucdp = FeedConfig.model_validate({"name": "u", "kind": "ucdp", "url": "https://x.org/u"})
    acled = FeedConfig.model_validate({"name": "a", "kind": "acled", "url": "https://x.org/a"})
    assert (ucdp.page_size, acled.page_size) == (1000, 5000)
    assert acled.interval == timedelta(hours=1)
    twice = {"name": "a", "kind": "acled", "url": "https://x.org/a"}
    with pytest.raises(ValidationError, match="unique"):
        FeedsSettings(feeds=[twice, twice])


def test_feeds_are_read_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    feeds = [{"name": "acled-sahel", "kind": "acled", "url": "https://acleddata.com/api/acled/read",
              "token": TOKEN, "interval": "PT6H", "query": {"iso": "466|854|562"}}]  # fmt: skip
    monkeypatch.setenv("RISKALERT_FEEDS", json.dumps(feeds))
    monkeypatch.setenv("RISKALERT_FEED_POLL_TICK", "10")
    settings = FeedsSettings()
    assert settings.feeds[0].interval == timedelta(hours=6)
    assert settings.feed_poll_tick == timedelta(seconds=10)
    assert TOKEN not in repr(settings)


def test_the_tick_is_scheduled_only_when_feeds_are_configured() -> None:
    sessions: sessionmaker[Session] = sessionmaker()
    scheduler = BackgroundScheduler(timezone=UTC)
    poller.add_jobs(scheduler, sessions, FeedsSettings(feeds=[]), poller.utc_now)
    assert scheduler.get_jobs() == []
    feed = {"name": "a", "kind": "acled", "url": "https://x.org/a"}
    poller.add_jobs(scheduler, sessions, FeedsSettings(feeds=[feed], feed_poll_tick=45))
    (job,) = scheduler.get_jobs()
    # Run once per slot across processes (services.core.ticks), by the poller's function.
    assert job.func is ticks.run_once
    assert job.args[3] is poller.poll_due
    assert job.trigger.interval == timedelta(seconds=45)
    assert (job.coalesce, job.max_instances) == (True, 1)


# Health API -----------------------------------------------------------------------------------


def test_feed_health_api_lists_reads_and_polls_for_ingest_keys_only(
    api_factory: Callable[..., Api], replay: Replay
) -> None:
    url = replay.url(ACLED) + "?_format=json"
    api = api_factory(feeds=[acled_feed(replay, url=url, page_size=5, key=KEY, email=EMAIL)])
    client = api.client

    assert_problem(client.get("/v1/feeds"), 401)
    assert_problem(client.get("/v1/feeds/acled-sahel"), 401)
    assert_problem(client.post("/v1/feeds/acled-sahel/poll"), 401)
    assert_problem(client.get("/v1/feeds", headers=api.a), 403)
    assert_problem(client.post("/v1/feeds/acled-sahel/poll", headers=api.a), 403)
    assert_problem(client.get("/v1/feeds/nope", headers=api.ingest), 404)
    assert_problem(client.post("/v1/feeds/nope/poll", headers=api.ingest), 404)

    listed = client.get("/v1/feeds", headers=api.ingest)
    assert listed.status_code == 200, listed.text
    (item,) = listed.json()["items"]
    assert item["name"] == "acled-sahel"
    assert (item["state"], item["url"], item["interval"]) == ("never_polled", replay.url(ACLED),
                                                              "PT1H")  # fmt: skip
    assert item["watermark"] is None
    assert item["lag_seconds"] is None

    replay.script(ACLED, page("acled_page1.json"))
    polled = client.post("/v1/feeds/acled-sahel/poll", headers=api.admin)
    assert polled.status_code == 200, polled.text
    doc = polled.json()
    assert doc["state"] == "ok"
    assert doc["polling"] is False
    assert doc["last_summary"]["inserted"] == 2
    assert doc["watermark"].startswith("2025-05-18T00:00:00")
    assert doc["lag_seconds"] > 0
    assert doc["since_success_seconds"] >= 0
    assert KEY not in polled.text
    (sent,) = replay.requests()
    assert (sent.params["_format"], sent.params["limit"]) == ("json", "5")  # the URL's query kept

    one = client.get("/v1/feeds/acled-sahel", headers=api.ingest)
    assert one.status_code == 200
    assert one.json()["watermark"] == doc["watermark"]

    factory: sessionmaker[Session] = api.app.state.sessions
    with factory.begin() as session:
        session.execute(
            update(FeedState).values(lease_until=datetime.now(UTC) + timedelta(minutes=5))
        )
    assert_problem(client.post("/v1/feeds/acled-sahel/poll", headers=api.ingest), 409)
    assert client.get("/v1/feeds/acled-sahel", headers=api.ingest).json()["polling"] is True
