"""Incident routes: ingest one or a batch (idempotent), query, read one."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response
from pydantic import ValidationError, WithJsonSchema
from sqlalchemy.orm import Session

from services.core.api import (
    Cursor,
    Id,
    Ingestor,
    Limit,
    Now,
    ReadSession,
    Retryable,
    WriteSession,
    next_cursor,
)
from services.core.db import refresh_statistics
from services.core.problems import Problem, field_errors, not_found, problem_responses
from services.scoring import incidents, schemas
from services.scoring.api.deps import AnyReader, Settings
from services.scoring.models import Incident
from services.scoring.taxonomy import Category

router = APIRouter(prefix="/v1/incidents", tags=["incidents"])


def _ingest(
    data: schemas.IncidentIn, session: Session, now: datetime, settings: Settings
) -> incidents.Upserted:
    incidents.check_times(data, now, settings.clock_skew)
    return incidents.upsert(session, data, now)


@router.post(
    "",
    status_code=201,
    responses={
        200: {"model": schemas.IncidentFeature, "description": "Updated or unchanged"},
        **problem_responses(400, 409),
    },
    summary="Ingest one incident (upsert on source and source_id)",
)
def post_incident(
    response: Response,
    data: schemas.IncidentIn,
    principal: Ingestor,
    session: WriteSession,
    now: Now,
    settings: Settings,
    retries: Retryable,
) -> schemas.IncidentFeature:
    """Create the incident (201), or update the one with the same source id (200)."""

    def produce() -> tuple[int, schemas.IncidentFeature]:
        # What the incident affects is queued for rescoring by the worker reading the feed.
        result = _ingest(data, session, now, settings)
        feature = incidents.to_feature(
            result.incident, incidents.sources(session, [result.incident])
        )
        return (201 if result.outcome == "created" else 200), feature

    response.status_code, feature = retries.once(data, schemas.IncidentFeature, produce)
    return feature


@router.post(
    "/batch",
    responses=problem_responses(400, 409, 413),
    summary="Ingest a batch; good items are stored, bad ones reported",
)
def post_batch(
    data: schemas.IncidentBatchIn,
    principal: Ingestor,
    session: WriteSession,
    now: Now,
    settings: Settings,
    retries: Retryable,
    request: Request,
    after: BackgroundTasks,
) -> schemas.BatchResult:
    """Validate and upsert each item on its own; the result lists every item by index."""
    # Once answered: batches that grow the table fast must not outrun the planner's view of it.
    after.add_task(refresh_statistics, request.app.state.sessions, Incident.__tablename__)
    if len(data.items) > settings.max_batch_items:
        raise Problem(
            413,
            "batch-too-large",
            f"a batch holds at most {settings.max_batch_items} items, got {len(data.items)}",
            errors=[
                {
                    "in": "body",
                    "pointer": "/items",
                    "field": "items",
                    "reason": f"more than {settings.max_batch_items} items",
                }
            ],
        )
    _, body = retries.once(
        data, schemas.BatchResult, lambda: (200, _ingest_batch(data, session, now, settings))
    )
    return body


def _ingest_batch(
    data: schemas.IncidentBatchIn,
    session: Session,
    now: datetime,
    settings: Settings,
) -> schemas.BatchResult:
    # Every item is checked before anything is written: the valid ones are then stored
    # together, and a database error fails the whole batch instead of half of it.
    results: dict[int, schemas.ItemResult] = {}
    valid: dict[int, schemas.IncidentIn] = {}
    seen: dict[tuple[str, str], int] = {}
    for index, raw in enumerate(data.items):
        try:
            item = schemas.IncidentIn.model_validate(raw)
            incidents.check_times(item, now, settings.clock_skew)
            key = (item.source, item.source_id)
            if key in seen:
                raise Problem(
                    422,
                    "duplicate-in-batch",
                    f"same source and source_id as item {seen[key]}",
                )
            seen[key] = index
            valid[index] = item
        except ValidationError as exc:
            errors = field_errors(exc.errors())
            fields = ", ".join(sorted({e["field"] for e in errors}))
            problem = Problem(422, "validation", f"invalid value in: {fields}", errors=errors)
            results[index] = schemas.ItemResult(
                index=index, status="rejected", problem=problem.document()
            )
        except Problem as problem:
            results[index] = schemas.ItemResult(
                index=index, status="rejected", problem=problem.document()
            )
    upserted = incidents.upsert_many(session, list(valid.values()), now)
    for index, result in zip(valid, upserted, strict=True):
        results[index] = schemas.ItemResult(
            index=index, status=result.outcome, id=result.incident.id
        )
    ordered = [results[i] for i in range(len(data.items))]
    counts = {
        s: sum(r.status == s for r in ordered)
        for s in ("created", "updated", "unchanged", "rejected")
    }
    return schemas.BatchResult(results=ordered, **counts)


_LON = r"-?0*(180(\.0+)?|(1[0-7][0-9]|[0-9]{1,2})(\.[0-9]+)?)"
_LAT = r"-?0*(90(\.0+)?|[0-8]?[0-9](\.[0-9]+)?)"
BBox = Annotated[
    str | None,
    Query(
        # Each corner within range, as the pattern says; min <= max it cannot say.
        pattern=rf"^{_LON},{_LAT},{_LON},{_LAT}$",
        description="min_lon,min_lat,max_lon,max_lat, each min not above its max.",
    ),
]


def _parse_bbox(bbox: str | None) -> tuple[float, float, float, float] | None:
    if bbox is None:
        return None
    min_lon, min_lat, max_lon, max_lat = (float(v) for v in bbox.split(","))
    if not (-180 <= min(min_lon, max_lon) <= max(min_lon, max_lon) <= 180) or not (
        -90 <= min(min_lat, max_lat) <= max(min_lat, max_lat) <= 90
    ):
        reason = "a corner out of range"  # the pattern allows none: kept as a guard
    elif min_lon > max_lon:
        reason = "min_lon above max_lon"
    elif min_lat > max_lat:
        reason = "min_lat above max_lat"
    else:
        return min_lon, min_lat, max_lon, max_lat
    raise Problem(
        422,
        "validation",
        "bbox must be min_lon,min_lat,max_lon,max_lat within range",
        errors=[{"in": "query", "pointer": "/bbox", "field": "bbox", "reason": reason}],
    )


class _Window(schemas.Strict):
    since: schemas.Timestamp | None = None
    until: schemas.Timestamp | None = None


@router.get("", summary="Query incidents by box, time window, category and country")
def list_incidents(
    _: AnyReader,
    session: ReadSession,
    limit: Limit,
    after: Cursor = 0,
    bbox: BBox = None,
    since: Annotated[
        datetime | None,
        Query(description="occurred at or after"),
        schemas.DateTimeText,
        WithJsonSchema(schemas.TIMESTAMP_SCHEMA, mode="validation"),
    ] = None,
    until: Annotated[
        datetime | None,
        Query(description="occurred at or before"),
        schemas.DateTimeText,
        WithJsonSchema(schemas.TIMESTAMP_SCHEMA, mode="validation"),
    ] = None,
    category: Annotated[list[Category] | None, Query()] = None,
    country: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
    include_retracted: bool = False,
    include_merged: Annotated[
        bool,
        Query(description="Also list reports merged into another source's report of the event."),
    ] = False,
) -> schemas.IncidentCollection:
    """A page of incidents, as a GeoJSON FeatureCollection."""
    try:
        window = _Window(since=since, until=until)
    except ValidationError as exc:
        errors = field_errors(exc.errors(), location="query")
        fields = ", ".join(sorted({e["field"] for e in errors}))
        raise Problem(422, "validation", f"invalid value in: {fields}", errors=errors) from exc
    rows = incidents.search(
        session,
        bbox=_parse_bbox(bbox),
        since=window.since,
        until=window.until,
        categories=category or [],
        country=country,
        include_retracted=include_retracted,
        after=after,
        limit=limit,
        include_merged=include_merged,
    )
    reports = incidents.sources(session, rows)
    return schemas.IncidentCollection(
        features=[incidents.to_feature(r, reports) for r in rows],
        next_cursor=next_cursor(rows, limit),
    )


@router.get("/{incident_id}", responses=problem_responses(404), summary="Read one incident")
def get_incident(incident_id: Id, _: AnyReader, session: ReadSession) -> schemas.IncidentFeature:
    """One incident as a GeoJSON Feature, with every source's report of its event."""
    row = incidents.get(session, incident_id)
    if row is None:
        raise not_found("incident")
    return incidents.to_feature(row, incidents.sources(session, [row]))
