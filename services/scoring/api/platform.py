"""Platform routes: tenants, API keys, model versions, the audit log and dead letters."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from services.core import audit, deadletters
from services.core.api import Admin, Cursor, Id, Limit, Now, ReadSession, WriteSession, next_cursor
from services.core.auth import AnyPrincipal, Role, generate_key, roles_from
from services.core.models import ApiKey, DeadLetter, Tenant
from services.core.problems import Problem, not_found, problem_responses
from services.scoring import modelfit, schemas, scores
from services.scoring.api.deps import Model
from services.scoring.models import ModelFit, ModelVersion

router = APIRouter(prefix="/v1", tags=["platform"])


def _tenant_out(t: Tenant) -> schemas.TenantOut:
    return schemas.TenantOut(id=t.id, name=t.name, created_at=t.created_at)


def _key_out(k: ApiKey) -> schemas.ApiKeyOut:
    return schemas.ApiKeyOut(
        id=k.id,
        name=k.name,
        tenant_id=k.tenant_id,
        prefix=k.prefix,
        roles=k.roles,
        created_at=k.created_at,
        revoked_at=k.revoked_at,
    )


@router.post(
    "/tenants",
    status_code=201,
    responses=problem_responses(400, 409),
    summary="Create a tenant (admin)",
)
def create_tenant(
    data: schemas.TenantIn, principal: Admin, session: WriteSession, now: Now
) -> schemas.TenantOut:
    """Register a client firm."""
    if session.execute(select(Tenant.id).where(Tenant.name == data.name)).first():
        raise Problem(409, "conflict", f"a tenant named {data.name!r} exists")
    tenant = Tenant(name=data.name, created_at=now)
    session.add(tenant)
    session.flush()
    audit.record(
        session,
        principal,
        action="tenant.create",
        resource=f"tenant/{tenant.id}",
        before=None,
        after={"name": tenant.name},
        now=now,
        tenant_id=tenant.id,
    )
    return _tenant_out(tenant)


@router.get("/tenants", summary="List tenants (admin)")
def list_tenants(
    _: Admin, session: ReadSession, limit: Limit, after: Cursor = 0
) -> list[schemas.TenantOut]:
    """A page of tenants by id."""
    rows = session.execute(
        select(Tenant).where(Tenant.id > after).order_by(Tenant.id).limit(limit)
    ).scalars()
    return [_tenant_out(t) for t in rows]


@router.post(
    "/api-keys",
    status_code=201,
    responses=problem_responses(400, 404),
    summary="Create an API key (admin)",
)
def create_key(
    data: schemas.ApiKeyIn, principal: Admin, session: WriteSession, now: Now
) -> schemas.ApiKeyCreated:
    """Issue a key; the raw key is in this response only."""
    if data.tenant_id is not None and session.get(Tenant, data.tenant_id) is None:
        # The request names a tenant that does not exist: the body is wrong, not the URL.
        raise Problem(
            422, "validation", "invalid value in: tenant_id",
            errors=[{"in": "body", "pointer": "/tenant_id", "field": "tenant_id",
                     "reason": "no such tenant"}],
        )  # fmt: skip
    raw, prefix, key_hash = generate_key()
    key = ApiKey(
        tenant_id=data.tenant_id,
        name=data.name,
        prefix=prefix,
        key_hash=key_hash,
        roles=roles_from(data.roles),
        created_at=now,
    )
    session.add(key)
    session.flush()
    audit.record(
        session,
        principal,
        action="api_key.create",
        resource=f"api_key/{key.id}",
        before=None,
        after={"name": key.name, "roles": key.roles, "prefix": prefix},
        now=now,
        tenant_id=key.tenant_id,
    )
    return schemas.ApiKeyCreated(**_key_out(key).model_dump(), key=raw)


@router.get("/api-keys", summary="List API keys (admin)")
def list_keys(
    _: Admin, session: ReadSession, limit: Limit, after: Cursor = 0
) -> list[schemas.ApiKeyOut]:
    """Key metadata; never the keys."""
    rows = session.execute(
        select(ApiKey).where(ApiKey.id > after).order_by(ApiKey.id).limit(limit)
    ).scalars()
    return [_key_out(k) for k in rows]


@router.delete(
    "/api-keys/{key_id}",
    status_code=204,
    responses=problem_responses(404),
    summary="Revoke an API key (admin)",
)
def revoke_key(
    key_id: Id, request: Request, principal: Admin, session: WriteSession, now: Now
) -> Response:
    """Revoke at once in this process; other processes within the key cache TTL."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise not_found("api key")
    if key.revoked_at is None:
        key.revoked_at = now
        audit.record(
            session,
            principal,
            action="api_key.revoke",
            resource=f"api_key/{key.id}",
            before={"revoked_at": None},
            after={"revoked_at": now.isoformat()},
            now=now,
            tenant_id=key.tenant_id,
        )
    request.app.state.key_cache.clear()
    return Response(status_code=204)


def _version_out(row: ModelVersion) -> schemas.ModelVersionOut:
    return schemas.ModelVersionOut(
        version=row.id,
        active=row.active,
        note=row.note,
        created_by=row.created_by,
        created_at=row.created_at,
        params=row.params,
        report=row.report,
    )


def _fit_out(row: ModelFit) -> schemas.ModelFitOut:
    return schemas.ModelFitOut(
        id=row.id,
        status=row.status,
        dry_run=row.dry_run,
        options=row.options,
        requested_by=row.requested_by,
        requested_at=row.requested_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        outcome=row.outcome,
        error=row.error,
        model_version=row.model_version_id,
        report=row.report,
    )


@router.get("/model", summary="The model version in force and its parameters")
def get_model(_: AnyPrincipal, session: ReadSession, model: Model) -> schemas.ModelVersionOut:
    """The active parameters; see docs/scoring.md for what each means."""
    row = session.get(ModelVersion, model.version)
    assert row is not None
    return _version_out(row)


@router.get("/model/versions", summary="Every model version, newest first")
def list_models(_: AnyPrincipal, session: ReadSession) -> list[schemas.ModelVersionOut]:
    """The history of the model's parameters."""
    rows = session.execute(select(ModelVersion).order_by(ModelVersion.id.desc())).scalars()
    return [_version_out(r) for r in rows]


@router.post(
    "/model/versions",
    status_code=201,
    responses=problem_responses(400),
    summary="Publish new parameters (admin)",
)
def publish_model(
    data: schemas.ModelVersionIn, principal: Admin, session: WriteSession, now: Now
) -> schemas.ModelVersionOut:
    """Activate new parameters as a new version; every target is rescored; audited."""
    before = scores.ensure_model(session, now)
    published = scores.publish_model(session, data.params, data.note, principal.ident, now)
    row = published.row
    audit.record(
        session,
        principal,
        action="model.publish",
        resource=f"model/{row.id}",
        before={"version": before.version, "params": before.params.to_dict()},
        after={
            "version": row.id,
            "params": row.params,
            "note": row.note,
            "carried_over": published.carried_over,
        },
        now=now,
    )
    return _version_out(row).model_copy(update={"carried_over": published.carried_over})


@router.post(
    "/model/fits",
    status_code=202,
    responses=problem_responses(400),
    summary="Fit the model on the incident history, as a job (admin)",
)
def request_fit(
    data: schemas.ModelFitIn, principal: Admin, session: WriteSession, now: Now
) -> schemas.ModelFitOut:
    """A worker fits the model on every incident held and the registered targets, reports on
    rolling-origin validation splits, and publishes the result only if it beats the version in
    force (unless dry_run). Poll GET /v1/model/fits/{id} for the report; audited."""
    row = modelfit.request_fit(session, modelfit.Request(**data.model_dump()), principal, now)
    return _fit_out(row)


@router.get("/model/fits", summary="Model fits, newest first (admin)")
def list_fits(_: Admin, session: ReadSession, limit: Limit) -> list[schemas.ModelFitOut]:
    """Fit jobs with their status, outcome and report."""
    rows = session.execute(select(ModelFit).order_by(ModelFit.id.desc()).limit(limit)).scalars()
    return [_fit_out(r) for r in rows]


@router.get(
    "/model/fits/{fit_id}",
    responses=problem_responses(404),
    summary="One model fit with its report (admin)",
)
def get_fit(fit_id: Id, _: Admin, session: ReadSession) -> schemas.ModelFitOut:
    """A fit job: pending, running, done (with its report and outcome) or failed (why)."""
    row = session.get(ModelFit, fit_id)
    if row is None:
        raise not_found("model fit")
    return _fit_out(row)


@router.get("/audit-log", summary="Audit entries: the tenant's, or all for an admin")
def audit_log(
    principal: AnyPrincipal, session: ReadSession, limit: Limit, after: Cursor = 0
) -> schemas.AuditPage:
    """Who changed what and when, with before and after."""
    if principal.tenant_id is None and not principal.has(Role.ADMIN):
        raise Problem(403, "forbidden", "platform keys other than admin have no audit log")
    rows = audit.entries(session, tenant_id=principal.tenant_id, after_id=after, limit=limit)
    return schemas.AuditPage(
        entries=[
            schemas.AuditEntryOut(
                id=e.id,
                tenant_id=e.tenant_id,
                api_key_id=e.api_key_id,
                action=e.action,
                resource=e.resource,
                before=e.before,
                after=e.after,
                at=e.at,
            )
            for e in rows
        ],
        next_cursor=next_cursor(rows, limit),
    )


def _letter_out(row: DeadLetter) -> schemas.DeadLetterOut:
    return schemas.DeadLetterOut(
        id=row.id,
        pipeline=row.pipeline,
        item=row.item,
        tenant_id=row.tenant_id,
        error_class=row.error_class,
        error=row.error,
        trace=row.trace,
        occurrences=row.occurrences,
        created_at=row.created_at,
        last_at=row.last_at,
        resolved_at=row.resolved_at,
        resolved_by=row.resolved_by,
        note=row.note,
    )


class LetterStatus(StrEnum):
    """Which dead letters to list."""

    OPEN = "open"
    RESOLVED = "resolved"
    ALL = "all"


@router.get("/dead-letters", summary="Items a pipeline set aside (admin)")
def list_dead_letters(
    _: Admin,
    session: ReadSession,
    limit: Limit,
    after: Cursor = 0,
    status: LetterStatus = LetterStatus.OPEN,
    pipeline: Annotated[str | None, Query(max_length=64)] = None,
) -> schemas.DeadLetterPage:
    """What could not be processed and was set aside so the rest went on, oldest first."""
    query = select(DeadLetter).where(DeadLetter.id > after)
    if status is LetterStatus.OPEN:
        query = query.where(DeadLetter.resolved_at.is_(None))
    elif status is LetterStatus.RESOLVED:
        query = query.where(DeadLetter.resolved_at.is_not(None))
    if pipeline is not None:
        query = query.where(DeadLetter.pipeline == pipeline)
    rows = session.execute(query.order_by(DeadLetter.id).limit(limit)).scalars().all()
    return schemas.DeadLetterPage(
        dead_letters=[_letter_out(r) for r in rows],
        next_cursor=next_cursor(rows, limit),
    )


@router.get(
    "/dead-letters/{letter_id}", responses=problem_responses(404), summary="A dead letter (admin)"
)
def get_dead_letter(letter_id: Id, _: Admin, session: ReadSession) -> schemas.DeadLetterOut:
    """One set-aside item, with its error and stack trace."""
    row = session.get(DeadLetter, letter_id)
    if row is None:
        raise not_found("dead letter")
    return _letter_out(row)


@router.post(
    "/dead-letters/{letter_id}/resolve",
    responses=problem_responses(404),
    summary="Mark a dead letter dealt with (admin)",
)
def resolve_dead_letter(
    letter_id: Id,
    data: schemas.DeadLetterResolveIn,
    principal: Admin,
    session: WriteSession,
    now: Now,
) -> schemas.DeadLetterOut:
    """It stays listed (`status=resolved`) and no longer counts as open; audited."""
    row = session.get(DeadLetter, letter_id)
    if row is None:
        raise not_found("dead letter")
    if row.resolved_at is None:
        deadletters.resolve(session, row, by=principal.key_id, note=data.note, now=now)
        audit.record(
            session,
            principal,
            action="dead_letter.resolve",
            resource=f"dead_letter/{row.id}",
            before={"resolved_at": None},
            after={"resolved_at": now.isoformat(), "note": data.note},
            now=now,
            tenant_id=row.tenant_id,
        )
        session.flush()
    return _letter_out(row)
