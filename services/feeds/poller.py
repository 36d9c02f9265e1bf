"""Scheduled polling of the configured feeds: read each source's API from its watermark, page
by page, into one import run; back off, then open a circuit, while a source keeps failing.

The stages, by name: due (is a feed due?), claim (a lease on its `feed_state` row), fetch
(pages, each request retried on a 429, a 5xx or a network error), import (`importer.run`), and
record (the outcome, the new watermark, the next poll; the lease released). Due, retry delay,
backoff, circuit and health are pure functions of the state and `now`.

A complete answer that is not the JSON page expected (invalid or truncated JSON, a 4xx, an
error document) fails the poll at once: asking again within the poll would get the same
answer, and the next poll comes after a backoff. A malformed row in a good page is not a
failure: it is a rejected row of the import summary.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from random import Random
from typing import Any, Literal
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import httpx
from apscheduler.schedulers.base import BaseScheduler
from sqlalchemy import Table, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.core import metrics
from services.core.clock import Clock, utc_now
from services.core.db import insert_ignoring_conflicts
from services.core.http import parse_retry_after
from services.core.ticks import add_tick
from services.feeds import acled, importer, ucdp
from services.feeds.importer import Format
from services.feeds.models import FeedState
from services.feeds.rows import Item, RowError, normalise, unix_or_iso
from services.feeds.settings import FeedConfig, FeedsSettings

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]
Status = Literal["succeeded", "failed", "busy", "not_due", "lost"]
State = Literal["ok", "failing", "circuit_open", "never_polled"]

# UCDP revises candidate events for about a month after publishing them: each poll reads
# events from a month before the newest one seen.
UCDP_REVISION = timedelta(days=31)
# A source time this far past now is a bad row, not a watermark to ask from next time.
FUTURE_TOLERANCE = timedelta(days=1)
MAX_PAGE_BYTES = 256 * 1024 * 1024
MAX_ERROR = 500
USER_AGENT = "riskalert-feeds/1"


def retry_delay(
    retry: int, *, base: timedelta, cap: timedelta, retry_after: timedelta | None, rng: Random
) -> timedelta:
    """The wait before retry `retry` (from 1) of a request: what the server's Retry-After asks,
    else `base` doubled per retry with jitter (half of it to all of it); at most `cap`."""
    if retry < 1:
        raise ValueError(f"retries count from 1, got {retry}")
    if retry_after is not None:
        return min(retry_after, cap)
    seconds = base.total_seconds() * 2.0 ** min(retry - 1, 30) * rng.uniform(0.5, 1.0)
    return min(timedelta(seconds=seconds), cap)


def backoff(failures: int, interval: timedelta, cap: timedelta) -> timedelta:
    """The wait after the `failures`-th failed poll in a row: the interval, doubled for each
    failure after the first, at most `cap`."""
    seconds = interval.total_seconds() * 2.0 ** min(max(failures - 1, 0), 40)
    return timedelta(seconds=min(seconds, cap.total_seconds()))


@dataclass(frozen=True, slots=True)
class Next:
    """Where a feed stands after a poll: failures in a row, the circuit, the next poll."""

    consecutive_failures: int
    circuit_open_until: datetime | None
    next_poll_at: datetime


def after_success(now: datetime, interval: timedelta) -> Next:
    """A success closes the circuit, forgets the failures, and waits one interval."""
    return Next(0, None, now + interval)


def after_failure(
    failures: int,
    now: datetime,
    interval: timedelta,
    *,
    threshold: int,
    circuit_open: timedelta,
    max_backoff: timedelta,
) -> Next:
    """A failure after `failures` in a row backs off; from the `threshold`-th the circuit is
    open (a failed half-open trial re-opens it), for at least `circuit_open`."""
    failures += 1
    wait = backoff(failures, interval, max_backoff)
    if failures < threshold:
        return Next(failures, None, now + wait)
    until = now + max(wait, circuit_open)
    return Next(failures, until, until)


def is_due(state: FeedState | None, now: datetime) -> bool:
    """Whether a feed should be polled now: never polled, or its next poll has come, and its
    circuit is not open and no process holds it."""
    if state is None:
        return True
    if state.lease_until is not None and state.lease_until >= now:
        return False
    if state.circuit_open_until is not None and state.circuit_open_until > now:
        return False
    return state.next_poll_at is None or state.next_poll_at <= now


def health_state(state: FeedState | None) -> State:
    """ok, failing (failed lately, circuit closed), circuit_open (open or awaiting its trial
    poll) or never_polled (no poll has finished yet)."""
    if state is None or (state.last_success_at is None and state.last_error_at is None):
        return "never_polled"
    if state.circuit_open_until is not None:
        return "circuit_open"
    return "failing" if state.consecutive_failures > 0 else "ok"


def public_url(url: str) -> str:
    """A URL without its query string, fragment or user info: safe to show and to log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (as is and URL-encoded) replaced by ***."""
    for secret in secrets:
        if len(secret) < 4:
            continue  # too short to be anything but noise in a message
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, "***")
    return text


@dataclass(frozen=True, slots=True)
class Health:
    """How a configured feed is doing, for the API and dashboards."""

    name: str
    kind: str
    url: str
    interval: timedelta
    state: State
    polling: bool
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_error_at: datetime | None
    last_error: str | None
    consecutive_failures: int
    circuit_open_until: datetime | None
    next_poll_at: datetime | None
    watermark: datetime | None
    lag_seconds: float | None
    since_success_seconds: float | None
    last_summary: dict[str, Any] | None


def feed_health(config: FeedConfig, state: FeedState | None, now: datetime) -> Health:
    """The health of one feed from its configuration and stored state."""

    def age(moment: datetime | None) -> float | None:
        return None if moment is None else round((now - moment).total_seconds(), 3)

    return Health(
        name=config.name,
        kind=config.kind,
        url=public_url(config.url),
        interval=config.interval,
        state=health_state(state),
        polling=bool(state and state.lease_until and state.lease_until >= now),
        last_attempt_at=state.last_attempt_at if state else None,
        last_success_at=state.last_success_at if state else None,
        last_error_at=state.last_error_at if state else None,
        last_error=state.last_error if state else None,
        consecutive_failures=state.consecutive_failures if state else 0,
        circuit_open_until=state.circuit_open_until if state else None,
        next_poll_at=state.next_poll_at if state else None,
        watermark=state.watermark if state else None,
        lag_seconds=age(state.watermark if state else None),
        since_success_seconds=age(state.last_success_at if state else None),
        last_summary=state.last_summary if state else None,
    )


def states(session: Session, names: Iterable[str]) -> dict[str, FeedState]:
    """The stored state of the named feeds (those ever polled)."""
    query = select(FeedState).where(FeedState.name.in_(list(names)))
    return {s.name: s for s in session.execute(query).scalars()}


def health(session: Session, settings: FeedsSettings, now: datetime) -> list[Health]:
    """The health of every configured feed, in configuration order."""
    found = states(session, [f.name for f in settings.feeds])
    return [feed_health(f, found.get(f.name), now) for f in settings.feeds]


class PollFailed(Exception):
    """The poll failed; the message is short and names no credential."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: timedelta | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _LeaseLost(Exception):
    """Another process took the feed over (this one outlived its lease)."""


class _Redacted(logging.Filter):
    """Strips the query string from httpx's request log lines: ACLED's legacy key is in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                public_url(str(a)) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


_REDACTED = _Redacted()


def make_client(settings: FeedsSettings) -> httpx.Client:
    """The HTTP client polls use (thread-safe for these GETs); close it when done."""
    httpx_log = logging.getLogger("httpx")
    if _REDACTED not in httpx_log.filters:
        httpx_log.addFilter(_REDACTED)
    return httpx.Client(
        timeout=settings.feed_request_timeout.total_seconds(),
        # A redirect would carry ACLED's legacy key to wherever it points: configure the
        # final URL instead.
        follow_redirects=False,
        headers={"user-agent": USER_AGENT, "accept": "application/json"},
    )


class _Source:
    """The requests of one poll: credentials, retries with backoff, and the lease kept alive."""

    def __init__(
        self,
        client: httpx.Client,
        config: FeedConfig,
        settings: FeedsSettings,
        clock: Clock,
        sleep: Sleep,
        rng: Random,
        renew: Callable[[], None],
    ) -> None:
        self.client = client
        self.config = config
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.rng = rng
        self.renew = renew
        self.where = public_url(config.url)
        # httpx replaces a URL's query with `params`: keep the configured one (`_format=json`).
        url = httpx.URL(config.url)
        self.url = url.copy_with(query=None)
        self.fixed = url.params
        self.headers: dict[str, str] = {}
        if config.token is not None:
            token = config.token.get_secret_value()
            if config.kind == "ucdp":
                self.headers["x-ucdp-access-token"] = token
            else:
                self.headers["authorization"] = f"Bearer {token}"
        self.credentials: dict[str, str] = {}
        if config.key is not None and config.email is not None:
            self.credentials = {"key": config.key.get_secret_value(), "email": config.email}
        self.pages = 0

    def get(self, params: Mapping[str, str]) -> Any:
        """One page as parsed JSON; a 429, a 5xx or a network error is retried with backoff."""
        if self.pages:
            self.renew()
        self.pages += 1
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._once(self.fixed.merge({**params, **self.credentials}))
            except _Retryable as exc:
                if attempt > self.settings.feed_retries:
                    tries = f"{attempt} attempts" if attempt > 1 else "no retry"
                    raise PollFailed(f"{exc} (page {self.pages}, {tries})") from None
                wait = retry_delay(
                    attempt,
                    base=self.settings.feed_retry_base,
                    cap=self.settings.feed_max_retry_wait,
                    retry_after=exc.retry_after,
                    rng=self.rng,
                )
                log.info(
                    "feed %s: %s; retry %d in %.1f s",
                    self.config.name, exc, attempt, wait.total_seconds(),
                )  # fmt: skip
                self.sleep(wait.total_seconds())

    def _once(self, params: httpx.QueryParams) -> Any:
        try:
            with self.client.stream(
                "GET", self.url, params=params, headers=self.headers
            ) as response:
                status = response.status_code
                if status == 429 or status >= 500:
                    raise _Retryable(
                        f"HTTP {status} from {self.where}",
                        parse_retry_after(response.headers.get("retry-after"), self.clock()),
                    )
                if not 200 <= status < 300:
                    raise PollFailed(f"HTTP {status} from {self.where}{_hint(status)}")
                body = bytearray()
                for part in response.iter_bytes():
                    body += part
                    if len(body) > MAX_PAGE_BYTES:
                        raise PollFailed(f"a page from {self.where} is over {MAX_PAGE_BYTES} bytes")
        except httpx.TimeoutException:
            seconds = self.settings.feed_request_timeout.total_seconds()
            raise _Retryable(f"no answer from {self.where} within {seconds:g} s", None) from None
        except httpx.HTTPError as exc:
            # The class only: httpx messages may quote the URL, query string and all.
            raise _Retryable(f"{type(exc).__name__} from {self.where}", None) from None
        try:
            return json.loads(body)
        except ValueError as exc:
            raise PollFailed(
                f"invalid JSON from {self.where} ({len(body)} bytes, page {self.pages}): {exc}"
            ) from None


def _hint(status: int) -> str:
    if status in (401, 403):
        return ": check the feed's credentials"
    if status == 404:
        return ": check the feed's URL"
    if 300 <= status < 400:
        return ": redirects are not followed; configure the URL it points to"
    return ""


def _acled_rows(page: Any) -> list[Any]:
    if not isinstance(page, dict):
        raise PollFailed("unexpected answer: not a JSON object")
    if page.get("success") is False or page.get("status", 200) not in (200, "200"):
        error = page.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        raise PollFailed(f"the source refused the request: {str(message or 'no reason')[:200]}")
    rows = page.get("data")
    if not isinstance(rows, list):
        raise PollFailed("unexpected answer: no `data` list")
    return rows


def _ucdp_rows(page: Any) -> tuple[list[Any], int]:
    if not isinstance(page, dict):
        raise PollFailed("unexpected answer: not a JSON object")
    rows, total = page.get("Result"), page.get("TotalPages")
    if not isinstance(rows, list) or not isinstance(total, int) or isinstance(total, bool):
        raise PollFailed("unexpected answer: no `Result` list and `TotalPages` count")
    return rows, total


def _acled_pages(source: _Source, since: datetime | None) -> Iterator[dict[str, Any]]:
    config, limit = source.config, source.settings.feed_max_pages
    column = "deleted_timestamp" if config.kind == "acled-deleted" else "timestamp"
    params = dict(config.query)
    if since is not None:
        params[column] = str(int(since.timestamp()))
        params[f"{column}_where"] = ">="
    for page in range(1, limit + 1):
        document = source.get({**params, "limit": str(config.page_size), "page": str(page)})
        rows = _acled_rows(document)
        yield document
        if len(rows) < config.page_size:
            return
    raise PollFailed(f"more than {limit} full pages: narrow the feed's query or set its start")


def _ucdp_pages(source: _Source, since: datetime | None) -> Iterator[dict[str, Any]]:
    config, limit = source.config, source.settings.feed_max_pages
    params = dict(config.query)
    if since is not None:
        params["StartDate"] = since.date().isoformat()
    for page in range(limit):
        document = source.get({**params, "pagesize": str(config.page_size), "page": str(page)})
        rows, total = _ucdp_rows(document)
        yield document
        if not rows or page >= total - 1:
            return
    raise PollFailed(f"more than {limit} pages: narrow the feed's query or set its start")


def _since(config: FeedConfig, watermark: datetime | None) -> datetime | None:
    """The lower bound of a poll: the watermark (UCDP: a revision month before), or `start`."""
    if watermark is not None:
        return watermark - UCDP_REVISION if config.kind == "ucdp" else watermark
    if config.start is None:
        return None
    return datetime(config.start.year, config.start.month, config.start.day, tzinfo=UTC)


def _rows_of(kind: str, page: Mapping[str, Any]) -> list[Any]:
    rows = page.get("Result" if kind == "ucdp" else "data")
    return rows if isinstance(rows, list) else []


def row_time(kind: str, row: Any) -> datetime | None:
    """A row's watermark time: ACLED `timestamp`, `deleted_timestamp`, UCDP `date_start`."""
    if not isinstance(row, Mapping):
        return None
    try:
        if kind == "ucdp":
            value = normalise(row).get("date_start", "").strip()
            if not value:
                return None
            moment = datetime.fromisoformat(value.replace(" ", "T", 1))
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        column = "deleted_timestamp" if kind == "acled-deleted" else "timestamp"
        return unix_or_iso(normalise(row), column)
    except (RowError, ValueError, OverflowError):
        return None


class _Newest:
    """The newest source time among the rows that went by, ignoring times in the future."""

    def __init__(self, kind: str, limit: datetime) -> None:
        self.kind = kind
        self.limit = limit
        self.value: datetime | None = None

    def watch(self, pages: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for page in pages:
            for row in _rows_of(self.kind, page):
                moment = row_time(self.kind, row)
                if moment is not None and moment <= self.limit:
                    self.value = moment if self.value is None else max(self.value, moment)
            yield page


def _items(kind: Format, pages: Iterable[dict[str, Any]], now: datetime) -> Iterator[Item]:
    # Parsed as a file's rows are: a row that fails in any way is that row's rejection, so one
    # poison row cannot fail every poll of its feed.
    rows = ucdp.rows_from_pages(pages) if kind == "ucdp" else acled.rows_from_pages(pages)
    return importer.parse_rows(kind, rows, now)


@dataclass(frozen=True, slots=True)
class _Claim:
    lease_until: datetime  # also the claim's token: the state is written only while it holds
    watermark: datetime | None
    failures: int


def _ensure(session: Session, config: FeedConfig, now: datetime) -> None:
    table = FeedState.__table__
    assert isinstance(table, Table)
    insert_ignoring_conflicts(
        session,
        table,
        {"name": config.name, "kind": config.kind, "consecutive_failures": 0, "updated_at": now},
        ["name"],
    )


def _claim(
    factory: sessionmaker[Session],
    config: FeedConfig,
    now: datetime,
    lease: timedelta,
    force: bool,
) -> _Claim | Literal["busy", "not_due"]:
    """Take the feed for one poll, atomically: no other process holds it (and, unless forced,
    it is due and its circuit is not open)."""
    until = now + lease
    with factory.begin() as session:
        _ensure(session, config, now)
        conditions = [
            FeedState.name == config.name,
            or_(FeedState.lease_until.is_(None), FeedState.lease_until < now),
        ]
        if not force:
            conditions += [
                or_(FeedState.next_poll_at.is_(None), FeedState.next_poll_at <= now),
                or_(FeedState.circuit_open_until.is_(None), FeedState.circuit_open_until <= now),
            ]
        taken = session.execute(
            update(FeedState)
            .where(*conditions)
            .values(lease_until=until, last_attempt_at=now, updated_at=now)
            .returning(FeedState.name)
            .execution_options(synchronize_session=False)
        ).first()
        state = session.execute(select(FeedState).where(FeedState.name == config.name)).scalar_one()
        if taken is None:
            held = state.lease_until is not None and state.lease_until >= now
            return "busy" if held or force else "not_due"
        if state.kind != config.kind:
            # The feed was reconfigured as another kind: its watermark meant something else.
            state.kind = config.kind
            state.watermark = None
        return _Claim(until, state.watermark, state.consecutive_failures)


def _renew(factory: sessionmaker[Session], name: str, token: datetime, until: datetime) -> bool:
    with factory.begin() as session:
        result = session.execute(
            update(FeedState)
            .where(FeedState.name == name, FeedState.lease_until == token)
            .values(lease_until=until)
            .returning(FeedState.name)
            .execution_options(synchronize_session=False)
        )
        return result.first() is not None


def _record(
    factory: sessionmaker[Session], name: str, token: datetime, values: dict[str, Any]
) -> bool:
    """Write a poll's outcome and release the lease, unless another process took it over."""
    with factory.begin() as session:
        result = session.execute(
            update(FeedState)
            .where(FeedState.name == name, FeedState.lease_until == token)
            .values(lease_until=None, **values)
            .returning(FeedState.name)
            .execution_options(synchronize_session=False)
        )
        return result.first() is not None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a poll: succeeded or failed (recorded), busy (another process holds the
    feed), not_due, or lost (this process outlived its lease; nothing recorded)."""

    name: str
    status: Status
    error: str | None = None
    summary: dict[str, int] | None = None


def _counts(summary: importer.Summary) -> dict[str, int]:
    return {k: v for k, v in summary.as_dict().items() if isinstance(v, int)}


def poll(
    factory: sessionmaker[Session],
    config: FeedConfig,
    settings: FeedsSettings,
    clock: Clock,
    client: httpx.Client,
    *,
    force: bool = False,
    sleep: Sleep = time.sleep,
    rng: Random | None = None,
) -> Outcome:
    """Poll one feed if it is due and no other process polls it; `force` (an operator asking)
    polls it even when not due or while its circuit is open. Records the outcome."""
    started = clock()
    claim = _claim(factory, config, started, settings.feed_lease, force)
    if isinstance(claim, str):
        return Outcome(config.name, claim)
    token = claim.lease_until

    def renew() -> None:
        nonlocal token
        until = clock() + settings.feed_lease
        if not _renew(factory, config.name, token, until):
            raise _LeaseLost
        token = until

    jitter = rng or Random()  # noqa: S311 -- retry jitter, not a secret
    source = _Source(client, config, settings, clock, sleep, jitter, renew)
    secrets = [s.get_secret_value() for s in (config.key, config.token) if s is not None]
    secrets += [config.email] if config.email else []
    summary: importer.Summary | None = None
    newest: datetime | None = None
    error: str | None = None
    try:
        summary, newest = _fetch_and_import(factory, config, source, claim.watermark, started)
    except _LeaseLost:
        log.warning("feed %s: lease lost to another process; its poll is not recorded", config.name)
        return Outcome(config.name, "lost")
    except PollFailed as exc:
        error = scrub(str(exc), secrets)[:MAX_ERROR]
    except Exception as exc:
        # A bug or the database, not the source: recorded like a failure so it backs off.
        log.exception("feed %s: poll raised", config.name)
        error = f"internal error ({type(exc).__name__}); see the logs"
    now = clock()
    values: dict[str, Any] = {"updated_at": now}
    if summary is not None:
        verdict = after_success(now, config.interval)
        counts = _counts(summary)
        watermark = claim.watermark
        if newest is not None and (watermark is None or newest > watermark):
            watermark = newest
        values.update(last_success_at=now, watermark=watermark, last_summary=counts)
        log.info(
            "feed %s: polled %d page(s): %s", config.name, source.pages,
            ", ".join(f"{k} {v}" for k, v in counts.items() if v),
        )  # fmt: skip
    else:
        verdict = after_failure(
            claim.failures,
            now,
            config.interval,
            threshold=settings.feed_failure_threshold,
            circuit_open=settings.feed_circuit_open,
            max_backoff=settings.feed_max_backoff,
        )
        values.update(last_error_at=now, last_error=error)
        log.warning(
            "feed %s: poll failed (%d in a row%s): %s", config.name,
            verdict.consecutive_failures,
            ", circuit open" if verdict.circuit_open_until else "", error,
        )  # fmt: skip
    values.update(
        consecutive_failures=verdict.consecutive_failures,
        circuit_open_until=verdict.circuit_open_until,
        next_poll_at=verdict.next_poll_at,
    )
    if not _record(factory, config.name, token, values):
        log.warning("feed %s: lease lost to another process; outcome not recorded", config.name)
        return Outcome(config.name, "lost", error)
    if summary is None:
        return Outcome(config.name, "failed", error)
    return Outcome(config.name, "succeeded", None, _counts(summary))


def _fetch_and_import(
    factory: sessionmaker[Session],
    config: FeedConfig,
    source: _Source,
    watermark: datetime | None,
    now: datetime,
) -> tuple[importer.Summary, datetime | None]:
    since = _since(config, watermark)
    pages = _ucdp_pages(source, since) if config.kind == "ucdp" else _acled_pages(source, since)
    newest = _Newest(config.kind, now + FUTURE_TOLERANCE)
    watched = newest.watch(pages)
    # The first page is read before an import run starts: a poll that fails at once, or finds
    # nothing new (most polls), leaves no import run and holds rescoring off for no time.
    first = next(watched)
    if not _rows_of(config.kind, first):
        return importer.Summary(), None
    summary = importer.run(
        factory,
        _items(config.kind, chain([first], watched), now),
        fmt=config.kind,
        origin=f"feed:{config.name}",
        clock=source.clock,
    )
    return summary, newest.value


def poll_due(
    factory: sessionmaker[Session],
    settings: FeedsSettings,
    clock: Clock = utc_now,
    client: httpx.Client | None = None,
    *,
    sleep: Sleep = time.sleep,
) -> int:
    """Tick: poll every configured feed that is due, one after another; return how many were
    polled (succeeded or failed). Safe to run in several processes at once."""
    if not settings.feeds:
        return 0
    now = clock()
    with factory() as session:
        found = states(session, [f.name for f in settings.feeds])
    due = [f for f in settings.feeds if is_due(found.get(f.name), now)]
    if not due:
        return 0
    polled = 0
    with nullcontext(client) if client is not None else make_client(settings) as http:
        for config in due:
            try:
                outcome = poll(factory, config, settings, clock, http, sleep=sleep)
            except Exception:
                # The database, most likely: the other feeds are still polled.
                log.exception("feed %s: could not be polled", config.name)
                continue
            polled += outcome.status in ("succeeded", "failed")
    return polled


def add_jobs(
    scheduler: BaseScheduler,
    factory: sessionmaker[Session],
    settings: FeedsSettings,
    clock: Clock = utc_now,
    client: httpx.Client | None = None,
) -> None:
    """Register the polling tick on an APScheduler 3 scheduler, when any feed is configured.
    Without `client`, each tick makes (and closes) its own."""
    if not settings.feeds:
        return
    add_tick(
        scheduler,
        factory,
        "feeds_poll_due",
        settings.feed_poll_tick,
        poll_due,
        [factory, settings, clock, client],
    )


FEED_LAG = metrics.DatabaseGauge(
    "riskalert_feed_lag_seconds",
    "Time since an external incident feed was last polled successfully.",
    ("feed",),
)
FEED_FAILURES = metrics.DatabaseGauge(
    "riskalert_feed_consecutive_failures",
    "Failed polls of an external feed since its last success.",
    ("feed",),
)


@metrics.read_from_database(FEED_LAG, FEED_FAILURES)
def _gauges(session: Session, now: datetime) -> Iterator[metrics.Reading]:
    """How long since each polled feed last succeeded, and its failures since."""
    for name, success, failed, updated in session.execute(
        select(
            FeedState.name,
            FeedState.last_success_at,
            FeedState.consecutive_failures,
            FeedState.updated_at,
        )
    ):
        yield FEED_LAG, (name,), metrics.seconds_since(now, success or updated)
        yield FEED_FAILURES, (name,), failed
