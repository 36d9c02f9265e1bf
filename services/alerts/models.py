"""Tables of the alerts service: endpoints, subscriptions and rules, alerts, and the outbox."""

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
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.core.db import Base, UTCDateTime


class Endpoint(Base):
    """Where a tenant's notifications go: a webhook URL or an email address."""

    __tablename__ = "endpoint"
    __table_args__ = (Index("ix_endpoint_tenant_id_kind", "tenant_id", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))  # webhook | email
    name: Mapped[str] = mapped_column(String(200))
    # The webhook URL, or the email address.
    address: Mapped[str] = mapped_column(String(2048))
    enabled: Mapped[bool] = mapped_column(Boolean)
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Start of the current run of failures (None after any success): five days of nothing but
    # failures disables the endpoint.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Opaque token of the one-click unsubscribe link (email only).
    unsubscribe_token: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Deliveries to it in flight at once across every worker; None: RISKALERT_ALERTS_ENDPOINT_SLOTS.
    max_in_flight: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EndpointSecret(Base):
    """A webhook signing secret; after a rotation the old one signs on until `expires_at`."""

    __tablename__ = "endpoint_secret"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("endpoint.id", ondelete="CASCADE"), index=True
    )
    # Kept in clear: the sender needs it to sign (as every Standard Webhooks sender does).
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Subscription(Base):
    """Which of a tenant's targets are watched, through which endpoints, under which rules."""

    __tablename__ = "subscription"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # target: one target; tag: the tenant's targets carrying `tag`; all: every target.
    scope: Mapped[str] = mapped_column(String(8))
    target_id: Mapped[int | None] = mapped_column(ForeignKey("target.id", ondelete="CASCADE"))
    tag: Mapped[str | None] = mapped_column(String(64))
    endpoint_ids: Mapped[list[int]] = mapped_column(JSON)
    # Bands whose notifications wait for the daily digest instead of going out at once.
    digest_bands: Mapped[list[str]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Rule(Base):
    """One rule of a subscription: a score/band threshold or an event trigger."""

    __tablename__ = "rule"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("subscription.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[int] = mapped_column(Integer, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # threshold | event
    # The validated rule body (see schemas.ThresholdRuleIn / EventRuleIn).
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean)
    # False until the rule has been evaluated against its targets' current scores (new or
    # changed rules), so a rule created above an existing score fires without waiting for a move.
    seeded: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Alert(Base):
    """The state of one rule for one target (and, for event rules, one incident)."""

    __tablename__ = "alert"
    __table_args__ = (
        UniqueConstraint("rule_id", "target_id", "incident_id"),
        Index("ix_alert_tenant_id_state", "tenant_id", "state"),
        Index("ix_alert_next_check_at", "next_check_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(Integer)
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("subscription.id", ondelete="CASCADE"), index=True
    )
    rule_id: Mapped[int] = mapped_column(ForeignKey("rule.id", ondelete="CASCADE"))
    target_id: Mapped[int] = mapped_column(ForeignKey("target.id", ondelete="CASCADE"))
    # 0 for threshold rules (one alert per rule and target); the incident for event rules.
    incident_id: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(12))
    since: Mapped[datetime] = mapped_column(UTCDateTime())
    condition_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cleared_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    score: Mapped[float | None] = mapped_column(Float)
    band: Mapped[str | None] = mapped_column(String(12))
    transitions: Mapped[list[str]] = mapped_column(JSON)
    last_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_notified_band: Mapped[str | None] = mapped_column(String(12))
    last_notified_state: Mapped[str | None] = mapped_column(String(12))
    # Grows with every notification of this alert, so receivers can drop stale states.
    sequence: Mapped[int] = mapped_column(Integer)
    # When a timer (pending, keep-firing, repeat, cooldown, flapping, snooze) may change the
    # outcome without a new score; the re-evaluation tick looks at due alerts only.
    next_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acknowledged_by: Mapped[int | None] = mapped_column(Integer)
    snoozed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set when snoozed "until the band rises": notifications resume above this band.
    snoozed_band: Mapped[str | None] = mapped_column(String(12))
    # The last score-change entry (feed id) and its details, for the payload's "why".
    change: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class AlertEvent(Base):
    """One step in an alert's history: a state change or a notification."""

    __tablename__ = "alert_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alert.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    from_state: Mapped[str] = mapped_column(String(12))
    to_state: Mapped[str] = mapped_column(String(12))
    score: Mapped[float | None] = mapped_column(Float)
    band: Mapped[str | None] = mapped_column(String(12))
    notified: Mapped[str] = mapped_column(String(12))  # the decision kind, "none" if silent
    reason: Mapped[str] = mapped_column(String(300))


class Delivery(Base):
    """One notification to one endpoint (the outbox row), retried until settled."""

    __tablename__ = "delivery"
    __table_args__ = (
        # Due deliveries in the order they are claimed: urgent first, then oldest first.
        Index(
            "ix_delivery_status_priority_next_attempt_at", "status", "priority", "next_attempt_at"
        ),
        Index("ix_delivery_tenant_id_status", "tenant_id", "status"),
        Index("ix_delivery_alert_id_endpoint_id", "alert_id", "endpoint_id"),
        # What is in flight to an endpoint (claiming counts it), and its foreign key.
        Index("ix_delivery_endpoint_id_status", "endpoint_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(Integer)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoint.id", ondelete="CASCADE"))
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alert.id", ondelete="SET NULL"))
    # What it is: alert.firing, alert.resolved, ..., endpoint.test, digest.daily, ...
    event_type: Mapped[str] = mapped_column(String(32))
    # The Standard Webhooks id (also the email Message-ID): fixed across retries and replays.
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    # Makes a notification enqueued twice (a tick run by two processes) a constraint error.
    dedupe_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    sequence: Mapped[int] = mapped_column(Integer)
    # Claimed in this order: 0 event alerts (a kidnapping nearby), 1 threshold notices and other
    # news, 2 digests (outbox.priority_of). The server default lets an older release's
    # processes insert during a rolling upgrade.
    priority: Mapped[int] = mapped_column(SmallInteger, server_default="1")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # pending -> sending -> succeeded | failed | cancelled | superseded (or back to pending).
    status: Mapped[str] = mapped_column(String(12))
    attempts: Mapped[int] = mapped_column(Integer)
    # `attempts` when the retry schedule last (re)started: a replay starts it afresh.
    schedule_offset: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(300))
    # The X-Request-ID of the request that caused it (an incident's ingest, a replay, a test).
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DeliveryAttempt(Base):
    """One try of a delivery: what happened, how long it took, what the receiver said."""

    __tablename__ = "delivery_attempt"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("delivery.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration_ms: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(12))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error_class: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(String(500))
    response_body: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str] = mapped_column(String(64))


class DigestItem(Base):
    """A notification held for an endpoint's daily digest."""

    __tablename__ = "digest_item"
    __table_args__ = (
        Index("ix_digest_item_endpoint_id_delivery_id", "endpoint_id", "delivery_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(Integer)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoint.id", ondelete="CASCADE"))
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alert.id", ondelete="SET NULL"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The digest delivery that carried it; None while waiting.
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("delivery.id", ondelete="SET NULL"))
