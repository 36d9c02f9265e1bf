"""Background work: the rescoring worker and the periodic ticks (APScheduler 3)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from services.core import activity, deadletters, metrics, wake
from services.core.clock import Clock, utc_now
from services.core.db import is_sqlite, make_sessionmaker
from services.core.deadletters import Quarantine
from services.core.logs import FailureStreak
from services.core.models import IdempotencyRecord
from services.core.ticks import add_tick
from services.scoring import feed, modelfit, queue, scores
from services.scoring.models import Target
from services.scoring.settings import ScoringSettings

log = logging.getLogger(__name__)


# Feed pages read in one pass when there is a backlog (at most this many entries are queued
# in one transaction: FEED_PAGES * feed_batch_size).
FEED_PAGES = 100


def rescore_pending(
    factory: sessionmaker[Session],
    settings: ScoringSettings,
    clock: Clock = utc_now,
    cache: scores.IncidentCache | None = None,
    reader: sessionmaker[Session] | None = None,
) -> int:
    """Read new incidents off the feed, rescore one batch of queued targets; return how much
    was done (feed entries read plus targets taken), 0 when there was nothing.

    Three steps, so the slow middle one holds no write lock (SQLite) and no row locks
    (Postgres) that ingest requests would wait on: queue what new incidents affect and lease
    the marks (short write), compute (read-only), store the scores and release the marks
    (short write). A crash in between leaves the leases to expire and the targets are taken
    again. A feed entry or a target that fails on its own is set aside as a dead letter; the
    rest goes on.
    """
    now = clock()

    def take(
        session: Session, quarantine: Quarantine | None
    ) -> tuple[scores.ActiveModel, int, list[queue.Claim]]:
        model = scores.ensure_model(session, now)
        # While an import runs, its incidents wait on the feed: read at its end, they queue
        # each target once, not once per chunk.
        read = (
            0
            if queue.importing(session, now)
            else queue.consume_incident_feed(
                session, model.params, now, settings.feed_batch_size, FEED_PAGES, quarantine
            )
        )
        claims = queue.claim(session, settings.rescore_batch_size, now, settings.rescore_lease)
        return model, read, claims

    model, read, claims = deadletters.run(factory, "scoring.incident_feed", take, clock)
    if not claims:
        return read
    began = time.perf_counter()
    work = _Rescoring(factory, reader or factory, settings, model, now, cache)
    try:
        try:
            work.rescore(claims)
        except Exception as exc:
            if deadletters.transient(exc):
                raise
            log.warning(
                "rescoring a batch of %d targets failed (%s); rescoring them one by one",
                len(claims),
                type(exc).__name__,
            )
            work.one_by_one(claims)
    except Exception:
        # Hand the batch back at once rather than when its lease expires.
        with factory.begin() as session:
            queue.give_back(session, claims)
        raise
    metrics.RESCORE_SECONDS.observe(time.perf_counter() - began)
    metrics.RESCORED.inc(len(claims))
    return read + len(claims)


@dataclass(frozen=True)
class _Rescoring:
    """Compute, store and release leased targets as of `now`."""

    factory: sessionmaker[Session]
    reader: sessionmaker[Session]
    settings: ScoringSettings
    model: scores.ActiveModel
    now: datetime
    cache: scores.IncidentCache | None

    def rescore(self, claims: Sequence[queue.Claim]) -> None:
        """Rescore the targets of `claims` together."""
        with self.reader.begin() as session:
            ids = [c.target_id for c in claims]
            computed = scores.compute(session, self.model, ids, self.now, self.cache)
        with self.factory.begin() as session:
            scores.store(
                session,
                computed,
                self.now,
                # The feed names why each target was rescored (incident, decay, model...).
                causes={c.target_id: c.cause for c in claims},
                min_delta=self.settings.change_min_delta,
            )
        # Released in a short transaction of its own: the store above holds no queue rows, so
        # an ingest queueing the same targets never waits for a whole batch to be written. A
        # crash in between leaves the leases to expire: the targets are computed once more.
        with self.factory.begin() as session:
            queue.release(session, claims)

    def one_by_one(self, claims: Sequence[queue.Claim]) -> None:
        """Rescore each target on its own; one that fails is set aside and leaves the queue
        (it comes back when something queues it again: an incident, an edit, the decay tick)."""
        for claim in claims:
            try:
                self.rescore([claim])
            except Exception as exc:
                if deadletters.transient(exc):
                    raise
                with self.factory.begin() as session:
                    tenant = session.execute(
                        select(Target.tenant_id).where(Target.id == claim.target_id)
                    ).scalar_one_or_none()
                    deadletters.record(
                        session,
                        "scoring.rescore",
                        f"target {claim.target_id}",
                        exc,
                        self.now,
                        tenant_id=tenant,
                    )
                    queue.release(session, [claim])


def drain(factory: sessionmaker[Session], settings: ScoringSettings, clock: Clock = utc_now) -> int:
    """Rescore until the queue is empty; return how many targets were rescored."""
    total = 0
    cache = scores.IncidentCache()
    reader = make_sessionmaker(factory.kw["bind"], read_only=True)
    while taken := rescore_pending(factory, settings, clock, cache, reader):
        total += taken
    return total


def queue_decay(factory: sessionmaker[Session], clock: Clock = utc_now) -> None:
    """Tick: queue every target, so decay and regional tempo stay current (safe to run twice)."""
    with factory.begin() as session:
        queue.add_all(session, "decay", clock())


def purge_idempotency(
    factory: sessionmaker[Session], settings: ScoringSettings, clock: Clock = utc_now
) -> None:
    """Tick: forget Idempotency-Key responses older than their retention."""
    with factory.begin() as session:
        cutoff = clock() - settings.idempotency_ttl
        session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff))


_CHANNELS = (queue.CHANNEL, feed.INCIDENT_CHANNEL)


class RescoreWorker:
    """A thread that rescores queued targets at once when woken, and polls as a fallback.

    It is woken by this process after a commit that queued work and, on PostgreSQL, by a
    NOTIFY from any process (so a separate `riskalert worker` reacts within milliseconds).
    """

    def __init__(
        self, factory: sessionmaker[Session], settings: ScoringSettings, pause: float = 0.0
    ) -> None:
        self._factory = factory
        self._settings = settings
        # After a batch that shared the process with foreground work, rest this multiple of
        # the time it took. Inside the API process a rescoring backlog would otherwise hold
        # the interpreter lock most of the time, and requests and alert delivery would queue
        # behind it.
        self._pause = pause
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rescore-worker", daemon=True)
        # When the thread last turned its loop (time.monotonic): /healthz.
        self._turned = -math.inf
        self._cache = scores.IncidentCache()
        self._reader = make_sessionmaker(factory.kw["bind"], read_only=True)
        # On PostgreSQL, queueing and new incidents in other processes wake this one too.
        self._listener: wake.Listener | None = None
        if not is_sqlite(settings.database_url):
            self._listener = wake.Listener(
                settings.database_url,
                _CHANNELS,
                retry_s=settings.worker_poll_interval.total_seconds(),
            )

    def start(self) -> None:
        """Start the thread (and the NOTIFY listener on PostgreSQL)."""
        # Commits in this process that queue targets or append incidents wake it directly.
        for channel in _CHANNELS:
            wake.subscribe(channel, self._wake)
        self._thread.start()
        if self._listener is not None:
            self._listener.start()

    def wake(self) -> None:
        """Ask for a pass now (after new incidents or targets)."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in hand, then stop."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        for channel in _CHANNELS:
            wake.unsubscribe(channel, self._wake)
        if self._listener is not None:
            self._listener.stop(timeout)

    def stalled(self, within: float) -> list[str]:
        """The thread's name if it is not running or has not turned its loop (a pass, or a batch
        of a long catch-up) in the last `within` seconds; it runs no query."""
        quiet = time.monotonic() - self._turned
        return [self._thread.name] if not self._thread.is_alive() or quiet > within else []

    @property
    def listening(self) -> threading.Event | None:
        """Set once LISTEN is in place (PostgreSQL only)."""
        return self._listener.listening if self._listener else None

    def _catch_up(self) -> None:
        """Rescore until nothing is left (or a stop). With a pause, after a batch during which
        the process also served requests or sent alerts, rest for that multiple of the
        batch's time; alone, go on at full speed."""
        while not self._stop.is_set():
            self._turned = time.monotonic()
            began, seen = time.perf_counter(), activity.mark()
            if not rescore_pending(
                self._factory, self._settings, cache=self._cache, reader=self._reader
            ):
                return
            if self._pause and activity.mark() != seen:
                self._stop.wait((time.perf_counter() - began) * self._pause)

    def _run(self) -> None:
        poll = self._settings.worker_poll_interval.total_seconds()
        streak = FailureStreak(log, "rescoring")
        while not self._stop.is_set():
            self._turned = time.monotonic()
            self._wake.wait(poll)
            self._wake.clear()
            try:
                self._catch_up()
                streak.succeeded()
            except Exception:
                # A failed batch rolls back and stays queued; try again next pass.
                streak.failed()


def make_scheduler(
    factory: sessionmaker[Session], settings: ScoringSettings
) -> BackgroundScheduler:
    """The periodic ticks, each run once per slot however many processes schedule it."""
    scheduler = BackgroundScheduler(timezone=UTC)
    add_tick(scheduler, factory, "queue_decay", settings.rescore_interval, queue_decay, [factory])
    add_tick(
        scheduler,
        factory,
        "purge_idempotency",
        timedelta(hours=1),
        purge_idempotency,
        [factory, settings],
    )
    add_tick(
        scheduler,
        factory,
        "model_fits",
        settings.fit_poll_interval,
        run_model_fits,
        [factory, settings],
    )
    add_tick(
        scheduler, factory, "refit_schedule", timedelta(hours=1), queue_refit, [factory, settings]
    )
    return scheduler


def run_model_fits(factory: sessionmaker[Session], settings: ScoringSettings) -> None:
    """Run the model fits that wait, one after another."""
    for _ in range(10):
        if modelfit.run_pending(factory, settings, utc_now) is None:
            return


def queue_refit(factory: sessionmaker[Session], settings: ScoringSettings) -> None:
    """Queue a fit when enough new history has arrived (RISKALERT_REFIT_AFTER_INCIDENTS)."""
    with factory.begin() as session:
        modelfit.queue_scheduled(session, settings, utc_now())
