"""Feed cursors: one consumer at a time advances each, in the unit of work that uses the entries.

A consumer locks its cursor row, reads entries after it, acts on them and moves the cursor, all
in one transaction: a crash before commit leaves the entries unread, so they are read again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core.models import FeedCursor


def lock(session: Session, name: str, now: datetime) -> FeedCursor | None:
    """The cursor, locked for this unit of work; None while another process holds it.

    On PostgreSQL `SKIP LOCKED` lets a second consumer move on at once instead of waiting;
    SQLite has one writer, so there is nobody to skip. A cursor never stored starts at 0.
    """
    cursor = session.execute(
        select(FeedCursor).where(FeedCursor.name == name).with_for_update(skip_locked=True)
    ).scalar_one_or_none()
    if cursor is None and session.get(FeedCursor, name) is None:
        cursor = FeedCursor(name=name, position=0, updated_at=now)
        session.add(cursor)
        session.flush()
    return cursor


def position(session: Session, name: str) -> int:
    """Where a consumer's cursor stands (0 before it first moved); read without a lock."""
    found = session.execute(
        select(FeedCursor.position).where(FeedCursor.name == name)
    ).scalar_one_or_none()
    return found or 0
