"""The audit log: every change to configuration, with who, when, before and after."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core.auth import Principal
from services.core.models import AuditEntry


def record(
    session: Session,
    principal: Principal,
    *,
    action: str,
    resource: str,
    before: Any | None,
    after: Any | None,
    now: datetime,
    tenant_id: int | None = None,
) -> AuditEntry:
    """Add an audit entry to the current unit of work."""
    entry = AuditEntry(
        tenant_id=tenant_id if tenant_id is not None else principal.tenant_id,
        api_key_id=principal.key_id,
        action=action,
        resource=resource,
        before=before,
        after=after,
        at=now,
    )
    session.add(entry)
    session.flush()
    return entry


def entries(
    session: Session, *, tenant_id: int | None, after_id: int, limit: int
) -> Sequence[AuditEntry]:
    """A page of audit entries after a cursor; tenant None means platform-wide."""
    query = select(AuditEntry).where(AuditEntry.id > after_id)
    if tenant_id is not None:
        query = query.where(AuditEntry.tenant_id == tenant_id)
    return session.execute(query.order_by(AuditEntry.id).limit(limit)).scalars().all()
