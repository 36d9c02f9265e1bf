"""A process-wide count of foreground work: requests served and deliveries claimed.

Background catch-up work (a rescoring backlog) compares it before and after a batch to tell
whether it shares the process with work someone is waiting for, and yields if so. A hint only:
increments are not locked, and a lost one changes nothing that matters.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

_seen = [0]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def touch() -> None:
    """Note that foreground work happened now."""
    _seen[0] += 1


def mark() -> int:
    """The count so far: compare two marks to learn whether anything happened in between."""
    return _seen[0]


class Touch:
    """ASGI middleware: every HTTP request counts as foreground work."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            touch()
        await self.app(scope, receive, send)
