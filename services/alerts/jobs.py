"""Background work of the alerts service: the feed consumer, the delivery worker and the ticks.

The consumer runs `pipeline` (evaluate, decide, enqueue) in one thread. The delivery worker
runs an event loop in another: claim (leases), deliver (httpx / aiosmtplib, outside any
transaction), settle (by lease token, in batches). Both are woken the moment new work commits
(`services.core.wake`) and poll as a fallback. APScheduler 3 runs the ticks; each is safe to
run in several processes at once (row locks with SKIP LOCKED, unique dedupe keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from random import Random

import httpx
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from services.alerts import email, outbox, pipeline, webhooks
from services.alerts.settings import AlertsSettings
from services.core import wake
from services.core.db import is_sqlite, make_sessionmaker
from services.scoring.feed import FEED_CHANNEL

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def worker_name() -> str:
    """A name for this worker process, unique across restarts: host, pid and a random tag."""
    return f"{socket.gethostname()[:30]}-{os.getpid()}-{secrets.token_hex(3)}"


def consume(
    factory: sessionmaker[Session],
    settings: AlertsSettings,
    clock: Clock = utc_now,
    reader: sessionmaker[Session] | None = None,
) -> int:
    """Run the pipeline once over each input with work waiting; return how much was taken."""
    with (reader or factory)() as session:
        waiting = pipeline.backlog(session)
    taken = 0
    # Incidents first: event rules alert at once and cost little; score changes can be many.
    steps = [
        (pipeline.INCIDENT_FEED, pipeline.consume_incidents),
        (pipeline.SCORE_FEED, pipeline.consume_scores),
        (pipeline.SEED, pipeline.seed_rules),
    ]
    for name, step in steps:
        if name in waiting:
            with factory.begin() as session:
                taken += step(session, settings, clock())
    return taken


def drain(factory: sessionmaker[Session], settings: AlertsSettings, clock: Clock = utc_now) -> int:
    """Consume until the feeds are exhausted (tests, the demo); bounded by the feed sizes."""
    total = 0
    while taken := consume(factory, settings, clock):
        total += taken
    return total


def reap(factory: sessionmaker[Session], clock: Clock = utc_now) -> int:
    """Tick: hand expired leases back."""
    with factory.begin() as session:
        return outbox.reap(session, clock())


def reevaluate(
    factory: sessionmaker[Session], settings: AlertsSettings, clock: Clock = utc_now
) -> int:
    """Tick: re-run alerts whose timers are due."""
    with factory.begin() as session:
        return pipeline.reevaluate_due(session, settings, clock())


def digests(
    factory: sessionmaker[Session], settings: AlertsSettings, clock: Clock = utc_now
) -> int:
    """Tick: send the digests."""
    with factory.begin() as session:
        return pipeline.send_digests(session, settings, clock())


def purge(factory: sessionmaker[Session], settings: AlertsSettings, clock: Clock = utc_now) -> int:
    """Tick: forget old settled deliveries."""
    with factory.begin() as session:
        return pipeline.purge(session, settings, clock())


class _Loop:
    """A wake-up that works from any thread into one asyncio event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        self._loop = loop
        self._event = event

    def set(self) -> None:
        # A closed loop raises RuntimeError: there is nothing left to wake.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)


_Done = outbox.Attempted  # a finished attempt waiting to be settled


def _ends(batch: list[_Done]) -> Counter[int]:
    """Slots the finished attempts free, per endpoint."""
    return Counter(item.claimed.endpoint_id for item in batch)


class AlertsWorker:
    """The consumer thread and the delivery event loop of one process."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        settings: AlertsSettings,
        clock: Clock = utc_now,
        name: str | None = None,
    ) -> None:
        self._factory = factory
        self._settings = settings
        self._clock = clock
        self.name = name or worker_name()
        self._reader = make_sessionmaker(factory.kw["bind"], read_only=True)
        self._stop = threading.Event()
        self._feed_wake = threading.Event()
        self._consumer = threading.Thread(target=self._consume, name="alerts-consumer", daemon=True)
        self._deliverer = threading.Thread(
            target=self._deliver, name="alerts-delivery", daemon=True
        )
        self._listener: wake.Listener | None = None
        if not is_sqlite(settings.database_url):
            self._listener = wake.Listener(
                settings.database_url, [FEED_CHANNEL, outbox.DELIVERY_CHANNEL]
            )
        self._delivery_wake: asyncio.Event | None = None
        self._bridge: _Loop | None = None
        self._rng = Random()  # noqa: S311 -- retry jitter, not a secret
        # Database work of the delivery loop, off the event loop and off the default executor
        # (which DNS lookups share): one thread, so this worker's transactions never overlap.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alerts-db")
        self.delivered = 0  # attempts settled by this worker, for its log line

    @property
    def listening(self) -> threading.Event | None:
        """Set once LISTEN is in place (PostgreSQL); None on SQLite."""
        return self._listener.listening if self._listener else None

    def start(self) -> None:
        """Start consuming and delivering."""
        wake.subscribe(FEED_CHANNEL, self._feed_wake)
        if self._listener is not None:
            self._listener.start()
        self._consumer.start()
        self._deliverer.start()
        self._feed_wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming, let requests in flight finish (up to the shutdown grace), then stop."""
        self._stop.set()
        self._feed_wake.set()
        if self._bridge is not None:
            self._bridge.set()
        grace = self._settings.shutdown_grace.total_seconds()
        self._deliverer.join(timeout if timeout is not None else grace + 10)
        self._consumer.join(10)
        self._db.shutdown(wait=False)
        wake.unsubscribe(FEED_CHANNEL, self._feed_wake)
        if self._bridge is not None:
            wake.unsubscribe(outbox.DELIVERY_CHANNEL, self._bridge)
        if self._listener is not None:
            self._listener.stop()

    # The consumer: evaluate, decide, enqueue ------------------------------------------------

    def _consume(self) -> None:
        poll = self._settings.poll_interval.total_seconds()
        while not self._stop.is_set():
            self._feed_wake.wait(poll)
            self._feed_wake.clear()
            try:
                # Bounded: each pass takes a batch; stop() is honoured between batches.
                for _ in range(1000):
                    if self._stop.is_set() or not consume(
                        self._factory, self._settings, self._clock, self._reader
                    ):
                        break
            except Exception:
                # The unit of work rolled back: the cursor did not move, the batch comes again.
                log.exception("alert pipeline pass failed")

    # The deliverer: claim, deliver, settle ---------------------------------------------------

    def _deliver(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        settings = self._settings
        self._delivery_wake = asyncio.Event()
        self._bridge = _Loop(asyncio.get_running_loop(), self._delivery_wake)
        wake.subscribe(outbox.DELIVERY_CHANNEL, self._bridge)
        limits = httpx.Limits(
            max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
        )
        async with httpx.AsyncClient(
            timeout=settings.webhook_timeout.total_seconds(),
            follow_redirects=False,
            limits=limits,
            headers={"user-agent": "riskalert-webhooks/1"},
        ) as client:
            await self._dispatch(client)

    async def _dispatch(self, client: httpx.AsyncClient) -> None:
        settings = self._settings
        assert self._delivery_wake is not None
        loop = asyncio.get_running_loop()
        poll = settings.poll_interval.total_seconds()
        busy: Counter[int] = Counter()
        inflight: set[asyncio.Task[_Done]] = set()
        done: list[_Done] = []
        failures = 0
        while True:
            finished = {t for t in inflight if t.done()}
            inflight -= finished
            done.extend(t.result() for t in finished)
            stopping = self._stop.is_set()
            limit = (
                0 if stopping else min(settings.concurrency - len(inflight), settings.claim_batch)
            )
            claimed: list[outbox.Claimed] = []
            if done or limit > 0:
                batch, done = done, []
                try:
                    # One short transaction settles what finished and claims what is due.
                    claimed = await loop.run_in_executor(
                        self._db, self._cycle, batch, limit, +(busy - _ends(batch))
                    )
                    busy -= _ends(batch)
                    self.delivered += len(batch)
                    failures = 0
                except Exception:
                    failures += 1
                    log.exception("settling/claiming failed (%d in a row)", failures)
                    if failures < 20:
                        done = batch + done  # try to record them again
                    else:
                        # Give up on recording: their leases expire, they are sent again
                        # (same webhook-id) and receivers deduplicate.
                        busy -= _ends(batch)
                        failures = 0
                    await asyncio.sleep(min(0.05 * failures, 2.0))
            if stopping and not done:
                break
            for lease in claimed:
                busy[lease.endpoint_id] += 1
                inflight.add(asyncio.create_task(self._attempt(client, lease)))
            if limit > 0 and len(claimed) == limit:
                continue  # more may be due right now
            self._delivery_wake.clear()
            waiter = asyncio.ensure_future(self._delivery_wake.wait())
            awaited: set[asyncio.Future[object]] = {waiter, *inflight}  # type: ignore[arg-type]
            await asyncio.wait(awaited, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if len(inflight) > 1:
                # Let a few more finish, so one transaction settles several.
                await asyncio.sleep(0.003)
        # Graceful stop: requests in flight finish and are recorded; no new claims.
        if inflight:
            grace = settings.shutdown_grace.total_seconds()
            finished_tasks, unfinished = await asyncio.wait(inflight, timeout=grace)
            for task in unfinished:
                task.cancel()  # its lease expires and another worker takes it
            last = [t.result() for t in finished_tasks if not t.cancelled()]
            for _ in range(5):
                try:
                    await loop.run_in_executor(self._db, self._cycle, last, 0, Counter())
                    self.delivered += len(last)
                    break
                except Exception:
                    log.exception("recording the last attempts failed")
                    await asyncio.sleep(0.5)

    def _cycle(self, batch: list[_Done], limit: int, busy: Counter[int]) -> list[outbox.Claimed]:
        settings = self._settings
        with self._factory.begin() as session:
            now = self._clock()
            outbox.settle(
                session, batch, now=now, owner=self.name, settings=settings, rng=self._rng
            )
            if limit <= 0:
                return []
            return outbox.claim(
                session,
                owner=self.name,
                limit=limit,
                now=now,
                lease=settings.lease,
                busy=busy,
                slots=settings.endpoint_slots,
            )

    async def _attempt(self, client: httpx.AsyncClient, item: outbox.Claimed) -> _Done:
        settings = self._settings
        started = self._clock()
        begun = time.perf_counter()
        try:
            if item.kind == "webhook":
                body = json.dumps(item.payload, separators=(",", ":"), ensure_ascii=False)
                result = await webhooks.send_webhook(
                    client,
                    url=item.address,
                    secrets=item.secrets,
                    message_id=item.message_id,
                    body=body.encode(),
                    now=started,
                    allow_http=settings.webhook_allow_http,
                    allowlist=settings.webhook_allowlist,
                    max_response_bytes=settings.max_response_bytes,
                )
            else:
                message = email.render(
                    item.payload,
                    message_id=item.message_id,
                    recipient=item.address,
                    sender=settings.mail_from,
                    unsubscribe_url=(
                        f"{settings.public_url.rstrip('/')}/v1/unsubscribe/{item.unsubscribe_token}"
                    ),
                )
                result = await email.send_email(smtp_config(settings), message)
        except Exception as exc:
            # A bug, not a receiver's answer: log it and retry on the schedule.
            log.exception("delivery %s raised", item.id)
            result = webhooks.AttemptResult(
                outcome="retry",
                status_code=None,
                error_class=type(exc).__name__,
                error=str(exc)[:500],
                response_body=None,
                duration_ms=(time.perf_counter() - begun) * 1000,
            )
        return _Done(item, result, started)


def smtp_config(settings: AlertsSettings) -> email.SmtpConfig:
    """The SMTP relay settings."""
    return email.SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        timeout_s=settings.smtp_timeout.total_seconds(),
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        start_tls=settings.smtp_starttls,
        use_tls=settings.smtp_tls,
        sender=settings.mail_from,
    )


def make_scheduler(
    factory: sessionmaker[Session], settings: AlertsSettings, clock: Clock = utc_now
) -> BackgroundScheduler:
    """The periodic ticks; each is safe to run in several processes at once."""
    scheduler = BackgroundScheduler(timezone=UTC)
    ticks: list[tuple[Callable[..., int], list[object], float]] = [
        (reap, [factory, clock], settings.reaper_interval.total_seconds()),
        (reevaluate, [factory, settings, clock], settings.reevaluate_interval.total_seconds()),
        (digests, [factory, settings, clock], settings.digest_interval.total_seconds()),
        (purge, [factory, settings, clock], 3600.0),
    ]
    for func, args, seconds in ticks:
        scheduler.add_job(
            func,
            "interval",
            args=args,
            seconds=seconds,
            id=f"alerts_{func.__name__}",
            # Aligned to multiples of the interval since 2000-01-01 UTC: the daily digest goes
            # out at midnight UTC, not a day after whenever the process started.
            start_date=datetime(2000, 1, 1, tzinfo=UTC),
            coalesce=True,
            max_instances=1,
        )
    return scheduler
