"""Waking workers the moment new work commits: NOTIFY across processes, events within one.

Polling stays the fallback; a wake-up is only ever a hint that there may be work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

import psycopg
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from services.core.logs import FailureStreak

log = logging.getLogger(__name__)


class Wakeable(Protocol):
    """Anything that can be woken: a threading.Event, or a bridge into an event loop."""

    def set(self) -> None: ...


_lock = threading.Lock()
_local: dict[str, list[Wakeable]] = {}


def subscribe(channel: str, wake: Wakeable) -> None:
    """Set `wake` whenever a unit of work in this process that announced `channel` commits."""
    with _lock:
        _local.setdefault(channel, []).append(wake)


def unsubscribe(channel: str, wake: Wakeable) -> None:
    """Stop setting `wake` for `channel`."""
    with _lock:
        waiting = _local.get(channel, [])
        if wake in waiting:
            waiting.remove(wake)


def ring(channel: str) -> None:
    """Set every event subscribed to `channel` in this process."""
    with _lock:
        waiting = list(_local.get(channel, ()))
    for wake in waiting:
        wake.set()


def announce(session: Session, channel: str) -> None:
    """Wake `channel`'s workers when (and only if) this unit of work commits."""
    announced: set[str] = session.info.setdefault("announced", set())
    if channel in announced:
        return
    announced.add(channel)
    if session.get_bind().dialect.name == "postgresql":
        # Transactional: delivered to listeners only if and when this unit of work commits.
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})

    def _committed(_session: Session) -> None:
        ring(channel)

    def _ended(_session: Session, *_: object) -> None:
        announced.discard(channel)

    event.listen(session, "after_commit", _committed, once=True)
    event.listen(session, "after_soft_rollback", _ended, once=True)
    event.listen(session, "after_commit", _ended, once=True)


class Listener:
    """A thread that LISTENs on PostgreSQL channels and rings them in this process."""

    def __init__(self, database_url: str, channels: Sequence[str], retry_s: float = 1.0) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._channels = list(channels)
        self._retry_s = retry_s
        self._stop = threading.Event()
        self.listening = threading.Event()
        # Connections that have listened so far: notifications sent between two of them were
        # missed, which a cache keyed by this count notices.
        self.connections = 0
        self._thread = threading.Thread(target=self._run, name="wake-listener", daemon=True)

    def start(self) -> None:
        """Start listening."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop within about a tenth of a second."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        streak = FailureStreak(log, "the wake listener (polling covers the gap)")
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=10) as conn:
                    for channel in self._channels:
                        conn.execute(f"LISTEN {channel}")
                    self.connections += 1
                    self.listening.set()
                    streak.succeeded()
                    while not self._stop.is_set():
                        # Short waits, so a stop request is noticed at once (an app that
                        # stops waits for it: every test app on PostgreSQL does).
                        for note in conn.notifies(timeout=0.1, stop_after=1):
                            ring(note.channel)
            except Exception:
                # Whatever broke it, keep listening: polling covers the gap meanwhile.
                self.listening.clear()
                streak.failed()
                self._stop.wait(self._retry_s)
