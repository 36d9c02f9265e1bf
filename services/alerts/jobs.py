"""Background work of the alerts service: the feed consumer, the delivery worker and the ticks.

The consumer runs `pipeline` (evaluate, decide, enqueue) in one thread. The dispatcher runs in
another: claim (leases) and settle (by lease token) in one short transaction per cycle, and
deliver (httpx / aiosmtplib, outside any transaction) on lanes, threads of a pool that each send
claimed deliveries one after another. Both are woken the moment new work commits
(`services.core.wake`) and poll as a fallback. APScheduler 3 runs the
ticks; each is safe to run in several processes at once (row locks with SKIP LOCKED, unique
dedupe keys).
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from random import Random

import httpx
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from services.alerts import (
    email,
    outbox,
    pipeline,
    rescale,  # noqa: F401  (registers what a published model version does to thresholds)
    webhooks,
)
from services.alerts.settings import AlertsSettings
from services.core import activity, deadletters, metrics, wake
from services.core.clock import Clock, utc_now
from services.core.db import is_sqlite, make_sessionmaker
from services.core.deadletters import Quarantine
from services.core.logs import FailureStreak, working_for
from services.core.ticks import add_tick
from services.scoring.feed import FEED_CHANNEL

log = logging.getLogger(__name__)


def worker_name() -> str:
    """A name for this worker process, unique across restarts: host, pid and a random tag."""
    return f"{socket.gethostname()[:30]}-{os.getpid()}-{secrets.token_hex(3)}"


# What each consumer thread takes: event rules apart, so an incident alerts at once even while
# a burst of score changes is being evaluated.
EVENTS = (pipeline.INCIDENT_FEED,)
THRESHOLDS = (pipeline.SCORE_FEED, pipeline.SEED)
Step = Callable[[Session, AlertsSettings, datetime, Quarantine | None], int]
_STEPS: dict[str, Step] = {
    pipeline.INCIDENT_FEED: pipeline.consume_incidents,
    pipeline.SCORE_FEED: pipeline.consume_scores,
    pipeline.SEED: pipeline.seed_rules,
}


def consume(
    factory: sessionmaker[Session],
    settings: AlertsSettings,
    clock: Clock = utc_now,
    reader: sessionmaker[Session] | None = None,
    inputs: tuple[str, ...] = EVENTS + THRESHOLDS,
) -> int:
    """Run the pipeline once over each input with work waiting; return how much was taken."""
    with (reader or factory)() as session:
        waiting = pipeline.backlog(session)
    taken = 0
    for name in inputs:
        if name in waiting:
            step = functools.partial(_step, _STEPS[name], settings, clock)
            taken += deadletters.run(factory, f"alerts.{name}", step, clock)
    return taken


def _step(
    step: Step,
    settings: AlertsSettings,
    clock: Clock,
    session: Session,
    quarantine: Quarantine | None,
) -> int:
    return step(session, settings, clock(), quarantine)


def drain(factory: sessionmaker[Session], settings: AlertsSettings, clock: Clock = utc_now) -> int:
    """Consume until the feeds are exhausted (tests, the demo); bounded by the feed sizes."""
    total = 0
    while taken := consume(factory, settings, clock):
        total += taken
    return total


def reap(factory: sessionmaker[Session], clock: Clock = utc_now) -> int:
    """Tick: hand expired leases back, and say so, one line per delivery (once committed)."""
    with factory.begin() as session:
        reclaimed = outbox.reap(session, clock())
    for r in reclaimed:
        log.warning(
            "delivery %d to endpoint %d: the lease of %s on attempt %d expired %.1f s ago; %s",
            r.delivery_id,
            r.endpoint_id,
            r.owner,
            r.attempt,
            r.overdue.total_seconds(),
            "superseded by a newer state" if r.status == outbox.SUPERSEDED else "queued again",
            extra={
                "delivery_id": r.delivery_id,
                "endpoint_id": r.endpoint_id,
                "lease_owner": r.owner,
                "attempt": r.attempt,
                "overdue_s": round(r.overdue.total_seconds(), 3),
                "status": r.status,
            },
        )
    return len(reclaimed)


def reevaluate(
    factory: sessionmaker[Session], settings: AlertsSettings, clock: Clock = utc_now
) -> int:
    """Tick: re-run alerts whose timers are due."""
    return deadletters.run(
        factory,
        "alerts.timers",
        lambda session, quarantine: pipeline.reevaluate_due(session, settings, clock(), quarantine),
        clock,
    )


def digests(
    factory: sessionmaker[Session], settings: AlertsSettings, clock: Clock = utc_now
) -> int:
    """Tick: send the digests."""
    return deadletters.run(
        factory,
        "alerts.digests",
        lambda session, quarantine: pipeline.send_digests(session, settings, clock(), quarantine),
        clock,
    )


def purge(factory: sessionmaker[Session], settings: AlertsSettings, clock: Clock = utc_now) -> int:
    """Tick: forget old settled deliveries."""
    with factory.begin() as session:
        return pipeline.purge(session, settings, clock())


_Done = outbox.Attempted  # a finished attempt waiting to be settled
# The share of the lease, counted from the claim, within which an attempt must end whatever the
# configured timeouts: the rest is margin before another worker may take the delivery over.
LEASE_SHARE = 0.8


def send_budget(item: outbox.Claimed, now: datetime) -> timedelta | None:
    """How long an attempt starting at `now` may take: what is left of `LEASE_SHARE` of its
    lease, counted from the claim; None when nothing is left and it must not be sent."""
    deadline = item.leased_at + (item.lease_expires_at - item.leased_at) * LEASE_SHARE
    left = deadline - now
    return left if left > timedelta(0) else None


async def _within(
    seconds: float, sending: Awaitable[webhooks.AttemptResult]
) -> webhooks.AttemptResult:
    """The email attempt's result, or a throttled timeout when it takes longer than `seconds`."""
    begun = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            return await sending
    except TimeoutError:
        return webhooks.AttemptResult(
            outcome="retry",
            status_code=None,
            error_class="timeout",
            error=f"no answer from the mail server within {seconds:.0f} s",
            response_body=None,
            duration_ms=(time.perf_counter() - begun) * 1000,
            throttled=True,
        )


def settle_and_claim(
    factory: sessionmaker[Session],
    batch: list[_Done],
    limit: int,
    *,
    owner: str,
    settings: AlertsSettings,
    rng: Random,
    clock: Clock = utc_now,
) -> list[outbox.Claimed]:
    """One cycle of the dispatcher, in one short transaction: record the finished attempts,
    then lease up to `limit` due deliveries. An attempt that cannot be recorded is set aside
    (a dead letter) and its delivery closed; the others are recorded and claiming goes on."""

    settled: list[outbox.Settled] = []

    def step(session: Session, quarantine: Quarantine | None) -> list[outbox.Claimed]:
        now = clock()
        settled[:] = outbox.settle(
            session, batch, now=now, owner=owner, settings=settings, rng=rng, quarantine=quarantine
        )
        if limit <= 0:
            return []
        return outbox.claim(
            session, owner=owner, limit=limit, now=now, lease=settings.lease,
            slots=settings.endpoint_slots,
        )  # fmt: skip

    claimed = deadletters.run(factory, "alerts.dispatch", step, clock)
    _log_settled(settled, owner)
    return claimed


def _log_settled(settled: list[outbox.Settled], owner: str) -> None:
    """Tell the operator about attempts that ended after their lease (recorded, deciding
    nothing) and deliveries handed back unsent; the rest is in the attempt log."""
    for s in settled:
        extra = {"delivery_id": s.delivery_id, "attempt": s.attempt, "lease_owner": owner}
        if s.status == outbox.LEASE_LOST:
            log.warning(
                "delivery %d: attempt %s by %s ended (%s) after its lease expired; recorded, "
                "but the delivery was handed back to the queue and is decided by its next holder",
                s.delivery_id, s.attempt, owner, s.outcome,
                extra={**extra, "outcome": s.outcome},
            )  # fmt: skip
        elif s.status == outbox.RELEASED:
            log.info(
                "delivery %d: not sent (this worker stalled past its lease); handed back, due now",
                s.delivery_id,
                extra=extra,
            )


# A cycle that only settles waits for this many finished attempts, or this long after the first
# (seconds), while there is other work to send: one transaction records many. With nothing left
# to send it runs at once, since settling may free an endpoint's places for its next delivery.
SETTLE_BATCH = 64
SETTLE_WAIT = 0.2
# Attempts one lane makes before it hands over to a new one (a bound on its loop).
LANE_TURNS = 10_000


class Lanes:
    """Claimed deliveries waiting to be sent, most urgent first, and the lanes sending them.

    A lane is a pool thread that takes waiting deliveries one after another until none is
    left. Lanes are opened while fewer than `active` are busy with an attempt younger than
    `slow_after` seconds (one waiting for a slow endpoint stops counting, so the others are not
    held up by it), never more than `limit` in all; a lane stops when there are more than
    `active` without such an attempt, so a moment when some were slow does not leave the
    process with more lanes than it can keep busy. Thread-safe; the clock is passed in.
    """

    def __init__(self, *, active: int, limit: int, slow_after: float, prefetch: int) -> None:
        self.active, self.limit, self.slow_after = active, limit, slow_after
        self.capacity = limit + prefetch  # deliveries held: in flight or waiting
        self.low = self.capacity - max(1, prefetch // 2)  # held up to this: claim more
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, int, outbox.Claimed]] = []  # a heap
        self._order = itertools.count()
        self._lane_ids = itertools.count(1)
        self._open = 0  # lanes running
        self._busy: dict[int, float] = {}  # lane -> when its attempt started
        self._finished: list[_Done] = []

    def add(self, items: list[outbox.Claimed]) -> None:
        """Queue claimed deliveries (in claim order, within their priority)."""
        with self._lock:
            for item in items:
                key = (outbox.priority_of(item.event_type), next(self._order), item)
                heapq.heappush(self._waiting, key)

    def take(self, lane: int, now: float) -> outbox.Claimed | None:
        """The next delivery for `lane`, busy from `now`; None when none waits or the lane is
        one too many (it should stop)."""
        with self._lock:
            if not self._waiting or self._open - self._slow(now) > self.active:
                return None
            self._busy[lane] = now
            return heapq.heappop(self._waiting)[2]

    def _slow(self, now: float) -> int:
        return sum(1 for started in self._busy.values() if now - started >= self.slow_after)

    def finish(self, lane: int, done: _Done) -> bool:
        """Keep `lane`'s finished attempt; whether the dispatcher should look now (a batch to
        record, or few deliveries left to send)."""
        with self._lock:
            self._busy.pop(lane, None)
            self._finished.append(done)
            held = len(self._waiting) + len(self._busy)
            return (
                len(self._finished) >= SETTLE_BATCH
                or held <= self.low
                or len(self._waiting) < self.active
            )

    def open(self, now: float) -> list[int]:
        """The lanes to start now for the deliveries waiting (as many as may run), counted as
        running from now on."""
        with self._lock:
            slow = self._slow(now)
            between = self._open - len(self._busy)  # just started, or between two attempts
            wanted = len(self._waiting) - between
            n = max(0, min(wanted, self.active - (self._open - slow), self.limit - self._open))
            self._open += n
            return [next(self._lane_ids) for _ in range(n)]

    def closed(self, lane: int) -> None:
        """`lane` has stopped."""
        with self._lock:
            self._busy.pop(lane, None)
            self._open -= 1

    def collect(self) -> list[_Done]:
        """The finished attempts, handed over once."""
        with self._lock:
            done, self._finished = self._finished, []
            return done

    def withdraw(self) -> list[outbox.Claimed]:
        """Every delivery still waiting (none has been sent), in order; none waits after."""
        with self._lock:
            items = [heapq.heappop(self._waiting)[2] for _ in range(len(self._waiting))]
            return items

    @property
    def waiting(self) -> int:
        """Deliveries claimed and not yet started."""
        return len(self._waiting)

    @property
    def held(self) -> int:
        """Deliveries this process holds a lease on and has not finished: waiting or sending."""
        with self._lock:
            return len(self._waiting) + len(self._busy)

    @property
    def running(self) -> int:
        """Lanes running."""
        return self._open


class _NewWork:
    """Set when a commit enqueued deliveries (this process, or NOTIFY): a claim may find some."""

    def __init__(self, kick: threading.Event) -> None:
        self.flag = threading.Event()
        self._kick = kick

    def set(self) -> None:
        self.flag.set()
        self._kick.set()


class AlertsWorker:
    """The consumer thread and the delivery threads of one process."""

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
        self._feed_wakes = [threading.Event(), threading.Event()]
        # Set by a commit that enqueued (this process, or NOTIFY), and by lanes when there is
        # a batch to settle or little left to send.
        self._kick = threading.Event()
        self._new_work = _NewWork(self._kick)
        self._consumers = [
            threading.Thread(
                target=self._consume, args=(inputs, ready), name=f"alerts-{kind}", daemon=True
            )
            for kind, inputs, ready in zip(
                ("events", "thresholds"), (EVENTS, THRESHOLDS), self._feed_wakes, strict=True
            )
        ]
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="alerts-dispatch", daemon=True
        )
        self._listener: wake.Listener | None = None
        if not is_sqlite(settings.database_url):
            self._listener = wake.Listener(
                settings.database_url, [FEED_CHANNEL, outbox.DELIVERY_CHANNEL]
            )
        self._rng = Random()  # noqa: S311 -- retry jitter, not a secret
        # Attempts run on threads with httpx's blocking transport: per process it sends about
        # three times what its asyncio client does here (docs/benchmarks.md).
        self._pool = ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix="alerts-send"
        )
        self._lanes = Lanes(
            active=min(settings.active_sends, settings.concurrency),
            limit=settings.concurrency,
            slow_after=settings.slow_send_after.total_seconds(),
            prefetch=settings.claim_batch,
        )
        self._lane_futures: set[Future[None]] = set()
        # One HTTP connection pool per sender thread. Threads sharing one httpcore pool can have
        # a connection closed under a request already sent (encode/httpcore#1110): the attempt
        # then fails after the receiver got it, and the retry is a duplicate. Seen here as
        # "ReadError [Errno 9] Bad file descriptor" in the fan-out benchmark.
        self._local = threading.local()
        self._transports: list[httpx.HTTPTransport] = []
        self._transports_lock = threading.Lock()
        self.delivered = 0  # attempts settled by this worker, for its log line
        # When each thread last turned its loop (time.monotonic), by thread name: /healthz.
        self._turned: dict[str, float] = {}

    def stalled(self, within: float) -> list[str]:
        """The threads (by name) that are not running or have not turned their loop in the last
        `within` seconds; none while all is well, database or not (it runs no query)."""
        now = time.monotonic()
        return [
            t.name
            for t in (*self._consumers, self._dispatcher)
            if not t.is_alive() or now - self._turned.get(t.name, -math.inf) > within
        ]

    def _turn(self) -> None:
        self._turned[threading.current_thread().name] = time.monotonic()

    @property
    def listening(self) -> threading.Event | None:
        """Set once LISTEN is in place (PostgreSQL); None on SQLite."""
        return self._listener.listening if self._listener else None

    def start(self) -> None:
        """Start consuming and delivering."""
        for ready in self._feed_wakes:
            wake.subscribe(FEED_CHANNEL, ready)
        wake.subscribe(outbox.DELIVERY_CHANNEL, self._new_work)
        if self._listener is not None:
            self._listener.start()
        for consumer in self._consumers:
            consumer.start()
        self._dispatcher.start()
        for ready in self._feed_wakes:
            ready.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming, let requests in flight finish (up to the shutdown grace), then stop."""
        self._stop.set()
        for ready in self._feed_wakes:
            ready.set()
        self._kick.set()
        grace = self._settings.shutdown_grace.total_seconds()
        self._dispatcher.join(timeout if timeout is not None else grace + 10)
        for consumer in self._consumers:
            consumer.join(10)
        # Attempts still running past the grace are abandoned to their leases.
        self._pool.shutdown(wait=False, cancel_futures=True)
        if not self._dispatcher.is_alive():
            with self._transports_lock:
                for transport in self._transports:
                    transport.close()
        for ready in self._feed_wakes:
            wake.unsubscribe(FEED_CHANNEL, ready)
        wake.unsubscribe(outbox.DELIVERY_CHANNEL, self._new_work)
        if self._listener is not None:
            self._listener.stop()

    # The consumer: evaluate, decide, enqueue ------------------------------------------------

    def _consume(self, inputs: tuple[str, ...], ready: threading.Event) -> None:
        poll = self._settings.poll_interval.total_seconds()
        streak = FailureStreak(log, f"the alert pipeline ({', '.join(inputs)})")
        while not self._stop.is_set():
            self._turn()
            ready.wait(poll)
            ready.clear()
            try:
                # Bounded: each pass takes a batch; stop() is honoured between batches.
                for _ in range(1000):
                    self._turn()
                    if self._stop.is_set() or not consume(
                        self._factory, self._settings, self._clock, self._reader, inputs
                    ):
                        break
                streak.succeeded()
            except Exception:
                # The unit of work rolled back: the cursor did not move, the batch comes again.
                streak.failed()

    # The dispatcher: claim, deliver (on lanes), settle -----------------------------------------

    def _dispatch(self) -> None:
        settings = self._settings
        poll = settings.poll_interval.total_seconds()
        lanes = self._lanes
        done: list[_Done] = []
        done_since = 0.0  # when the oldest attempt in `done` finished (time.monotonic)
        # Whether a claim may find something: not after one came back short, until new work is
        # announced, settling frees places, or a poll interval has passed.
        due, claimed_at = True, -math.inf
        failures = FailureStreak(log, "settling and claiming deliveries")
        while True:
            self._turn()
            # Cleared before looking, so a completion or wake-up from now on is not missed.
            self._kick.clear()
            if self._new_work.flag.is_set():
                self._new_work.flag.clear()
                due = True
            now = time.monotonic()
            stopping = self._stop.is_set()
            if stopping:
                # Claimed but not started: handed back unsent, due at once for another worker.
                left = lanes.withdraw()
                done.extend(_Done(i, _unsent(i), self._clock(), sent=False) for i in left)
            finished = lanes.collect()
            if finished and not done:
                done_since = now
            done.extend(finished)
            # Up to `concurrency` in flight and a claim's worth waiting: the lanes must not run
            # dry during a cycle, which takes tens of milliseconds when the sending threads keep
            # the dispatcher waiting for the interpreter. Claimed again when there is room for
            # half a claim, or at once when few are left to send (the places may be held by
            # attempts to slow endpoints).
            room = 0 if stopping else lanes.capacity - lanes.held
            claim = (
                room > 0
                and (room >= settings.claim_batch // 2 or lanes.waiting < lanes.active)
                and (due or now - claimed_at >= poll)
            )
            settle = bool(done) and (
                claim
                or stopping
                or len(done) >= SETTLE_BATCH
                or lanes.waiting == 0
                or now - done_since >= SETTLE_WAIT
            )
            claimed: list[outbox.Claimed] = []
            limit = min(room, settings.claim_batch) if claim else 0
            if claim or settle:
                batch, done = (done, []) if settle else ([], done)
                try:
                    # One short transaction settles what finished and claims what is due.
                    claimed = self._cycle(batch, limit)
                    self.delivered += len(batch)
                    failures.succeeded()
                    if claim:
                        claimed_at = now
                    # Settling may have freed an endpoint's places; a full claim may leave more.
                    due = bool(batch) or (claim and len(claimed) == limit)
                except Exception:
                    failures.failed()
                    # Keep the finished attempts until they are recorded, however long the
                    # database is away: dropping them would have them sent again after their
                    # leases. Nothing new is claimed meanwhile, so they are at most what the
                    # lanes hold; settling by lease token records only those still held.
                    done = batch + done
                    done_since = now
                    claim = False
                    self._stop.wait(min(0.05 * failures.count, 2.0))
            if stopping and not done and not lanes.waiting:
                break
            if claimed:
                # Deliveries someone waits for (reading feeds is not: a rescoring backlog
                # produces score changes itself, and must not slow down for them).
                activity.touch()
                lanes.add(claimed)
            self._open_lanes()
            if claim and len(claimed) == limit:
                continue  # more may be due right now
            if done:
                timeout = max(0.001, SETTLE_WAIT - (time.monotonic() - done_since))
            elif lanes.waiting:
                timeout = lanes.slow_after  # an attempt turning slow lets another lane open
            else:
                timeout = poll
            self._kick.wait(timeout)
        self._finish()

    def _open_lanes(self) -> None:
        """Start lanes for the deliveries waiting, as many as `Lanes.open` allows."""
        for lane in self._lanes.open(time.monotonic()):
            future = self._pool.submit(self._lane, lane)
            self._lane_futures.add(future)
            future.add_done_callback(self._lane_futures.discard)

    def _lane(self, lane: int) -> None:
        """Send waiting deliveries one after another until none is left."""
        lanes = self._lanes
        try:
            for _ in range(LANE_TURNS):
                item = lanes.take(lane, time.monotonic())
                if item is None:
                    break
                if lanes.finish(lane, self._attempt(item)):
                    self._kick.set()
        finally:
            lanes.closed(lane)
            self._kick.set()

    def _finish(self) -> None:
        """Graceful stop: requests in flight finish and are recorded; no new claims."""
        grace = self._settings.shutdown_grace.total_seconds()
        wait(list(self._lane_futures), timeout=grace)
        last = self._lanes.collect()
        if not last:
            return
        for _ in range(5):
            try:
                self._cycle(last, 0)
                self.delivered += len(last)
                return
            except Exception:
                log.exception("recording the last attempts failed")
                time.sleep(0.5)

    def _cycle(self, batch: list[_Done], limit: int) -> list[outbox.Claimed]:
        return settle_and_claim(
            self._factory,
            batch,
            limit,
            owner=self.name,
            settings=self._settings,
            rng=self._rng,
            clock=self._clock,
        )

    def _transport(self) -> httpx.HTTPTransport:
        """This sender thread's HTTP connection pool (made on first use)."""
        transport: httpx.HTTPTransport | None = getattr(self._local, "transport", None)
        if transport is None:
            slots = self._settings.endpoint_slots
            transport = httpx.HTTPTransport(
                # A thread sends one request at a time; a few idle connections let it go
                # back to the endpoints it sends to most without a new handshake.
                limits=httpx.Limits(max_connections=slots * 2, max_keepalive_connections=slots * 2),
                trust_env=False,
            )
            self._local.transport = transport
            with self._transports_lock:
                self._transports.append(transport)
        return transport

    def _attempt(self, item: outbox.Claimed) -> _Done:
        done = self._send(item)
        result = done.result
        # Successes are the bulk and are stored with their attempt; the rest is news. The log
        # context is bound only for a line that will be written.
        if not done.sent:
            level = logging.WARNING
        else:
            level = logging.DEBUG if result.outcome == "delivered" else logging.INFO
        if log.isEnabledFor(level):
            with working_for(
                [item.request_id], delivery_id=item.id, webhook_id=item.message_id,
                attempt=item.attempt,
            ):  # fmt: skip
                _log_attempt(item, done, level)
        metrics.DELIVERIES.labels(item.kind, result.outcome).inc()
        metrics.DELIVERY_SECONDS.labels(item.kind).observe(result.duration_ms / 1000)
        return done

    def _send(self, item: outbox.Claimed) -> _Done:
        settings = self._settings
        started = self._clock()
        begun = time.perf_counter()
        # An attempt must end well inside its lease, or the reaper would hand the delivery to
        # another worker while this one is still sending it. Counted from the claim: a worker
        # that stalled after claiming (a pause, a full pool) sends nothing once the lease is
        # too far gone, and the delivery goes back to the queue unsent.
        left = send_budget(item, started)
        if left is None:
            return _Done(item, _unsent(item), started, sent=False)
        budget = left.total_seconds()
        try:
            if item.kind == "webhook":
                body = json.dumps(item.payload, separators=(",", ":"), ensure_ascii=False)
                result = webhooks.send_webhook(
                    self._transport(),
                    url=item.address,
                    secrets=item.secrets,
                    message_id=item.message_id,
                    body=body.encode(),
                    now=started,
                    allow_http=settings.webhook_allow_http,
                    allowlist=settings.webhook_allowlist,
                    timeout_s=settings.webhook_timeout.total_seconds(),
                    max_response_bytes=settings.max_response_bytes,
                    total_timeout_s=budget,
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
                # aiosmtplib is asyncio-only: each email gets a short-lived loop on this thread.
                result = asyncio.run(
                    _within(budget, email.send_email(smtp_config(settings), message))
                )
        except Exception as exc:
            # A bug, not a receiver's answer: log it and retry on the schedule.
            with working_for(
                [item.request_id], delivery_id=item.id, webhook_id=item.message_id,
                attempt=item.attempt,
            ):  # fmt: skip
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


def _log_attempt(item: outbox.Claimed, done: _Done, level: int) -> None:
    """The attempt's log line (its context bound by the caller)."""
    if not done.sent:
        log.warning(
            "%s delivery %d not sent: the lease taken at %s for attempt %d had too little "
            "left (expires %s); left for the next claim",
            item.kind, item.id, item.leased_at.isoformat(), item.attempt,
            item.lease_expires_at.isoformat(),
        )  # fmt: skip
        return
    result = done.result
    log.log(
        level,
        "%s attempt: %s",
        item.kind,
        result.outcome,
        extra={
            "status_code": result.status_code,
            "error_class": result.error_class,
            "error": result.error,
            "ms": round(result.duration_ms, 1),
        },
    )


def _unsent(item: outbox.Claimed) -> webhooks.AttemptResult:
    """The result of an attempt never made: its lease was too far gone when its turn came."""
    return webhooks.AttemptResult(
        outcome="retry",
        status_code=None,
        error_class="lease_expired",
        error=f"not sent: the lease of {item.leased_at.isoformat()} had too little time left",
        response_body=None,
        duration_ms=0.0,
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
    """The periodic ticks, each run once per slot however many processes schedule it.

    Slots are multiples of the interval since 2000-01-01 UTC: the daily digest goes out at
    midnight UTC, not a day after whenever the process started.
    """
    scheduler = BackgroundScheduler(timezone=UTC)
    ticks: list[tuple[Callable[..., int], list[object], timedelta]] = [
        (reap, [factory, clock], settings.reaper_interval),
        (reevaluate, [factory, settings, clock], settings.reevaluate_interval),
        (digests, [factory, settings, clock], settings.digest_interval),
        (purge, [factory, settings, clock], timedelta(hours=1)),
    ]
    for func, args, every in ticks:
        add_tick(scheduler, factory, f"alerts_{func.__name__}", every, func, args)
    return scheduler
