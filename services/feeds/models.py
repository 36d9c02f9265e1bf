"""Tables of the feeds: where polling of each configured feed stands."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from services.core.db import Base, UTCDateTime


class FeedState(Base):
    """Where polling of one configured feed stands; it survives restarts."""

    __tablename__ = "feed_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # The newest source edit time seen (ACLED `timestamp`, UCDP `date_start`): the next poll
    # asks for rows from there on.
    watermark: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    consecutive_failures: Mapped[int] = mapped_column(Integer)
    # While set and in the future, the circuit is open: the feed is not polled.
    circuit_open_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Set while one process polls the feed: no other polls it until this passes.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
