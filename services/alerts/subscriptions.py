"""Subscriptions and their rules: what a tenant watches, where it is told, and when."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.alerts.models import Endpoint, Rule, Subscription
from services.alerts.schemas import (
    STORED,
    EventRuleIn,
    EventRuleOut,
    FieldErrors,
    SubscriptionIn,
    SubscriptionOut,
    SubscriptionPatch,
    SubscriptionScope,
    ThresholdRuleIn,
    ThresholdRuleOut,
    invalid_body,
    scope_errors,
)
from services.scoring.models import Target
from services.scoring.taxonomy import Band

RuleBody = ThresholdRuleIn | EventRuleIn


def reference_errors(
    session: Session, tenant_id: int, *, target_id: int | None, endpoint_ids: Sequence[int] | None
) -> FieldErrors:
    """Where a body names a target or endpoints that are not the tenant's."""
    errors: FieldErrors = []
    if target_id is not None:
        owner = session.execute(select(Target.tenant_id).where(Target.id == target_id)).scalar()
        if owner != tenant_id:
            errors.append((("target_id",), "no such site or corridor"))
    if endpoint_ids:
        known = set(
            session.execute(
                select(Endpoint.id).where(
                    Endpoint.tenant_id == tenant_id, Endpoint.id.in_(set(endpoint_ids))
                )
            ).scalars()
        )
        errors += [
            (("endpoint_ids", i), "no such endpoint")
            for i, e in enumerate(endpoint_ids)
            if e not in known
        ]
    return errors


def get(
    session: Session, tenant_id: int, subscription_id: int, *, lock: bool = False
) -> Subscription | None:
    """A tenant's subscription (None for another tenant's)."""
    query = select(Subscription).where(
        Subscription.id == subscription_id, Subscription.tenant_id == tenant_id
    )
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def page(session: Session, tenant_id: int, *, after: int, limit: int) -> Sequence[Subscription]:
    """A page of a tenant's subscriptions by id."""
    query = (
        select(Subscription)
        .where(Subscription.tenant_id == tenant_id, Subscription.id > after)
        .order_by(Subscription.id)
        .limit(limit)
    )
    return session.execute(query).scalars().all()


def rules_of(session: Session, subscription_ids: Sequence[int]) -> dict[int, list[Rule]]:
    """The rules of each subscription, by id."""
    out: dict[int, list[Rule]] = defaultdict(list)
    if subscription_ids:
        query = select(Rule).where(Rule.subscription_id.in_(set(subscription_ids)))
        for rule in session.execute(query.order_by(Rule.id)).scalars():
            out[rule.subscription_id].append(rule)
    return out


def create(session: Session, tenant_id: int, data: SubscriptionIn, now: datetime) -> Subscription:
    """Add a subscription and its rules (references checked beforehand)."""
    sub = Subscription(
        tenant_id=tenant_id,
        name=data.name,
        scope=data.scope.value,
        target_id=data.target_id,
        tag=data.tag,
        endpoint_ids=list(data.endpoint_ids),
        digest_bands=[b.value for b in data.digest_bands],
        enabled=data.enabled,
        created_at=now,
        updated_at=now,
    )
    session.add(sub)
    session.flush()
    for body in data.rules:
        add_rule(session, sub, body, now)
    return sub


def merged_scope(
    sub: Subscription, data: SubscriptionPatch
) -> tuple[SubscriptionScope, int | None, str | None]:
    """The scope, target and tag a patch leaves; a field of another scope is dropped with it."""
    scope = data.scope or SubscriptionScope(sub.scope)
    given = data.model_fields_set
    target_id = data.target_id if "target_id" in given else sub.target_id
    tag = data.tag if "tag" in given else sub.tag
    if scope is not SubscriptionScope.TARGET and "target_id" not in given:
        target_id = None
    if scope is not SubscriptionScope.TAG and "tag" not in given:
        tag = None
    errors = scope_errors(scope, target_id, tag)
    if errors:
        raise invalid_body(errors)
    return scope, target_id, tag


def update_subscription(
    session: Session, sub: Subscription, data: SubscriptionPatch, now: datetime
) -> None:
    """Apply a patch (references checked beforehand); a new scope re-seeds every rule."""
    scope, target_id, tag = merged_scope(sub, data)
    if (scope.value, target_id, tag) != (sub.scope, sub.target_id, sub.tag):
        sub.scope, sub.target_id, sub.tag = scope.value, target_id, tag
        # Other targets now: every rule is evaluated afresh against their current scores.
        session.execute(
            update(Rule).where(Rule.subscription_id == sub.id).values(seeded=False, updated_at=now)
        )
    if data.name is not None:
        sub.name = data.name
    if data.endpoint_ids is not None:
        sub.endpoint_ids = list(data.endpoint_ids)
    if data.digest_bands is not None:
        sub.digest_bands = [b.value for b in data.digest_bands]
    if data.enabled is not None:
        if data.enabled and not sub.enabled:
            # Scores may have moved while it was off.
            session.execute(
                update(Rule)
                .where(Rule.subscription_id == sub.id)
                .values(seeded=False, updated_at=now)
            )
        sub.enabled = data.enabled
    sub.updated_at = now
    session.flush()


def add_rule(session: Session, sub: Subscription, body: RuleBody, now: datetime) -> Rule:
    """Add a rule; the pipeline seeds it against current scores."""
    rule = Rule(
        subscription_id=sub.id,
        tenant_id=sub.tenant_id,
        kind=body.kind,
        params=body.model_dump(mode="json"),
        enabled=True,
        seeded=False,
        created_at=now,
        updated_at=now,
    )
    session.add(rule)
    session.flush()
    return rule


def replace_rule(session: Session, rule: Rule, body: RuleBody, now: datetime) -> None:
    """Replace a rule's body (of the same kind); the pipeline seeds it again."""
    if body.kind != rule.kind:
        # Its alerts were kept under the old kind's meaning (a state per target, or one per
        # incident): a different kind is a different rule. A valid rule, then, that conflicts
        # with the stored one (409, not 422).
        raise invalid_body(
            [(("kind",), f"stays {rule.kind}; add a new rule and delete this one")],
            status=409,
            slug="rule-kind",
        )
    rule.params = body.model_dump(mode="json")
    rule.seeded = False
    rule.updated_at = now
    session.flush()


def rule_count(session: Session, sub: Subscription) -> int:
    """How many rules a subscription has."""
    query = select(func.count()).select_from(Rule).where(Rule.subscription_id == sub.id)
    return session.execute(query).scalar_one()


def get_rule(session: Session, sub: Subscription, rule_id: int) -> Rule | None:
    """One rule of a subscription."""
    query = select(Rule).where(Rule.id == rule_id, Rule.subscription_id == sub.id)
    return session.execute(query).scalar_one_or_none()


def rule_out(rule: Rule) -> ThresholdRuleOut | EventRuleOut:
    """A rule as served: its body and its id."""
    if rule.kind == "threshold":
        return ThresholdRuleOut.model_validate(
            {**rule.params, "id": rule.id}, context={STORED: True}
        )
    return EventRuleOut.model_validate({**rule.params, "id": rule.id})


def to_out(sub: Subscription, rules: Sequence[Rule]) -> SubscriptionOut:
    """A subscription as served, with its rules."""
    return SubscriptionOut(
        id=sub.id,
        name=sub.name,
        scope=SubscriptionScope(sub.scope),
        target_id=sub.target_id,
        tag=sub.tag,
        endpoint_ids=sub.endpoint_ids,
        digest_bands=[Band(b) for b in sub.digest_bands],
        enabled=sub.enabled,
        rules=[rule_out(r) for r in rules],
        created_at=sub.created_at,
        updated_at=sub.updated_at,
    )


def snapshot(sub: Subscription, rules: Sequence[Rule]) -> dict[str, Any]:
    """What the audit log keeps of a subscription."""
    return {
        "name": sub.name,
        "scope": sub.scope,
        "target_id": sub.target_id,
        "tag": sub.tag,
        "endpoint_ids": list(sub.endpoint_ids),
        "digest_bands": list(sub.digest_bands),
        "enabled": sub.enabled,
        "rules": [rule_snapshot(r) for r in rules],
    }


def rule_snapshot(rule: Rule) -> dict[str, Any]:
    """What the audit log keeps of a rule."""
    return {"id": rule.id, "subscription_id": rule.subscription_id, **rule.params}
