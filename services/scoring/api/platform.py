"""Platform routes: tenants, API keys, model versions and the audit log."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import select

from services.core import audit
from services.core.auth import AnyPrincipal, Role, generate_key, roles_from
from services.core.models import ApiKey, Tenant
from services.core.problems import Problem, not_found, problem_responses
from services.scoring import schemas, scores
from services.scoring.api.deps import (
    Admin,
    Cursor,
    Id,
    Limit,
    Model,
    Now,
    ReadSession,
    WriteSession,
)
from services.scoring.models import ModelVersion

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
    row = scores.publish_model(session, data.params, data.note, principal.ident, now)
    audit.record(
        session,
        principal,
        action="model.publish",
        resource=f"model/{row.id}",
        before={"version": before.version, "params": before.params.to_dict()},
        after={"version": row.id, "params": row.params, "note": row.note},
        now=now,
    )
    return _version_out(row)


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
        next_cursor=rows[-1].id if len(rows) == limit else None,
    )
