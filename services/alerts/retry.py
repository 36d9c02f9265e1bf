"""Retry decisions for deliveries: the delay before the next attempt and the outcome of a status."""

from collections.abc import Sequence
from datetime import timedelta
from random import Random
from typing import Literal

from services.core.http import parse_retry_after

__all__ = ["parse_retry_after"]  # re-exported: the delivery code reads it from here

# What one delivery attempt came to, for webhooks and email alike: the one definition.
Outcome = Literal["delivered", "retry", "gone", "failed"]

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
