"""Scores: compute them as of any time, keep current ones, append changes to the feed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import numpy as np
from sqlalchemy import (
    Integer,
    String,
    Table,
    case,
    delete,
    literal,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.core.db import UTCDateTime
from services.core.problems import Problem
from services.scoring import geo, incidents, risk, schemas, targets
from services.scoring.models import (
    CurrentScore,
    Incident,
    ModelVersion,
    RescoreMark,
    ScoreChange,
    Target,
)
from services.scoring.taxonomy import Band, Lifecycle, Sector, TargetKind

# Incidents listed in a score's explanation (the rest still count, and are counted).
EXPLAIN_TOP = 10
# Set on a session whose unit of work queued rescoring, so the worker is woken after commit.
RESCORE_QUEUED = "rescore_queued"
# PostgreSQL NOTIFY channel: workers in other processes are woken when the queueing commits.
RESCORE_CHANNEL = "riskalert_rescore"
# Held while change rows are inserted, so feed ids become visible in commit order on Postgres.
CHANGE_FEED_LOCK = 0x5C0E_FEED


@dataclass(frozen=True, slots=True)
class ActiveModel:
    """The model version in force and its parameters."""

    version: int
    params: risk.ModelParams


# Parsed parameters by (version, created_at): a stored version never changes, and parsing and
# validating the parameter document costs more than the query that finds the active version.
_parsed: dict[tuple[int, datetime], risk.ModelParams] = {}


def active_model(session: Session) -> ActiveModel | None:
    """The model version in force, or None on a database where none was created yet."""
    active = session.execute(
        select(ModelVersion.id, ModelVersion.created_at)
        .where(ModelVersion.active.is_(True))
        .order_by(ModelVersion.id.desc())
        .limit(1)
    ).first()
    if active is None:
        return None
    key = (active.id, active.created_at)
    if key not in _parsed:
        row = session.get_one(ModelVersion, active.id)
        if len(_parsed) > 64:
            _parsed.clear()
        _parsed[key] = risk.ModelParams.from_dict(row.params)
    return ActiveModel(active.id, _parsed[key])


def ensure_model(session: Session, now: datetime) -> ActiveModel:
    """The model version in force, creating version 1 from the defaults if there is none.

    Takes a write session (the creation is guarded by a savepoint).
    """
    found = active_model(session)
    if found is not None:
        return found
    try:
        # Processes starting on an empty database race to create version 1; the unique
        # index on the active version lets one win, and the others read its row.
        with session.begin_nested():
            row = ModelVersion(
                params=risk.DEFAULT_PARAMS.to_dict(),
                note="default parameters",
                active=True,
                created_by="system",
                created_at=now,
            )
            session.add(row)
    except IntegrityError:
        return ensure_model(session, now)
    return ActiveModel(row.id, risk.DEFAULT_PARAMS)


def publish_model(
    session: Session, params: dict[str, Any], note: str, created_by: str, now: datetime
) -> ModelVersion:
    """Make new parameters the active model version and queue every target for rescoring."""
    try:
        parsed = risk.ModelParams.from_dict(params)
    except ValueError as exc:
        raise Problem(
            422,
            "validation",
            f"invalid model parameters: {exc}",
            errors=[{"in": "body", "pointer": "/params", "field": "params", "reason": str(exc)}],
        ) from exc
    session.execute(update(ModelVersion).values(active=False))
    row = ModelVersion(
        params=parsed.to_dict(), note=note, active=True, created_by=created_by, created_at=now
    )
    session.add(row)
    session.flush()
    mark_all(session, "model", now)
    return row


@dataclass(frozen=True, slots=True)
class LoadedIncidents:
    """Incidents loaded for scoring, with the rows they came from (for explanations)."""

    incident_set: risk.IncidentSet
    rows: dict[int, incidents.Row]


def load_incidents(
    session: Session,
    params: risk.ModelParams,
    *,
    box: tuple[float, float, float, float] | None,
    until: datetime,
    since: datetime,
) -> LoadedIncidents:
    """Incidents that can count at some time in [since, until]: reported by then, recent enough."""
    lookback = timedelta(days=params.lookback_days)
    query = select(*incidents.MODEL_COLUMNS).where(
        Incident.reported_at <= until,
        Incident.occurred_at <= until,
        Incident.occurred_at >= since - lookback,
        Incident.lifecycle != Lifecycle.RETRACTED.value,
    )
    if box is not None:
        min_lon, min_lat, max_lon, max_lat = box
        query = query.where(
            or_(
                Incident.lat.is_(None),
                Incident.lat.between(min_lat, max_lat) & Incident.lon.between(min_lon, max_lon),
            )
        )
    rows: dict[int, incidents.Row] = {row.id: cast(Row[Any], row) for row in session.execute(query)}
    incident_set = risk.IncidentSet([incidents.to_model(r) for r in rows.values()], params)
    return LoadedIncidents(incident_set, rows)


class IncidentCache:
    """A worker's incidents in memory, topped up with the rows changed since its last look.

    Reloading every incident for every batch of targets costs more than scoring them. Rows
    stamped up to `overlap` before the last look are read again, so a transaction that stamped
    its rows earlier but committed later (or a process whose clock lags) is still seen; a full
    reload every `full_reload` bounds what could ever be missed, and drops incidents that aged
    out. Incidents are never deleted (a retraction is an update), so updates are all there is.
    """

    def __init__(
        self,
        overlap: timedelta = timedelta(minutes=1),
        full_reload: timedelta = timedelta(minutes=10),
    ) -> None:
        self._overlap = overlap
        self._full_reload = full_reload
        self._rows: dict[int, incidents.Row] = {}
        self._params: risk.ModelParams | None = None
        self._full_at: datetime | None = None
        self._seen: datetime | None = None
        self._loaded: LoadedIncidents | None = None

    def loaded(self, session: Session, params: risk.ModelParams, now: datetime) -> LoadedIncidents:
        """Every incident that can count as of `now` (and some that cannot: scoring filters)."""
        query = select(*incidents.MODEL_COLUMNS)
        full = (
            self._loaded is None
            or self._params != params
            or self._full_at is None
            or self._seen is None
            or now - self._full_at > self._full_reload
        )
        if full:
            query = query.where(Incident.occurred_at >= now - timedelta(days=params.lookback_days))
            self._rows = {}
            self._full_at = now
        else:
            assert self._seen is not None
            query = query.where(Incident.updated_at > self._seen - self._overlap)
        changed = {row.id: cast(Row[Any], row) for row in session.execute(query)}
        self._seen = now
        if full or changed:
            self._rows.update(changed)
            self._params = params
            incident_set = risk.IncidentSet(
                [incidents.to_model(r) for r in self._rows.values()], params
            )
            self._loaded = LoadedIncidents(incident_set, dict(self._rows))
        assert self._loaded is not None
        return self._loaded


def influence_box(
    coordinates: Sequence[Sequence[float]], radius_km: float, params: risk.ModelParams
) -> tuple[float, float, float, float]:
    """The box holding every incident that can affect a geometry."""
    reach = radius_km + risk.max_influence_km(params)
    boxes = [geo.bbox_around(c[1], c[0], reach) for c in coordinates]
    return (
        min(b[0] for b in boxes), min(b[1] for b in boxes),
        max(b[2] for b in boxes), max(b[3] for b in boxes),
    )  # fmt: skip


def document(
    ref: schemas.TargetRef,
    score: risk.Score,
    version: int,
    rows: dict[int, incidents.Row],
) -> schemas.ScoreOut:
    """The served form of a score, with incident sources and hotspot geometries."""
    contributions = []
    for c in score.contributions:
        row = rows[c.incident_id]
        contributions.append(
            schemas.ContributionOut(
                incident_id=c.incident_id,
                source=row.source,
                source_id=row.source_id,
                title=row.title,
                category=c.category,
                component=c.component,
                points=round(c.points, 2),
                share=round(c.share, 4),
                factors=dict(c.factors),
                why=c.why,
            )
        )
    hotspots = [
        schemas.HotspotFeature(
            geometry=schemas.LineStringGeometry(type="LineString", coordinates=list(h.coordinates)),
            properties=schemas.HotspotProperties(
                index=h.index, score=h.score, band=h.band, incident_count=h.incident_count
            ),
        )
        for h in score.hotspots
    ]
    return schemas.ScoreOut(
        target=ref,
        score=score.value,
        band=score.band,
        model_version=version,
        as_of=score.as_of,
        components={k: round(v, 2) for k, v in score.components.items()},
        escalation={k: round(v, 4) for k, v in score.escalation.items()},
        incident_count=score.incident_count,
        contributions=contributions,
        hotspots=hotspots,
    )


def ref_for(target: Target) -> schemas.TargetRef:
    """How a stored target is named in scores and feeds."""
    return schemas.TargetRef(kind=TargetKind(target.kind), id=target.id, name=target.name)


def score_as_of(
    session: Session, model: ActiveModel, target: Target, as_of: datetime
) -> schemas.ScoreOut:
    """Compute a stored target's score from what was reported by `as_of`."""
    loaded = load_incidents(
        session,
        model.params,
        box=influence_box(target.coordinates, target.radius_km, model.params),
        until=as_of,
        since=as_of,
    )
    score = risk.score_target(
        targets.to_model(target), loaded.incident_set, as_of, model.params, explain_top=EXPLAIN_TOP
    )
    return document(ref_for(target), score, model.version, loaded.rows)


def score_adhoc(
    session: Session, model: ActiveModel, data: schemas.AdhocIn, as_of: datetime
) -> schemas.ScoreOut:
    """Compute the score of an unregistered point or line."""
    p = data.properties
    coordinates: tuple[tuple[float, float], ...]
    if isinstance(data.geometry, schemas.PointGeometry):
        kind, coordinates = TargetKind.SITE, (data.geometry.coordinates,)
    else:
        kind, coordinates = TargetKind.CORRIDOR, tuple(data.geometry.coordinates)
    spec = risk.Target(
        kind=kind,
        coordinates=coordinates,
        radius_km=p.radius_km,
        mode=p.mode if kind is TargetKind.CORRIDOR else None,
        sector=p.sector,
        foreign_owned=p.foreign_owned,
        expat_staff=p.expat_staff,
        countries=frozenset(p.countries),
    )
    loaded = load_incidents(
        session,
        model.params,
        box=influence_box(coordinates, p.radius_km, model.params),
        until=as_of,
        since=as_of,
    )
    score = risk.score_target(
        spec, loaded.incident_set, as_of, model.params, explain_top=EXPLAIN_TOP
    )
    return document(schemas.TargetRef(kind=kind), score, model.version, loaded.rows)


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
    _queued(session)


MARK_COLUMNS = ["target_id", "cause", "priority", "marked_at", "generation"]


def mark_targets(session: Session, target_ids: Iterable[int], cause: str, now: datetime) -> int:
    """Queue targets for rescoring; one row per target however often it is queued."""
    priority = _PRIORITY.get(cause, URGENT)
    rows = [
        {"target_id": i, "cause": cause, "priority": priority, "marked_at": now, "generation": 1}
        for i in sorted(set(target_ids))
    ]
    if rows:
        _queue(session, rows)
    return len(rows)


def _queued(session: Session) -> None:
    if session.info.get(RESCORE_QUEUED):
        return
    session.info[RESCORE_QUEUED] = True
    if session.get_bind().dialect.name == "postgresql":
        # Transactional: delivered to listeners only if and when this unit of work commits.
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": RESCORE_CHANNEL})


def mark_all(session: Session, cause: str, now: datetime) -> None:
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


def affected_targets(
    session: Session, changed: Sequence[incidents.Upserted], params: risk.ModelParams
) -> set[int]:
    """Targets that incidents just created or updated can affect directly, then or now.

    Point incidents: targets whose stored box overlaps the incident's primary reach (the faint
    regional tail is left to the decay tick). Area-scoped: targets matching scope and profile.
    An update also affects whatever the incident's previous version could.
    """
    spots: list[tuple[float, float, float]] = []
    area: list[risk.Incident] = []
    for item in changed:
        versions = [incidents.to_model(item.incident)]
        if item.previous is not None:
            versions.append(item.previous)
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


def claim_marks(session: Session, limit: int, now: datetime, lease: timedelta) -> list[Claim]:
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


def _changed(old: CurrentScore | None, new: schemas.ScoreOut, min_delta: float) -> bool:
    if old is None:
        return True
    return (
        old.fed_band != new.band.value
        or old.model_version != new.model_version
        or abs(old.fed_value - new.score) >= min_delta
    )


@dataclass(frozen=True, slots=True)
class Computed:
    """A target's freshly computed score, ready to store."""

    target: Target
    doc: schemas.ScoreOut


def compute(
    session: Session,
    model: ActiveModel,
    target_ids: Sequence[int],
    now: datetime,
    cache: IncidentCache | None = None,
) -> list[Computed]:
    """Score targets as of `now` (reads only: run it outside any write transaction)."""
    if not target_ids:
        return []
    rows = session.execute(select(Target).where(Target.id.in_(target_ids))).scalars().all()
    if not rows:
        return []
    if cache is not None:
        loaded = cache.loaded(session, model.params, now)
    else:
        boxes = [influence_box(t.coordinates, t.radius_km, model.params) for t in rows]
        union = (
            min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes),
        )  # fmt: skip
        loaded = load_incidents(session, model.params, box=union, until=now, since=now)
    out = []
    for target in rows:
        score = risk.score_target(
            targets.to_model(target),
            loaded.incident_set,
            now,
            model.params,
            explain_top=EXPLAIN_TOP,
        )
        out.append(Computed(target, document(ref_for(target), score, model.version, loaded.rows)))
    return out


def store(
    session: Session,
    computed: Sequence[Computed],
    now: datetime,
    *,
    causes: Mapping[int, str],
    min_delta: float,
) -> int:
    """Store computed scores and append the real moves to the feed; return how many moved."""
    ids = [c.target.id for c in computed]
    # A target deleted since it was computed has nothing left to store.
    alive = set(session.execute(select(Target.id).where(Target.id.in_(ids))).scalars())
    current = {
        s.target_id: s
        for s in session.execute(
            select(CurrentScore).where(CurrentScore.target_id.in_(ids))
        ).scalars()
    }
    changes: list[ScoreChange] = []
    for item in computed:
        target, doc = item.target, item.doc
        old = current.get(target.id)
        if target.id not in alive or (old is not None and old.as_of > doc.as_of):
            # Deleted meanwhile, or another worker already stored a newer score: keep it.
            continue
        fed = _changed(old, doc, min_delta)
        if fed:
            changes.append(change_row(target, old, doc, causes[target.id], now))
        body = doc.model_dump_json()
        if old is None:
            session.add(
                CurrentScore(
                    target_id=target.id,
                    model_version=doc.model_version,
                    value=doc.score,
                    band=doc.band.value,
                    as_of=doc.as_of,
                    document=body,
                    fed_value=doc.score,
                    fed_band=doc.band.value,
                )
            )
        else:
            old.model_version, old.value, old.band = doc.model_version, doc.score, doc.band.value
            old.as_of, old.document = doc.as_of, body
            if fed:
                old.fed_value, old.fed_band = doc.score, doc.band.value
    session.flush()
    append_changes(session, changes)
    return len(changes)


def rescore(
    session: Session,
    model: ActiveModel,
    target_ids: Sequence[int],
    now: datetime,
    *,
    cause: str,
    min_delta: float,
) -> int:
    """Compute and store in one unit of work (for a single target changed by a request)."""
    computed = compute(session, model, target_ids, now)
    return store(
        session, computed, now, causes={c.target.id: cause for c in computed}, min_delta=min_delta
    )


def change_row(
    target: Target, old: CurrentScore | None, doc: schemas.ScoreOut, cause: str, now: datetime
) -> ScoreChange:
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
            for c in doc.contributions[:5]
        ],
        cause=cause,
        created_at=now,
    )


def append_changes(session: Session, changes: Sequence[ScoreChange]) -> None:
    """Append feed entries; on Postgres under a lock so ids are committed in order."""
    if not changes:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHANGE_FEED_LOCK})
    session.add_all(changes)
    session.flush()


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
    append_changes(session, [change])


def changes_page(
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


def return_marks(session: Session, claims: Sequence[Claim]) -> None:
    """Give leased targets back to the queue (after a failed batch)."""
    if claims:
        session.execute(
            update(RescoreMark)
            .where(RescoreMark.target_id.in_([c.target_id for c in claims]))
            .values(lease_expires_at=None)
        )


def release_marks(session: Session, claims: Sequence[Claim]) -> None:
    """Drop the queue entries just rescored, unless they were queued again meanwhile."""
    if claims:
        session.execute(
            delete(RescoreMark).where(
                tuple_(RescoreMark.target_id, RescoreMark.generation).in_(
                    [(c.target_id, c.generation) for c in claims]
                )
            )
        )


def backtest(
    session: Session, model: ActiveModel, data: schemas.BacktestIn, stored: Sequence[Target]
) -> schemas.BacktestOut:
    """Scores of many points and targets at many times, each from what was reported by then."""
    earliest, latest = min(data.times), max(data.times)
    coordinates = [(p.lon, p.lat) for p in data.points] + [c for t in stored for c in t.coordinates]
    radius = max([data.radius_km] + [t.radius_km for t in stored])
    box = influence_box(coordinates, radius, model.params) if coordinates else None
    loaded = load_incidents(session, model.params, box=box, until=latest, since=earliest)
    scores: list[list[float]] = []
    if data.points:
        n, m = len(data.points), len(data.times)
        lats = np.repeat(np.array([p.lat for p in data.points], dtype=float), m)
        lons = np.repeat(np.array([p.lon for p in data.points], dtype=float), m)
        stamps = np.tile(np.array([t.timestamp() for t in data.times], dtype=float), n)
        values = risk.score_points(
            lats, lons, stamps, loaded.incident_set, model.params, radius_km=data.radius_km
        )
        scores.extend(values.reshape(n, m).round(1).tolist())
    for target in stored:
        spec = targets.to_model(target)
        scores.append(
            [
                risk.score_target(spec, loaded.incident_set, t, model.params, explain_top=0).value
                for t in data.times
            ]
        )
    bands = [[risk.band_for(v, model.params) for v in row] for row in scores]
    return schemas.BacktestOut(
        model_version=model.version, times=list(data.times), scores=scores, bands=bands
    )
