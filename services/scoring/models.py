"""Tables of the scoring service: incidents, targets, scores, the change feed and the model."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.core.db import Base, UTCDateTime


class Incident(Base):
    """An observed event (or threat, or statement); platform-wide intelligence."""

    __tablename__ = "incident"
    __table_args__ = (
        UniqueConstraint("source", "source_id"),
        Index("ix_incident_lat_lon", "lat", "lon"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    source_id: Mapped[str] = mapped_column(String(128))
    category: Mapped[str] = mapped_column(String(32), index=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    occurred_precision: Mapped[str] = mapped_column(String(8))
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    reported_at_estimated: Mapped[bool] = mapped_column(Boolean)
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    location_precision: Mapped[str] = mapped_column(String(8))
    scope_countries: Mapped[list[str]] = mapped_column(JSON)
    scope_admin1: Mapped[list[str]] = mapped_column(JSON)
    country: Mapped[str | None] = mapped_column(String(3), index=True)
    admin1: Mapped[str | None] = mapped_column(String(100))
    admin2: Mapped[str | None] = mapped_column(String(100))
    location_name: Mapped[str | None] = mapped_column(String(200))
    actors: Mapped[list[str]] = mapped_column(JSON)
    target_type: Mapped[str | None] = mapped_column(String(16))
    target_foreign_owned_only: Mapped[bool] = mapped_column(Boolean)
    target_sectors: Mapped[list[str]] = mapped_column(JSON)
    victim_expatriate: Mapped[bool] = mapped_column(Boolean)
    victim_nationality: Mapped[str | None] = mapped_column(String(64))
    victim_sector: Mapped[str | None] = mapped_column(String(16))
    fatalities_claimed: Mapped[int | None] = mapped_column(Integer)
    fatalities_low: Mapped[int | None] = mapped_column(Integer)
    fatalities_best: Mapped[int | None] = mapped_column(Integer)
    fatalities_high: Mapped[int | None] = mapped_column(Integer)
    source_reliability: Mapped[float] = mapped_column(Float)
    lifecycle: Mapped[str] = mapped_column(String(12))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(Integer)
    # Another source's report of the same event, which this one is merged into: only the
    # event's primary report (NULL here) counts in scores and alerts; this one keeps its figures.
    merged_into_id: Mapped[int | None] = mapped_column(
        ForeignKey("incident.id", ondelete="SET NULL"), index=True
    )
    # When the source last edited the report (ACLED `timestamp`): an older resend is ignored.
    source_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The source's own codes and figures as imported (event types, precision codes, low/high).
    source_fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    # A fingerprint of the source row as imported (and of the parser that read it): a
    # re-import of the same row is known unchanged without parsing it again.
    source_hash: Mapped[str | None] = mapped_column(String(32))
    # The X-Request-ID of the request that stored this revision (None from the CLI).
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Target(Base):
    """A tenant's site (point) or corridor (line), with the box it can be affected within."""

    __tablename__ = "target"
    __table_args__ = (
        Index("ix_target_tenant_id_kind", "tenant_id", "kind"),
        Index("ix_target_box", "box_min_lat", "box_max_lat"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    coordinates: Mapped[list[list[float]]] = mapped_column(JSON)
    radius_km: Mapped[float] = mapped_column(Float)
    mode: Mapped[str | None] = mapped_column(String(8))
    sector: Mapped[str | None] = mapped_column(String(16))
    foreign_owned: Mapped[bool] = mapped_column(Boolean)
    expat_staff: Mapped[bool] = mapped_column(Boolean)
    countries: Mapped[list[str]] = mapped_column(JSON)
    admin1: Mapped[list[str]] = mapped_column(JSON)
    tags: Mapped[list[str]] = mapped_column(JSON)
    # The geometry's bounding box widened by radius_km: an incident can only touch the target
    # when its own reach overlaps this box.
    box_min_lat: Mapped[float] = mapped_column(Float)
    box_max_lat: Mapped[float] = mapped_column(Float)
    box_min_lon: Mapped[float] = mapped_column(Float)
    box_max_lon: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CurrentScore(Base):
    """The latest score of a target, with its full explanation, served to readers as is."""

    __tablename__ = "current_score"

    target_id: Mapped[int] = mapped_column(
        ForeignKey("target.id", ondelete="CASCADE"), primary_key=True
    )
    model_version: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    band: Mapped[str] = mapped_column(String(12))
    as_of: Mapped[datetime] = mapped_column(UTCDateTime())
    document: Mapped[str] = mapped_column(Text)
    # The score and band of the target's last change-feed entry: moves are measured from
    # what consumers last saw, so a slow drift is reported once it adds up.
    fed_value: Mapped[float] = mapped_column(Float)
    fed_band: Mapped[str] = mapped_column(String(12))


class ScoreChange(Base):
    """One entry of the change feed: a target's score moved (the alerts service's input)."""

    __tablename__ = "score_change"
    __table_args__ = (
        Index("ix_score_change_tenant_id_id", "tenant_id", "id"),
        Index("ix_score_change_target_id_as_of", "target_id", "as_of"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(Integer)
    target_id: Mapped[int] = mapped_column(Integer)
    target_kind: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[int] = mapped_column(Integer)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime())
    previous_value: Mapped[float | None] = mapped_column(Float)
    value: Mapped[float] = mapped_column(Float)
    previous_band: Mapped[str | None] = mapped_column(String(12))
    band: Mapped[str] = mapped_column(String(12))
    components: Mapped[dict[str, float]] = mapped_column(JSON)
    top_incidents: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    cause: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RescoreMark(Base):
    """A target waiting to be rescored; one row per target however often it is marked."""

    __tablename__ = "rescore_mark"

    target_id: Mapped[int] = mapped_column(
        ForeignKey("target.id", ondelete="CASCADE"), primary_key=True
    )
    __table_args__ = (Index("ix_rescore_mark_priority_marked_at", "priority", "marked_at"),)

    cause: Mapped[str] = mapped_column(String(32))
    # 0 for work someone waits for (incidents, edits, a new model), 1 for the decay pass.
    priority: Mapped[int] = mapped_column(Integer)
    marked_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Bumped whenever the target is queued again, so a worker releases only what it computed.
    generation: Mapped[int] = mapped_column(Integer)
    # Set while a worker holds the target; past this time another worker may take it.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ModelVersion(Base):
    """A version of the model's parameters; exactly one is active."""

    __tablename__ = "model_version"
    __table_args__ = (
        Index(
            "uq_model_version_active", "active", unique=True,
            sqlite_where=text("active"), postgresql_where=text("active"),
        ),
    )  # fmt: skip

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    note: Mapped[str] = mapped_column(String(500))
    active: Mapped[bool] = mapped_column(Boolean)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The fit report of a fitted version (docs/scoring.md); None for hand-published ones.
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ModelFit(Base):
    """A fit of the model on the incident history, run as a job by a worker."""

    __tablename__ = "model_fit"
    __table_args__ = (Index("ix_model_fit_status", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # pending -> running -> done | failed; a running fit whose lease ran out is taken again.
    status: Mapped[str] = mapped_column(String(16))
    dry_run: Mapped[bool] = mapped_column(Boolean)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    requested_by: Mapped[str] = mapped_column(String(64))
    requested_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    # The version it published; None for a dry run, a failure, or a fit that did not beat the
    # active version.
    model_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(200), nullable=True)


class IncidentChange(Base):
    """One entry of the incident feed: an incident was created or revised (alerts' event input)."""

    __tablename__ = "incident_change"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(
        ForeignKey("incident.id", ondelete="CASCADE"), index=True
    )
    revision: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(12))  # created | updated
    # An update: the model's view of the revision it replaced (`incidents.snapshot`), so the
    # targets that version reached are rescored too.
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ImportRun(Base):
    """One import of a file or a feed poll; while one runs, rescoring holds off reading the
    incident feed, so a bulk import rescores each target once, at its end."""

    __tablename__ = "import_run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    format: Mapped[str] = mapped_column(String(16))
    origin: Mapped[str] = mapped_column(String(300))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Renewed as chunks commit; a run whose heartbeat is stale died and holds nothing back.
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
