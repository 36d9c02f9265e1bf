"""Endpoints: where a tenant's notifications go, their signing secrets and the SSRF screen."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.alerts import notify, outbox, signing, ssrf
from services.alerts.models import Delivery, Endpoint, EndpointSecret, Subscription
from services.alerts.schemas import (
    EndpointIn,
    EndpointKind,
    EndpointOut,
    EndpointPatch,
    EndpointWithSecret,
)
from services.alerts.settings import AlertsSettings

UNSUBSCRIBED = "unsubscribed"

_DEFAULT_PORTS = {"https": 443, "http": 80}


def screen(url: str, settings: AlertsSettings) -> str | None:
    """Resolve a webhook URL's host now and return why the SSRF guard refuses it, or None."""
    parts = urlsplit(url.strip())
    host, port = parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme, 443)
    resolved = ssrf.resolve(host, port) if host else []
    verdict = ssrf.check_url(
        url, resolved, allow_http=settings.webhook_allow_http, allowlist=settings.webhook_allowlist
    )
    return None if verdict.allowed else verdict.reason


def get(
    session: Session, tenant_id: int, endpoint_id: int, *, lock: bool = False
) -> Endpoint | None:
    """A tenant's endpoint (None for another tenant's), locked against the workers if asked."""
    query = select(Endpoint).where(Endpoint.id == endpoint_id, Endpoint.tenant_id == tenant_id)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def page(session: Session, tenant_id: int, *, after: int, limit: int) -> Sequence[Endpoint]:
    """A page of a tenant's endpoints by id."""
    query = (
        select(Endpoint)
        .where(Endpoint.tenant_id == tenant_id, Endpoint.id > after)
        .order_by(Endpoint.id)
        .limit(limit)
    )
    return session.execute(query).scalars().all()


def create(
    session: Session, tenant_id: int, data: EndpointIn, now: datetime
) -> tuple[Endpoint, str | None]:
    """Add an endpoint (screened beforehand); a webhook gets its first secret, returned here."""
    webhook = data.kind is EndpointKind.WEBHOOK
    address = data.url if webhook else data.address
    assert address is not None
    endpoint = Endpoint(
        tenant_id=tenant_id,
        kind=data.kind.value,
        name=data.name,
        address=address,
        enabled=True,
        max_in_flight=data.max_in_flight,
        unsubscribe_token=None if webhook else secrets.token_urlsafe(24),
        created_at=now,
        updated_at=now,
    )
    session.add(endpoint)
    session.flush()
    secret = None
    if webhook:
        secret = signing.generate_secret()
        session.add(EndpointSecret(endpoint_id=endpoint.id, secret=secret, created_at=now))
        session.flush()
    return endpoint, secret


def update(session: Session, endpoint: Endpoint, data: EndpointPatch, now: datetime) -> None:
    """Apply a patch (screened and checked against the kind beforehand)."""
    if data.name is not None:
        endpoint.name = data.name
    new_address = data.url if data.url is not None else data.address
    if new_address is not None:
        endpoint.address = new_address
    if "max_in_flight" in data.model_fields_set:
        endpoint.max_in_flight = data.max_in_flight
    if data.enabled is True and not endpoint.enabled:
        # A fresh start: the failures that disabled it are not held against it again.
        endpoint.enabled = True
        endpoint.disabled_reason = endpoint.disabled_at = endpoint.failing_since = None
    elif data.enabled is False:
        outbox.disable_endpoint(session, endpoint, "disabled through the API", now)
    endpoint.updated_at = now
    session.flush()


# Secrets that sign a webhook at once: the new one and the newest ones still in their grace.
MAX_SECRETS = 3


def rotate_secret(session: Session, endpoint: Endpoint, grace: timedelta, now: datetime) -> str:
    """Start signing with a new secret; the current ones keep signing for `grace` at most, and
    only the newest MAX_SECRETS - 1 of them: rotations in a row never pile up signatures."""
    until = now + grace
    live = []
    for row in session.execute(
        select(EndpointSecret).where(EndpointSecret.endpoint_id == endpoint.id)
    ).scalars():
        if row.expires_at is not None and row.expires_at <= now:
            session.delete(row)  # expired: no reason to keep a usable key around
            continue
        if row.expires_at is None or row.expires_at > until:
            row.expires_at = until
        live.append(row)
    live.sort(key=lambda r: (r.created_at, r.id), reverse=True)
    for row in live[MAX_SECRETS - 1 :]:
        session.delete(row)
    secret = signing.generate_secret()
    session.add(EndpointSecret(endpoint_id=endpoint.id, secret=secret, created_at=now))
    endpoint.updated_at = now
    session.flush()
    return secret


def subscribers(session: Session, endpoint: Endpoint) -> list[int]:
    """The ids of the tenant's subscriptions that notify this endpoint."""
    rows = session.execute(
        select(Subscription.id, Subscription.endpoint_ids)
        .where(Subscription.tenant_id == endpoint.tenant_id)
        .order_by(Subscription.id)
    ).all()
    return [sub_id for sub_id, ids in rows if endpoint.id in ids]


def by_unsubscribe_token(session: Session, token: str) -> Endpoint | None:
    """The email endpoint an unsubscribe link names, locked."""
    return session.execute(
        select(Endpoint).where(Endpoint.unsubscribe_token == token).with_for_update()
    ).scalar_one_or_none()


def unsubscribe(session: Session, endpoint: Endpoint, now: datetime) -> bool:
    """Disable an email endpoint at its recipient's request; False when it already was."""
    if not endpoint.enabled:
        return False
    outbox.disable_endpoint(session, endpoint, UNSUBSCRIBED, now)
    return True


def send_test(session: Session, endpoint: Endpoint, now: datetime) -> Delivery | None:
    """Queue a test notification; None when the endpoint is disabled."""
    data = {
        "endpoint": {"id": endpoint.id, "name": endpoint.name},
        "message": "A test notification from riskalert: this endpoint receives alerts.",
    }
    rows = outbox.enqueue(
        session,
        tenant_id=endpoint.tenant_id,
        endpoints=[endpoint],
        alert_id=None,
        event_type="endpoint.test",
        sequence=0,
        payload=notify.envelope("endpoint.test", data, now),
        now=now,
    )
    return rows[0] if rows else None


def snapshot(endpoint: Endpoint) -> dict[str, Any]:
    """What the audit log keeps of an endpoint: never its secrets or unsubscribe token."""
    return {
        "kind": endpoint.kind,
        "name": endpoint.name,
        ("url" if endpoint.kind == EndpointKind.WEBHOOK else "address"): endpoint.address,
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
    }


@dataclass(frozen=True, slots=True)
class SecretState:
    """What may be told of a webhook's secrets: how many rotated-out ones still sign, and when."""

    in_grace: int
    rotated_at: datetime | None


def secret_states(
    session: Session, endpoint_ids: Sequence[int], now: datetime
) -> dict[int, SecretState]:
    """The secret state of each endpoint that has secrets."""
    if not endpoint_ids:
        return {}
    rows = session.execute(
        select(
            EndpointSecret.endpoint_id,
            func.count(),
            func.max(EndpointSecret.created_at),
            func.count(EndpointSecret.expires_at).filter(EndpointSecret.expires_at > now),
        )
        .where(EndpointSecret.endpoint_id.in_(set(endpoint_ids)))
        .group_by(EndpointSecret.endpoint_id)
    ).all()
    return {
        endpoint_id: SecretState(in_grace, newest if total > 1 else None)
        for endpoint_id, total, newest, in_grace in rows
    }


def to_out(endpoint: Endpoint, secret_state: SecretState | None) -> EndpointOut:
    """The endpoint as served."""
    webhook = endpoint.kind == EndpointKind.WEBHOOK
    state = secret_state or SecretState(0, None)
    return EndpointOut(
        id=endpoint.id,
        kind=EndpointKind(endpoint.kind),
        name=endpoint.name,
        url=endpoint.address if webhook else None,
        address=None if webhook else endpoint.address,
        enabled=endpoint.enabled,
        max_in_flight=endpoint.max_in_flight,
        disabled_reason=endpoint.disabled_reason,
        disabled_at=endpoint.disabled_at,
        failing_since=endpoint.failing_since,
        last_success_at=endpoint.last_success_at,
        secrets_in_grace=state.in_grace if webhook else None,
        secret_rotated_at=state.rotated_at if webhook else None,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def with_secret(endpoint: EndpointOut, secret: str | None) -> EndpointWithSecret:
    """The endpoint with a secret shown once."""
    return EndpointWithSecret(**endpoint.model_dump(), secret=secret)
