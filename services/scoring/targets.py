"""Sites and corridors: a tenant's targets, stored with the box they can be affected within."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.scoring import geo, risk, schemas
from services.scoring.models import CurrentScore, Target
from services.scoring.taxonomy import Band, Mode, Sector, TargetKind


def _box(coordinates: Sequence[Sequence[float]], radius_km: float) -> dict[str, float]:
    lons = [c[0] for c in coordinates]
    lats = [c[1] for c in coordinates]
    min_lon, min_lat, max_lon, max_lat = geo.bbox_spanning(
        min(lats), max(lats), min(lons), max(lons), radius_km
    )
    return {
        "box_min_lat": min_lat,
        "box_max_lat": max_lat,
        "box_min_lon": min_lon,
        "box_max_lon": max_lon,
    }


def _site_columns(data: schemas.SiteIn) -> dict[str, object]:
    p = data.properties
    coordinates = [list(data.geometry.coordinates)]
    return {
        "kind": TargetKind.SITE.value,
        "name": p.name,
        "coordinates": coordinates,
        "radius_km": p.radius_km,
        "mode": None,
        "sector": p.sector.value if p.sector else None,
        "foreign_owned": p.foreign_owned,
        "expat_staff": p.expat_staff,
        "countries": [p.country],
        "admin1": [p.admin1] if p.admin1 else [],
        "tags": sorted(set(p.tags)),
        **_box(coordinates, p.radius_km),
    }


def _corridor_columns(data: schemas.CorridorIn) -> dict[str, object]:
    p = data.properties
    coordinates = [list(c) for c in data.geometry.coordinates]
    return {
        "kind": TargetKind.CORRIDOR.value,
        "name": p.name,
        "coordinates": coordinates,
        "radius_km": p.buffer_km,
        "mode": p.mode.value,
        "sector": p.sector.value if p.sector else None,
        "foreign_owned": p.foreign_owned,
        "expat_staff": p.expat_staff,
        "countries": sorted(set(p.countries)),
        "admin1": [],
        "tags": sorted(set(p.tags)),
        **_box(coordinates, p.buffer_km),
    }


def columns_for(data: schemas.SiteIn | schemas.CorridorIn) -> dict[str, object]:
    """The stored columns of a site or corridor body."""
    if isinstance(data, schemas.SiteIn):
        return _site_columns(data)
    return _corridor_columns(data)


def create(
    session: Session, tenant_id: int, data: schemas.SiteIn | schemas.CorridorIn, now: datetime
) -> Target:
    """Store a new target."""
    target = Target(tenant_id=tenant_id, created_at=now, updated_at=now, **columns_for(data))
    session.add(target)
    session.flush()
    return target


def replace(
    session: Session, target: Target, data: schemas.SiteIn | schemas.CorridorIn, now: datetime
) -> None:
    """Overwrite a target with a new body."""
    for name, value in columns_for(data).items():
        setattr(target, name, value)
    target.updated_at = now
    session.flush()


def get(session: Session, tenant_id: int, kind: TargetKind, target_id: int) -> Target | None:
    """Load a tenant's target; another tenant's is as absent as a missing one."""
    return session.execute(
        select(Target).where(
            Target.id == target_id, Target.tenant_id == tenant_id, Target.kind == kind.value
        )
    ).scalar_one_or_none()


def get_many(
    session: Session, tenant_id: int, refs: Sequence[tuple[TargetKind, int]]
) -> dict[tuple[TargetKind, int], Target]:
    """Load a tenant's targets by (kind, id) in one query; others' and missing ones are absent."""
    if not refs:
        return {}
    rows = session.execute(
        select(Target).where(
            Target.tenant_id == tenant_id, Target.id.in_({target_id for _, target_id in refs})
        )
    ).scalars()
    return {(TargetKind(t.kind), t.id): t for t in rows}


def get_with_score(
    session: Session, tenant_id: int, kind: TargetKind, target_id: int
) -> tuple[Target, CurrentScore | None] | None:
    """Load a tenant's target and its current score in one query (the hot read path)."""
    row = session.execute(
        select(Target, CurrentScore)
        .outerjoin(CurrentScore, CurrentScore.target_id == Target.id)
        .where(Target.id == target_id, Target.tenant_id == tenant_id, Target.kind == kind.value)
    ).first()
    return None if row is None else (row[0], row[1])


def stored_document(
    session: Session, tenant_id: int, kind: TargetKind, target_id: int
) -> tuple[str | None] | None:
    """A tenant's target's stored score document (None before its first score), or None when
    there is no such target: the two columns a current score read needs, no ORM objects."""
    row = session.execute(
        select(CurrentScore.document)
        .select_from(Target)
        .outerjoin(CurrentScore, CurrentScore.target_id == Target.id)
        .where(Target.id == target_id, Target.tenant_id == tenant_id, Target.kind == kind.value)
    ).first()
    return None if row is None else (row[0],)


def page(
    session: Session, tenant_id: int, kind: TargetKind, *, tag: str | None, after: int, limit: int
) -> list[tuple[Target, CurrentScore | None]]:
    """A page of a tenant's targets of one kind (optionally with a tag), with current scores."""
    query = (
        select(Target, CurrentScore)
        .outerjoin(CurrentScore, CurrentScore.target_id == Target.id)
        .where(Target.tenant_id == tenant_id, Target.kind == kind.value)
        .order_by(Target.id)
    )
    if tag is None:
        return [(t, s) for t, s in session.execute(query.where(Target.id > after).limit(limit))]
    # Tags live in a JSON list, which the two engines query differently: filter here, scanning
    # forward in chunks until the page is full or the targets run out.
    found: list[tuple[Target, CurrentScore | None]] = []
    cursor, chunk = after, max(limit, 200)
    while len(found) < limit:
        rows = [(t, s) for t, s in session.execute(query.where(Target.id > cursor).limit(chunk))]
        found.extend((t, s) for t, s in rows if tag in t.tags)
        if len(rows) < chunk:
            break
        cursor = rows[-1][0].id
    return found[:limit]


def snapshot(target: Target) -> dict[str, object]:
    """A JSON-ready copy of a target's stored fields, for the audit log."""
    return {
        "id": target.id, "kind": target.kind, "name": target.name,
        "coordinates": target.coordinates, "radius_km": target.radius_km, "mode": target.mode,
        "sector": target.sector, "foreign_owned": target.foreign_owned,
        "expat_staff": target.expat_staff, "countries": target.countries,
        "admin1": target.admin1, "tags": target.tags,
    }  # fmt: skip


def summary(score: CurrentScore | None) -> schemas.ScoreSummary | None:
    """The short form of a stored score."""
    if score is None:
        return None
    return schemas.ScoreSummary(
        score=score.value,
        band=Band(score.band),
        as_of=score.as_of,
        model_version=score.model_version,
    )


def to_site_feature(target: Target, score: CurrentScore | None) -> schemas.SiteFeature:
    """Render a stored site as GeoJSON."""
    lon, lat = target.coordinates[0]
    return schemas.SiteFeature(
        id=target.id,
        geometry=schemas.PointGeometry(type="Point", coordinates=(lon, lat)),
        properties=schemas.SiteOutProperties(
            name=target.name,
            radius_km=target.radius_km,
            sector=Sector(target.sector) if target.sector else None,
            foreign_owned=target.foreign_owned,
            expat_staff=target.expat_staff,
            country=target.countries[0],
            admin1=target.admin1[0] if target.admin1 else None,
            tags=target.tags,
            created_at=target.created_at,
            updated_at=target.updated_at,
            current_score=summary(score),
        ),
    )


def to_corridor_feature(target: Target, score: CurrentScore | None) -> schemas.CorridorFeature:
    """Render a stored corridor as GeoJSON."""
    return schemas.CorridorFeature(
        id=target.id,
        geometry=schemas.LineStringGeometry(
            type="LineString", coordinates=[(c[0], c[1]) for c in target.coordinates]
        ),
        properties=schemas.CorridorOutProperties(
            name=target.name,
            buffer_km=target.radius_km,
            mode=Mode(target.mode or Mode.ROAD),
            countries=target.countries,
            sector=Sector(target.sector) if target.sector else None,
            foreign_owned=target.foreign_owned,
            expat_staff=target.expat_staff,
            tags=target.tags,
            created_at=target.created_at,
            updated_at=target.updated_at,
            current_score=summary(score),
        ),
    )


def to_model(target: Target) -> risk.Target:
    """The model's view of a stored target."""
    return risk.Target(
        kind=TargetKind(target.kind),
        coordinates=tuple((c[0], c[1]) for c in target.coordinates),
        radius_km=target.radius_km,
        mode=Mode(target.mode) if target.mode else None,
        sector=Sector(target.sector) if target.sector else None,
        foreign_owned=target.foreign_owned,
        expat_staff=target.expat_staff,
        countries=frozenset(target.countries),
        admin1=frozenset(target.admin1),
    )
