"""Per-key request limits: a moving window per API key, and one per client address for
requests without a valid key (which bounds key guessing).

Counts are kept in each process's memory: with N API processes a key may make up to N times
the limit in all, so set the limit per process (docs/operations.md). Over the limit, a request
is answered 429 with `Retry-After` before it touches the database.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from services.core.problems import Problem


class Limiter:
    """Moving-window limits for one kind of caller; empty `spec` limits nothing."""

    def __init__(self, spec: str, what: str) -> None:
        self._items: list[RateLimitItem] = parse_many(spec) if spec.strip() else []
        self._what = what
        self._window = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, ident: str) -> None:
        """Count one request by `ident`, or raise a 429 problem saying when to come back."""
        for item in self._items:
            if not self._window.hit(item, ident):
                reset = self._window.get_window_stats(item, ident).reset_time
                wait = max(1, math.ceil(reset - time.time()))
                raise Problem(
                    429,
                    "rate-limited",
                    f"more than {item} {self._what}; retry in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
