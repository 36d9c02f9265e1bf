"""Alert routes: list and filter, read with history, acknowledge, snooze."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from services.alerts.api.deps import ReadableAlert, Reader, WritableAlert, Writer, tenant_of
from services.alerts.models import Alert, AlertEvent
from services.alerts.schemas import (
    ACKNOWLEDGEABLE,
    MAX_ALERT_EVENTS,
    MAX_SNOOZE,
    AlertDetail,
    AlertEventOut,
    AlertOut,
    AlertPage,
    AlertStateName,
    SnoozeIn,
    Timestamp,
    invalid_body,
)
from services.core import audit
from services.core.api import Cursor, Limit, Now, ReadSession, WriteSession, next_cursor
from services.core.ids import RowId
from services.core.problems import Problem, problem_responses
from services.scoring.taxonomy import Band

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])


def _alert_out(row: Alert) -> AlertOut:
    return AlertOut(
        id=row.id,
        subscription_id=row.subscription_id,
        rule_id=row.rule_id,
        target_id=row.target_id,
        incident_id=row.incident_id or None,
        state=AlertStateName(row.state),
        since=row.since,
        score=row.score,
        band=Band(row.band) if row.band else None,
        sequence=row.sequence,
        last_notified_at=row.last_notified_at,
        acknowledged_at=row.acknowledged_at,
        acknowledged_by=row.acknowledged_by,
        snoozed_until=row.snoozed_until,
        snoozed_band=Band(row.snoozed_band) if row.snoozed_band else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _marks(row: Alert) -> dict[str, Any]:
    """The fields people set on an alert, for the audit log."""
    return {
        "acknowledged_at": row.acknowledged_at.isoformat() if row.acknowledged_at else None,
        "acknowledged_by": row.acknowledged_by,
        "snoozed_until": row.snoozed_until.isoformat() if row.snoozed_until else None,
        "snoozed_band": row.snoozed_band,
    }


def _page(
    session: ReadSession,
    tenant_id: int,
    *,
    target_id: int | None,
    subscription_id: int | None,
    state: AlertStateName | None,
    since: datetime | None,
    until: datetime | None,
    after: int,
    limit: int,
) -> Sequence[Alert]:
    query = select(Alert).where(Alert.tenant_id == tenant_id, Alert.id > after)
    if target_id is not None:
        query = query.where(Alert.target_id == target_id)
    if subscription_id is not None:
        query = query.where(Alert.subscription_id == subscription_id)
    if state is not None:
        query = query.where(Alert.state == state.value)
    if since is not None:
        query = query.where(Alert.updated_at >= since)
    if until is not None:
        query = query.where(Alert.updated_at <= until)
    return session.execute(query.order_by(Alert.id).limit(limit)).scalars().all()


@router.get("", summary="List alerts by target, subscription, state or time")
def list_alerts(
    principal: Reader,
    session: ReadSession,
    limit: Limit,
    after: Cursor = 0,
    target_id: Annotated[RowId | None, Query()] = None,
    subscription_id: Annotated[RowId | None, Query()] = None,
    state: AlertStateName | None = None,
    since: Annotated[Timestamp | None, Query(description="Changed at or after.")] = None,
    until: Annotated[Timestamp | None, Query(description="Changed at or before.")] = None,
) -> AlertPage:
    """A page of the tenant's alerts by id; `since` and `until` bound their last change."""
    rows = _page(
        session,
        tenant_of(principal),
        target_id=target_id,
        subscription_id=subscription_id,
        state=state,
        since=since,
        until=until,
        after=after,
        limit=limit,
    )
    return AlertPage(
        alerts=[_alert_out(r) for r in rows],
        next_cursor=next_cursor(rows, limit),
    )


@router.get(
    "/{alert_id}", responses=problem_responses(404), summary="An alert with its recent history"
)
def get_alert(alert: ReadableAlert, session: ReadSession) -> AlertDetail:
    """The alert, the score change behind it and its last 100 events, newest first."""
    events = session.execute(
        select(AlertEvent)
        .where(AlertEvent.alert_id == alert.id)
        .order_by(AlertEvent.id.desc())
        .limit(MAX_ALERT_EVENTS)
    ).scalars()
    return AlertDetail(
        **_alert_out(alert).model_dump(),
        change=alert.change,
        events=[
            AlertEventOut(
                id=e.id,
                at=e.at,
                from_state=e.from_state,
                to_state=e.to_state,
                score=e.score,
                band=e.band,
                notified=e.notified,
                reason=e.reason,
            )
            for e in events
        ],
    )


@router.post(
    "/{alert_id}/acknowledge",
    responses=problem_responses(404),
    summary="Acknowledge a firing alert",
)
def acknowledge_alert(
    alert: WritableAlert, principal: Writer, session: WriteSession, now: Now
) -> AlertOut:
    """Mark the alert as seen: repeats stop until it clears; 409 unless it is active."""
    if AlertStateName(alert.state) not in ACKNOWLEDGEABLE:
        raise Problem(409, "alert-not-active", f"an alert in state {alert.state} is not active")
    before = _marks(alert)
    alert.acknowledged_at, alert.acknowledged_by = now, principal.key_id
    _changed(session, principal, alert, "alert.acknowledge", before, now)
    return _alert_out(alert)


@router.post(
    "/{alert_id}/snooze",
    responses=problem_responses(400, 404),
    summary="Snooze an alert until a time or until its band rises",
)
def snooze_alert(
    data: SnoozeIn, alert: WritableAlert, principal: Writer, session: WriteSession, now: Now
) -> AlertOut:
    """Hold the alert's notifications; it keeps changing state meanwhile."""
    before = _marks(alert)
    if data.until is not None:
        if not now < data.until <= now + MAX_SNOOZE:
            raise invalid_body([(("until",), "must lie in the next 30 days")])
        alert.snoozed_until, alert.snoozed_band = data.until, None
    else:
        if alert.band is None:
            raise Problem(409, "alert-without-band", "this alert has no band to rise above")
        alert.snoozed_until, alert.snoozed_band = None, alert.band
    _changed(session, principal, alert, "alert.snooze", before, now)
    return _alert_out(alert)


@router.delete(
    "/{alert_id}/snooze", responses=problem_responses(404), summary="End an alert's snooze"
)
def unsnooze_alert(
    alert: WritableAlert, principal: Writer, session: WriteSession, now: Now
) -> AlertOut:
    """Let the alert's notifications through again."""
    before = _marks(alert)
    alert.snoozed_until = alert.snoozed_band = None
    if alert.incident_id == 0:
        # A notification held back by the snooze goes out at the next re-evaluation tick.
        alert.next_check_at = now
    _changed(session, principal, alert, "alert.unsnooze", before, now)
    return _alert_out(alert)


def _changed(
    session: WriteSession,
    principal: Writer,
    alert: Alert,
    action: str,
    before: dict[str, Any],
    now: datetime,
) -> None:
    """Stamp a change made through the API and record it in the audit log."""
    alert.updated_at = now
    session.flush()
    audit.record(
        session,
        principal,
        action=action,
        resource=f"alert/{alert.id}",
        before=before,
        after=_marks(alert),
        now=now,
    )
