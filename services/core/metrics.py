"""Prometheus metrics: what each process counts, and what the database says at scrape time.

Counters and histograms live in the process that does the work: the API's request and ingest
counts, a worker's rescoring and deliveries. `riskalert serve --workers N` sets
`PROMETHEUS_MULTIPROC_DIR`, so `/metrics` of any uvicorn worker sums all N; a `riskalert worker`
serves its own on `--metrics-port`. Queue depths, oldest pending ages and feed lag are read
from the database when `/metrics` is scraped, so they are the same whichever process answers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from datetime import datetime

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

from services.core.models import DeadLetter, FeedCursor

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


class DatabaseCollector(Collector):
    """Gauges read from the database at each scrape: queues, backlogs and feed lag."""

    def __init__(self, factory: sessionmaker[Session], clock: Callable[[], datetime]) -> None:
        self._factory = factory
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "riskalert_database_up", "1 when the database answered this scrape's queries."
        )
        try:
            with self._factory() as session:
                metrics = list(_database_gauges(session, self._clock()))
        except SQLAlchemyError as exc:
            log.warning("metrics: database unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics


def _age(now: datetime, then: datetime | None) -> float:
    return max(0.0, (now - then).total_seconds()) if then is not None else 0.0


def _database_gauges(session: Session, now: datetime) -> Iterator[Metric]:
    # Imported here: core must not depend on the services at import time.
    from services.alerts.models import Delivery
    from services.feeds.models import FeedState
    from services.scoring.models import IncidentChange, RescoreMark, ScoreChange

    depth = GaugeMetricFamily(
        "riskalert_queue_depth",
        "Work waiting: targets to rescore, deliveries pending or being sent.",
        labels=["queue"],
    )
    oldest = GaugeMetricFamily(
        "riskalert_queue_oldest_seconds",
        "Age of the oldest waiting item: the longest-queued target, the longest-overdue delivery.",
        labels=["queue"],
    )
    marks, first_mark = session.execute(select(func.count(), func.min(RescoreMark.marked_at))).one()
    depth.add_metric(["rescore"], marks)
    oldest.add_metric(["rescore"], _age(now, first_mark))
    pending, first_due = session.execute(
        select(func.count(), func.min(Delivery.next_attempt_at)).where(
            Delivery.status.in_(("pending", "sending"))
        )
    ).one()
    depth.add_metric(["delivery"], pending)
    oldest.add_metric(["delivery"], _age(now, first_due))
    yield depth
    yield oldest

    backlog = GaugeMetricFamily(
        "riskalert_change_feed_backlog",
        "Change-feed entries a consumer has not read yet.",
        labels=["consumer"],
    )
    behind = GaugeMetricFamily(
        "riskalert_change_feed_lag_seconds",
        "Age of the oldest change-feed entry a consumer has not read yet.",
        labels=["consumer"],
    )
    positions = dict(session.execute(select(FeedCursor.name, FeedCursor.position)).all())
    feeds = (
        ("rescore", IncidentChange),
        ("incident_change", IncidentChange),
        ("score_change", ScoreChange),
    )
    for consumer, table in feeds:
        position = positions.get(consumer, 0)
        count, first = session.execute(
            select(func.count(), func.min(table.created_at)).where(table.id > position)
        ).one()
        backlog.add_metric([consumer], count)
        behind.add_metric([consumer], _age(now, first))
    yield backlog
    yield behind

    lag = GaugeMetricFamily(
        "riskalert_feed_lag_seconds",
        "Time since an external incident feed was last polled successfully.",
        labels=["feed"],
    )
    failures = GaugeMetricFamily(
        "riskalert_feed_consecutive_failures",
        "Failed polls of an external feed since its last success.",
        labels=["feed"],
    )
    for name, success, failed, updated in session.execute(
        select(
            FeedState.name,
            FeedState.last_success_at,
            FeedState.consecutive_failures,
            FeedState.updated_at,
        )
    ):
        lag.add_metric([name], _age(now, success or updated))
        failures.add_metric([name], failed)
    yield lag
    yield failures

    dead = GaugeMetricFamily(
        "riskalert_dead_letters_open",
        "Items set aside by a pipeline and not yet resolved by an operator, by pipeline.",
        labels=["pipeline"],
    )
    for pipeline, count in session.execute(
        select(DeadLetter.pipeline, func.count())
        .where(DeadLetter.resolved_at.is_(None))
        .group_by(DeadLetter.pipeline)
    ):
        dead.add_metric([pipeline], count)
    yield dead


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
