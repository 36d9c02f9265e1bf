"""Typed dependencies of the scoring routes: sessions, clock, caller, and loaded targets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, TypeVar

from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from services.core import idempotency
from services.core.auth import Principal, Role, authenticate, require, require_tenant
from services.core.idempotency import IdempotencyKey
from services.core.problems import not_found
from services.scoring import queue, scores, targets
from services.scoring.models import CurrentScore, Target
from services.scoring.schemas import MAX_ID
from services.scoring.settings import ScoringSettings
from services.scoring.taxonomy import TargetKind


def _write_session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] = request.app.state.sessions
    with factory.begin() as session:
        yield session
    # Committed: let the in-process worker rescore now instead of at its next poll.
    worker = request.app.state.worker
    if worker is not None and session.info.get(queue.QUEUED):
        worker.wake()


async def _read_session(request: Request) -> AsyncIterator[Session]:
    # Async on purpose: opening a read session does no I/O (it connects on first query, in the
    # thread that queries), and closing an autocommit session only returns the connection to
    # the pool. Running it on the event loop saves two thread-pool hops per read.
    factory: sessionmaker[Session] = request.app.state.read_sessions
    with factory.begin() as session:
        yield session


# Dependencies that do no I/O are async: FastAPI runs them on the event loop instead of
# hopping to the thread pool, which matters on the hot read path.
async def _settings(request: Request) -> ScoringSettings:
    settings: ScoringSettings = request.app.state.settings
    return settings


async def _now(request: Request) -> datetime:
    now: datetime = request.app.state.clock()
    return now


# Function scope: the unit of work commits before the response is sent, so a failed commit
# is a 5xx, never a 2xx.
WriteSession = Annotated[Session, Depends(_write_session, scope="function")]
ReadSession = Annotated[Session, Depends(_read_session, scope="function")]
Settings = Annotated[ScoringSettings, Depends(_settings)]
Now = Annotated[datetime, Depends(_now)]

Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
Ingestor = Annotated[Principal, Depends(require(Role.INCIDENTS_WRITE))]
AnyReader = Annotated[
    Principal, Depends(require(Role.SCORES_READ, Role.TARGETS_WRITE, Role.INCIDENTS_WRITE))
]
TenantReader = Annotated[Principal, Depends(require_tenant(Role.SCORES_READ, Role.TARGETS_WRITE))]
TenantWriter = Annotated[Principal, Depends(require_tenant(Role.TARGETS_WRITE))]

Id = Annotated[int, Path(ge=1, le=MAX_ID)]
Cursor = Annotated[int, Query(ge=0, le=MAX_ID, description="Return items after this id.")]


async def page_limit(
    settings: Settings,
    limit: Annotated[
        int, Query(ge=1, le=5000, description="Page size (capped by settings).")
    ] = 100,
) -> int:
    """The page size asked for, within the deployment's cap."""
    return min(limit, settings.max_page_size)


Limit = Annotated[int, Depends(page_limit)]


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
    # A read session of its own, closed before the route runs: a write route holding a read
    # connection while it waits for a write one could starve the pool under load.
    reader: sessionmaker[Session] = request.app.state.read_sessions
    with reader() as session:
        found = scores.active_model(session)
    if found is not None:
        return found
    factory: sessionmaker[Session] = request.app.state.sessions
    with factory.begin() as write:
        return scores.ensure_model(write, now)


Model = Annotated[scores.ActiveModel, Depends(active_model)]


M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Retries:
    """A create POST's Idempotency-Key context: the work runs once, retries get its response."""

    session: Session
    principal: Principal
    key: str | None
    path: str
    now: datetime

    def once(
        self, body: BaseModel, response_type: type[M], produce: Callable[[], tuple[int, M]]
    ) -> tuple[int, M]:
        """Run `produce` unless this key already has a response, which is replayed instead."""
        return idempotency.once(
            self.session, self.principal, self.key, self.path, body, self.now, response_type,
            produce,
        )  # fmt: skip


def _retries(
    request: Request,
    session: WriteSession,
    principal: Annotated[Principal, Depends(authenticate)],
    now: Now,
    key: IdempotencyKey = None,
) -> Retries:
    return Retries(session, principal, key, request.url.path, now)


Retryable = Annotated[Retries, Depends(_retries)]
