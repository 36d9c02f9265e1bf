"""Alert previews: what a rule would have sent over a past period, so ops can tune it first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from services.alerts import preview
from services.alerts.api.deps import Model, ScoringConfig
from services.core.api import Now, ReadSession
from services.core.auth import Principal, Role, require_tenant
from services.core.problems import problem_responses

router = APIRouter(prefix="/v1/alert-previews", tags=["alerts"])

AlertsReader = Annotated[Principal, Depends(require_tenant(Role.ALERTS_READ))]


@router.post(
    "",
    responses=problem_responses(400, 403, 404, 413, 422),
    summary="Replay a rule (or a change to a stored one) over a past period",
)
def create_preview(
    data: preview.PreviewIn,
    principal: AlertsReader,
    session: ReadSession,
    model: Model,
    settings: ScoringConfig,
    now: Now,
) -> preview.PreviewOut:
    """The notifications the rule would have sent, when, for which targets and why, with counts.

    Threshold rules are evaluated on each target's as-of score every `step`; event rules on
    each incident at the time it was reported. Nothing is stored and nothing is sent.
    """
    assert principal.tenant_id is not None
    return preview.run(
        session, model, principal.tenant_id, data, now=now, max_pairs=settings.max_backtest_pairs
    )
