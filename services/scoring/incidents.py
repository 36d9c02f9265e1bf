"""Incidents: idempotent upsert on (source, source_id), queries, and what they affect."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from types import SimpleNamespace
from typing import Any, Literal, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    false,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Row as SqlRow
from sqlalchemy.orm import Session

from services.core import metrics
from services.core.db import bulk_insert
from services.core.logs import current_request_id
from services.core.problems import Problem
from services.scoring import feed, merge, risk, schemas
from services.scoring.models import Incident
from services.scoring.taxonomy import (
    Category,
    Lifecycle,
    LocationPrecision,
    Sector,
    TargetType,
    TimePrecision,
)

Outcome = Literal["created", "updated", "unchanged"]
# Written to the incident feed: also "merged" (a report joined another's event), "split" (it
# no longer matches that event) and "promoted" (it now stands for its event in place of a
# retracted one).

# Only what the model and explanations read: loading whole ORM rows costs more than scoring.
MODEL_COLUMNS = (
    Incident.id, Incident.source, Incident.source_id, Incident.category, Incident.occurred_at,
    Incident.occurred_precision, Incident.reported_at, Incident.lat, Incident.lon,
    Incident.location_precision, Incident.scope_countries, Incident.scope_admin1,
    Incident.target_foreign_owned_only, Incident.target_sectors, Incident.target_type,
    Incident.victim_expatriate, Incident.victim_sector, Incident.fatalities_claimed,
    Incident.fatalities_best, Incident.source_reliability, Incident.lifecycle, Incident.title,
    Incident.merged_into_id,
)  # fmt: skip
Row = Incident | SqlRow[Any] | SimpleNamespace
_INCIDENTS = cast(Table, Incident.__table__)
# An incident as upsert hands it back: an ORM object (revised), a plain object of a new
# report's values, or the row read (unchanged).
Stored = Incident | SimpleNamespace | SqlRow[Any]


def to_model(row: Row) -> risk.Incident:
    """The model's view of a stored incident."""
    return risk.Incident(
        id=row.id,
        category=Category(row.category),
        occurred_at=row.occurred_at,
        occurred_precision=TimePrecision(row.occurred_precision),
        reported_at=row.reported_at,
        lat=row.lat,
        lon=row.lon,
        location_precision=LocationPrecision(row.location_precision),
        scope_countries=frozenset(row.scope_countries),
        scope_admin1=frozenset(row.scope_admin1),
        target_foreign_owned_only=row.target_foreign_owned_only,
        target_sectors=frozenset(Sector(s) for s in row.target_sectors),
        target_type=TargetType(row.target_type) if row.target_type else None,
        victim_expatriate=row.victim_expatriate,
        victim_sector=Sector(row.victim_sector) if row.victim_sector else None,
        fatalities_claimed=row.fatalities_claimed,
        fatalities_best=row.fatalities_best,
        source_reliability=row.source_reliability,
        lifecycle=Lifecycle(row.lifecycle),
        title=row.title,
        merged=row.merged_into_id is not None,
    )


def from_report(data: schemas.IncidentIn, incident_id: int, now: datetime) -> risk.Incident:
    """The model's view of a report that is not stored (a generated history, a fit's input)."""
    return to_model(SimpleNamespace(id=incident_id, merged_into_id=None, **_columns(data, now)))


def snapshot(model: risk.Incident) -> dict[str, Any]:
    """The model's view of an incident as JSON (the incident feed keeps replaced revisions)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(model):
        value = getattr(model, field.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, frozenset):
            value = sorted(v.value if isinstance(v, Enum) else v for v in value)
        elif isinstance(value, Enum):
            value = value.value
        out[field.name] = value
    return out


def from_snapshot(data: dict[str, Any]) -> risk.Incident:
    """Read back what `snapshot` wrote."""
    values = dict(data)
    for name in ("occurred_at", "reported_at"):
        values[name] = datetime.fromisoformat(values[name])
    # Written before merging existed, a snapshot has no `merged`: it was a counted report.
    values["merged_into_id"] = 0 if values.pop("merged", False) else None
    return to_model(SimpleNamespace(**values))


@dataclass(frozen=True, slots=True)
class Upserted:
    """An incident after an upsert, and the model's view of it before (to rescore both)."""

    # A new report is a plain object of its values, an unchanged one the row read.
    incident: Stored
    outcome: Outcome
    previous: risk.Incident | None
    merged: bool = False  # this call merged it into another report's event


def check_times(data: schemas.IncidentIn, now: datetime, skew: timedelta) -> None:
    """Refuse times in the future beyond the allowed clock skew."""
    limit = now + skew
    for field, value in (("occurred_at", data.occurred_at), ("reported_at", data.reported_at)):
        if value is not None and value > limit:
            raise Problem(
                422,
                "validation",
                f"{field} lies in the future",
                errors=[
                    {
                        "in": "body",
                        "pointer": f"/{field}",
                        "field": field,
                        "reason": f"later than now + {skew}",
                    }
                ],
            )


def _columns(data: schemas.IncidentIn, now: datetime) -> dict[str, Any]:
    lon, lat = data.location.coordinates if data.location else (None, None)
    # Unknown report time: we learn of it now (but never before it happened, within skew).
    reported_at = data.reported_at or max(now, data.occurred_at)
    return {
        "category": data.category.value,
        "occurred_at": data.occurred_at,
        "occurred_precision": data.occurred_precision.value,
        "reported_at": reported_at,
        "reported_at_estimated": data.reported_at_estimated,
        "lat": lat,
        "lon": lon,
        "location_precision": data.location_precision.value,
        "scope_countries": sorted(data.scope.countries) if data.scope else [],
        "scope_admin1": sorted(data.scope.admin1) if data.scope else [],
        "country": data.country,
        "admin1": data.admin1,
        "admin2": data.admin2,
        "location_name": data.location_name,
        "actors": list(data.actors),
        "target_type": data.target_type.value if data.target_type else None,
        "target_foreign_owned_only": data.target_profile.foreign_owned_only,
        "target_sectors": sorted(s.value for s in data.target_profile.sectors),
        "victim_expatriate": data.victim_profile.expatriate,
        "victim_nationality": data.victim_profile.nationality,
        "victim_sector": data.victim_profile.sector.value if data.victim_profile.sector else None,
        "fatalities_claimed": data.fatalities.claimed,
        "fatalities_low": data.fatalities.low,
        "fatalities_best": data.fatalities.best,
        "fatalities_high": data.fatalities.high,
        "source_reliability": data.source_reliability,
        "lifecycle": data.lifecycle.value,
        "title": data.title,
        "description": data.description,
        "tags": list(data.tags),
        "source_updated_at": data.source_updated_at,
        "source_fields": dict(data.source_fields),
    }


def upsert(session: Session, data: schemas.IncidentIn, now: datetime) -> Upserted:
    """Insert a new incident or update the one with the same (source, source_id)."""
    return upsert_many(session, [data], now)[0]


def with_keys(keys: Iterable[tuple[str, str]]) -> ColumnElement[bool]:
    """The condition selecting incidents by (source, source_id).

    One `source = s AND source_id IN (...)` per source: both engines use the unique index
    for it, where SQLite scans for a row-value IN.
    """
    by_source: dict[str, list[str]] = defaultdict(list)
    for source, source_id in keys:
        by_source[source].append(source_id)
    return or_(
        false(),
        *(
            and_(Incident.source == source, Incident.source_id.in_(sorted(ids)))
            for source, ids in sorted(by_source.items())
        ),
    )


def values(data: schemas.IncidentIn, now: datetime) -> dict[str, Any]:
    """A validated report as the column values `upsert_rows` stores."""
    return {"source": data.source, "source_id": data.source_id, **_columns(data, now)}


def upsert_many(
    session: Session,
    items: Sequence[schemas.IncidentIn],
    now: datetime,
    index: merge.Index | None = None,
) -> list[Upserted]:
    """Upsert validated incidents with distinct (source, source_id): one lookup, one flush."""
    return upsert_rows(session, [values(data, now) for data in items], now, index)


def upsert_rows(
    session: Session,
    rows: Sequence[dict[str, Any]],
    now: datetime,
    index: merge.Index | None = None,
) -> list[Upserted]:
    """Upsert reports given as column values (`values`), with distinct (source, source_id).

    New and revised reports of an event another report already stands for are merged into it;
    `index` (one per import) saves reading the same days again.
    """
    # The request storing them, for the logs of the jobs they cause (none from the CLI).
    # It goes into the rows written (not into `rows`: an import passes thousands).
    request_id = current_request_id()
    keys = [(r["source"], r["source_id"]) for r in rows]
    # Stored reports are read as plain rows: a re-import compares them and changes nothing, so
    # only those that change are loaded as ORM objects.
    existing: dict[tuple[str, str], SqlRow[Any]] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        for row in session.execute(select(_INCIDENTS).where(with_keys(chunk))):
            existing[(row.source, row.source_id)] = row
    found = [existing.get(key) for key in keys]
    revising = {
        i: row.id
        for i, (columns, row) in enumerate(zip(rows, found, strict=True))
        if row is not None and _revision(columns, row) is not None
    }
    loaded = {
        row.id: row
        for row in session.execute(
            select(Incident).where(Incident.id.in_(sorted(revising.values())))
        ).scalars()
    } if revising else {}  # fmt: skip
    revised: dict[int, Upserted] = {
        i: _update({**columns, "request_id": request_id}, loaded[revising[i]], now)
        if i in revising
        else Upserted(row, "unchanged", None)
        for i, (columns, row) in enumerate(zip(rows, found, strict=True))
        if row is not None
    }
    refreshed = [
        {"b_id": row.id, "b_hash": columns["source_hash"]}
        for i, (columns, row) in enumerate(zip(rows, found, strict=True))
        if row is not None and i not in revising
        and columns.get("source_hash") not in (None, row.source_hash)
    ]  # fmt: skip
    if refreshed:
        session.execute(
            update(_INCIDENTS)
            .where(_INCIDENTS.c.id == bindparam("b_id"))
            .values(source_hash=bindparam("b_hash")),
            refreshed,
        )
    fresh = [
        {
            "revision": 1,
            "created_at": now,
            "updated_at": now,
            "merged_into_id": None,
            **columns,
            "request_id": request_id,
        }
        for columns, row in zip(rows, found, strict=True)
        if row is None
    ]
    # New reports get their ids first and go in as one executemany INSERT, without the ORM's
    # unit of work or RETURNING: SQLAlchemy would send RETURNING as one statement of thousands
    # of parameters, which psycopg parses in Python (and SQLite, asked for the ids in order,
    # would insert a row per statement).
    for columns, incident_id in zip(fresh, _new_ids(session, len(fresh)), strict=True):
        columns["id"] = incident_id
    if fresh:
        bulk_insert(session, _INCIDENTS, fresh)
    created = iter(fresh)
    # Plain objects: an ORM instance of 45 columns costs more to make than the row to insert.
    out = [
        revised[i] if i in revised else Upserted(SimpleNamespace(**next(created)), "created", None)
        for i in range(len(rows))
    ]
    session.flush()
    changed = [r for r in out if r.outcome != "unchanged"]
    extra = _merge(session, changed, merge.Index(local=True) if index is None else index, now)
    out = [dataclasses.replace(r, merged=True) if r.incident.id in extra.joined else r for r in out]
    _feed(
        session,
        [(r.incident, _fed_outcome(r), r.previous) for r in out if r.outcome != "unchanged"]
        + extra.entries,
        now,
    )
    for outcome, count in Counter("merged" if r.merged else r.outcome for r in out).items():
        metrics.INCIDENTS.labels(outcome).inc(count)
    return out


def retract_many(
    session: Session,
    deletions: Sequence[tuple[str, str, datetime | None]],
    now: datetime,
    index: merge.Index | None = None,
) -> list[Upserted | None]:
    """Retract reports a source deleted, given as (source, source_id, deleted_at).

    Each gives the retracted incident, "unchanged" when it was already retracted or the
    deletion is older than its last edit, or None when no such report is stored.
    """
    keys = [(source, source_id) for source, source_id, _ in deletions]
    stored = {
        (row.source, row.source_id): row
        for start in range(0, len(keys), 500)
        for row in session.execute(
            select(Incident).where(with_keys(keys[start : start + 500]))
        ).scalars()
    }
    out: list[Upserted | None] = []
    for source, source_id, deleted_at in deletions:
        row = stored.get((source, source_id))
        if row is None:
            out.append(None)
            continue
        edited = row.source_updated_at
        if row.lifecycle == Lifecycle.RETRACTED.value or (
            deleted_at is not None and edited is not None and deleted_at < edited
        ):
            out.append(Upserted(row, "unchanged", None))
            continue
        previous = to_model(row)
        row.lifecycle = Lifecycle.RETRACTED.value
        row.source_updated_at = deleted_at or edited
        row.revision += 1
        row.updated_at = now
        out.append(Upserted(row, "updated", previous))
    session.flush()
    changed = [r for r in out if r is not None and r.outcome != "unchanged"]
    extra = _merge(session, changed, merge.Index(local=True) if index is None else index, now)
    _feed(session, [(r.incident, "retracted", r.previous) for r in changed] + extra.entries, now)
    metrics.INCIDENTS.labels("retracted").inc(len(changed))
    return out


def _fed_outcome(result: Upserted) -> str:
    if result.merged:
        return "merged"
    retracted = Lifecycle.RETRACTED.value
    if result.outcome == "updated" and result.incident.lifecycle == retracted:
        previous = result.previous
        if previous is not None and previous.lifecycle is not Lifecycle.RETRACTED:
            return "retracted"
    return result.outcome


def _feed(
    session: Session,
    entries: Sequence[tuple[Stored, str, risk.Incident | None]],
    now: datetime,
) -> None:
    feed.append_at_commit(
        session,
        [
            {
                "incident_id": incident.id,
                "revision": incident.revision,
                "outcome": outcome,
                "previous": snapshot(previous) if previous is not None else None,
                "created_at": now,
            }
            for incident, outcome, previous in entries
        ],
    )


@dataclass
class _Merged:
    joined: set[int] = dataclasses.field(default_factory=set)
    entries: list[tuple[Stored, str, risk.Incident | None]] = dataclasses.field(
        default_factory=list
    )
    # New reports (inserted without the ORM) that joined an event: written with one UPDATE.
    stored: list[dict[str, int]] = dataclasses.field(default_factory=list)


def _merge(
    session: Session, changed: Sequence[Upserted], index: merge.Index, now: datetime
) -> _Merged:
    """Keep one event one incident after `changed` were written (see `merge`)."""
    result = _Merged()
    earliest: dict[int, datetime] = {}  # event id -> the earliest report time of its new reports
    reports = [merge.Report.of(r.incident) for r in changed]
    index.load(session, reports, [r.incident for r in changed])

    def relink(row: Incident, event_id: int | None, outcome: str) -> None:
        # A report that starts or stops counting: the feed tells rescoring and alerts.
        previous = to_model(row)
        row.merged_into_id = event_id
        row.updated_at = now
        index.put(merge.Report.of(row))
        result.entries.append((row, outcome, previous))

    for upserted, report in zip(changed, reports, strict=True):
        row = upserted.incident
        index.put(report)
        if report.merged_into_id is not None:
            primary = index.get(report.merged_into_id) or _report(session, report.merged_into_id)
            if primary is not None and merge.distance(report, primary) is not None:
                continue
            row.merged_into_id = None  # this revision describes another event
            report = merge.Report.of(row)
            index.put(report)
        members = [m for m in index.members(row.id) if m.id != row.id]
        if report.lifecycle is Lifecycle.RETRACTED:
            if members:
                # Another source still reports the event: its first report stands for it now.
                heir = session.get(Incident, members[0].id)
                assert heir is not None
                relink(heir, None, "promoted")
                for moved in [row, *(session.get(Incident, m.id) for m in members[1:])]:
                    assert moved is not None
                    moved.merged_into_id = heir.id
                    moved.updated_at = now
                    index.put(merge.Report.of(moved))
            continue
        if members:
            for member in members:
                if merge.distance(member, report) is None:
                    split = session.get(Incident, member.id)
                    assert split is not None
                    relink(split, None, "split")
            continue
        event = index.best_event(report)
        if event is None:
            continue
        row.merged_into_id = event.id
        if isinstance(row, SimpleNamespace):
            result.stored.append({"b_id": row.id, "b_event": event.id})
        index.put(merge.Report.of(row))
        result.joined.add(row.id)
        earliest[event.id] = min(row.reported_at, earliest.get(event.id, row.reported_at))
    session.flush()
    if result.stored:
        session.execute(
            update(_INCIDENTS)
            .where(_INCIDENTS.c.id == bindparam("b_id"))
            .values(merged_into_id=bindparam("b_event")),
            result.stored,
        )
    if earliest:
        # The event was knowable as soon as any source reported it.
        session.execute(
            update(_INCIDENTS)
            .where(
                _INCIDENTS.c.id == bindparam("b_id"),
                _INCIDENTS.c.reported_at > bindparam("b_reported"),
            )
            .values(reported_at=bindparam("b_reported"), updated_at=now),
            [{"b_id": event, "b_reported": at} for event, at in sorted(earliest.items())],
        )
    return result


def _report(session: Session, incident_id: int) -> merge.Report | None:
    row = session.get(Incident, incident_id)
    return merge.Report.of(row) if row is not None else None


def _new_ids(session: Session, count: int) -> list[int]:
    """Ids for `count` new incidents, taken before they are inserted."""
    if not count:
        return []
    if session.get_bind().dialect.name == "postgresql":
        return list(
            session.execute(
                text(
                    "SELECT nextval(pg_get_serial_sequence('incident', 'id')) "
                    "FROM generate_series(1, :n)"
                ),
                {"n": count},
            ).scalars()
        )
    # SQLite: the write transaction holds the database's only write lock (BEGIN IMMEDIATE),
    # so the ids after the highest ever used are this transaction's until it commits. The
    # highest ever used, not the highest now: a deleted incident's id is never handed out again
    # (inserting them moves sqlite_sequence on, as AUTOINCREMENT does).
    top = session.execute(
        text(
            "SELECT max(coalesce((SELECT max(id) FROM incident), 0), "
            "coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'incident'), 0))"
        )
    ).scalar_one()
    return list(range(top + 1, top + count + 1))


def _revision(given: dict[str, Any], existing: Incident | SqlRow[Any]) -> dict[str, Any] | None:
    """The columns a resend would change, all of them; None when it changes nothing."""
    columns = {k: v for k, v in given.items() if k not in ("source", "source_id")}
    # The first time anyone could know of the event stays the first: a later resend cannot
    # hide it from an as-of score that already used it.
    columns["reported_at"] = min(existing.reported_at, columns["reported_at"])
    stored_edit, edit = existing.source_updated_at, columns["source_updated_at"]
    if stored_edit is not None and edit is not None and edit < stored_edit:
        return None  # an older edit than the one stored
    # The row's fingerprint alone is no revision (a new parser version changes it), nor is
    # the request that sent it again.
    if all(
        getattr(existing, k) == v
        for k, v in columns.items()
        if k not in ("source_hash", "request_id")
    ):
        return None
    return columns


def _update(given: dict[str, Any], existing: Incident, now: datetime) -> Upserted:
    columns = _revision(given, existing)
    if columns is None:
        return Upserted(existing, "unchanged", None)
    previous = to_model(existing)
    for name, value in columns.items():
        setattr(existing, name, value)
    existing.revision += 1
    existing.updated_at = now
    return Upserted(existing, "updated", previous)


def get(session: Session, incident_id: int) -> Incident | None:
    """Load one incident."""
    return session.get(Incident, incident_id)


def search(
    session: Session,
    *,
    bbox: tuple[float, float, float, float] | None,
    since: datetime | None,
    until: datetime | None,
    categories: Sequence[Category],
    country: str | None,
    include_retracted: bool,
    after: int,
    limit: int,
    include_merged: bool = False,
) -> Sequence[Incident]:
    """A page of incidents matching the filters, by id."""
    query = select(Incident).where(Incident.id > after)
    if bbox is not None:
        min_lon, min_lat, max_lon, max_lat = bbox
        query = query.where(
            Incident.lat.between(min_lat, max_lat), Incident.lon.between(min_lon, max_lon)
        )
    if since is not None:
        query = query.where(Incident.occurred_at >= since)
    if until is not None:
        query = query.where(Incident.occurred_at <= until)
    if categories:
        query = query.where(Incident.category.in_([c.value for c in categories]))
    if country is not None:
        query = query.where(Incident.country == country)
    if not include_retracted:
        query = query.where(Incident.lifecycle != Lifecycle.RETRACTED.value)
    if not include_merged:
        query = query.where(Incident.merged_into_id.is_(None))
    return session.execute(query.order_by(Incident.id).limit(limit)).scalars().all()


def sources(session: Session, rows: Sequence[Stored]) -> dict[int, list[schemas.SourceReport]]:
    """Every report of each row's event (merged ones included), by event id, first stored
    first."""
    events = {row.merged_into_id or row.id for row in rows}
    if not events:
        return {}
    ids = sorted(events)
    found = session.execute(
        select(
            Incident.id, Incident.source, Incident.source_id, Incident.category,
            Incident.occurred_at, Incident.reported_at, Incident.fatalities_claimed,
            Incident.fatalities_low, Incident.fatalities_best, Incident.fatalities_high,
            Incident.lifecycle, Incident.source_updated_at, Incident.merged_into_id,
        )
        .where(Incident.id.in_(ids) | Incident.merged_into_id.in_(ids))
        .order_by(Incident.id)
    ).all()  # fmt: skip
    out: dict[int, list[schemas.SourceReport]] = {event: [] for event in events}
    for r in found:
        out[r.merged_into_id or r.id].append(
            schemas.SourceReport(
                id=r.id, source=r.source, source_id=r.source_id, category=Category(r.category),
                occurred_at=r.occurred_at, reported_at=r.reported_at,
                fatalities=schemas.Fatalities(
                    claimed=r.fatalities_claimed, low=r.fatalities_low, best=r.fatalities_best,
                    high=r.fatalities_high,
                ),
                lifecycle=Lifecycle(r.lifecycle), source_updated_at=r.source_updated_at,
            )
        )  # fmt: skip
    return out


def to_feature(
    row: Stored,
    reports: dict[int, list[schemas.SourceReport]] | None = None,
) -> schemas.IncidentFeature:
    """Render an incident as a GeoJSON Feature, with its event's reports when given."""
    geometry = (
        schemas.PointGeometry(type="Point", coordinates=(row.lon, row.lat))
        if row.lat is not None and row.lon is not None
        else None
    )
    scope = (
        schemas.AreaScope(countries=row.scope_countries, admin1=row.scope_admin1)
        if row.scope_countries
        else None
    )
    properties = schemas.IncidentProperties.model_validate(
        {
            "source": row.source,
            "source_id": row.source_id,
            "category": row.category,
            "occurred_at": row.occurred_at,
            "occurred_precision": row.occurred_precision,
            "reported_at": row.reported_at,
            "reported_at_estimated": row.reported_at_estimated,
            "location_precision": row.location_precision,
            "scope": scope,
            "country": row.country,
            "admin1": row.admin1,
            "admin2": row.admin2,
            "location_name": row.location_name,
            "actors": row.actors,
            "target_type": row.target_type,
            "target_profile": {
                "foreign_owned_only": row.target_foreign_owned_only,
                "sectors": row.target_sectors,
            },
            "victim_profile": {
                "expatriate": row.victim_expatriate,
                "nationality": row.victim_nationality,
                "sector": row.victim_sector,
            },
            "fatalities": {
                "claimed": row.fatalities_claimed,
                "low": row.fatalities_low,
                "best": row.fatalities_best,
                "high": row.fatalities_high,
            },
            "source_reliability": row.source_reliability,
            "lifecycle": row.lifecycle,
            "title": row.title,
            "description": row.description,
            "tags": row.tags,
            "revision": row.revision,
            "source_updated_at": row.source_updated_at,
            "source_fields": row.source_fields,
            "merged_into": row.merged_into_id,
            "sources": (reports or {}).get(row.merged_into_id or row.id, []),
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
    )
    return schemas.IncidentFeature(id=row.id, geometry=geometry, properties=properties)
