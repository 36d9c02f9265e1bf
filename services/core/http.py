"""HTTP details shared by the services' clients (webhook delivery, feed polling)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime


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
