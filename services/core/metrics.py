"""Prometheus metrics: what each process counts, and what the database says at scrape time.

Counters and histograms live in the process that does the work: the API's request and ingest
counts, a worker's rescoring and deliveries. `riskalert serve --workers N` sets
`PROMETHEUS_MULTIPROC_DIR`, so `/metrics` of any uvicorn worker sums all N; a `riskalert worker`
serves its own on `--metrics-port`. Queue depths, oldest pending ages and feed lag are read
from the database when `/metrics` is scraped, so they are the same whichever process answers:
each service registers what it reads (`read_from_database`), and the platform names none of
their tables.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services.core.models import DeadLetter

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


class DatabaseCollector(Collector):
    """Gauges read from the database at each scrape, from every registered reader."""

    def __init__(self, factory: sessionmaker[Session], clock: Callable[[], datetime]) -> None:
        self._factory = factory
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "riskalert_database_up", "1 when the database answered this scrape's queries."
        )
        families = {
            name: GaugeMetricFamily(name, g.documentation, labels=list(g.labels))
            for name, g in _GAUGES.items()
        }
        try:
            with self._factory() as session:
                now = self._clock()
                for reader in _READERS:
                    for gauge, labels, value in reader(session, now):
                        families[gauge.name].add_metric(list(labels), value)
        except SQLAlchemyError as exc:
            log.warning("metrics: database unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families.values()


def exposition(database: Collector | None) -> bytes:
    """The text of a scrape: this process's (or every uvicorn worker's) metrics and the
    database's."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if database is not None:
        extra = CollectorRegistry()
        extra.register(database)
        text += generate_latest(extra)
    return text
