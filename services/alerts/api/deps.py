"""Typed dependencies of the alerts routes: callers, settings, and each resource loaded for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Path, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.alerts import endpoints, subscriptions
from services.alerts.models import Alert, Delivery, Endpoint, Rule, Subscription
from services.alerts.schemas import EndpointIn, EndpointKind, EndpointPatch, invalid_body
from services.alerts.settings import AlertsSettings
from services.core.api import Id, Now, ReadSession, WriteSession, settings_of
from services.core.auth import Principal, Role, require_tenant
from services.core.problems import not_found
from services.scoring import scores
from services.scoring.settings import ScoringSettings

Reader = Annotated[Principal, Depends(require_tenant(Role.ALERTS_READ, Role.ALERTS_WRITE))]
Writer = Annotated[Principal, Depends(require_tenant(Role.ALERTS_WRITE))]


AlertsConfig = Annotated[AlertsSettings, Depends(settings_of(AlertsSettings))]
# Previews replay scores: they are bounded as the scoring service's backtests are.
ScoringConfig = Annotated[ScoringSettings, Depends(settings_of(ScoringSettings))]


def _model(request: Request, now: Now) -> scores.ActiveModel:
    return scores.model_in_force(request.app.state.read_sessions, request.app.state.sessions, now)


# The model version in force, as the scoring service publishes it (previews score with it).
Model = Annotated[scores.ActiveModel, Depends(_model)]


def tenant_of(principal: Principal) -> int:
    """The caller's tenant (require_tenant admitted only tenant keys)."""
    assert principal.tenant_id is not None
    return principal.tenant_id


# Sync on purpose: resolving the host blocks, so FastAPI runs these in its thread pool. They are
# declared before any resource loader, so no transaction is open while the resolver waits.
def _screen_new(principal: Writer, data: EndpointIn, settings: AlertsConfig) -> EndpointIn:
    if data.url is not None:
        refusal = endpoints.screen(data.url, settings)
        if refusal is not None:
            raise invalid_body([(("url",), refusal)])
    return data


@dataclass(frozen=True, slots=True)
class ScreenedPatch:
    """An endpoint patch and, when it changes the URL, why the SSRF guard refuses it (or None)."""

    data: EndpointPatch
    refusal: str | None

    def check(self, endpoint: Endpoint) -> None:
        """Refuse the patch, naming the field: 409 when it does not fit `endpoint`'s kind (a
        valid patch for another endpoint), 422 when the SSRF guard refuses its URL."""
        errors = self.data.kind_errors(EndpointKind(endpoint.kind))
        if errors:
            raise invalid_body(errors, status=409, slug="endpoint-kind")
        if self.refusal is not None:
            raise invalid_body([(("url",), self.refusal)])


def _screen_patch(principal: Writer, data: EndpointPatch, settings: AlertsConfig) -> ScreenedPatch:
    # The refusal is raised by the route, after the endpoint is found: another tenant's id is a
    # 404 whatever the body says.
    refusal = None if data.url is None else endpoints.screen(data.url, settings)
    return ScreenedPatch(data, refusal)


ScreenedEndpointIn = Annotated[EndpointIn, Depends(_screen_new)]
ScreenedEndpointPatch = Annotated[ScreenedPatch, Depends(_screen_patch)]


def _endpoint(session: Session, principal: Principal, endpoint_id: int, lock: bool) -> Endpoint:
    found = endpoints.get(session, tenant_of(principal), endpoint_id, lock=lock)
    if found is None:
        raise not_found("endpoint")
    return found


def _read_endpoint(endpoint_id: Id, principal: Reader, session: ReadSession) -> Endpoint:
    return _endpoint(session, principal, endpoint_id, lock=False)


def _write_endpoint(endpoint_id: Id, principal: Writer, session: WriteSession) -> Endpoint:
    return _endpoint(session, principal, endpoint_id, lock=True)


ReadableEndpoint = Annotated[Endpoint, Depends(_read_endpoint)]
WritableEndpoint = Annotated[Endpoint, Depends(_write_endpoint)]


def _subscription(
    session: Session, principal: Principal, subscription_id: int, lock: bool
) -> Subscription:
    found = subscriptions.get(session, tenant_of(principal), subscription_id, lock=lock)
    if found is None:
        raise not_found("subscription")
    return found


def _read_subscription(
    subscription_id: Id, principal: Reader, session: ReadSession
) -> Subscription:
    return _subscription(session, principal, subscription_id, lock=False)


def _write_subscription(
    subscription_id: Id, principal: Writer, session: WriteSession
) -> Subscription:
    return _subscription(session, principal, subscription_id, lock=True)


ReadableSubscription = Annotated[Subscription, Depends(_read_subscription)]
WritableSubscription = Annotated[Subscription, Depends(_write_subscription)]


def _write_rule(rule_id: Id, subscription: WritableSubscription, session: WriteSession) -> Rule:
    found = subscriptions.get_rule(session, subscription, rule_id)
    if found is None:
        raise not_found("rule")
    return found


WritableRule = Annotated[Rule, Depends(_write_rule)]


Owned = TypeVar("Owned", Alert, Delivery)


def _owned(
    session: Session, kind: type[Owned], what: str, principal: Principal, row_id: int, lock: bool
) -> Owned:
    query = select(kind).where(kind.id == row_id, kind.tenant_id == tenant_of(principal))
    if lock:
        # The pipeline locks the alerts it evaluates, and workers claim deliveries with SKIP
        # LOCKED: an acknowledgement or a replay waits for them instead of racing them.
        query = query.with_for_update()
    found = session.execute(query).scalar_one_or_none()
    if found is None:
        raise not_found(what)
    return found


def _read_alert(alert_id: Id, principal: Reader, session: ReadSession) -> Alert:
    return _owned(session, Alert, "alert", principal, alert_id, lock=False)


def _write_alert(alert_id: Id, principal: Writer, session: WriteSession) -> Alert:
    return _owned(session, Alert, "alert", principal, alert_id, lock=True)


ReadableAlert = Annotated[Alert, Depends(_read_alert)]
WritableAlert = Annotated[Alert, Depends(_write_alert)]


def _read_delivery(delivery_id: Id, principal: Reader, session: ReadSession) -> Delivery:
    return _owned(session, Delivery, "delivery", principal, delivery_id, lock=False)


def _write_delivery(delivery_id: Id, principal: Writer, session: WriteSession) -> Delivery:
    return _owned(session, Delivery, "delivery", principal, delivery_id, lock=True)


ReadableDelivery = Annotated[Delivery, Depends(_read_delivery)]
WritableDelivery = Annotated[Delivery, Depends(_write_delivery)]

UnsubscribeToken = Annotated[
    str,
    Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="From the link."),
]


def _unsubscribing(token: UnsubscribeToken, session: WriteSession) -> Endpoint:
    found = endpoints.by_unsubscribe_token(session, token)
    if found is None:
        raise not_found("unsubscribe link")
    return found


def _unsubscribe_page(token: UnsubscribeToken, session: ReadSession) -> Endpoint:
    query = select(Endpoint).where(Endpoint.unsubscribe_token == token)
    found = session.execute(query).scalar_one_or_none()
    if found is None:
        raise not_found("unsubscribe link")
    return found


UnsubscribingEndpoint = Annotated[Endpoint, Depends(_unsubscribing)]
UnsubscribePageEndpoint = Annotated[Endpoint, Depends(_unsubscribe_page)]
