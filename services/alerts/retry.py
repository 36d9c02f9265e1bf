"""Retry decisions for deliveries: the delay before the next attempt and the outcome of a status."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from random import Random
from typing import Literal

Outcome = Literal["delivered", "retry", "gone"]

DEFAULT_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(0),
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
DEFAULT_JITTER = 0.2
# Passed as `min_after_throttle` when the previous attempt timed out or got a 429.
THROTTLE_FLOOR = timedelta(seconds=60)


def next_attempt_delay(
    attempt: int,
    *,
    schedule: Sequence[timedelta],
    jitter: float,
    retry_after: timedelta | None,
    rng: Random,
    min_after_throttle: timedelta | None = None,
) -> timedelta | None:
    """Return how long to wait before attempt `attempt`, or None when the schedule is spent."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if attempt > len(schedule):
        return None
    # Drawn even when jitter is 0 so a seeded rng yields the same sequence whatever the jitter.
    delay = schedule[attempt - 1] * rng.uniform(1.0 - jitter, 1.0 + jitter)
    if retry_after is not None:
        # The receiver's wish counts only inside [delay, 2 x delay]: it can slow us down a
        # little but cannot make us hammer it nor park the delivery for days.
        delay = min(max(retry_after, delay), 2 * delay)
    if min_after_throttle is not None:
        # A throttled or timed-out receiver gets a breather even on the early, short steps.
        delay = max(delay, min_after_throttle)
    return delay


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """The wait a `Retry-After` header asks for (seconds or HTTP date), None when absent or bad."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if value is None:
        return None
    text = value.strip()
    # RFC 9110 delay-seconds is 1*DIGIT; isascii() keeps out Unicode digits like "²".
    if text.isascii() and text.isdigit():
        try:
            return timedelta(seconds=int(text))
        except (OverflowError, ValueError):
            # Absurdly large but well-formed (ValueError: past int's 4,300-digit parsing
            # limit): still "wait as long as you may".
            return timedelta.max
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # parsedate_to_datetime returns a naive value for "-0000"; HTTP dates are always GMT.
        when = when.replace(tzinfo=UTC)
    return max(when - now, timedelta(0))


def classify_status(status: int | None) -> Outcome:
    """The outcome of an attempt from its HTTP status; None means a network error or timeout."""
    if status is None:
        return "retry"
    if 200 <= status < 300:
        return "delivered"
    if status == 410:
        return "gone"
    # Everything else is retried within the bounded schedule (delivery.md: at least once until a
    # 2xx, the schedule is spent or the endpoint is disabled): a 401 or 404 is often a receiver
    # mid-deploy, and 3xx means a receiver moving, since redirects are never followed.
    return "retry"
