"""When a new model version is published: stored score thresholds keep their meaning.

Registered with the platform (services/core/modelchange.py), called in the publishing unit of
work. When the bands change, every score threshold moves to the same place within its band on
the new scale. Either way, each threshold rule's notifications over the last 30 days are
replayed under the old and the new version (the preview, services/alerts/preview.py), and the
rules whose alert volume would change are listed with both counts.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.alerts import preview
from services.alerts.models import Rule, Subscription
from services.core import modelchange
from services.core.problems import Problem
from services.scoring import risk, scores

log = logging.getLogger(__name__)

PERIOD = timedelta(days=30)
STEP = timedelta(days=1)
# (target, time) pairs replayed per rule and version, and in all for one publication (about a
# minute of scoring): the replay runs in the publishing unit of work, so it is bounded. Rules
# beyond it are listed as not replayed.
MAX_PAIRS = 20_000
BUDGET_PAIRS = 60_000


class _Budget:
    """What is left of a publication's replay budget."""

    def __init__(self) -> None:
        self.left = BUDGET_PAIRS


def _volume(
    session: Session,
    model: scores.ActiveModel,
    rule: Rule,
    now: datetime,
    budget: _Budget,
) -> int | str:
    """Notifications the stored rule would have sent over the last PERIOD under `model`, or
    why it was not replayed."""
    limit = min(MAX_PAIRS, budget.left)
    data = preview.PreviewIn(rule_id=rule.id, since=now - PERIOD, until=now, step=STEP)
    try:
        out = preview.run(session, model, rule.tenant_id, data, now=now, max_pairs=limit)
    except Problem as exc:
        log.info("rule %s not replayed for the model change: %s", rule.id, exc.detail)
        return "not replayed: more (target, time) pairs than this publication's replay budget"
    budget.left -= out.targets * out.evaluations
    return out.total


def _model(version: int, params: dict[str, Any]) -> scores.ActiveModel | None:
    if not risk.is_current(params):
        return None  # the legacy model cannot be replayed by this release
    return scores.ActiveModel(version, risk.ModelParams.from_dict(params))


@modelchange.on_model_change("alerts.threshold_rules")
def carry_thresholds(
    session: Session, change: modelchange.ModelChange, now: datetime
) -> list[dict[str, Any]]:
    """Move score thresholds band by band when the scale changes, re-seed the moved rules, and
    list every rule that moved or whose 30-day alert volume would change."""
    old_model = _model(change.old_version, change.old_params)
    new_model = _model(change.new_version, change.new_params)
    budget = _Budget()
    listed: list[dict[str, Any]] = []
    rows = session.execute(
        select(Rule, Subscription.enabled)
        .join(Subscription, Subscription.id == Rule.subscription_id)
        .where(Rule.kind == "threshold")
        .order_by(Rule.id)
    ).all()
    for rule, subscribed in rows:
        # Every threshold moves (a rule switched off keeps its meaning for when it is switched
        # back on); only those in use are replayed, and only when the old version can be (not
        # the legacy model an upgrade replaces).
        replay = bool(rule.enabled and subscribed) and old_model is not None
        before_count = (
            _volume(session, old_model, rule, now, budget)
            if replay and old_model is not None
            else None
        )
        entry: dict[str, Any] = {
            "tenant_id": rule.tenant_id,
            "subscription_id": rule.subscription_id,
            "rule_id": rule.id,
        }
        if change.rescaled and rule.params.get("metric", "score") == "score":
            before = {"raise_at": rule.params["raise_at"], "clear_at": rule.params.get("clear_at")}
            after = {
                key: None if value is None else change.carry(float(value))
                for key, value in before.items()
            }
            rule.params = {**rule.params, **after}
            # Re-evaluated against current scores: an alert now above its threshold fires.
            rule.seeded = False
            rule.updated_at = now
            session.flush()
            entry.update(before=before, after=after)
        after_count = (
            _volume(session, new_model, rule, now, budget)
            if replay and new_model is not None and isinstance(before_count, int)
            else None
        )
        if before_count != after_count:
            entry["notifications_30d"] = {"before": before_count, "after": after_count}
        if "after" in entry or "notifications_30d" in entry:
            listed.append(entry)
    return listed
