"""Endpoint routes: webhooks (secret shown once, rotation with grace) and email recipients."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from services.alerts import endpoints
from services.alerts.api.deliveries import delivery_out
from services.alerts.api.deps import (
    AlertsConfig,
    ReadableEndpoint,
    Reader,
    ScreenedEndpointIn,
    ScreenedEndpointPatch,
    WritableEndpoint,
    Writer,
    tenant_of,
)
from services.alerts.models import Endpoint
from services.alerts.notify import iso
from services.alerts.schemas import (
    DeliveryOut,
    EndpointKind,
    EndpointOut,
    EndpointPage,
    EndpointWithSecret,
    RotateSecretIn,
)
from services.core import audit
from services.core.api import Cursor, Limit, Now, ReadSession, Retryable, WriteSession, next_cursor
from services.core.auth import Principal
from services.core.problems import Problem, problem_responses

router = APIRouter(prefix="/v1/endpoints", tags=["alert endpoints"])


def _out(session: Session, endpoint: Endpoint, now: datetime) -> EndpointOut:
    state = endpoints.secret_states(session, [endpoint.id], now).get(endpoint.id)
    return endpoints.to_out(endpoint, state)


def _audit(
    session: Session,
    principal: Principal,
    endpoint: Endpoint,
    action: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    now: datetime,
) -> None:
    audit.record(
        session,
        principal,
        action=action,
        resource=f"endpoint/{endpoint.id}",
        before=before,
        after=after,
        now=now,
    )


@router.post(
    "",
    status_code=201,
    responses=problem_responses(400),
    summary="Register a webhook URL or an email recipient",
)
def create_endpoint(
    data: ScreenedEndpointIn,
    principal: Writer,
    session: WriteSession,
    now: Now,
    retries: Retryable,
) -> EndpointWithSecret:
    """A webhook's URL must pass the SSRF guard; its signing secret is in this response only.

    A retry with the same `Idempotency-Key` gets the same endpoint with `secret: null`: the
    secret is never stored with the replayable answer. If the first answer was lost, rotate
    the secret (`POST /v1/endpoints/{id}/rotate-secret`).
    """

    def produce() -> tuple[int, EndpointWithSecret]:
        endpoint, secret = endpoints.create(session, tenant_of(principal), data, now)
        _audit(
            session, principal, endpoint, "endpoint.create", None, endpoints.snapshot(endpoint), now
        )
        return 201, endpoints.with_secret(_out(session, endpoint, now), secret)

    # A secret is shown once: a retry with the same Idempotency-Key gets the endpoint without
    # it (rotate it if the first answer was lost), and the stored answer never holds it.
    _, created = retries.once(
        data, EndpointWithSecret, produce, kept=lambda out: out.model_copy(update={"secret": None})
    )
    return created


@router.get("", summary="List the tenant's endpoints")
def list_endpoints(
    principal: Reader, session: ReadSession, limit: Limit, now: Now, after: Cursor = 0
) -> EndpointPage:
    """A page of endpoints by id, without secrets."""
    rows = endpoints.page(session, tenant_of(principal), after=after, limit=limit)
    states = endpoints.secret_states(session, [r.id for r in rows], now)
    return EndpointPage(
        endpoints=[endpoints.to_out(r, states.get(r.id)) for r in rows],
        next_cursor=next_cursor(rows, limit),
    )


@router.get("/{endpoint_id}", responses=problem_responses(404), summary="Read an endpoint")
def get_endpoint(endpoint: ReadableEndpoint, session: ReadSession, now: Now) -> EndpointOut:
    """One endpoint, its health, and (webhooks) how many old secrets still sign."""
    return _out(session, endpoint, now)


@router.patch(
    "/{endpoint_id}", responses=problem_responses(400, 404, 409), summary="Change an endpoint"
)
def patch_endpoint(
    patch: ScreenedEndpointPatch,
    endpoint: WritableEndpoint,
    principal: Writer,
    session: WriteSession,
    now: Now,
) -> EndpointOut:
    """Rename, move (the URL is screened again) or enable/disable it; enabling forgets failures."""
    patch.check(endpoint)
    before = endpoints.snapshot(endpoint)
    endpoints.update(session, endpoint, patch.data, now)
    _audit(
        session, principal, endpoint, "endpoint.update", before, endpoints.snapshot(endpoint), now
    )
    return _out(session, endpoint, now)


@router.delete(
    "/{endpoint_id}",
    status_code=204,
    responses=problem_responses(404),
    summary="Delete an endpoint no subscription uses",
)
def delete_endpoint(
    endpoint: WritableEndpoint, principal: Writer, session: WriteSession, now: Now
) -> Response:
    """Remove it with its secrets and deliveries; 409 while a subscription still notifies it."""
    users = endpoints.subscribers(session, endpoint)
    if users:
        raise Problem(
            409,
            "endpoint-in-use",
            f"subscriptions {', '.join(map(str, users))} notify this endpoint; "
            "remove it from them first",
        )
    before = endpoints.snapshot(endpoint)
    session.delete(endpoint)
    session.flush()
    _audit(session, principal, endpoint, "endpoint.delete", before, None, now)
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/rotate-secret",
    responses=problem_responses(400, 404),
    summary="Rotate a webhook's signing secret",
)
def rotate_secret(
    endpoint: WritableEndpoint,
    principal: Writer,
    session: WriteSession,
    settings: AlertsConfig,
    now: Now,
    data: RotateSecretIn | None = None,
) -> EndpointWithSecret:
    """A new secret, shown once; the old one keeps signing for `grace` (default from settings)."""
    if endpoint.kind != EndpointKind.WEBHOOK:
        raise Problem(409, "not-a-webhook", "only webhook endpoints have signing secrets")
    grace = settings.secret_rotation_grace if data is None or data.grace is None else data.grace
    before = _out(session, endpoint, now)
    secret = endpoints.rotate_secret(session, endpoint, grace, now)
    after = _out(session, endpoint, now)
    _audit(
        session,
        principal,
        endpoint,
        "endpoint.rotate_secret",
        _secret_audit(before),
        {**_secret_audit(after), "old_secrets_sign_until": iso(now + grace)},
        now,
    )
    return endpoints.with_secret(after, secret)


def _secret_audit(endpoint: EndpointOut) -> dict[str, Any]:
    # What a rotation changed, without any secret value.
    rotated = endpoint.secret_rotated_at
    return {
        "secret_rotated_at": iso(rotated) if rotated else None,
        "secrets_in_grace": endpoint.secrets_in_grace,
    }


@router.post(
    "/{endpoint_id}/test",
    status_code=202,
    responses=problem_responses(404),
    summary="Send a test notification",
)
def send_test_notification(
    endpoint: WritableEndpoint, session: WriteSession, now: Now
) -> DeliveryOut:
    """Queue an `endpoint.test` notification; follow it at /v1/deliveries/{id}."""
    delivery = endpoints.send_test(session, endpoint, now)
    if delivery is None:
        raise Problem(409, "endpoint-disabled", "the endpoint is disabled; enable it first")
    return delivery_out(delivery)
