"""Typed dependencies of the scoring routes: settings, callers, loaded targets and the model.

The platform's (sessions, clock, ids, pages, retries) are in services.core.api."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from services.core.api import Id, Now, ReadSession, WriteSession, settings_of
from services.core.auth import Principal, Role, require, require_tenant
from services.core.problems import not_found
from services.scoring import scores, targets
from services.scoring.models import CurrentScore, Target
from services.scoring.settings import ScoringSettings
from services.scoring.taxonomy import TargetKind

# The scoring service's own settings, as the app's settings are also its.
Settings = Annotated[ScoringSettings, Depends(settings_of(ScoringSettings))]

AnyReader = Annotated[
    Principal, Depends(require(Role.SCORES_READ, Role.TARGETS_WRITE, Role.INCIDENTS_WRITE))
]
# Who may read a tenant's targets and scores.
READER_ROLES = (Role.SCORES_READ, Role.TARGETS_WRITE)
TenantReader = Annotated[Principal, Depends(require_tenant(*READER_ROLES))]
TenantWriter = Annotated[Principal, Depends(require_tenant(Role.TARGETS_WRITE))]


def _load(session: Session, principal: Principal, kind: TargetKind, target_id: int) -> Target:
    assert principal.tenant_id is not None
    target = targets.get(session, principal.tenant_id, kind, target_id)
    if target is None:
        raise not_found(kind.value)
    return target


@dataclass(frozen=True, slots=True)
class Located:
    """A target found for a reader, with its current score (None until first scored)."""

    target: Target
    score: CurrentScore | None


def _locate(session: Session, principal: Principal, kind: TargetKind, target_id: int) -> Located:
    assert principal.tenant_id is not None
    found = targets.get_with_score(session, principal.tenant_id, kind, target_id)
    if found is None:
        raise not_found(kind.value)
    return Located(*found)


def _read_site(site_id: Id, principal: TenantReader, session: ReadSession) -> Located:
    return _locate(session, principal, TargetKind.SITE, site_id)


def _write_site(site_id: Id, principal: TenantWriter, session: WriteSession) -> Target:
    return _load(session, principal, TargetKind.SITE, site_id)


def _read_corridor(corridor_id: Id, principal: TenantReader, session: ReadSession) -> Located:
    return _locate(session, principal, TargetKind.CORRIDOR, corridor_id)


def _write_corridor(corridor_id: Id, principal: TenantWriter, session: WriteSession) -> Target:
    return _load(session, principal, TargetKind.CORRIDOR, corridor_id)


ReadableSite = Annotated[Located, Depends(_read_site)]
WritableSite = Annotated[Target, Depends(_write_site)]
ReadableCorridor = Annotated[Located, Depends(_read_corridor)]
WritableCorridor = Annotated[Target, Depends(_write_corridor)]


def active_model(request: Request, now: Now) -> scores.ActiveModel:
    """The model version in force (created, in a write transaction of its own, if none is)."""
    return scores.model_in_force(request.app.state.read_sessions, request.app.state.sessions, now)


Model = Annotated[scores.ActiveModel, Depends(active_model)]
