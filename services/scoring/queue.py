"""The rescore queue: which targets wait to be rescored, and the workers' leases on them.

One row per target however often it is queued. Target edits queue their target in their own
transaction; the targets an incident affects are queued by the worker as it reads the incident
feed. Workers lease batches (SKIP LOCKED on PostgreSQL), compute, and release what they computed
unless it was queued again meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import (
    Integer,
    String,
    Table,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from services.core import cursors, metrics, wake
from services.core.db import UTCDateTime
from services.core.deadletters import Quarantine, guard
from services.core.logs import working_for
from services.scoring import geo, incidents, risk
from services.scoring.models import ImportRun, Incident, IncidentChange, RescoreMark, Target
from services.scoring.taxonomy import Sector, TargetKind

log = logging.getLogger(__name__)

# PostgreSQL NOTIFY channel: workers in other processes are woken when the queueing commits.
CHANNEL = "riskalert_rescore"


# Rescoring that someone waits for (a new incident, a target just edited, a new model) goes
# before the periodic decay pass, which may have queued every target a moment earlier.
URGENT, ROUTINE = 0, 1
_PRIORITY = {"decay": ROUTINE}


def _queue(session: Session, rows: Any) -> None:
    """Insert queue rows (values or a SELECT); a target already queued keeps one row, bumped."""
    table = RescoreMark.__table__
    assert isinstance(table, Table)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    stmt = insert if isinstance(rows, list) else insert.from_select(MARK_COLUMNS, rows)
    new = stmt.excluded
    # A target being rescored right now may have missed this change: a new generation keeps
    # its row when the worker releases the one it took, and freeing the lease lets it be taken
    # again. The row keeps its earliest time and most urgent priority, so it never moves back.
    stmt = stmt.on_conflict_do_update(
        index_elements=[RescoreMark.target_id],
        set_={
            "generation": RescoreMark.generation + 1,
            "lease_expires_at": None,
            "cause": case((new.priority <= RescoreMark.priority, new.cause),
                          else_=RescoreMark.cause),
            "priority": case((new.priority < RescoreMark.priority, new.priority),
                             else_=RescoreMark.priority),
            "marked_at": case((new.marked_at < RescoreMark.marked_at, new.marked_at),
                              else_=RescoreMark.marked_at),
        },
    )  # fmt: skip
    if isinstance(rows, list):
        # Parameter lists, not one literal multi-row VALUES: the statement compiles once.
        session.execute(stmt, rows)
    else:
        session.execute(stmt)
    wake.announce(session, CHANNEL)


MARK_COLUMNS = ["target_id", "cause", "priority", "marked_at", "generation"]


def add(session: Session, target_ids: Iterable[int], cause: str, now: datetime) -> int:
    """Queue targets for rescoring; one row per target however often it is queued."""
    priority = _PRIORITY.get(cause, URGENT)
    rows = [
        {"target_id": i, "cause": cause, "priority": priority, "marked_at": now, "generation": 1}
        for i in sorted(set(target_ids))
    ]
    if rows:
        _queue(session, rows)
    return len(rows)


def add_all(session: Session, cause: str, now: datetime) -> None:
    """Queue every target for rescoring (decay, new model)."""
    _queue(
        session,
        # SQLite needs a WHERE to tell the upsert's ON from a join's ON.
        select(
            Target.id,
            literal(cause, String()),
            literal(_PRIORITY.get(cause, URGENT), Integer()),
            literal(now, UTCDateTime()),
            literal(1, Integer()),
        ).where(true()),
    )


# Half the diagonal of a 0.1-degree cell, rounded up: how far a spot moves to its cell's centre.
_CELL_DIAGONAL_KM = 8.0
# The rescoring worker's cursor on the incident feed (services.core.cursors).
FEED_CURSOR = "rescore"
# An import whose heartbeat is older than this died: it no longer holds the feed back.
IMPORT_HEARTBEAT_TIMEOUT = timedelta(minutes=2)


def consume_incident_feed(
    session: Session,
    params: risk.ModelParams,
    now: datetime,
    limit: int,
    pages: int = 1,
    quarantine: Quarantine | None = None,
) -> int:
    """Queue what newly fed incident revisions can affect, and move the rescorer's cursor.

    Ingest only appends to the incident feed. Reading the feed here, rather than queueing in
    the ingest transaction, keeps ingest off the queue's rows, which every rescoring batch
    writes, and queues a burst of nearby incidents' targets once. Up to `pages` pages of
    `limit` entries are read in one go, so a backlog (a bulk import) queues each target once.
    With a `quarantine`, each entry queues its targets on its own, and one that fails is set
    aside. Returns how many entries were read (0 also while another process reads the feed).
    """
    cursor = cursors.lock(session, FEED_CURSOR, now)
    if cursor is None:
        return 0
    # Only versions that count now reach a current score: not retracted or merged ones (what
    # they replaced is read too), nor history beyond the lookback, which a bulk import of
    # back-filled events is mostly made of: those are skipped without being read.
    cutoff = now - timedelta(days=params.lookback_days)
    fed: list[Row[Any]] = []
    read = 0
    for _ in range(pages):
        page = (
            select(IncidentChange.id)
            .where(IncidentChange.id > cursor.position)
            .order_by(IncidentChange.id)
            .limit(limit)
            .subquery()
        )
        count, upper = session.execute(select(func.count(), func.max(page.c.id))).one()
        if not count:
            break
        fed += session.execute(
            select(
                IncidentChange.id.label("change_id"),
                IncidentChange.previous,
                Incident.request_id,
                *incidents.MODEL_COLUMNS,
            )
            .join(Incident, Incident.id == IncidentChange.incident_id)
            .where(
                IncidentChange.id > cursor.position,
                IncidentChange.id <= upper,
                or_(Incident.occurred_at >= cutoff, IncidentChange.outcome != "created"),
            )
        ).all()
        cursor.position = upper
        read += count
        if count < limit:
            break
    if not read:
        return 0
    cursor.updated_at = now
    if quarantine is None:
        queued = _queue_affected(session, fed, params, cutoff, now)
    else:
        queued = 0
        for row in fed:
            with guard(quarantine, f"incident_change {row.change_id} (incident {row.id})"):
                queued += _queue_affected(session, [row], params, cutoff, now)
    with working_for([row.request_id for row in fed]):
        log.info("incident feed: %d entries queue %d targets", read, queued)
    return read


def _queue_affected(
    session: Session,
    fed: Sequence[Row[Any]],
    params: risk.ModelParams,
    cutoff: datetime,
    now: datetime,
) -> int:
    """Queue the targets that fed incident versions can affect; return how many."""
    versions = [incidents.to_model(row) for row in fed]
    # An update also affects whatever the revision it replaced could.
    versions += [incidents.from_snapshot(row.previous) for row in fed if row.previous]
    live = [v for v in versions if v.counts and v.occurred_at >= cutoff]
    affected = affected_targets(session, live, params)
    add(session, affected, "incident", now)
    return len(affected)


def importing(session: Session, now: datetime) -> bool:
    """Whether a live import is running: its incidents are read off the feed when it ends."""
    live = select(ImportRun.id).where(
        ImportRun.finished_at.is_(None), ImportRun.heartbeat_at > now - IMPORT_HEARTBEAT_TIMEOUT
    )
    return session.execute(live.limit(1)).first() is not None


def affected_targets(
    session: Session, versions: Sequence[risk.Incident], params: risk.ModelParams
) -> set[int]:
    """Targets that these incident versions can affect directly, then or now.

    Point incidents: targets whose stored box overlaps the incident's primary reach (the faint
    regional tail is left to the decay tick). Area-scoped: targets matching scope and profile.
    """
    spots: list[tuple[float, float, float]] = []
    area: list[risk.Incident] = []
    for incident in versions:
        reach = risk.influence_radius_km(incident, params, regional=False)
        if incident.lat is None or incident.lon is None or reach is None:
            area.append(incident)
        else:
            spots.append((incident.lat, incident.lon, reach))
    ids: set[int] = set()
    if spots:
        ids |= _targets_near(session, spots)
    if area:
        ids |= _targets_in_scope(session, area)
    return ids


def _targets_in_scope(session: Session, area: Sequence[risk.Incident]) -> set[int]:
    profile = select(
        Target.id, Target.kind, Target.countries, Target.admin1, Target.sector,
        Target.foreign_owned,
    )  # fmt: skip
    found = set()
    for target_id, kind, countries, admin1, sector, foreign_owned in session.execute(profile):
        # Only what scope and profile matching read; geometry does not matter here.
        model = risk.Target(
            kind=TargetKind(kind), coordinates=((0.0, 0.0),), radius_km=0.0,
            sector=Sector(sector) if sector else None, foreign_owned=foreign_owned,
            countries=frozenset(countries), admin1=frozenset(admin1),
        )  # fmt: skip
        if any(risk.area_scope_matches(incident, model) for incident in area):
            found.add(target_id)
    return found


def _targets_near(session: Session, spots: Sequence[tuple[float, float, float]]) -> set[int]:
    # Many incidents (a bulk import) fall in few places: one spot per 0.1-degree cell, at its
    # widest reach plus the cell's diagonal, tests the same targets (a few more, never fewer).
    cells: dict[tuple[int, int], float] = {}
    for lat, lon, reach in spots:
        key = (round(lat * 10), round(lon * 10))
        cells[key] = max(cells.get(key, 0.0), reach)
    if len(cells) < len(spots):
        spots = [(la / 10, lo / 10, reach + _CELL_DIAGONAL_KM) for (la, lo), reach in cells.items()]
    boxes = np.array([geo.bbox_around(lat, lon, reach) for lat, lon, reach in spots])
    rows = session.execute(
        select(
            Target.id,
            Target.box_min_lon,
            Target.box_min_lat,
            Target.box_max_lon,
            Target.box_max_lat,
        ).where(
            Target.box_max_lat >= float(boxes[:, 1].min()),
            Target.box_min_lat <= float(boxes[:, 3].max()),
            Target.box_max_lon >= float(boxes[:, 0].min()),
            Target.box_min_lon <= float(boxes[:, 2].max()),
        )
    ).all()
    if not rows:
        return set()
    table = np.array([r[1:] for r in rows], dtype=float)
    target_ids = np.array([r[0] for r in rows], dtype=np.int64)
    hit = np.zeros(len(rows), dtype=bool)
    for min_lon, min_lat, max_lon, max_lat in boxes:
        hit |= (
            (table[:, 3] >= min_lat) & (table[:, 1] <= max_lat)
            & (table[:, 2] >= min_lon) & (table[:, 0] <= max_lon)
        )  # fmt: skip
    return {int(i) for i in target_ids[hit]}


@dataclass(frozen=True, slots=True)
class Claim:
    """A queued target taken by one worker until its lease ends."""

    target_id: int
    cause: str
    generation: int


def claim(session: Session, limit: int, now: datetime, lease: timedelta) -> list[Claim]:
    """Lease up to `limit` queued targets not leased by a live worker (short transaction).

    On Postgres the candidates are picked with SKIP LOCKED, so workers never wait on each other;
    a worker that dies leaves its leases to expire and the targets are taken again.
    """
    candidates = (
        select(RescoreMark.target_id)
        .where(or_(RescoreMark.lease_expires_at.is_(None), RescoreMark.lease_expires_at < now))
        .order_by(RescoreMark.priority, RescoreMark.marked_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    rows = session.execute(
        update(RescoreMark)
        .where(RescoreMark.target_id.in_(candidates.scalar_subquery()))
        .values(lease_expires_at=now + lease)
        .returning(RescoreMark.target_id, RescoreMark.cause, RescoreMark.generation)
    ).all()
    return [Claim(target_id, cause, generation) for target_id, cause, generation in rows]


def _lock_in_order(session: Session, claims: Sequence[Claim]) -> None:
    # Queueing upserts rows in target order; taking these rows in the same order first means
    # the two never wait on each other in a cycle (a deadlock on PostgreSQL).
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            select(RescoreMark.target_id)
            .where(RescoreMark.target_id.in_(sorted(c.target_id for c in claims)))
            .order_by(RescoreMark.target_id)
            .with_for_update()
        )


def give_back(session: Session, claims: Sequence[Claim]) -> None:
    """Give leased targets back to the queue (after a failed batch)."""
    if claims:
        _lock_in_order(session, claims)
        session.execute(
            update(RescoreMark)
            .where(RescoreMark.target_id.in_([c.target_id for c in claims]))
            .values(lease_expires_at=None)
        )


def release(session: Session, claims: Sequence[Claim]) -> None:
    """Drop the queue entries just rescored, unless they were queued again meanwhile."""
    if claims:
        _lock_in_order(session, claims)
        session.execute(
            delete(RescoreMark).where(
                tuple_(RescoreMark.target_id, RescoreMark.generation).in_(
                    [(c.target_id, c.generation) for c in claims]
                )
            )
        )


@metrics.read_from_database(
    metrics.QUEUE_DEPTH, metrics.QUEUE_OLDEST, metrics.FEED_BACKLOG, metrics.FEED_BEHIND
)
def _gauges(session: Session, now: datetime) -> Iterator[metrics.Reading]:
    """Targets waiting to be rescored, and the incident feed the rescorer has not read."""
    marks, first = session.execute(select(func.count(), func.min(RescoreMark.marked_at))).one()
    yield metrics.QUEUE_DEPTH, ("rescore",), marks
    yield metrics.QUEUE_OLDEST, ("rescore",), metrics.seconds_since(now, first)
    position = cursors.position(session, FEED_CURSOR)
    yield from metrics.feed_readings(session, now, FEED_CURSOR, IncidentChange, position)
