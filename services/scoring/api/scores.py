"""Score routes not tied to one stored target: ad-hoc geometries, backtests, the change feed."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from services.core.api import Cursor, Limit, Now, ReadSession
from services.core.problems import Problem, not_found, problem_responses
from services.scoring import feed, schemas, scores, targets
from services.scoring.api.deps import Model, Settings, TenantReader
from services.scoring.models import Target

router = APIRouter(prefix="/v1", tags=["scores"])


@router.post(
    "/scores",
    responses=problem_responses(400),
    summary="Score an ad-hoc point or line without registering it",
)
def score_adhoc(
    data: schemas.AdhocIn, _: TenantReader, session: ReadSession, model: Model, now: Now
) -> schemas.ScoreOut:
    """Score a GeoJSON Point (site-like) or LineString (corridor-like), now or as of a time."""
    return scores.score_adhoc(session, model, data, data.properties.as_of or now)


@router.post(
    "/backtests",
    responses=problem_responses(400, 404, 413),
    summary="Scores of many points or targets at many past times",
)
def backtest(
    data: schemas.BacktestIn,
    principal: TenantReader,
    session: ReadSession,
    model: Model,
    settings: Settings,
) -> schemas.BacktestOut:
    """Each (item, time) is scored from incidents reported by that time only."""
    pairs = (len(data.points) + len(data.targets)) * len(data.times)
    if pairs > settings.max_backtest_pairs:
        limit = settings.max_backtest_pairs
        reason = f"at most {limit} (item, time) pairs per request, got {pairs}"
        raise Problem(
            413,
            "backtest-too-large",
            reason,
            errors=[{"in": "body", "pointer": "/times", "field": "times", "reason": reason}],
        )
    assert principal.tenant_id is not None
    found = targets.get_many(session, principal.tenant_id, [(t.kind, t.id) for t in data.targets])
    for ref in data.targets:
        if (ref.kind, ref.id) not in found:
            raise not_found(ref.kind.value)
    stored = [found[(ref.kind, ref.id)] for ref in data.targets]
    return scores.backtest(session, model, data, stored)


@router.get("/score-changes", summary="The change feed: every score move, in order")
def score_changes(
    principal: TenantReader, session: ReadSession, limit: Limit, after: Cursor = 0
) -> schemas.ScoreChangePage:
    """Poll with `after` set to the last `next_cursor`; entries appear in commit order."""
    rows = feed.page(
        session, tenant_id=principal.tenant_id, target_id=None, after=after, limit=limit
    )
    # Each entry names its target (None once the target was deleted).
    ids = {r.target_id for r in rows}
    names: dict[int, str] = {}
    if ids:
        for target_id, name in session.execute(
            select(Target.id, Target.name).where(Target.id.in_(ids))
        ):
            names[target_id] = name
    return schemas.ScoreChangePage(
        changes=[
            schemas.ScoreChangeOut(
                id=r.id,
                target=schemas.TargetRef(
                    kind=r.target_kind, id=r.target_id, name=names.get(r.target_id)
                ),
                model_version=r.model_version,
                as_of=r.as_of,
                previous_score=r.previous_value,
                score=r.value,
                previous_band=r.previous_band,
                band=r.band,
                components=r.components,
                top_incidents=r.top_incidents,
                cause=r.cause,
                created_at=r.created_at,
            )
            for r in rows
        ],
        next_cursor=rows[-1].id if rows else after,
    )
