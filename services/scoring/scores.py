"""Scores: compute them as of any time, keep current ones, append changes to the feed."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import numpy as np
import pydantic_core
from sqlalchemy import (
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.core import audit, metrics, modelchange, wake
from services.core.auth import Principal, Role
from services.core.problems import Problem
from services.scoring import feed, geo, incidents, queue, readcache, risk, schemas, targets
from services.scoring.models import (
    CurrentScore,
    Incident,
    ModelVersion,
    ScoreChange,
    Target,
)
from services.scoring.taxonomy import Lifecycle, TargetKind

# Incidents listed in a score's explanation (the rest still count, and are counted).
EXPLAIN_TOP = 10


@dataclass(frozen=True, slots=True)
class ActiveModel:
    """The model version in force and its parameters."""

    version: int
    params: risk.ModelParams


# Parsed parameters by (version, created_at): a stored version never changes, and parsing and
# validating the parameter document costs more than the query that finds the active version.
_parsed: dict[tuple[int, datetime], risk.ModelParams] = {}


def active_model(session: Session) -> ActiveModel | None:
    """The model version in force, or None on a database where none was created yet, or where
    the version in force is of the legacy (hand-set, 0-100) model that ensure_model replaces."""
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
        # The parameters only: a later release's schema may have more columns, never fewer.
        params = session.execute(
            select(ModelVersion.params).where(ModelVersion.id == active.id)
        ).scalar_one()
        if not risk.is_current(params):
            return None
        if len(_parsed) > 64:
            _parsed.clear()
        _parsed[key] = risk.ModelParams.from_dict(params)
    return ActiveModel(active.id, _parsed[key])


# The band thresholds of the legacy model (a 0-100 score, not a probability): its stored
# thresholds are carried over band by band when the fitted model replaces it.
LEGACY_THRESHOLDS = (20.0, 40.0, 60.0, 80.0)
SYSTEM = Principal(key_id=None, tenant_id=None, roles=frozenset({Role.ADMIN}))


def model_in_force(
    reads: sessionmaker[Session], writes: sessionmaker[Session], now: datetime
) -> ActiveModel:
    """The model version in force, created (in a write transaction of its own) if none is."""
    # A read session of its own, closed before the caller goes on: a write route holding a
    # read connection while it waits for a write one could starve the pool under load.
    with reads() as session:
        found = active_model(session)
    if found is not None:
        return found
    with writes.begin() as write:
        return ensure_model(write, now)


def ensure_model(session: Session, now: datetime) -> ActiveModel:
    """The model version in force, creating version 1 from the defaults if there is none, or
    replacing a legacy version in force by the defaults (audited, thresholds carried over).

    Takes a write session (the creation is guarded by a savepoint).
    """
    found = active_model(session)
    if found is not None:
        return found
    legacy = session.execute(
        select(ModelVersion).where(ModelVersion.active.is_(True))
    ).scalar_one_or_none()
    try:
        # Processes starting on an empty database race to create version 1; the unique
        # index on the active version lets one win, and the others read its row.
        with session.begin_nested():
            if legacy is None:
                row = ModelVersion(
                    params=risk.DEFAULT_PARAMS.to_dict(),
                    note="default parameters",
                    active=True,
                    created_by="system",
                    created_at=now,
                    report=default_report(),
                )
                session.add(row)
            else:
                published = publish_model(
                    session,
                    risk.DEFAULT_PARAMS.to_dict(),
                    "the fitted, calibrated model replaces the legacy hand-set score; score "
                    "thresholds carried over band by band",
                    "system",
                    now,
                    report=default_report(),
                )
                row = published.row
                audit.record(
                    session,
                    SYSTEM,
                    action="model.publish",
                    resource=f"model/{row.id}",
                    before={"version": legacy.id},
                    after={"version": row.id, "carried_over": published.carried_over},
                    now=now,
                )
    except IntegrityError:
        return ensure_model(session, now)
    return ActiveModel(row.id, risk.DEFAULT_PARAMS)


def default_report() -> dict[str, Any] | None:
    """The fit report of the shipped defaults (from default_model.json), if there is one."""
    path = risk.params.DEFAULTS_FILE
    if not path.exists():
        return None
    report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["report"]
    return report


@dataclass(frozen=True, slots=True)
class Published:
    """A published version and the stored thresholds its publication moved."""

    row: ModelVersion
    carried_over: dict[str, list[dict[str, Any]]]


def publish_model(
    session: Session,
    params: dict[str, Any],
    note: str,
    created_by: str,
    now: datetime,
    *,
    report: dict[str, Any] | None = None,
) -> Published:
    """Make new parameters the active model version and queue every target for rescoring.

    Services that store values on the score scale are told (services/core/modelchange.py): when
    the bands differ from the version in force (or that one is legacy), stored score thresholds
    are carried over band by band; `carried_over` lists what moved or would alert differently."""
    try:
        parsed = risk.ModelParams.from_dict(params)
    except ValueError as exc:
        raise Problem(
            422,
            "validation",
            f"invalid model parameters: {exc}",
            errors=[{"in": "body", "pointer": "/params", "field": "params", "reason": str(exc)}],
        ) from exc
    before = session.execute(
        select(ModelVersion).where(ModelVersion.active.is_(True))
    ).scalar_one_or_none()
    session.execute(update(ModelVersion).values(active=False))
    row = ModelVersion(
        params=parsed.to_dict(),
        note=note,
        active=True,
        created_by=created_by,
        created_at=now,
        report=report,
    )
    session.add(row)
    session.flush()
    carried: dict[str, list[dict[str, Any]]] = {}
    if before is not None:
        old = tuple(before.params.get("band_thresholds") or LEGACY_THRESHOLDS)
        change = modelchange.ModelChange(
            old_version=before.id,
            new_version=row.id,
            old_params=before.params,
            new_params=row.params,
            old_thresholds=old,
            new_thresholds=parsed.band_thresholds,
            rescaled=old != parsed.band_thresholds or not risk.is_current(before.params),
            reason=note,
        )
        carried = modelchange.carry_over(session, change, now)
    queue.add_all(session, "model", now)
    return Published(row, carried)


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
        Incident.merged_into_id.is_(None),
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
        # The model form of each row, converted once (a top-up converts only what changed).
        self._models: dict[int, risk.Incident] = {}
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
        # Older incidents cannot count (a bulk import of history brings many of them).
        query = query.where(Incident.occurred_at >= now - timedelta(days=params.lookback_days))
        if full:
            self._rows = {}
            self._models = {}
            self._full_at = now
        else:
            assert self._seen is not None
            query = query.where(Incident.updated_at > self._seen - self._overlap)
        # Rows stamped within the overlap are read again on every look: only those that
        # differ from the cached ones call for a new incident set.
        changed = {
            row.id: cast(Row[Any], row)
            for row in session.execute(query)
            if self._rows.get(row.id) != row
        }
        self._seen = now
        if full or changed:
            self._rows.update(changed)
            self._models.update((i, incidents.to_model(r)) for i, r in changed.items())
            self._params = params
            incident_set = risk.IncidentSet(list(self._models.values()), params)
            self._loaded = LoadedIncidents(incident_set, dict(self._rows))
        assert self._loaded is not None
        return self._loaded


def influence_box(
    coordinates: Sequence[Sequence[float]], radius_km: float, params: risk.ModelParams
) -> tuple[float, float, float, float]:
    """The box holding every incident that can affect a geometry."""
    lons = [c[0] for c in coordinates]
    lats = [c[1] for c in coordinates]
    reach = radius_km + risk.max_influence_km(params)
    return geo.bbox_spanning(min(lats), max(lats), min(lons), max(lons), reach)


def served(
    ref: schemas.TargetRef,
    score: risk.Score,
    version: int,
    rows: Mapping[int, incidents.Row],
) -> dict[str, Any]:
    """The served form of a score as plain data (ScoreOut's fields, in its order), with
    incident sources and hotspot geometries.

    Rescoring serialises this directly (pydantic_core.to_json, the serialiser model_dump_json
    uses): validating ten contributions per target, on every rescore, cost more than computing
    them. tests/test_score_documents.py holds it to the validated ScoreOut, byte for byte."""
    contributions = []
    for c in score.contributions:
        row = rows[c.incident_id]
        contributions.append(
            {
                "incident_id": c.incident_id,
                "source": row.source,
                "source_id": row.source_id,
                "title": row.title,
                "category": c.category.value,
                "component": c.component.value,
                "points": round(c.points, 2),
                "share": round(c.share, 4),
                "factors": dict(c.factors),
                "why": c.why,
            }
        )
    hotspots = [
        {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [list(p) for p in h.coordinates]},
            "properties": {
                "index": h.index,
                "score": h.score,
                "band": h.band.value,
                "incident_count": h.incident_count,
            },
        }
        for h in score.hotspots
    ]
    return {
        "target": {"kind": ref.kind.value, "id": ref.id, "name": ref.name},
        "score": score.value,
        "probability": round(score.probability, 6),
        "generic_probability": round(score.generic_probability, 6),
        "band": score.band.value,
        "model_version": version,
        "as_of": score.as_of,
        "forecast": {
            "distance_km": score.forecast_distance_km,
            "horizon_days": score.forecast_horizon_days,
        },
        "components": {k.value: round(v, 2) for k, v in score.components.items()},
        "adjustments": [
            {
                "kind": a.kind,
                "odds_factor": a.factor,
                "incident_ids": list(a.incident_ids),
                "why": a.why,
            }
            for a in score.adjustments
        ],
        "escalation": {k: round(v, 4) for k, v in score.escalation.items()},
        "incident_count": score.incident_count,
        "contributions": contributions,
        "hotspots": hotspots,
    }


def document(
    ref: schemas.TargetRef,
    score: risk.Score,
    version: int,
    rows: Mapping[int, incidents.Row],
) -> schemas.ScoreOut:
    """The served form of a score, validated."""
    return schemas.ScoreOut.model_validate(served(ref, score, version, rows))


def ref_for(target: Target) -> schemas.TargetRef:
    """How a stored target is named in scores and feeds."""
    return schemas.TargetRef(kind=TargetKind(target.kind), id=target.id, name=target.name)


def score_as_of(
    session: Session, model: ActiveModel, target: Target, as_of: datetime
) -> schemas.ScoreOut:
    """Compute a stored target's score from what was reported by `as_of`."""
    return _score_spec(session, model, targets.to_model(target), ref_for(target), as_of)


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
    return _score_spec(session, model, spec, schemas.TargetRef(kind=kind), as_of)


def _score_spec(
    session: Session,
    model: ActiveModel,
    spec: risk.Target,
    ref: schemas.TargetRef,
    as_of: datetime,
) -> schemas.ScoreOut:
    loaded = load_incidents(
        session,
        model.params,
        box=influence_box(spec.coordinates, spec.radius_km, model.params),
        until=as_of,
        since=as_of,
    )
    score = risk.score_target(
        spec, loaded.incident_set, as_of, model.params, explain_top=EXPLAIN_TOP
    )
    return document(ref, score, model.version, loaded.rows)


@dataclass(frozen=True, slots=True)
class Computed:
    """A target's freshly computed score, ready to store: what the feed records of it, and
    the served document, serialised."""

    target: Target
    summary: feed.Summary
    body: str


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
        box = influence_box(
            [c for t in rows for c in t.coordinates], max(t.radius_km for t in rows), model.params
        )
        loaded = load_incidents(session, model.params, box=box, until=now, since=now)
    computed = risk.score_targets(
        [targets.to_model(t) for t in rows],
        loaded.incident_set,
        now,
        model.params,
        explain_top=EXPLAIN_TOP,
    )
    return [
        Computed(
            target,
            feed.Summary.of(score, model.version),
            pydantic_core.to_json(
                served(ref_for(target), score, model.version, loaded.rows)
            ).decode(),
        )
        for target, score in zip(rows, computed, strict=True)
    ]


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
    # Rows, not ORM objects: building and flushing 500 of them cost as much as scoring them.
    current = {
        row.target_id: row
        for row in session.execute(
            select(
                CurrentScore.target_id,
                CurrentScore.as_of,
                CurrentScore.model_version,
                CurrentScore.fed_value,
                CurrentScore.fed_band,
            ).where(CurrentScore.target_id.in_(ids))
        )
    }
    changes: list[ScoreChange] = []
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for item in computed:
        target, doc, body = item.target, item.summary, item.body
        old = current.get(target.id)
        if target.id not in alive or (old is not None and old.as_of > doc.as_of):
            # Deleted meanwhile, or another worker already stored a newer score: keep it.
            continue
        fed = feed.worth_recording(old, doc, min_delta)
        if fed:
            changes.append(feed.entry(target, old, doc, causes[target.id], now))
        values = {
            "target_id": target.id,
            "model_version": doc.model_version,
            "value": doc.score,
            "band": doc.band.value,
            "as_of": doc.as_of,
            "document": body,
        }
        if fed or old is None:
            values.update(fed_value=doc.score, fed_band=doc.band.value)
        (inserts if old is None else updates).append(values)
    if inserts:
        session.execute(insert(CurrentScore), inserts)
    if updates:
        # By primary key, one executemany per set of columns.
        session.execute(update(CurrentScore), updates)
    session.flush()
    # Every process's cache of documents is emptied when this commits (readcache).
    wake.announce(session, readcache.CHANNEL)
    feed.append(session, changes)
    for change in changes:
        metrics.SCORE_CHANGES.labels(
            "band" if change.band != change.previous_band else "value"
        ).inc()
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
    if stored:
        # All stored targets at one time are one batch.
        specs = [targets.to_model(target) for target in stored]
        by_time = [
            risk.score_targets(specs, loaded.incident_set, t, model.params, explain_top=0)
            for t in data.times
        ]
        scores.extend([at[k].value for at in by_time] for k in range(len(stored)))
    bands = [[risk.band_for(v, model.params) for v in row] for row in scores]
    return schemas.BacktestOut(
        model_version=model.version, times=list(data.times), scores=scores, bands=bands
    )
