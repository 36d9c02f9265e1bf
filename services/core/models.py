"""Tables of the platform: tenants, API keys, the audit log and idempotency records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.core.db import Base, UTCDateTime


class Tenant(Base):
    """A client firm; owns sites, corridors and everything derived from them."""

    __tablename__ = "tenant"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """An API key, stored as a SHA-256 hash; platform keys have no tenant."""

    __tablename__ = "api_key"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenant.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    roles: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditEntry(Base):
    """Who changed what, when, with the state before and after."""

    __tablename__ = "audit_entry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenant.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(200))
    before: Mapped[Any | None] = mapped_column(JSON)
    after: Mapped[Any | None] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class IdempotencyRecord(Base):
    """The stored response of a POST made with an `Idempotency-Key`, replayed on retry."""

    __tablename__ = "idempotency_record"
    __table_args__ = (UniqueConstraint("principal", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    principal: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class FeedCursor(Base):
    """How far one consumer has read one of the change feeds (`id > position` is unread)."""

    __tablename__ = "feed_cursor"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class TickRun(Base):
    """One run of a periodic tick: the key makes each slot run once however many processes
    schedule it."""

    __tablename__ = "tick_run"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The start of the slot: the tick's interval, counted from 2000-01-01 UTC.
    slot_at: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    process: Mapped[str] = mapped_column(String(120))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class DeadLetter(Base):
    """An item a shared pipeline could not process, set aside with its error so the rest of the
    pipeline went on; open until an operator resolves it."""

    __tablename__ = "dead_letter"
    __table_args__ = (Index("ix_dead_letter_resolved_at_pipeline", "resolved_at", "pipeline"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Which pipeline set it aside, e.g. alerts.score_change, scoring.rescore, alerts.dispatch.
    pipeline: Mapped[str] = mapped_column(String(64))
    # What it was, in words an operator can look up: "score_change 812, rule 7".
    item: Mapped[str] = mapped_column(String(200))
    # The tenant it concerns, when one does.
    tenant_id: Mapped[int | None] = mapped_column(Integer)
    error_class: Mapped[str] = mapped_column(String(120))
    error: Mapped[str] = mapped_column(String(1000))
    # The stack trace, for whoever fixes the cause (code and messages; never statement data).
    trace: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # The same item failing again while this is open counts here instead of a new letter.
    occurrences: Mapped[int] = mapped_column(Integer)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The API key that resolved it.
    resolved_by: Mapped[int | None] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(String(500))
