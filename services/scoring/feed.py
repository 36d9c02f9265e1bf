"""The change feeds: append-only logs of score moves and incident revisions, the alerts input.

Ids become visible in commit order (an advisory lock on PostgreSQL; SQLite has one writer), so
a consumer reading `id > cursor` never skips an entry. A commit that appends rings
`FEED_CHANNEL` (NOTIFY on PostgreSQL), so consumers need not wait for their next poll.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Table, event, select, text
from sqlalchemy.orm import Session

from services.core import wake
from services.core.db import bulk_insert
from services.scoring import risk
from services.scoring.models import CurrentScore, IncidentChange, ScoreChange, Target
from services.scoring.taxonomy import Band, Category, Component

# Held while change rows are inserted, so feed ids become visible in commit order on Postgres.
CHANGE_FEED_LOCK = 0x5C0E_FEED
INCIDENT_FEED_LOCK = 0x1C1D_FEED
_AT_COMMIT = "riskalert_feed_at_commit"
# Rung (NOTIFY on Postgres, an event in-process) when a unit of work that appended commits.
FEED_CHANNEL = "riskalert_feed"
# Rung as well when incident entries were appended: the rescoring worker reads those.
INCIDENT_CHANNEL = "riskalert_incidents"


class Listed(Protocol):
    """A contribution as the feed records it."""

    @property
    def incident_id(self) -> int: ...
    @property
    def category(self) -> Category: ...
    @property
    def points(self) -> float: ...


class Scored(Protocol):
    """A score as the feed records it: a served ScoreOut, or a rescore's Summary."""

    @property
    def score(self) -> float: ...
    @property
    def band(self) -> Band: ...
    @property
    def model_version(self) -> int: ...
    @property
    def as_of(self) -> datetime: ...
    @property
    def components(self) -> Mapping[Component, float]: ...
    @property
    def contributions(self) -> Sequence[Listed]: ...


@dataclass(frozen=True, slots=True)
class Top:
    """A contribution's incident, category and points (rounded as served)."""

    incident_id: int
    category: Category
    points: float


# Contributions a feed entry lists.
TOP_LISTED = 5


@dataclass(frozen=True, slots=True)
class Summary:
    """What the feed records of a freshly computed score, rounded as the served document is."""

    score: float
    band: Band
    model_version: int
    as_of: datetime
    components: Mapping[Component, float]
    contributions: tuple[Top, ...]

    @classmethod
    def of(cls, score: risk.Score, version: int) -> Summary:
        return cls(
            score=score.value,
            band=score.band,
            model_version=version,
            as_of=score.as_of,
            components={k: round(v, 2) for k, v in score.components.items()},
            contributions=tuple(
                Top(c.incident_id, c.category, round(c.points, 2))
                for c in score.contributions[:TOP_LISTED]
            ),
        )


class Fed(Protocol):
    """What a stored current score says about the target's last feed entry."""

    @property
    def model_version(self) -> int: ...
    @property
    def fed_value(self) -> float: ...
    @property
    def fed_band(self) -> str: ...


def worth_recording(old: Fed | None, new: Scored, min_delta: float) -> bool:
    """Whether a new score is a move to record: first score, new band or model, or a real move."""
    if old is None:
        return True
    return (
        old.fed_band != new.band.value
        or old.model_version != new.model_version
        or abs(old.fed_value - new.score) >= min_delta
    )


def entry(target: Target, old: Fed | None, doc: Scored, cause: str, now: datetime) -> ScoreChange:
    """A feed entry for a target whose score moved."""
    return ScoreChange(
        tenant_id=target.tenant_id,
        target_id=target.id,
        target_kind=target.kind,
        model_version=doc.model_version,
        as_of=doc.as_of,
        previous_value=old.fed_value if old else None,
        value=doc.score,
        previous_band=old.fed_band if old else None,
        band=doc.band.value,
        components={k.value: v for k, v in doc.components.items()},
        top_incidents=[
            {"incident_id": c.incident_id, "category": c.category.value, "points": c.points}
            for c in doc.contributions[:TOP_LISTED]
        ],
        cause=cause,
        created_at=now,
    )


def append(session: Session, changes: Sequence[ScoreChange | IncidentChange]) -> None:
    """Append feed entries; on Postgres under a lock so ids are committed in order."""
    if not changes:
        return
    incident = isinstance(changes[0], IncidentChange)
    # One lock per feed: an ingest must not wait for a rescoring batch to commit.
    _lock(session, INCIDENT_FEED_LOCK if incident else CHANGE_FEED_LOCK)
    session.add_all(changes)
    session.flush()
    wake.announce(session, FEED_CHANNEL)
    if incident:
        wake.announce(session, INCIDENT_CHANNEL)


def _lock(session: Session, key: int) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def append_at_commit(session: Session, changes: Sequence[dict[str, Any]]) -> None:
    """Append incident feed entries (column values) just before this unit of work commits,
    holding the feed lock only then.

    A request's transaction may wait long after its work is done (its commit runs when a
    thread is free to run it): holding the ordering lock all that time would queue every
    other ingest behind it.
    """
    if not changes:
        return
    waiting: list[dict[str, Any]] = session.info.setdefault(_AT_COMMIT, [])
    if not waiting and not event.contains(session, "before_commit", _append_waiting):
        # Not `once`: releasing a savepoint (an Idempotency-Key's) fires it too, and must not
        # take the lock then; the unit of work's commit is what it waits for.
        event.listen(session, "before_commit", _append_waiting)
        event.listen(session, "after_soft_rollback", _forget_waiting, once=True)
    waiting.extend(changes)


def _append_waiting(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint is released, not the unit of work committed
    waiting = session.info.pop(_AT_COMMIT, [])
    if not waiting:
        return
    _lock(session, INCIDENT_FEED_LOCK)
    # Many rows, one statement: a bulk import appends thousands at a time.
    bulk_insert(session, cast(Table, IncidentChange.__table__), waiting)
    wake.announce(session, FEED_CHANNEL)
    wake.announce(session, INCIDENT_CHANNEL)


def _forget_waiting(session: Session, *_: object) -> None:
    session.info.pop(_AT_COMMIT, None)


def record_removal(session: Session, target: Target, now: datetime) -> None:
    """Append a final feed entry for a deleted target (score 0, cause `deleted`)."""
    old = session.get(CurrentScore, target.id)
    change = ScoreChange(
        tenant_id=target.tenant_id,
        target_id=target.id,
        target_kind=target.kind,
        model_version=old.model_version if old else 0,
        as_of=now,
        previous_value=old.fed_value if old else None,
        value=0.0,
        previous_band=old.fed_band if old else None,
        band=Band.LOW.value,
        components={},
        top_incidents=[],
        cause="deleted",
        created_at=now,
    )
    append(session, [change])


def page(
    session: Session,
    *,
    tenant_id: int | None,
    target_id: int | None,
    after: int,
    limit: int,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Sequence[ScoreChange]:
    """A page of the change feed after a cursor."""
    query = select(ScoreChange).where(ScoreChange.id > after)
    if tenant_id is not None:
        query = query.where(ScoreChange.tenant_id == tenant_id)
    if target_id is not None:
        query = query.where(ScoreChange.target_id == target_id)
    if since is not None:
        query = query.where(ScoreChange.as_of >= since)
    if until is not None:
        query = query.where(ScoreChange.as_of <= until)
    return session.execute(query.order_by(ScoreChange.id).limit(limit)).scalars().all()
