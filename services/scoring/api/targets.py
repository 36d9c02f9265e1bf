"""Site and corridor routes: GeoJSON CRUD, scores as of any time, score history."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError, WithJsonSchema

from services.core import audit, wake
from services.core.api import (
    Cursor,
    Id,
    Limit,
    Now,
    ReadSession,
    Retryable,
    WriteSession,
    next_cursor,
)
from services.core.problems import Problem, field_errors, not_found, problem_responses
from services.scoring import feed, queue, readcache, schemas, scores, targets
from services.scoring.api.deps import (
    Model,
    ReadableCorridor,
    ReadableSite,
    TenantReader,
    TenantWriter,
    WritableCorridor,
    WritableSite,
    active_model,
)
from services.scoring.models import CurrentScore, Target
from services.scoring.readcache import Document, ScoreDocuments, not_modified
from services.scoring.taxonomy import TargetKind

router = APIRouter(prefix="/v1", tags=["sites and corridors"])

AsOf = Annotated[
    datetime | None,
    Query(description="Score as of this time, from incidents reported by then; default: latest."),
    schemas.DateTimeText,
    WithJsonSchema(schemas.TIMESTAMP_SCHEMA, mode="validation"),
]
# A score route's answers: the document (with the ETag of a current one), 304, or 404.
SCORE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/json": {}},
        "model": schemas.ScoreOut,
        "headers": {
            "ETag": {
                "description": "Of the current score (not with as_of).",
                "schema": {"type": "string"},
            }
        },
    },
    304: {"description": "The current score is the one whose ETag If-None-Match sent."},
    **problem_responses(404),
}
TagFilter = Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[^\x00]*$")]


class _AsOf(schemas.Strict):
    as_of: schemas.Timestamp


def _checked_time(value: datetime, field: str) -> datetime:
    try:
        return _AsOf(as_of=value).as_of
    except ValidationError as exc:
        errors = [
            dict(e, field=field, pointer=f"/{field}", **{"in": "query"})
            for e in field_errors(exc.errors())
        ]
        raise Problem(422, "validation", f"invalid value in: {field}", errors=errors) from exc


async def _score_response(
    request: Request,
    principal: TenantReader,
    kind: TargetKind,
    target_id: int,
    as_of: datetime | None,
) -> Response:
    """A target's score: the stored document (kept per process, see `readcache`), or one
    computed as of a past time."""
    assert principal.tenant_id is not None
    tenant_id = principal.tenant_id
    if as_of is None:
        cache: ScoreDocuments = request.app.state.score_documents
        document = cache.get(tenant_id, kind, target_id)
        if document is None:
            document = await run_in_threadpool(_stored, request, tenant_id, kind, target_id)
        if document is not None:
            return _document_response(request, document)
    now: datetime = request.app.state.clock()
    when = now if as_of is None else _checked_time(as_of, "as_of")
    skew: timedelta = request.app.state.settings.clock_skew
    if when > now + skew:
        # A score of the future would only be today's score under a misleading label.
        raise Problem(
            422, "validation", "as_of lies in the future",
            errors=[{"in": "query", "pointer": "/as_of", "field": "as_of",
                     "reason": f"later than now + {skew}"}],
        )  # fmt: skip
    body = await run_in_threadpool(_compute_score, request, tenant_id, kind, target_id, when, now)
    return Response(body, media_type="application/json")


def _document_response(request: Request, document: Document) -> Response:
    headers = {"ETag": document.etag}
    if not_modified(document, request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    return Response(document.body, media_type="application/json", headers=headers)


def _stored(request: Request, tenant_id: int, kind: TargetKind, target_id: int) -> Document | None:
    """The stored current document (kept for the next reads), or None before the first score."""
    cache: ScoreDocuments = request.app.state.score_documents
    generation = cache.generation
    with request.app.state.read_sessions.begin() as session:
        found = targets.stored_document(session, tenant_id, kind, target_id)
    if found is None:
        raise not_found(kind.value)
    (document,) = found
    if document is None:
        return None
    return cache.put(tenant_id, kind, target_id, document, generation)


def _compute_score(
    request: Request,
    tenant_id: int,
    kind: TargetKind,
    target_id: int,
    as_of: datetime,
    now: datetime,
) -> str:
    model = active_model(request, now)
    with request.app.state.read_sessions.begin() as session:
        target = targets.get(session, tenant_id, kind, target_id)
        if target is None:
            raise not_found(kind.value)
        return scores.score_as_of(session, model, target, as_of).model_dump_json()


def _history(
    session: ReadSession,
    target: Target,
    since: datetime | None,
    until: datetime | None,
    after: int,
    limit: int,
) -> schemas.ScoreHistory:
    rows = feed.page(
        session,
        tenant_id=target.tenant_id,
        target_id=target.id,
        after=after,
        limit=limit,
        since=_checked_time(since, "since") if since else None,
        until=_checked_time(until, "until") if until else None,
    )
    return schemas.ScoreHistory(
        target=scores.ref_for(target),
        points=[
            schemas.ScoreHistoryPoint(
                change_id=r.id,
                as_of=r.as_of,
                score=r.value,
                band=r.band,
                previous_score=r.previous_value,
                previous_band=r.previous_band,
                model_version=r.model_version,
                cause=r.cause,
            )
            for r in rows
        ],
        next_cursor=next_cursor(rows, limit),
    )


def _create(
    session: WriteSession,
    principal: TenantWriter,
    model: scores.ActiveModel,
    data: schemas.SiteIn | schemas.CorridorIn,
    now: datetime,
) -> Target:
    assert principal.tenant_id is not None
    target = targets.create(session, principal.tenant_id, data, now)
    # A new target gets its first score in the same unit of work: readers never see it unscored.
    scores.rescore(session, model, [target.id], now, cause="created", min_delta=0.0)
    audit.record(
        session,
        principal,
        action=f"{target.kind}.create",
        resource=f"{target.kind}/{target.id}",
        before=None,
        after=targets.snapshot(target),
        now=now,
    )
    return target


def _replace(
    session: WriteSession,
    principal: TenantWriter,
    model: scores.ActiveModel,
    target: Target,
    data: schemas.SiteIn | schemas.CorridorIn,
    now: datetime,
) -> None:
    before = targets.snapshot(target)
    targets.replace(session, target, data, now)
    scores.rescore(session, model, [target.id], now, cause="updated", min_delta=0.0)
    # A worker may be computing this target from its old geometry right now: queueing it
    # again makes that worker keep the mark, and the target is scored once more.
    queue.add(session, [target.id], "updated", now)
    audit.record(
        session,
        principal,
        action=f"{target.kind}.update",
        resource=f"{target.kind}/{target.id}",
        before=before,
        after=targets.snapshot(target),
        now=now,
    )


def _delete(session: WriteSession, principal: TenantWriter, target: Target, now: datetime) -> None:
    before = targets.snapshot(target)
    feed.record_removal(session, target, now)
    session.delete(target)
    session.flush()
    wake.announce(session, readcache.CHANNEL)
    audit.record(
        session,
        principal,
        action=f"{target.kind}.delete",
        resource=f"{target.kind}/{target.id}",
        before=before,
        after=None,
        now=now,
    )


@router.post(
    "/sites",
    status_code=201,
    responses=problem_responses(400, 409),
    summary="Register a site",
)
def create_site(
    data: schemas.SiteIn,
    principal: TenantWriter,
    session: WriteSession,
    model: Model,
    now: Now,
    retries: Retryable,
) -> schemas.SiteFeature:
    """Store a site (GeoJSON Feature with a Point) and score it."""

    def produce() -> tuple[int, schemas.SiteFeature]:
        target = _create(session, principal, model, data, now)
        return 201, targets.to_site_feature(target, session.get(CurrentScore, target.id))

    _, feature = retries.once(data, schemas.SiteFeature, produce)
    return feature


@router.get("/sites", summary="List the tenant's sites")
def list_sites(
    principal: TenantReader,
    session: ReadSession,
    limit: Limit,
    after: Cursor = 0,
    tag: TagFilter = None,
) -> schemas.SiteCollection:
    """A page of sites as a GeoJSON FeatureCollection, with current scores."""
    assert principal.tenant_id is not None
    rows = targets.page(
        session, principal.tenant_id, TargetKind.SITE, tag=tag, after=after, limit=limit
    )
    return schemas.SiteCollection(
        features=[targets.to_site_feature(t, s) for t, s in rows],
        next_cursor=next_cursor([row[0] for row in rows], limit),
    )


@router.get("/sites/{site_id}", responses=problem_responses(404), summary="Read a site")
def get_site(site: ReadableSite) -> schemas.SiteFeature:
    """One site as GeoJSON."""
    return targets.to_site_feature(site.target, site.score)


@router.put("/sites/{site_id}", responses=problem_responses(400, 404), summary="Replace a site")
def put_site(
    data: schemas.SiteIn,
    site: WritableSite,
    principal: TenantWriter,
    session: WriteSession,
    model: Model,
    now: Now,
) -> schemas.SiteFeature:
    """Overwrite a site and rescore it."""
    _replace(session, principal, model, site, data, now)
    return targets.to_site_feature(site, session.get(CurrentScore, site.id))


@router.delete(
    "/sites/{site_id}", responses=problem_responses(404), status_code=204, summary="Delete a site"
)
def delete_site(
    site: WritableSite, principal: TenantWriter, session: WriteSession, now: Now
) -> Response:
    """Remove a site; the change feed gets a final `deleted` entry."""
    _delete(session, principal, site, now)
    return Response(status_code=204)


@router.get(
    "/sites/{site_id}/score",
    response_model=schemas.ScoreOut,
    response_class=Response,
    responses=SCORE_RESPONSES,
    summary="A site's score, now or as of a past time",
)
async def get_site_score(
    request: Request, site_id: Id, principal: TenantReader, as_of: AsOf = None
) -> Response:
    """The score with components and contributing incidents. The current score carries an
    ETag: `If-None-Match` with it answers 304 while the score is unchanged."""
    return await _score_response(request, principal, TargetKind.SITE, site_id, as_of)


@router.get(
    "/sites/{site_id}/score-history",
    responses=problem_responses(404),
    summary="A site's score changes over time",
)
def get_site_history(
    site: ReadableSite,
    session: ReadSession,
    limit: Limit,
    after: Cursor = 0,
    since: AsOf = None,
    until: AsOf = None,
) -> schemas.ScoreHistory:
    """Every recorded change of the site's score, oldest first."""
    return _history(session, site.target, since, until, after, limit)


@router.post(
    "/corridors",
    status_code=201,
    responses=problem_responses(400, 409),
    summary="Register a corridor",
)
def create_corridor(
    data: schemas.CorridorIn,
    principal: TenantWriter,
    session: WriteSession,
    model: Model,
    now: Now,
    retries: Retryable,
) -> schemas.CorridorFeature:
    """Store a corridor (GeoJSON Feature with a LineString) and score it."""

    def produce() -> tuple[int, schemas.CorridorFeature]:
        target = _create(session, principal, model, data, now)
        return 201, targets.to_corridor_feature(target, session.get(CurrentScore, target.id))

    _, feature = retries.once(data, schemas.CorridorFeature, produce)
    return feature


@router.get("/corridors", summary="List the tenant's corridors")
def list_corridors(
    principal: TenantReader,
    session: ReadSession,
    limit: Limit,
    after: Cursor = 0,
    tag: TagFilter = None,
) -> schemas.CorridorCollection:
    """A page of corridors as a GeoJSON FeatureCollection, with current scores."""
    assert principal.tenant_id is not None
    rows = targets.page(
        session, principal.tenant_id, TargetKind.CORRIDOR, tag=tag, after=after, limit=limit
    )
    return schemas.CorridorCollection(
        features=[targets.to_corridor_feature(t, s) for t, s in rows],
        next_cursor=next_cursor([row[0] for row in rows], limit),
    )


@router.get("/corridors/{corridor_id}", responses=problem_responses(404), summary="Read a corridor")
def get_corridor(corridor: ReadableCorridor) -> schemas.CorridorFeature:
    """One corridor as GeoJSON."""
    return targets.to_corridor_feature(corridor.target, corridor.score)


@router.put(
    "/corridors/{corridor_id}", responses=problem_responses(400, 404), summary="Replace a corridor"
)
def put_corridor(
    data: schemas.CorridorIn,
    corridor: WritableCorridor,
    principal: TenantWriter,
    session: WriteSession,
    model: Model,
    now: Now,
) -> schemas.CorridorFeature:
    """Overwrite a corridor and rescore it."""
    _replace(session, principal, model, corridor, data, now)
    return targets.to_corridor_feature(corridor, session.get(CurrentScore, corridor.id))


@router.delete(
    "/corridors/{corridor_id}",
    responses=problem_responses(404),
    status_code=204,
    summary="Delete a corridor",
)
def delete_corridor(
    corridor: WritableCorridor, principal: TenantWriter, session: WriteSession, now: Now
) -> Response:
    """Remove a corridor; the change feed gets a final `deleted` entry."""
    _delete(session, principal, corridor, now)
    return Response(status_code=204)


@router.get(
    "/corridors/{corridor_id}/score",
    response_model=schemas.ScoreOut,
    response_class=Response,
    responses=SCORE_RESPONSES,
    summary="A corridor's score and hotspot segments, now or as of a past time",
)
async def get_corridor_score(
    request: Request, corridor_id: Id, principal: TenantReader, as_of: AsOf = None
) -> Response:
    """The score with components, contributing incidents and hotspot segments. The current
    score carries an ETag: `If-None-Match` with it answers 304 while the score is unchanged."""
    return await _score_response(request, principal, TargetKind.CORRIDOR, corridor_id, as_of)


@router.get(
    "/corridors/{corridor_id}/score-history",
    responses=problem_responses(404),
    summary="A corridor's score changes",
)
def get_corridor_history(
    corridor: ReadableCorridor,
    session: ReadSession,
    limit: Limit,
    after: Cursor = 0,
    since: AsOf = None,
    until: AsOf = None,
) -> schemas.ScoreHistory:
    """Every recorded change of the corridor's score, oldest first."""
    return _history(session, corridor.target, since, until, after, limit)
