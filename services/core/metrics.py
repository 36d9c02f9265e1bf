"""Prometheus metrics: what each process counts, and what the database says at scrape time.

Counters and histograms live in the process that does the work: the API's request and ingest
counts, a worker's rescoring and deliveries. `riskalert serve --workers N` sets
`PROMETHEUS_MULTIPROC_DIR`, so `/metrics` of any uvicorn worker sums all N; a `riskalert worker`
serves its own on `--metrics-port` (`MetricsServer`, with its `/healthz`). Queue depths, oldest
pending ages and feed lag are read from the database when the API's `/metrics` is scraped (at
most once per `metrics_cache_ttl` in each process), so they are the same whichever process
answers: each service registers what it reads (`read_from_database`), and the platform names
none of their tables. Both ports take the same token (`metrics_token`) and count scrapes without
it against the per-address limit of requests without a valid key.
"""

from __future__ import annotations

import glob
import hmac
import json
import logging
import os
import platform
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services.core.models import DeadLetter
from services.core.problems import PROBLEM_MEDIA_TYPE, Problem
from services.core.ratelimit import Limiter

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Latencies from a fast read (milliseconds) to a slow import or a webhook timing out.
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

HTTP_REQUESTS = Counter(
    "riskalert_http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "riskalert_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template.",
    ["method", "route"],
    buckets=_SECONDS,
)
INCIDENTS = Counter(
    "riskalert_incidents_total",
    "Incident reports stored by ingest, import or feed poll, by outcome (created, updated, "
    "unchanged, merged into another report's event, retracted).",
    ["outcome"],
)
RESCORE_SECONDS = Histogram(
    "riskalert_rescore_batch_seconds",
    "Time to rescore one batch of queued targets.",
    buckets=_SECONDS,
)
RESCORED = Counter("riskalert_targets_rescored_total", "Targets rescored.")
SCORE_CHANGES = Counter(
    "riskalert_score_changes_total",
    "Score changes written to the change feed, by kind (band: the band changed; value: only "
    "the value moved).",
    ["kind"],
)
DELIVERIES = Counter(
    "riskalert_delivery_attempts_total",
    "Delivery attempts, by channel (webhook, email) and outcome (delivered, retry, gone: the "
    "receiver said 410, failed: not to be retried).",
    ["channel", "outcome"],
)
DELIVERY_SECONDS = Histogram(
    "riskalert_delivery_attempt_duration_seconds",
    "Time of one delivery attempt, by channel.",
    ["channel"],
    buckets=_SECONDS,
)
DEAD_LETTERS = Counter(
    "riskalert_dead_letters_total",
    "Items a pipeline could not process and set aside (GET /v1/dead-letters), by pipeline.",
    ["pipeline"],
)
TICKS = Counter(
    "riskalert_ticks_total",
    "Periodic ticks, by tick and outcome (ran, elsewhere: another process had the slot, failed).",
    ["tick", "outcome"],
)


@dataclass(frozen=True)
class DatabaseGauge:
    """A gauge family read from the database at each scrape; services add its samples."""

    name: str
    documentation: str
    labels: tuple[str, ...]


# (gauge, label values, value): one sample a service read from the database.
Reading = tuple[DatabaseGauge, tuple[str, ...], float]
Reader = Callable[[Session, datetime], Iterable[Reading]]

# Shared by several services (each names its own queue or feed consumer in the label).
QUEUE_DEPTH = DatabaseGauge(
    "riskalert_queue_depth", "Work waiting in a queue, by queue.", ("queue",)
)
QUEUE_OLDEST = DatabaseGauge(
    "riskalert_queue_oldest_seconds",
    "Age of a queue's oldest waiting item (the longest queued, or the longest overdue).",
    ("queue",),
)
FEED_BACKLOG = DatabaseGauge(
    "riskalert_change_feed_backlog",
    "Change-feed entries a consumer has not read yet.",
    ("consumer",),
)
FEED_BEHIND = DatabaseGauge(
    "riskalert_change_feed_lag_seconds",
    "Age of the oldest change-feed entry a consumer has not read yet.",
    ("consumer",),
)
DEAD_LETTERS_OPEN = DatabaseGauge(
    "riskalert_dead_letters_open",
    "Items set aside by a pipeline and not yet resolved by an operator, by pipeline.",
    ("pipeline",),
)

_GAUGES: dict[str, DatabaseGauge] = {}
_READERS: list[Reader] = []


def read_from_database(*gauges: DatabaseGauge) -> Callable[[Reader], Reader]:
    """Register a reader of database gauges (a decorator): each service adds what it knows,
    so the platform names no service's tables."""

    def register(reader: Reader) -> Reader:
        for gauge in gauges:
            _GAUGES.setdefault(gauge.name, gauge)
        if reader not in _READERS:
            _READERS.append(reader)
        return reader

    return register


def seconds_since(now: datetime, then: datetime | None) -> float:
    """How long ago `then` was (0 for never): an age gauge's value."""
    return max(0.0, (now - then).total_seconds()) if then is not None else 0.0


def feed_readings(
    session: Session, now: datetime, consumer: str, table: type[Any], position: int
) -> Iterator[Reading]:
    """The backlog and lag of one change-feed consumer at `position` of `table` (an id and a
    created_at column)."""
    count, first = session.execute(
        select(func.count(), func.min(table.created_at)).where(table.id > position)
    ).one()
    yield FEED_BACKLOG, (consumer,), count
    yield FEED_BEHIND, (consumer,), seconds_since(now, first)


@read_from_database(DEAD_LETTERS_OPEN)
def _dead_letters(session: Session, _now: datetime) -> Iterator[Reading]:
    for pipeline, count in session.execute(
        select(DeadLetter.pipeline, func.count())
        .where(DeadLetter.resolved_at.is_(None))
        .group_by(DeadLetter.pipeline)
    ):
        yield DEAD_LETTERS_OPEN, (pipeline,), count


def _read(factory: sessionmaker[Session], now: datetime) -> list[Metric]:
    """Every registered reader's gauges, and whether the database answered."""
    up = GaugeMetricFamily(
        "riskalert_database_up", "1 when the database answered this reading's queries."
    )
    families = {
        name: GaugeMetricFamily(name, g.documentation, labels=list(g.labels))
        for name, g in _GAUGES.items()
    }
    try:
        with factory() as session:
            for reader in _READERS:
                for gauge, labels, value in reader(session, now):
                    families[gauge.name].add_metric(list(labels), value)
    except SQLAlchemyError as exc:
        log.warning("metrics: database unavailable: %s", exc)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    return [up, *families.values()]


class DatabaseGauges:
    """The gauges read from the database, read at most once per `ttl` seconds in this process:
    a scrape within it (a second Prometheus, a retry, anyone calling an open /metrics) gets the
    last reading and runs no query. Concurrent scrapes wait for one reading."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        ttl: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._reading: list[Metric] = []

    def read(self, factory: sessionmaker[Session]) -> list[Metric]:
        """The last reading, read again first when it is `ttl` old (a failed one too)."""
        with self._lock:
            started = self._monotonic()
            if self._read_at is None or started - self._read_at >= self._ttl:
                self._reading = _read(factory, self._clock())
                self._read_at = started
            return self._reading


def _release() -> str:
    try:
        return version("riskalert")
    except PackageNotFoundError:
        return "unknown"


def build_info() -> Metric:
    """`riskalert_build_info{version, python} 1`: which release and interpreter answer."""
    info = GaugeMetricFamily(
        "riskalert_build_info",
        "Always 1: the riskalert release and the Python version of this process.",
        labels=["version", "python"],
    )
    info.add_metric([_release(), platform.python_version()], 1)
    return info


# The files a process writes in the multiprocess directory end in its pid: counter_1234.db.
_PID_FILE = re.compile(r"_(\d+)\.db$")


def _parent_of(pid: int) -> int | None:
    """The parent of a live process (None when it is gone, a zombie, or /proc is not there)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == b"Z" else int(fields[1])


def _processes(directory: str) -> list[int]:
    """This process and its live siblings that write metrics to `directory`: the uvicorn
    workers of one `serve --workers N` (a dead worker's files stay behind; its pid may since
    belong to someone else, hence the same parent)."""
    own, parent = os.getpid(), os.getppid()
    pids = {own}
    for path in glob.glob(os.path.join(directory, "*.db")):
        match = _PID_FILE.search(os.path.basename(path))
        if match:
            pids.add(int(match[1]))
    return sorted(p for p in pids if p == own or _parent_of(p) == parent)


def _process(pid: int) -> ProcessCollector:
    return ProcessCollector(pid=lambda: pid, registry=None)


class ProcessesCollector(Collector):
    """The `process_*` metrics of every uvicorn worker in multiprocess mode, labelled by pid
    (the default registry's process collector, unused there, sees only the answering one)."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in _processes(self._directory):
            for family in _process(pid).collect():
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from families.values()


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def exposition(database: Iterable[Metric] = ()) -> bytes:
    """The text of a scrape: this process's (or every uvicorn worker's) metrics, its build, and
    the `database` gauges when given."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(ProcessesCollector(directory))
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    extra = CollectorRegistry()
    extra.register(_Families([build_info(), *database]))
    return text + generate_latest(extra)


def admit(
    token: SecretStr | None, authorization: str | None, limiter: Limiter, address: str
) -> None:
    """Let a scrape in, or raise a problem: 401 without the valid token when one is set, 429
    when the address made too many scrapes without it (every scrape, when none is set)."""
    if token is not None:
        scheme, _, given = (authorization or "").partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return
    limiter.hit(address)
    if token is not None:
        raise Problem(
            401,
            "unauthenticated",
            "metrics need the metrics token (Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )


class MetricsServer:
    """A worker's metrics port, in a daemon thread: `GET /metrics` (admitted as the API's) and
    `GET /healthz` (200 while `stalled()` names no loop, 503 naming them otherwise; no token, no
    database query: a liveness probe)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: SecretStr | None,
        limiter: Limiter,
        stalled: Callable[[], Sequence[str]],
    ) -> None:
        self._http = _Port((host, port), token=token, limiter=limiter, stalled=stalled)
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="metrics-port", daemon=True
        )

    @property
    def port(self) -> int:
        """The port bound (the one asked for, or the one given for 0)."""
        return int(self._http.server_address[1])

    def start(self) -> None:
        """Answer requests (the port is bound already, so a busy port fails before this)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and close the port."""
        if self._thread.is_alive():
            self._http.shutdown()
        self._http.server_close()


class _Port(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        token: SecretStr | None,
        limiter: Limiter,
        stalled: Callable[[], Sequence[str]],
    ) -> None:
        # An IPv6 --metrics-host (`::`) needs an IPv6 socket.
        family, *_ = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)[0]
        self.address_family = family
        self.token = token
        self.limiter = limiter
        self.stalled = stalled
        super().__init__(address, _Answer)


class _Answer(BaseHTTPRequestHandler):
    server: _Port

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            stalled = list(self.server.stalled())
            if stalled:
                self._json(503, {"status": "stalled", "stalled": stalled})
            else:
                self._json(200, {"status": "ok"})
            return
        if path != "/metrics":
            self._problem(Problem(404, "not-found", "this port serves /metrics and /healthz"))
            return
        server, address = self.server, self.client_address[0]
        try:
            admit(server.token, self.headers.get("Authorization"), server.limiter, address)
        except Problem as problem:
            self._problem(problem)
            return
        self._send(200, CONTENT_TYPE, exposition())

    def _json(self, status: int, body: Mapping[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(body).encode())

    def _problem(self, problem: Problem) -> None:
        body = json.dumps(problem.document(urlsplit(self.path).path)).encode()
        self._send(problem.status, PROBLEM_MEDIA_TYPE, body, problem.headers)

    def _send(
        self, status: int, media_type: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # A probe every few seconds is not news; http.server would print each to stderr.
        log.debug("metrics port: " + format, *args)
