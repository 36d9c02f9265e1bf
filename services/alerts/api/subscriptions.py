"""Subscription routes: what a tenant watches, through which endpoints, and its rules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from services.alerts import subscriptions
from services.alerts.api.deps import (
    ReadableSubscription,
    Reader,
    WritableRule,
    WritableSubscription,
    Writer,
    tenant_of,
)
from services.alerts.models import Subscription
from services.alerts.schemas import (
    MAX_RULES_PER_SUBSCRIPTION,
    EventRuleOut,
    RuleIn,
    RuleOut,
    SubscriptionIn,
    SubscriptionOut,
    SubscriptionPage,
    SubscriptionPatch,
    ThresholdRuleIn,
    ThresholdRuleOut,
    invalid_body,
)
from services.core import audit
from services.core.api import Cursor, Limit, Now, ReadSession, Retryable, WriteSession, next_cursor
from services.core.auth import Principal
from services.core.problems import Problem, problem_responses

router = APIRouter(prefix="/v1/subscriptions", tags=["subscriptions"])


def _out(session: Session, sub: Subscription) -> SubscriptionOut:
    return subscriptions.to_out(sub, subscriptions.rules_of(session, [sub.id])[sub.id])


def _snapshot(session: Session, sub: Subscription) -> dict[str, Any]:
    return subscriptions.snapshot(sub, subscriptions.rules_of(session, [sub.id])[sub.id])


def _check_references(
    session: Session, sub_tenant: int, target_id: int | None, endpoint_ids: list[int] | None
) -> None:
    errors = subscriptions.reference_errors(
        session, sub_tenant, target_id=target_id, endpoint_ids=endpoint_ids
    )
    if errors:
        raise invalid_body(errors)


def _audit(
    session: Session,
    principal: Principal,
    resource: str,
    action: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    now: datetime,
) -> None:
    audit.record(
        session, principal, action=action, resource=resource, before=before, after=after, now=now
    )


@router.post(
    "",
    status_code=201,
    responses=problem_responses(400),
    summary="Subscribe endpoints to a target, a tag or everything, under rules",
)
def create_subscription(
    data: SubscriptionIn, principal: Writer, session: WriteSession, now: Now, retries: Retryable
) -> SubscriptionOut:
    """The rules are evaluated against current scores at once, then on every change."""

    def produce() -> tuple[int, SubscriptionOut]:
        tenant_id = tenant_of(principal)
        _check_references(session, tenant_id, data.target_id, data.endpoint_ids)
        sub = subscriptions.create(session, tenant_id, data, now)
        _audit(
            session,
            principal,
            f"subscription/{sub.id}",
            "subscription.create",
            None,
            _snapshot(session, sub),
            now,
        )
        return 201, _out(session, sub)

    _, created = retries.once(data, SubscriptionOut, produce)
    return created


@router.get("", summary="List the tenant's subscriptions")
def list_subscriptions(
    principal: Reader, session: ReadSession, limit: Limit, after: Cursor = 0
) -> SubscriptionPage:
    """A page of subscriptions by id, with their rules."""
    rows = subscriptions.page(session, tenant_of(principal), after=after, limit=limit)
    rules = subscriptions.rules_of(session, [r.id for r in rows])
    return SubscriptionPage(
        subscriptions=[subscriptions.to_out(r, rules[r.id]) for r in rows],
        next_cursor=next_cursor(rows, limit),
    )


@router.get("/{subscription_id}", responses=problem_responses(404), summary="Read a subscription")
def get_subscription(sub: ReadableSubscription, session: ReadSession) -> SubscriptionOut:
    """One subscription with its rules."""
    return _out(session, sub)


@router.patch(
    "/{subscription_id}",
    responses=problem_responses(400, 404),
    summary="Change a subscription's name, scope, endpoints, digest bands or state",
)
def patch_subscription(
    data: SubscriptionPatch,
    sub: WritableSubscription,
    principal: Writer,
    session: WriteSession,
    now: Now,
) -> SubscriptionOut:
    """A new scope (or re-enabling) re-evaluates every rule against current scores."""
    target_id = data.target_id if "target_id" in data.model_fields_set else None
    _check_references(session, sub.tenant_id, target_id, data.endpoint_ids)
    before = _snapshot(session, sub)
    subscriptions.update_subscription(session, sub, data, now)
    _audit(
        session,
        principal,
        f"subscription/{sub.id}",
        "subscription.update",
        before,
        _snapshot(session, sub),
        now,
    )
    return _out(session, sub)


@router.delete(
    "/{subscription_id}",
    status_code=204,
    responses=problem_responses(404),
    summary="Delete a subscription with its rules and alerts",
)
def delete_subscription(
    sub: WritableSubscription, principal: Writer, session: WriteSession, now: Now
) -> Response:
    """Remove it; its alerts go with it, sent deliveries stay (without their alert link)."""
    before = _snapshot(session, sub)
    session.delete(sub)
    session.flush()
    _audit(session, principal, f"subscription/{sub.id}", "subscription.delete", before, None, now)
    return Response(status_code=204)


@router.post(
    "/{subscription_id}/rules",
    status_code=201,
    responses=problem_responses(400, 404),
    summary="Add a rule to a subscription",
)
def add_rule(
    data: RuleIn,
    sub: WritableSubscription,
    principal: Writer,
    session: WriteSession,
    now: Now,
    retries: Retryable,
) -> RuleOut:
    """A threshold or event rule; evaluated against current scores at once."""

    def produce() -> tuple[int, ThresholdRuleOut | EventRuleOut]:
        if subscriptions.rule_count(session, sub) >= MAX_RULES_PER_SUBSCRIPTION:
            raise Problem(
                409,
                "too-many-rules",
                f"a subscription has at most {MAX_RULES_PER_SUBSCRIPTION} rules",
            )
        rule = subscriptions.add_rule(session, sub, data, now)
        sub.updated_at = now
        after = subscriptions.rule_snapshot(rule)
        _audit(session, principal, f"rule/{rule.id}", "rule.create", None, after, now)
        return 201, subscriptions.rule_out(rule)

    # A replayed response is read back as the kind the (identical) body asked for.
    kind: type[ThresholdRuleOut | EventRuleOut] = (
        ThresholdRuleOut if isinstance(data, ThresholdRuleIn) else EventRuleOut
    )
    _, rule = retries.once(data, kind, produce)
    return rule


@router.put(
    "/{subscription_id}/rules/{rule_id}",
    responses=problem_responses(400, 404, 409),
    summary="Replace a rule",
)
def replace_rule(
    data: RuleIn, rule: WritableRule, principal: Writer, session: WriteSession, now: Now
) -> RuleOut:
    """Overwrite the rule's body (same kind); it is evaluated afresh against current scores."""
    before = subscriptions.rule_snapshot(rule)
    subscriptions.replace_rule(session, rule, data, now)
    _audit(
        session,
        principal,
        f"rule/{rule.id}",
        "rule.update",
        before,
        subscriptions.rule_snapshot(rule),
        now,
    )
    return subscriptions.rule_out(rule)


@router.delete(
    "/{subscription_id}/rules/{rule_id}",
    status_code=204,
    responses=problem_responses(404),
    summary="Delete a rule (not the last one)",
)
def delete_rule(
    rule: WritableRule,
    sub: WritableSubscription,
    principal: Writer,
    session: WriteSession,
    now: Now,
) -> Response:
    """Remove a rule and its alerts; 409 for a subscription's last rule (delete that instead)."""
    if subscriptions.rule_count(session, sub) <= 1:
        raise Problem(
            409, "last-rule", "a subscription keeps at least one rule; delete the subscription"
        )
    before = subscriptions.rule_snapshot(rule)
    session.delete(rule)
    session.flush()
    sub.updated_at = now
    _audit(session, principal, f"rule/{before['id']}", "rule.delete", before, None, now)
    return Response(status_code=204)
