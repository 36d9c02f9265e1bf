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
from dataclasses import dataclass
from datetime import UTC, datetime
from random import Random

import httpx
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from services.alerts import email, outbox, pipeline, webhooks
from services.alerts.settings import AlertsSettings
from services.core import wake
from services.core.db import is_sqlite
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
    factory: sessionmaker[Session], settings: AlertsSettings, clock: Clock = utc_now
) -> int:
    """Run the pipeline once over each input (feeds, new rules); return how much was taken."""
    taken = 0
    with factory.begin() as session:
        taken += pipeline.consume_scores(session, settings, clock())
    with factory.begin() as session:
        taken += pipeline.consume_incidents(session, settings, clock())
    with factory.begin() as session:
        taken += pipeline.seed_rules(session, settings, clock())
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


@dataclass
class _Done:
    claimed: outbox.Claimed
    result: webhooks.AttemptResult
    started_at: datetime


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
                        self._factory, self._settings, self._clock
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
        poll = settings.poll_interval.total_seconds()
        busy: Counter[int] = Counter()
        inflight: set[asyncio.Task[_Done]] = set()
        done: list[_Done] = []
        while True:
            stopping = self._stop.is_set()
            finished = {t for t in inflight if t.done()}
            inflight -= finished
            done.extend(t.result() for t in finished)
            if done:
                batch, done = done, []
                await self._settle(batch)
                for item in batch:
                    busy[item.claimed.endpoint_id] -= 1
            if stopping:
                break
            free = settings.concurrency - len(inflight)
            claimed: list[outbox.Claimed] = []
            if free > 0:
                try:
                    claimed = await asyncio.to_thread(
                        self._claim, min(free, settings.claim_batch), +busy
                    )
                except Exception:
                    log.exception("claiming deliveries failed")
            for lease in claimed:
                busy[lease.endpoint_id] += 1
                inflight.add(asyncio.create_task(self._attempt(client, lease)))
            if claimed and len(claimed) == min(free, settings.claim_batch):
                continue  # more may be due right now
            self._delivery_wake.clear()
            waiters: set[asyncio.Future[object]] = {
                asyncio.ensure_future(self._delivery_wake.wait())
            }
            pending_tasks: set[asyncio.Future[object]] = set(inflight)  # type: ignore[arg-type]
            await asyncio.wait(
                waiters | pending_tasks, timeout=poll, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in waiters:
                waiter.cancel()
        # Graceful stop: requests in flight finish and are recorded; no new claims.
        if inflight:
            grace = settings.shutdown_grace.total_seconds()
            finished_tasks, unfinished = await asyncio.wait(inflight, timeout=grace)
            for task in unfinished:
                task.cancel()  # its lease expires and another worker takes it
            await self._settle([t.result() for t in finished_tasks if not t.cancelled()])

    def _claim(self, limit: int, busy: Counter[int]) -> list[outbox.Claimed]:
        settings = self._settings
        with self._factory.begin() as session:
            return outbox.claim(
                session,
                owner=self.name,
                limit=limit,
                now=self._clock(),
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

    async def _settle(self, batch: list[_Done]) -> None:
        if not batch:
            return
        for attempt in range(5):
            try:
                await asyncio.to_thread(self._settle_batch, batch)
                self.delivered += len(batch)
                return
            except Exception:
                log.exception("settling %d deliveries failed (try %d)", len(batch), attempt + 1)
                await asyncio.sleep(min(2.0**attempt * 0.1, 2.0))
        # Not recorded: the leases expire and the deliveries are attempted again (same ids).

    def _settle_batch(self, batch: list[_Done]) -> None:
        with self._factory.begin() as session:
            now = self._clock()
            for item in batch:
                outbox.settle(
                    session,
                    item.claimed,
                    item.result,
                    started_at=item.started_at,
                    now=now,
                    owner=self.name,
                    settings=self._settings,
                    rng=self._rng,
                )


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
