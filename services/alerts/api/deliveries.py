"""Delivery routes: the outbox by status with every attempt, replay one, recover all failed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from services.alerts import outbox
from services.alerts.api.deps import (
    AlertsConfig,
    ReadableDelivery,
    Reader,
    WritableDelivery,
    Writer,
    tenant_of,
)
from services.alerts.models import Delivery, DeliveryAttempt, Endpoint
from services.alerts.schemas import (
    AttemptOut,
    DeliveryDetail,
    DeliveryOut,
    DeliveryPage,
    DeliveryStatus,
    Recovered,
    RecoverIn,
    Timestamp,
    invalid_body,
)
from services.core import audit
from services.core.api import Cursor, Limit, Now, ReadSession, WriteSession, next_cursor
from services.core.ids import RowId
from services.core.problems import Problem, problem_responses

router = APIRouter(prefix="/v1/deliveries", tags=["deliveries"])


def delivery_out(row: Delivery) -> DeliveryOut:
    """A delivery as served."""
    return DeliveryOut(
        id=row.id,
        endpoint_id=row.endpoint_id,
        alert_id=row.alert_id,
        event_type=row.event_type,
        message_id=row.message_id,
        sequence=row.sequence,
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        settled_at=row.settled_at,
    )


def _attempt_out(row: DeliveryAttempt) -> AttemptOut:
    return AttemptOut(
        number=row.number,
        started_at=row.started_at,
        duration_ms=row.duration_ms,
        outcome=row.outcome,
        status_code=row.status_code,
        error_class=row.error_class,
        error=row.error,
        response_body=row.response_body,
    )


def _page(
    session: ReadSession,
    tenant_id: int,
    *,
    status: DeliveryStatus | None,
    endpoint_id: int | None,
    alert_id: int | None,
    since: datetime | None,
    after: int,
    limit: int,
) -> Sequence[Delivery]:
    query = select(Delivery).where(Delivery.tenant_id == tenant_id, Delivery.id > after)
    if status is not None:
        query = query.where(Delivery.status == status.value)
    if endpoint_id is not None:
        query = query.where(Delivery.endpoint_id == endpoint_id)
    if alert_id is not None:
        query = query.where(Delivery.alert_id == alert_id)
    if since is not None:
        query = query.where(Delivery.created_at >= since)
    return session.execute(query.order_by(Delivery.id).limit(limit)).scalars().all()


@router.get("", summary="List deliveries, oldest first, by status, endpoint, alert or time")
def list_deliveries(
    principal: Reader,
    session: ReadSession,
    limit: Limit,
    after: Cursor = 0,
    status: DeliveryStatus | None = None,
    endpoint_id: Annotated[RowId | None, Query()] = None,
    alert_id: Annotated[RowId | None, Query()] = None,
    since: Annotated[Timestamp | None, Query(description="Created at or after.")] = None,
) -> DeliveryPage:
    """A page of the tenant's deliveries by id (the order they were queued)."""
    rows = _page(
        session,
        tenant_of(principal),
        status=status,
        endpoint_id=endpoint_id,
        alert_id=alert_id,
        since=since,
        after=after,
        limit=limit,
    )
    return DeliveryPage(
        deliveries=[delivery_out(r) for r in rows],
        next_cursor=next_cursor(rows, limit),
    )


@router.post(
    "/recover",
    status_code=202,
    responses=problem_responses(400),
    summary="Replay every failed delivery since a time",
)
def recover_deliveries(
    data: RecoverIn,
    principal: Writer,
    session: WriteSession,
    settings: AlertsConfig,
    now: Now,
) -> Recovered:
    """Queue again every failed delivery created since `since` to a still-enabled endpoint."""
    if data.since < now - settings.replay_window:
        raise invalid_body(
            [(("since",), f"older than the replay window ({settings.replay_window})")]
        )
    replayed = outbox.recover(session, tenant_of(principal), data.since, now)
    audit.record(
        session,
        principal,
        action="delivery.recover",
        resource="delivery",
        before=None,
        after={"since": data.since.isoformat(), "replayed": replayed},
        now=now,
    )
    return Recovered(replayed=replayed)


@router.get(
    "/{delivery_id}",
    responses=problem_responses(404),
    summary="A delivery with its body and every attempt",
)
def get_delivery(delivery: ReadableDelivery, session: ReadSession) -> DeliveryDetail:
    """The delivery, what it carries, and each attempt (status, error, duration, response)."""
    attempts = session.execute(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.delivery_id == delivery.id)
        .order_by(DeliveryAttempt.number, DeliveryAttempt.id)
    ).scalars()
    return DeliveryDetail(
        **delivery_out(delivery).model_dump(),
        payload=delivery.payload,
        attempt_log=[_attempt_out(a) for a in attempts],
    )


@router.post(
    "/{delivery_id}/replay",
    status_code=202,
    responses=problem_responses(404),
    summary="Send a delivery again, with the same webhook-id",
)
def replay_delivery(
    delivery: WritableDelivery, principal: Writer, session: WriteSession, now: Now
) -> DeliveryOut:
    """Queue the delivery again now, on a fresh retry schedule; 409 while it is being sent."""
    if delivery.status == outbox.SENDING:
        raise Problem(409, "delivery-in-flight", "the delivery is being sent; replay it after")
    endpoint = session.get(Endpoint, delivery.endpoint_id)
    if endpoint is None or not endpoint.enabled:
        raise Problem(409, "endpoint-disabled", "the endpoint is disabled; enable it first")
    before = delivery.status
    outbox.replay(session, delivery, now)
    audit.record(
        session,
        principal,
        action="delivery.replay",
        resource=f"delivery/{delivery.id}",
        before={"status": before},
        after={"status": delivery.status},
        now=now,
    )
    return delivery_out(delivery)
