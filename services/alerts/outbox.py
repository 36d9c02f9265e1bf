"""The delivery outbox: enqueue in the deciding transaction, claim with leases, settle by token."""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from random import Random
from typing import Any

from sqlalchemy import and_, exists, insert, select, update
from sqlalchemy.orm import Session, aliased

from services.alerts import notify, retry
from services.alerts.models import Delivery, DeliveryAttempt, DigestItem, Endpoint, EndpointSecret
from services.alerts.settings import AlertsSettings
from services.alerts.webhooks import AttemptResult
from services.core import wake

# Rung (NOTIFY on Postgres, an event in-process) when a unit of work that enqueued commits.
DELIVERY_CHANNEL = "riskalert_delivery"

PENDING, SENDING = "pending", "sending"
SUCCEEDED, FAILED, CANCELLED, SUPERSEDED = "succeeded", "failed", "cancelled", "superseded"
SETTLED = (SUCCEEDED, FAILED, CANCELLED, SUPERSEDED)
STATUSES = (PENDING, SENDING, *SETTLED)

_ALPHABET = string.ascii_letters + string.digits


def new_message_id() -> str:
    """A fresh Standard Webhooks message id (`msg_` and 24 random characters)."""
    return "msg_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def enqueue(
    session: Session,
    *,
    tenant_id: int,
    endpoints: Sequence[Endpoint],
    alert_id: int | None,
    event_type: str,
    sequence: int,
    payload: Mapping[str, Any],
    now: datetime,
    dedupe: str | None = None,
) -> list[Delivery]:
    """Add one delivery per enabled endpoint; older unsent states of the same alert are superseded.

    `dedupe` (with the endpoint id appended) makes enqueuing the same notification twice a
    constraint error, for ticks that several processes may run.
    """
    rows: list[Delivery] = []
    for endpoint in endpoints:
        if not endpoint.enabled:
            continue
        if alert_id is not None:
            # The receiver wants the newest state; an older one not yet sent would only arrive
            # after it or be dropped by `sequence`, so it is not sent at all.
            session.execute(
                update(Delivery)
                .where(
                    Delivery.alert_id == alert_id,
                    Delivery.endpoint_id == endpoint.id,
                    Delivery.status == PENDING,
                )
                .values(status=SUPERSEDED, settled_at=now, updated_at=now)
            )
        rows.append(
            Delivery(
                tenant_id=tenant_id,
                endpoint_id=endpoint.id,
                alert_id=alert_id,
                event_type=event_type,
                message_id=new_message_id(),
                dedupe_key=f"{dedupe}:e{endpoint.id}" if dedupe else None,
                sequence=sequence,
                payload=dict(payload),
                status=PENDING,
                attempts=0,
                schedule_offset=0,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        )
    if rows:
        session.add_all(rows)
        session.flush()
        wake.announce(session, DELIVERY_CHANNEL)
    return rows


def hold_for_digest(
    session: Session,
    *,
    tenant_id: int,
    endpoints: Sequence[Endpoint],
    alert_id: int | None,
    payload: Mapping[str, Any],
    now: datetime,
) -> None:
    """Keep a notification for each endpoint's next daily digest."""
    session.add_all(
        DigestItem(
            tenant_id=tenant_id,
            endpoint_id=e.id,
            alert_id=alert_id,
            payload=dict(payload),
            created_at=now,
        )
        for e in endpoints
        if e.enabled
    )
    session.flush()


@dataclass(frozen=True)
class Claimed:
    """A leased delivery and everything needed to attempt it without the database."""

    id: int
    token: str
    attempt: int
    endpoint_id: int
    kind: str
    address: str
    secrets: tuple[str, ...]
    message_id: str
    event_type: str
    payload: dict[str, Any]
    unsubscribe_token: str | None


def claim(
    session: Session,
    *,
    owner: str,
    limit: int,
    now: datetime,
    lease: timedelta,
    busy: Mapping[int, int],
    slots: int,
) -> list[Claimed]:
    """Lease up to `limit` due deliveries, at most `slots` in flight per endpoint (given `busy`)."""
    if limit <= 0:
        return []
    older = aliased(Delivery)
    # An older state of the same alert still in flight to the same endpoint goes first, so the
    # receiver gets the newest state last.
    in_flight_before = exists().where(
        older.alert_id == Delivery.alert_id,
        older.endpoint_id == Delivery.endpoint_id,
        older.status == SENDING,
        older.id < Delivery.id,
    )
    # Candidates by id only (a cheap, index-driven read); the chosen rows are loaded after.
    query = (
        select(Delivery.id, Delivery.endpoint_id)
        .where(
            Delivery.status == PENDING,
            Delivery.next_attempt_at <= now,
            ~and_(Delivery.alert_id.is_not(None), in_flight_before),
        )
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .limit(limit * 4)
        .with_for_update(skip_locked=True)
    )
    counts = dict(busy)
    picked: list[int] = []
    for delivery_id, endpoint_id in session.execute(query).all():
        if counts.get(endpoint_id, 0) >= slots:
            continue
        counts[endpoint_id] = counts.get(endpoint_id, 0) + 1
        picked.append(delivery_id)
        if len(picked) >= limit:
            break
    if not picked:
        return []
    chosen = list(
        session.execute(select(Delivery).where(Delivery.id.in_(picked)).order_by(Delivery.id))
        .scalars()
        .all()
    )
    endpoint_ids = {d.endpoint_id for d in chosen}
    endpoints = {
        e.id: e
        for e in session.execute(select(Endpoint).where(Endpoint.id.in_(endpoint_ids))).scalars()
    }
    keys = active_secrets(session, endpoint_ids, now)
    out: list[Claimed] = []
    for row in chosen:
        endpoint = endpoints[row.endpoint_id]
        row.status = SENDING
        row.lease_owner = owner
        row.lease_token = secrets.token_hex(16)
        row.lease_expires_at = now + lease
        row.attempts += 1
        row.updated_at = now
        out.append(
            Claimed(
                id=row.id,
                token=row.lease_token,
                attempt=row.attempts,
                endpoint_id=endpoint.id,
                kind=endpoint.kind,
                address=endpoint.address,
                secrets=tuple(keys.get(endpoint.id, ())),
                message_id=row.message_id,
                event_type=row.event_type,
                payload=row.payload,
                unsubscribe_token=endpoint.unsubscribe_token,
            )
        )
    session.flush()
    return out


def active_secrets(session: Session, endpoint_ids: set[int], now: datetime) -> dict[int, list[str]]:
    """The secrets that sign now, per endpoint: the current one first, then any in grace."""
    rows = session.execute(
        select(EndpointSecret)
        .where(
            EndpointSecret.endpoint_id.in_(endpoint_ids),
            (EndpointSecret.expires_at.is_(None)) | (EndpointSecret.expires_at > now),
        )
        .order_by(EndpointSecret.endpoint_id, EndpointSecret.id.desc())
    ).scalars()
    out: dict[int, list[str]] = {}
    for row in rows:
        out.setdefault(row.endpoint_id, []).append(row.secret)
    return out


@dataclass(frozen=True)
class Settled:
    """What settling one attempt did, for the worker's log and its owner notices."""

    delivery_id: int
    status: str
    disabled_endpoint: int | None = None


@dataclass(frozen=True)
class Attempted:
    """One finished attempt of a claimed delivery, to be settled."""

    claimed: Claimed
    result: AttemptResult
    started_at: datetime


def settle(
    session: Session,
    attempts: Sequence[Attempted],
    *,
    now: datetime,
    owner: str,
    settings: AlertsSettings,
    rng: Random,
) -> list[Settled]:
    """Record attempts and move their deliveries on where this worker still holds the lease.

    A few statements for the whole batch: the attempts are inserted together, the deliveries
    and their endpoints are locked and read in one query each.
    """
    if not attempts:
        return []
    session.execute(
        insert(DeliveryAttempt),
        [
            {
                "delivery_id": a.claimed.id,
                "number": a.claimed.attempt,
                "started_at": a.started_at,
                "duration_ms": a.result.duration_ms,
                "outcome": a.result.outcome,
                "status_code": a.result.status_code,
                "error_class": a.result.error_class,
                "error": (a.result.error or "")[:500] or None,
                "response_body": a.result.response_body,
                "worker": owner,
            }
            for a in attempts
        ],
    )
    rows = {
        d.id: d
        for d in session.execute(
            select(Delivery)
            .where(Delivery.id.in_([a.claimed.id for a in attempts]), Delivery.status == SENDING)
            .order_by(Delivery.id)
            .with_for_update()
        ).scalars()
    }
    held = [
        a
        for a in attempts
        if (row := rows.get(a.claimed.id)) and row.lease_token == a.claimed.token
    ]
    # Successes only touch their endpoints' health columns: one statement for all of them.
    healthy = sorted({a.claimed.endpoint_id for a in held if a.result.outcome == "delivered"})
    if healthy:
        session.execute(
            update(Endpoint)
            .where(Endpoint.id.in_(healthy))
            .values(failing_since=None, last_success_at=now)
        )
    failing = sorted({a.claimed.endpoint_id for a in held if a.result.outcome != "delivered"})
    endpoints = {
        e.id: e
        for e in session.execute(
            select(Endpoint).where(Endpoint.id.in_(failing)).order_by(Endpoint.id).with_for_update()
        ).scalars()
    } if failing else {}  # fmt: skip
    out: list[Settled] = []
    for a in attempts:
        row = rows.get(a.claimed.id)
        if row is None or row.lease_token != a.claimed.token:
            # The lease expired and the delivery was taken again (or cancelled): its new
            # holder decides; this attempt is only logged.
            out.append(Settled(a.claimed.id, "lease-lost"))
            continue
        out.append(
            _move_on(session, row, endpoints.get(row.endpoint_id), a.result, now, settings, rng)
        )
    session.flush()
    return out


def _move_on(
    session: Session,
    row: Delivery,
    endpoint: Endpoint | None,
    result: AttemptResult,
    now: datetime,
    settings: AlertsSettings,
    rng: Random,
) -> Settled:
    """The next status of a delivery after one attempt (its endpoint is locked on failure)."""
    row.lease_owner = row.lease_token = row.lease_expires_at = None
    row.updated_at = now
    row.last_error = (result.error or "")[:300] or None
    if result.outcome == "delivered":
        row.status, row.settled_at = SUCCEEDED, now
        return Settled(row.id, SUCCEEDED)
    assert endpoint is not None
    if result.outcome in ("gone", "failed"):
        row.status, row.settled_at = FAILED, now
        reason = (
            "the receiver answered 410 Gone"
            if result.outcome == "gone"
            else f"address refused permanently: {result.error}"
        )
        disable_endpoint(session, endpoint, reason, now)
        return Settled(row.id, FAILED, disabled_endpoint=endpoint.id)
    endpoint.failing_since = endpoint.failing_since or now
    if now - endpoint.failing_since >= settings.disable_after:
        row.status, row.settled_at = FAILED, now
        disable_endpoint(
            session, endpoint, f"only failures since {notify.iso(endpoint.failing_since)}", now
        )
        return Settled(row.id, FAILED, disabled_endpoint=endpoint.id)
    if row.alert_id is not None and _newer_exists(session, row):
        row.status, row.settled_at = SUPERSEDED, now
        return Settled(row.id, SUPERSEDED)
    delay = retry.next_attempt_delay(
        row.attempts - row.schedule_offset + 1,
        schedule=settings.retry_schedule,
        jitter=settings.retry_jitter,
        retry_after=result.retry_after,
        rng=rng,
        min_after_throttle=settings.throttle_floor if result.throttled else None,
    )
    if delay is None:
        row.status, row.settled_at = FAILED, now
        return Settled(row.id, FAILED)
    row.status, row.next_attempt_at = PENDING, now + delay
    return Settled(row.id, PENDING)


def _newer_exists(session: Session, row: Delivery) -> bool:
    """Whether a newer state of the same alert was enqueued for the same endpoint."""
    newer = session.execute(
        select(Delivery.id)
        .where(
            Delivery.alert_id == row.alert_id,
            Delivery.endpoint_id == row.endpoint_id,
            Delivery.id > row.id,
            Delivery.status != CANCELLED,
        )
        .limit(1)
    ).first()
    return newer is not None


def disable_endpoint(session: Session, endpoint: Endpoint, reason: str, now: datetime) -> None:
    """Disable an endpoint, cancel what waits for it, and tell the tenant's email recipients."""
    if not endpoint.enabled:
        return
    endpoint.enabled = False
    endpoint.disabled_reason = reason[:200]
    endpoint.disabled_at = now
    endpoint.updated_at = now
    session.execute(
        update(Delivery)
        .where(Delivery.endpoint_id == endpoint.id, Delivery.status == PENDING)
        .values(status=CANCELLED, settled_at=now, updated_at=now, last_error="endpoint disabled")
    )
    owners = (
        session.execute(
            select(Endpoint).where(
                Endpoint.tenant_id == endpoint.tenant_id,
                Endpoint.kind == "email",
                Endpoint.enabled,
                Endpoint.id != endpoint.id,
            )
        )
        .scalars()
        .all()
    )
    data = {
        "endpoint": {"id": endpoint.id, "name": endpoint.name, "address": endpoint.address},
        "reason": reason,
    }
    enqueue(
        session,
        tenant_id=endpoint.tenant_id,
        endpoints=owners,
        alert_id=None,
        event_type="endpoint.disabled",
        sequence=0,
        payload=notify.envelope("endpoint.disabled", data, now),
        now=now,
    )


def reap(session: Session, now: datetime, limit: int = 1000) -> int:
    """Hand deliveries whose lease expired (a dead or stuck worker) back to the queue."""
    rows = (
        session.execute(
            select(Delivery)
            .where(Delivery.status == SENDING, Delivery.lease_expires_at < now)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    for row in rows:
        session.add(
            DeliveryAttempt(
                delivery_id=row.id,
                number=row.attempts,
                started_at=row.lease_expires_at or now,
                duration_ms=0.0,
                outcome="lost",
                status_code=None,
                error_class="lease_expired",
                error=f"lease held by {row.lease_owner} expired; outcome unknown",
                response_body=None,
                worker="reaper",
            )
        )
        row.status = PENDING
        row.lease_owner = row.lease_token = row.lease_expires_at = None
        row.next_attempt_at = now
        row.updated_at = now
    session.flush()
    if rows:
        wake.announce(session, DELIVERY_CHANNEL)
    return len(rows)


def replay(session: Session, delivery: Delivery, now: datetime) -> None:
    """Send a delivery again (same message id, a fresh retry schedule), whatever its status."""
    if delivery.status == SENDING:
        return
    delivery.status = PENDING
    delivery.next_attempt_at = now
    delivery.settled_at = None
    delivery.schedule_offset = delivery.attempts
    delivery.updated_at = now
    session.flush()
    wake.announce(session, DELIVERY_CHANNEL)


def recover(session: Session, tenant_id: int, since: datetime, now: datetime) -> list[int]:
    """Replay every failed delivery of a tenant created since `since`; return their ids."""
    rows = (
        session.execute(
            select(Delivery).where(
                Delivery.tenant_id == tenant_id,
                Delivery.status == FAILED,
                Delivery.created_at >= since,
            )
        )
        .scalars()
        .all()
    )
    enabled = {
        e.id
        for e in session.execute(
            select(Endpoint).where(Endpoint.tenant_id == tenant_id, Endpoint.enabled)
        ).scalars()
    }
    ids: list[int] = []
    for row in rows:
        if row.endpoint_id in enabled:
            replay(session, row, now)
            ids.append(row.id)
    return ids
