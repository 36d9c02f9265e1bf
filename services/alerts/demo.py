"""The demo firm's alert set-up: an email desk and one subscription watching every target, so
the dashboard's threshold page and previews have a rule to work on."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.alerts import endpoints, subscriptions
from services.alerts.models import Subscription
from services.alerts.schemas import (
    EndpointIn,
    EndpointKind,
    EventRuleIn,
    SubscriptionIn,
    SubscriptionScope,
    ThresholdRuleIn,
    Trigger,
)

DEMO_SUBSCRIPTION = "Demo security desk: every site and corridor"


def load(session: Session, tenant_id: int, now: datetime) -> None:
    """Add the demo endpoint and subscription to the demo tenant (idempotent)."""
    found = session.execute(
        select(Subscription.id).where(
            Subscription.tenant_id == tenant_id, Subscription.name == DEMO_SUBSCRIPTION
        )
    ).first()
    if found is not None:
        return
    # The demo configures no mail relay: an alert's email fails and waits on the deliveries
    # page, ready to be replayed once RISKALERT_SMTP_HOST points at one.
    desk = EndpointIn(
        kind=EndpointKind.EMAIL, name="Demo security desk", address="desk@example.com"
    )
    endpoint, _ = endpoints.create(session, tenant_id, desk, now)
    rules = [
        # A 30 % chance of violence nearby within 30 days (the high band's floor), held 6 hours.
        ThresholdRuleIn(raise_at=30, clear_at=20, pending=timedelta(hours=6)),
        EventRuleIn(trigger=Trigger.KIDNAPPING_NEARBY, radius_km=50),
    ]
    subscriptions.create(
        session,
        tenant_id,
        SubscriptionIn(
            name=DEMO_SUBSCRIPTION,
            scope=SubscriptionScope.ALL,
            endpoint_ids=[endpoint.id],
            rules=rules,
        ),
        now,
    )
