"""The alert pipeline: consume the scoring feeds, evaluate, decide, enqueue, in one transaction.

Each function here is one unit of work run by a worker (or a tick): the cursor moves, alert
states change and deliveries are written together or not at all, so no notification ever lives
only in memory and a crash replays the batch instead of losing it.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Table, delete, func, insert, null, select
from sqlalchemy.orm import Session

from services.alerts import notify, outbox, rules, triggers
from services.alerts.models import (
    Alert,
    AlertEvent,
    Delivery,
    DeliveryAttempt,
    DigestItem,
    Endpoint,
    Rule,
    Subscription,
)
from services.alerts.schemas import EventRuleIn, ThresholdRuleIn, parse_rule
from services.alerts.settings import AlertsSettings
from services.core import cursors, metrics
from services.core.deadletters import Quarantine, guard
from services.core.logs import working_for
from services.core.models import FeedCursor
from services.scoring import geo
from services.scoring import incidents as scoring_incidents
from services.scoring import targets as scoring_targets
from services.scoring.models import CurrentScore, Incident, IncidentChange, ScoreChange, Target
from services.scoring.taxonomy import BAND_RANK, Band

log = logging.getLogger(__name__)
SCORE_FEED, INCIDENT_FEED, SEED = "score_change", "incident_change", "seed"
TRIGGERED = "triggered"  # the state of an event alert: it happened, there is nothing to clear
ACKNOWLEDGED = "acknowledged"


@dataclass(frozen=True)
class Watch:
    """One enabled rule of an enabled subscription, with where it notifies."""

    subscription: Subscription
    rule: Rule
    params: ThresholdRuleIn | EventRuleIn
    endpoints: list[Endpoint]


def watches(session: Session, tenant_ids: Iterable[int] | None) -> dict[int, list[Watch]]:
    """Every enabled rule of the given tenants (all tenants for None), grouped by tenant.

    Read on every batch, so kept per process and reloaded only when the configuration's
    fingerprint (counts, newest ids and update times of rules, subscriptions, endpoints) moves.
    """
    engine = session.get_bind().engine
    fingerprint = (str(engine.url), *session.execute(_FINGERPRINT).one())
    with _WATCHES_LOCK:
        if _WATCHES.get("fingerprint") != fingerprint:
            # A session of its own on the caller's connection: the snapshots share no identity
            # with the caller's objects, and no second pool connection is taken while this
            # transaction holds the SQLite write lock.
            with Session(bind=session.connection()) as loader:
                _WATCHES["by_tenant"] = _load_watches(loader)
            _WATCHES["fingerprint"] = fingerprint
        by_tenant: dict[int, list[Watch]] = _WATCHES["by_tenant"]
    if tenant_ids is None:
        return dict(by_tenant)
    return {t: by_tenant[t] for t in set(tenant_ids) if t in by_tenant}


def _load_watches(session: Session) -> dict[int, list[Watch]]:
    pairs = session.execute(
        select(Subscription, Rule)
        .join(Rule, Rule.subscription_id == Subscription.id)
        .where(Subscription.enabled, Rule.enabled)
        .order_by(Rule.id)
    ).all()
    endpoint_ids = {e for sub, _ in pairs for e in sub.endpoint_ids}
    endpoints = {
        e.id: e
        for e in session.execute(select(Endpoint).where(Endpoint.id.in_(endpoint_ids))).scalars()
    }
    out: dict[int, list[Watch]] = defaultdict(list)
    for sub, rule in pairs:
        out[sub.tenant_id].append(
            Watch(
                subscription=sub,
                rule=rule,
                params=_parsed(rule),
                endpoints=[endpoints[e] for e in sub.endpoint_ids if e in endpoints],
            )
        )
    return dict(out)


_FINGERPRINT = select(
    *(
        select(expr).scalar_subquery()
        for table in (Rule, Subscription, Endpoint)
        for expr in (func.count(table.id), func.max(table.id), func.max(table.updated_at))
    )
)
_WATCHES_LOCK = threading.Lock()
_WATCHES: dict[str, Any] = {}


_PARSED: dict[tuple[int, datetime], ThresholdRuleIn | EventRuleIn] = {}


def _parsed(rule: Rule) -> ThresholdRuleIn | EventRuleIn:
    """A rule's validated body, parsed once per version (rules are read on every batch)."""
    key = (rule.id, rule.updated_at)
    found = _PARSED.get(key)
    if found is None:
        if len(_PARSED) > 50_000:
            _PARSED.clear()
        found = _PARSED[key] = parse_rule(rule.kind, rule.params)
    return found


class WatchIndex:
    """A tenant's watches by what they watch, so a change or an incident finds its rules
    without trying every rule on every target."""

    def __init__(self, watches: Iterable[Watch]) -> None:
        self._by_target: dict[int, list[Watch]] = defaultdict(list)
        self._by_tag: dict[str, list[Watch]] = defaultdict(list)
        self._all: list[Watch] = []
        for watch in watches:
            sub = watch.subscription
            if sub.scope == "target" and sub.target_id is not None:
                self._by_target[sub.target_id].append(watch)
            elif sub.scope == "tag" and sub.tag is not None:
                self._by_tag[sub.tag].append(watch)
            else:
                self._all.append(watch)

    def __bool__(self) -> bool:
        return bool(self._by_target or self._by_tag or self._all)

    @property
    def by_tag(self) -> bool:
        """Whether any watch here is by tag (so targets' tags must be read)."""
        return bool(self._by_tag)

    def for_target(self, target: Watched) -> list[Watch]:
        """The watches that apply to `target`, in rule order."""
        found = [*self._by_target.get(target.id, ()), *self._all]
        if self._by_tag:
            for tag in target.tags:
                found.extend(self._by_tag.get(tag, ()))
        return sorted(
            (w for w in found if applies(w.subscription, target)), key=lambda w: w.rule.id
        )


class Watched(Protocol):
    """What deciding whether a subscription watches a target reads (a Target, or a row)."""

    id: int
    tenant_id: int
    tags: list[str]


def applies(subscription: Subscription, target: Watched) -> bool:
    """Whether a subscription watches a target."""
    if subscription.tenant_id != target.tenant_id:
        return False
    if subscription.scope == "target":
        return subscription.target_id == target.id
    if subscription.scope == "tag":
        return subscription.tag in target.tags
    return True


def backlog(session: Session) -> set[str]:
    """Which inputs have work waiting (a cheap read, so idle passes take no write lock)."""
    positions = dict(session.execute(select(FeedCursor.name, FeedCursor.position)).all())
    heads = {
        SCORE_FEED: session.execute(select(func.max(ScoreChange.id))).scalar_one_or_none() or 0,
        INCIDENT_FEED: session.execute(select(func.max(IncidentChange.id))).scalar_one_or_none()
        or 0,
    }
    waiting = {name for name, head in heads.items() if head > positions.get(name, 0)}
    unseeded = session.execute(select(Rule.id).where(Rule.seeded.is_(False)).limit(1)).first()
    if unseeded is not None:
        waiting.add(SEED)
    return waiting


@metrics.read_from_database(metrics.FEED_BACKLOG, metrics.FEED_BEHIND)
def _gauges(session: Session, now: datetime) -> Iterator[metrics.Reading]:
    """How far the alert pipeline is behind each change feed it reads."""
    for feed, table in ((INCIDENT_FEED, IncidentChange), (SCORE_FEED, ScoreChange)):
        position = cursors.position(session, feed)
        yield from metrics.feed_readings(session, now, feed, table, position)


# --------------------------------------------------------------------------------------------
# Threshold rules: score changes, seeding, timers


def consume_scores(
    session: Session, settings: AlertsSettings, now: datetime, quarantine: Quarantine | None = None
) -> int:
    """Evaluate a batch of score changes after the cursor; return how many were consumed.

    With a `quarantine`, each (change, rule) is its own item: one that fails is set aside.
    """
    cursor = cursors.lock(session, SCORE_FEED, now)
    if cursor is None:
        return 0
    # A light read first: most changes are of targets nobody watches, and reading a change
    # whole (its components and top incidents) costs more than deciding that.
    heads = session.execute(
        select(ScoreChange.id, ScoreChange.tenant_id, ScoreChange.target_id)
        .where(ScoreChange.id > cursor.position)
        .order_by(ScoreChange.id)
        .limit(settings.feed_batch)
    ).all()
    if not heads:
        return 0
    cursor.position = heads[-1].id
    cursor.updated_at = now
    by_tenant = {
        tenant: index
        for tenant, ws in watches(session, {h.tenant_id for h in heads}).items()
        if (index := WatchIndex(w for w in ws if isinstance(w.params, ThresholdRuleIn)))
    }
    maybe = {h.target_id for h in heads if h.tenant_id in by_tenant}
    # The watches of each watched target; deleted since (their alerts went with them), or
    # nobody watches: left out.
    watched: dict[int, list[Watch]] = {}
    if maybe:
        for light in session.execute(
            select(Target.id, Target.tenant_id, Target.tags).where(Target.id.in_(maybe))
        ):
            if applicable := by_tenant[light.tenant_id].for_target(light):
                watched[light.id] = applicable
    ids = [h.id for h in heads if h.target_id in watched]
    if not ids:
        return len(heads)
    changes = (
        session.execute(select(ScoreChange).where(ScoreChange.id.in_(ids)).order_by(ScoreChange.id))
        .scalars()
        .all()
    )
    targets = _targets(session, set(watched))
    for change in changes:
        target = targets.get(change.target_id)
        if target is None:
            continue  # deleted a moment ago
        snapshot = change_snapshot(change)
        for watch in watched[target.id]:
            key = f"score_change {change.id}, rule {watch.rule.id}, target {target.id}"
            with guard(quarantine, key, tenant_id=change.tenant_id):
                row = _alert_row(session, watch, target.id, 0, now)
                observe(
                    session, row, watch, target, change.value, Band(change.band), snapshot, now,
                    settings.public_url,
                )  # fmt: skip
    return len(heads)


def change_snapshot(change: ScoreChange) -> dict[str, Any]:
    """What an alert keeps of the score change it last saw, for its notifications."""
    return {
        "feed_id": change.id,
        "previous": change.previous_value,
        "current": change.value,
        "previous_band": change.previous_band,
        "band": change.band,
        "as_of": notify.iso(change.as_of),
        "model_version": change.model_version,
        "components": change.components,
        "top_incidents": change.top_incidents,
    }


def seed_rules(
    session: Session,
    settings: AlertsSettings,
    now: datetime,
    quarantine: Quarantine | None = None,
    limit: int = 20,
) -> int:
    """Evaluate new or changed threshold rules against their targets' current scores.

    With a `quarantine`, each rule, and each of its targets, is an item of its own.
    """
    # Under the score feed's cursor: seeding and consuming score changes never interleave
    # (no two processes create the same alert, and no stale change is replayed after a seed).
    cursor = cursors.lock(session, SCORE_FEED, now)
    if cursor is None:
        return 0
    behind = session.execute(
        select(ScoreChange.id).where(ScoreChange.id > cursor.position).limit(1)
    ).first()
    if behind is not None:
        return 0  # seed from current scores only once the older changes are consumed
    pending = (
        session.execute(
            select(Rule)
            .where(Rule.seeded.is_(False))
            .order_by(Rule.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    for rule in pending:
        # Outside the item: a rule that cannot be seeded is set aside, not tried again forever.
        rule.seeded = True
        with guard(quarantine, f"rule {rule.id} (seeding)", tenant_id=rule.tenant_id):
            _seed(session, rule, settings, now, quarantine)
    return len(pending)


def _seed(
    session: Session,
    rule: Rule,
    settings: AlertsSettings,
    now: datetime,
    quarantine: Quarantine | None,
) -> None:
    """Evaluate one threshold rule against its targets' current scores."""
    sub = session.get(Subscription, rule.subscription_id)
    if sub is None or not sub.enabled or not rule.enabled or rule.kind != "threshold":
        return
    watch = next(
        (w for w in watches(session, [sub.tenant_id])[sub.tenant_id] if w.rule.id == rule.id),
        None,
    )
    if watch is None:
        return
    query = (
        select(Target, CurrentScore)
        .join(CurrentScore, CurrentScore.target_id == Target.id)
        .where(Target.tenant_id == sub.tenant_id)
    )
    if sub.scope == "target":
        query = query.where(Target.id == sub.target_id)
    # The notices say why: a rule seeded while its target already stood above it fires on no
    # score change, so they carry the current score's own explanation and say so.
    how = "created" if rule.created_at == rule.updated_at else "changed"
    for target, score in session.execute(query).all():
        if not applies(sub, target):
            continue
        snapshot = seed_snapshot(score, how)
        with guard(
            quarantine, f"rule {rule.id}, target {target.id} (seeding)", tenant_id=sub.tenant_id
        ):
            row = _alert_row(session, watch, target.id, 0, now)
            observe(
                session, row, watch, target, score.fed_value, Band(score.fed_band), snapshot, now,
                settings.public_url,
            )  # fmt: skip


def seed_snapshot(score: CurrentScore, how: str) -> dict[str, Any]:
    """What an alert keeps of a current score it is seeded from (no score change behind it):
    the score, and its components and top incidents as a score change carries them.

    `previous` stays None: this rule saw no move. `seeded` says how the rule came to be
    evaluated (`created` or `changed`), for the notice's reason.
    """
    components, top = _explanation(score.document)
    return {
        "feed_id": None,
        "previous": None,
        "current": score.fed_value,
        "previous_band": None,
        "band": score.fed_band,
        "as_of": notify.iso(score.as_of),
        "model_version": score.model_version,
        "components": components,
        "top_incidents": top,
        "seeded": how,
    }


def _explanation(document: str) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The components and top contributions of a stored score document (`ScoreOut`), in the
    shape of a score change's (`services/scoring/feed.entry`)."""
    try:
        doc = json.loads(document)
        components = {str(k): float(v) for k, v in doc.get("components", {}).items()}
        top = [
            {"incident_id": c["incident_id"], "category": c["category"], "points": c["points"]}
            for c in doc.get("contributions", [])[: notify.MAX_TOP_INCIDENTS]
        ]
    except (ValueError, TypeError, KeyError, AttributeError):
        # A document this release cannot read still lets the rule fire, unexplained.
        log.warning("a stored score document could not be read for its explanation")
        return {}, []
    return components, top


def seeded_reason(
    decision: rules.Decision, rule: rules.ThresholdRule, change: dict[str, Any] | None
) -> rules.Decision:
    """The decision with its reason saying so when a firing comes from seeding: the rule was
    created or changed while its target already stood above it (pure)."""
    how = (change or {}).get("seeded")
    if how is None or decision.kind != "firing" or decision.reason != rule.raising:
        return decision
    reason = f"{rule.raising}, where the target already stood when the rule was {how}"
    return rules.Decision(decision.notify, decision.kind, reason)


def reevaluate_due(
    session: Session,
    settings: AlertsSettings,
    now: datetime,
    quarantine: Quarantine | None = None,
    limit: int = 500,
) -> int:
    """Re-run alerts whose timers (pending, keep-firing, repeat, cooldown, snooze) are due.

    With a `quarantine`, each alert is an item; one that fails is set aside and its timer
    cleared, so it does not fail again at every tick.
    """
    rows = (
        session.execute(
            select(Alert)
            .where(Alert.next_check_at <= now)
            .order_by(Alert.next_check_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    if not rows:
        return 0
    by_tenant = watches(session, {r.tenant_id for r in rows})
    by_rule = {w.rule.id: w for ws in by_tenant.values() for w in ws}
    targets = _targets(session, {r.target_id for r in rows})
    for row in rows:
        watch, target = by_rule.get(row.rule_id), targets.get(row.target_id)
        if watch is None or target is None or row.score is None or row.band is None:
            row.next_check_at = None  # rule or subscription disabled: nothing to time
            continue
        with guard(
            quarantine,
            f"alert {row.id} (timers)",
            tenant_id=row.tenant_id,
            then=functools.partial(setattr, row, "next_check_at", None),
        ):
            observe(
                session, row, watch, target, row.score, Band(row.band), row.change, now,
                settings.public_url,
            )  # fmt: skip
    return len(rows)


def observe(
    session: Session,
    row: Alert,
    watch: Watch,
    target: Target,
    score: float,
    band: Band,
    change: dict[str, Any] | None,
    now: datetime,
    base_url: str,
) -> None:
    """Evaluate one threshold alert on a score, decide, and enqueue what must be sent."""
    params = watch.params
    assert isinstance(params, ThresholdRuleIn)
    rule = params.threshold()
    before = _state(row)
    after = rules.evaluate(before, rule, params.measure(score, band), band, now)
    decision = seeded_reason(rules.decide(before, after, rule, now), rule, change)
    row.score, row.band, row.change = score, band.value, change
    notified = "none"
    reason = decision.reason
    muted: str | None = None
    if decision.notify:
        # Snoozes that ended are cleared first; what is left may hold the notification back.
        snooze = snooze_now(Snooze.of(row), band, now)
        row.snoozed_band = snooze.band.value if snooze.band else None
        row.snoozed_until = snooze.until
        muted = held_back(snooze, row.acknowledged_at is not None, decision, now)
        if muted:
            reason = f"{decision.kind} held back: {muted}"
        else:
            after = rules.notified(after, decision, band, now)
            row.sequence += 1
            notified = decision.kind
            _send(session, row, watch, target, decision, after, now, base_url)
    if row.acknowledged_at is not None and after.state not in (
        rules.AlertState.FIRING,
        rules.AlertState.RECOVERING,
    ):
        row.acknowledged_at = row.acknowledged_by = None  # an acknowledgement ends with the alert
    if after.state.value != row.state or notified != "none":
        session.add(
            AlertEvent(
                alert_id=row.id,
                at=now,
                from_state=row.state,
                to_state=after.state.value,
                score=score,
                band=band.value,
                notified=notified,
                reason=reason[:300],
            )
        )
    _store(row, after, now)
    # An acknowledgement holds back repeats for good (until the alert clears): nothing to time.
    held = muted is not None and muted != ACKNOWLEDGED
    row.next_check_at = next_check(row, after, rule, now, held=held)


@dataclass(frozen=True)
class Snooze:
    """An alert's snooze: until its band rises above `band`, or until a time (one at most)."""

    band: Band | None = None
    until: datetime | None = None

    @classmethod
    def of(cls, row: Alert) -> Snooze:
        """The snooze stored on an alert."""
        return cls(Band(row.snoozed_band) if row.snoozed_band else None, row.snoozed_until)


def snooze_now(snooze: Snooze, band: Band, now: datetime) -> Snooze:
    """The snooze as it stands at `now` with the score in `band`: one that ended is dropped
    (the band rose above the snoozed band, or the time has come) (pure)."""
    if snooze.band is not None and BAND_RANK[band] > BAND_RANK[snooze.band]:
        snooze = Snooze(None, snooze.until)
    if snooze.until is not None and now >= snooze.until:
        snooze = Snooze(snooze.band, None)
    return snooze


def held_back(
    snooze: Snooze, acknowledged: bool, decision: rules.Decision, now: datetime
) -> str | None:
    """Why a snooze still running or an acknowledgement holds a notification back, or None
    (pure: ended snoozes are `snooze_now`'s to drop)."""
    if snooze.band is not None:
        return f"snoozed until the band rises above {snooze.band.value}"
    if snooze.until is not None and now < snooze.until:
        return f"snoozed until {notify.iso(snooze.until)}"
    if acknowledged and decision.kind == "repeat":
        return ACKNOWLEDGED
    return None


def next_check(
    row: Alert, alert: rules.Alert, rule: rules.ThresholdRule, now: datetime, *, held: bool
) -> datetime | None:
    """When a timer may change the outcome without a new score; None when nothing is timed."""
    times: list[datetime] = []
    state = alert.state
    if state is rules.AlertState.PENDING and alert.condition_since is not None:
        times.append(alert.condition_since + rule.pending)
    if state is rules.AlertState.RECOVERING and alert.cleared_since is not None:
        times.append(alert.cleared_since + rule.keep_firing)
    if state is rules.AlertState.FLAPPING and alert.transitions:
        times.append(alert.transitions[-1] + rule.flap_window)
    if (
        state is rules.AlertState.FIRING
        and rule.repeat_every is not None
        and alert.last_notified_at is not None
    ):
        times.append(alert.last_notified_at + rule.repeat_every)
    if (
        state is rules.AlertState.FIRING
        and alert.last_notified_state is not rules.AlertState.FIRING
        and alert.last_notified_at is not None
    ):
        # A firing held back by the cooldown goes out when the cooldown ends.
        times.append(alert.last_notified_at + rule.cooldown)
    if held:
        if row.snoozed_until is not None:
            times.append(row.snoozed_until)
        elif alert.last_notified_at is not None and row.snoozed_band is None:
            times.append(alert.last_notified_at + rule.cooldown)
    future = [t for t in times if t > now]
    if not future and held and row.snoozed_band is None:
        return now + timedelta(seconds=1)
    return min(future) if future else None


def _send(
    session: Session,
    row: Alert,
    watch: Watch,
    target: Target,
    decision: rules.Decision,
    alert: rules.Alert,
    now: datetime,
    base_url: str,
) -> None:
    """Build the notification and enqueue it, or hold it for the digest by severity."""
    change = row.change or {}
    top = _top_incidents(session, change.get("top_incidents", []))
    state = "resolved" if decision.kind == "resolved" else alert.state.value
    data = notify.alert_data(
        alert={
            **_alert_part(base_url, row, state, decision.kind, decision.reason, alert.since),
            # Level, not edge: an older notice may have been superseded unsent (an
            # `alert.escalated` may be the first a receiver gets), so each says whether the
            # alert is open after it. Receivers open one they do not have on `true`.
            "open": decision.kind != "resolved",
        },
        subscription={"id": watch.subscription.id, "name": watch.subscription.name},
        rule=_rule_part(watch),
        target=_feature(target),
        change=change or None,
        incident=None,
        top_incidents=top,
    )
    severity = alert.last_notified_band or Band(row.band or Band.LOW.value)
    _dispatch(session, row, watch, f"alert.{decision.kind}", data, severity, now)


def _dispatch(
    session: Session,
    row: Alert,
    watch: Watch,
    event_type: str,
    data: dict[str, Any],
    severity: Band,
    now: datetime,
) -> None:
    payload = notify.envelope(event_type, data, now)
    if severity.value in watch.subscription.digest_bands:
        outbox.hold_for_digest(
            session,
            tenant_id=row.tenant_id,
            endpoints=watch.endpoints,
            alert_id=row.id,
            payload=payload,
            now=now,
        )
        return
    outbox.enqueue(
        session,
        tenant_id=row.tenant_id,
        endpoints=watch.endpoints,
        alert_id=row.id,
        event_type=event_type,
        sequence=row.sequence,
        payload=payload,
        now=now,
        dedupe=f"a{row.id}:s{row.sequence}",
        flush=False,  # written with the batch's next flush
    )


# --------------------------------------------------------------------------------------------
# Event rules: the incident feed


def consume_incidents(
    session: Session, settings: AlertsSettings, now: datetime, quarantine: Quarantine | None = None
) -> int:
    """Match a batch of new or revised incidents against event rules; return how many.

    With a `quarantine`, each feed entry is matched on its own: one that fails is set aside.
    """
    cursor = cursors.lock(session, INCIDENT_FEED, now)
    if cursor is None:
        return 0
    changes = (
        session.execute(
            select(IncidentChange)
            .where(IncidentChange.id > cursor.position)
            .order_by(IncidentChange.id)
            .limit(settings.feed_batch)
        )
        .scalars()
        .all()
    )
    if not changes:
        return 0
    cursor.position = changes[-1].id
    cursor.updated_at = now
    found = [
        w for ws in watches(session, None).values() for w in ws if isinstance(w.params, EventRuleIn)
    ]
    if not found:
        return len(changes)
    if quarantine is None:
        _match_changes(session, changes, found, settings, now)
        return len(changes)
    for change in changes:
        key = f"incident_change {change.id} (incident {change.incident_id})"
        with guard(quarantine, key):
            _match_changes(session, [change], found, settings, now)
    return len(changes)


def _match_changes(
    session: Session,
    changes: Sequence[IncidentChange],
    found: Sequence[Watch],
    settings: AlertsSettings,
    now: datetime,
) -> None:
    """Tell event alerts of revised incidents, and raise those that new incidents trigger."""
    rows = {
        i.id: i
        for i in session.execute(
            select(Incident).where(Incident.id.in_({c.incident_id for c in changes}))
        ).scalars()
    }
    events = _events(session, {_event_of(i) for i in rows.values()})
    notified = _notify_updates(session, changes, rows, events, found, settings, now)
    newest = max(w.params.max_age for w in found if isinstance(w.params, EventRuleIn))
    reach = max(w.params.radius_km for w in found if isinstance(w.params, EventRuleIn))
    by_tenant: dict[int, list[Watch]] = defaultdict(list)
    for watch in found:
        by_tenant[watch.subscription.tenant_id].append(watch)
    indexes = {tenant: WatchIndex(ws) for tenant, ws in by_tenant.items()}
    matches = [
        match
        for incident_id in dict.fromkeys(c.incident_id for c in changes)
        if (incident := rows.get(incident_id)) is not None
        # Only a report that stands for its event alerts; back-filled history never does.
        and incident.merged_into_id is None
        and now - incident.occurred_at <= newest
        for match in _match_incident(session, incident, indexes, reach, now)
    ]
    _trigger(session, matches, events, notified, now, settings.public_url)


def _event_of(incident: Incident) -> int:
    """The id of the report standing for an incident's event (itself unless merged)."""
    return incident.merged_into_id or incident.id


def _events(session: Session, event_ids: set[int]) -> dict[int, int]:
    """Every report of these events, mapped to its event's id."""
    if not event_ids:
        return {}
    ids = sorted(event_ids)
    found = session.execute(
        select(Incident.id, Incident.merged_into_id).where(
            Incident.id.in_(ids) | Incident.merged_into_id.in_(ids)
        )
    ).all()
    return {row.id: row.merged_into_id or row.id for row in found}


# What subscribers are told when the incident behind an event alert changes.
_UPDATE_REASONS = {
    "updated": "the {source} report was revised (revision {revision})",
    # No article before the source: "a acled report" does not read, "A a report" even less.
    "merged": "another report of the same event came in ({source})",
    "retracted": "the {source} report was retracted",
    "promoted": "the event now rests on the {source} report",
    "split": "a {source} report no longer matches this event",
}


def _notify_updates(
    session: Session,
    changes: Sequence[IncidentChange],
    rows: dict[int, Incident],
    events: dict[int, int],
    found: Sequence[Watch],
    settings: AlertsSettings,
    now: datetime,
) -> set[tuple[int, int, int]]:
    """Send `alert.updated` for event alerts whose incident was revised, merged or retracted.

    One notice per alert and batch, however many of its reports changed. Returns the
    (rule, target, event) of every alert that exists, so none is raised twice.
    """
    told: dict[int, list[str]] = defaultdict(list)
    for change in changes:
        incident = rows.get(change.incident_id)
        template = _UPDATE_REASONS.get(change.outcome)
        if incident is None or template is None:
            continue
        text = template.format(source=incident.source, revision=change.revision)
        if text not in told[_event_of(incident)]:
            told[_event_of(incident)].append(text)
    reasons = {event: "; ".join(texts) for event, texts in told.items()}
    if not reasons:
        # Only new reports: none of their events can have alerted yet (a report that joins
        # an event is fed as `merged`, which has a reason).
        return set()
    existing = (
        session.execute(
            select(Alert).where(Alert.incident_id.in_(sorted(events))).with_for_update()
        )
        .scalars()
        .all()
        if events
        else []
    )
    by_rule = {w.rule.id: w for w in found}
    primaries = {
        i.id: i
        for i in session.execute(
            select(Incident).where(Incident.id.in_({events[a.incident_id] for a in existing
                                                    if a.incident_id is not None}))
        ).scalars()
    }  # fmt: skip
    targets = _targets(session, {a.target_id for a in existing}) if existing else {}
    sources: dict[int, list[str]] = defaultdict(list)
    members = (
        session.execute(
            select(Incident.id, Incident.source).where(Incident.id.in_(sorted(events)))
        ).all()
        if existing
        else []
    )
    for member in members:
        sources[events[member.id]].append(member.source)
    for row in existing:
        assert row.incident_id is not None
        event_id = events[row.incident_id]
        reason = reasons.get(event_id)
        watch = by_rule.get(row.rule_id)
        primary = primaries.get(event_id)
        target = targets.get(row.target_id)
        if reason is None or watch is None or primary is None or target is None:
            continue
        params = watch.params
        assert isinstance(params, EventRuleIn)
        counts = scoring_incidents.to_model(primary).counts
        row.sequence += 1
        row.updated_at = now
        why = reason if counts else f"{reason}: the event no longer counts"
        data = notify.alert_data(
            alert=_alert_part(settings.public_url, row, row.state, "updated", why, row.since),
            subscription={"id": watch.subscription.id, "name": watch.subscription.name},
            rule=_rule_part(watch),
            target=_feature(target),
            change=None,
            incident=_incident_part(primary, None, sources.get(event_id, ())),
            top_incidents=[],
            trigger_why=why,
        )
        session.add(
            AlertEvent(
                alert_id=row.id, at=now, from_state=row.state, to_state=row.state, score=None,
                band=params.severity.value, notified="updated", reason=why[:300],
            )
        )  # fmt: skip
        _dispatch(session, row, watch, "alert.updated", data, params.severity, now)
    return {
        (a.rule_id, a.target_id, events[a.incident_id])
        for a in existing
        if a.incident_id is not None
    }


def _incident_part(
    incident: Incident, distance_km: float | None, sources: Sequence[str] = ()
) -> dict[str, Any]:
    return {
        "id": incident.id,
        "category": incident.category,
        "title": incident.title,
        "occurred_at": notify.iso(incident.occurred_at),
        "location_name": incident.location_name,
        "country": incident.country,
        "lifecycle": incident.lifecycle,
        "sources": list(sources) or [incident.source],
        "distance_km": None if distance_km is None else round(distance_km, 1),
    }


_ALERTS = cast(Table, Alert.__table__)


@dataclass(frozen=True, slots=True)
class _Match:
    """An event rule that an incident triggers for one target."""

    watch: Watch
    params: EventRuleIn
    target: Target
    incident: Incident
    found: triggers.Match


def _match_incident(
    session: Session,
    incident: Incident,
    events: dict[int, WatchIndex],
    reach: float,
    now: datetime,
) -> list[_Match]:
    model = scoring_incidents.to_model(incident)
    # Which targets in reach have a rule that applies is decided on a light read; only those
    # are loaded whole.
    # Tags are read (JSON, per row) only when some rule watches a tag.
    tags = Target.tags if any(index.by_tag for index in events.values()) else null()
    query = select(Target.id, Target.tenant_id, tags.label("tags")).where(
        Target.tenant_id.in_(events)
    )
    scoped = bool(incident.scope_countries or incident.scope_admin1)
    # A threat scoped to countries or regions matches by area, however far its location.
    if incident.lat is not None and incident.lon is not None and not scoped:
        min_lon, min_lat, max_lon, max_lat = geo.bbox_around(incident.lat, incident.lon, reach)
        query = query.where(
            Target.box_max_lat >= min_lat,
            Target.box_min_lat <= max_lat,
            Target.box_max_lon >= min_lon,
            Target.box_min_lon <= max_lon,
        )
    candidates = {
        row.id: applicable
        for row in session.execute(query)
        if (applicable := events[row.tenant_id].for_target(row))
    }
    if not candidates:
        return []
    out = []
    loaded = select(Target).where(Target.id.in_(sorted(candidates)))
    for target in session.execute(loaded).scalars():
        applicable = candidates[target.id]
        target_model = scoring_targets.to_model(target)
        for watch in applicable:
            params = watch.params
            if not isinstance(params, EventRuleIn):
                continue
            found = triggers.match(params, model, target_model, now)
            if found is not None:
                out.append(_Match(watch, params, target, incident, found))
    return out


def _trigger(
    session: Session,
    matches: Sequence[_Match],
    events: dict[int, int],
    seen: set[tuple[int, int, int]],
    now: datetime,
    base_url: str,
) -> None:
    """Raise an alert for each match and enqueue its notices: a few statements per batch.

    An event that already alerted a rule for a target (through any of its reports) raises
    nothing new: its revisions are told as `alert.updated`.
    """
    fresh = [
        m
        for m in matches
        if (m.watch.rule.id, m.target.id, events.get(m.incident.id, m.incident.id)) not in seen
    ]
    if not fresh:
        return
    values = [
        {
            "tenant_id": m.watch.subscription.tenant_id, "subscription_id": m.watch.subscription.id,
            "rule_id": m.watch.rule.id, "target_id": m.target.id, "incident_id": m.incident.id,
            "state": TRIGGERED, "since": now, "transitions": [], "sequence": 1,
            "last_notified_at": now, "last_notified_state": TRIGGERED, "created_at": now,
            "updated_at": now,
        }
        for m in fresh
    ]  # fmt: skip
    # One multi-row INSERT, without the ORM's unit of work; the ids go into the events and
    # the payloads. The objects below only carry them there: they are never added.
    ids = session.execute(
        insert(_ALERTS).returning(_ALERTS.c.id, sort_by_parameter_order=True), values
    ).scalars()
    alerts = [Alert(id=i, **v) for i, v in zip(ids, values, strict=True)]
    history: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    for m, row in zip(fresh, alerts, strict=True):
        # The notices and logs of this alert carry the request that stored the incident.
        with working_for([m.incident.request_id], incident_id=m.incident.id, alert_id=row.id):
            log.debug("event alert triggered for target %d", m.target.id)
            incident, found = m.incident, m.found
            history.append(
                {
                    "alert_id": row.id, "at": now, "from_state": "normal", "to_state": TRIGGERED,
                    "score": None, "band": m.params.severity.value, "notified": "triggered",
                    "reason": found.why[:300],
                }
            )  # fmt: skip
            data = notify.alert_data(
                alert=_alert_part(base_url, row, TRIGGERED, "triggered", found.why, now),
                subscription={"id": m.watch.subscription.id, "name": m.watch.subscription.name},
                rule=_rule_part(m.watch),
                target=_feature(m.target),
                change=None,
                incident=_incident_part(incident, found.distance_km),
                top_incidents=[],
                trigger_why=f"{found.why}: {incident.title}" if incident.title else found.why,
            )
            if m.params.severity.value in m.watch.subscription.digest_bands:
                _dispatch(session, row, m.watch, "alert.triggered", data, m.params.severity, now)
                continue
            # A first notice: nothing older to supersede, so many go in one statement.
            payload = notify.envelope("alert.triggered", data, now)
            deliveries.extend(
                outbox.new_delivery(
                    tenant_id=row.tenant_id, endpoint_id=endpoint.id, alert_id=row.id,
                    event_type="alert.triggered", sequence=row.sequence, payload=payload, now=now,
                    dedupe=f"a{row.id}:s{row.sequence}",
                )
                for endpoint in m.watch.endpoints
                if endpoint.enabled
            )  # fmt: skip
    session.execute(insert(cast(Table, AlertEvent.__table__)), history)
    outbox.insert_new(session, deliveries)
    # One line per incident, however many targets it alerted (each alert's is at DEBUG).
    for (incident_id, request_id), count in Counter(
        (m.incident.id, m.incident.request_id) for m in fresh
    ).items():
        with working_for([request_id], incident_id=incident_id):
            log.info("incident %d triggered %d event alert(s)", incident_id, count)


# --------------------------------------------------------------------------------------------
# Digests and retention


def send_digests(
    session: Session, settings: AlertsSettings, now: datetime, quarantine: Quarantine | None = None
) -> int:
    """Gather each endpoint's held notifications into one digest delivery; return how many.

    With a `quarantine`, each endpoint's digest is an item of its own.
    """
    items = (
        session.execute(
            select(DigestItem)
            .where(DigestItem.delivery_id.is_(None))
            .order_by(DigestItem.endpoint_id, DigestItem.id)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    grouped: dict[int, list[DigestItem]] = defaultdict(list)
    for item in items:
        grouped[item.endpoint_id].append(item)
    period = settings.digest_interval.total_seconds()
    slot = int(now.timestamp() // period)
    sent = 0
    for endpoint_id, held in grouped.items():
        endpoint = session.get(Endpoint, endpoint_id)
        if endpoint is None or not endpoint.enabled:
            continue
        with guard(quarantine, f"digest of endpoint {endpoint_id}", tenant_id=endpoint.tenant_id):
            data = {
                "period": {"from": notify.iso(held[0].created_at), "to": notify.iso(now)},
                "items": [item.payload for item in held],
            }
            rows = outbox.enqueue(
                session,
                tenant_id=endpoint.tenant_id,
                endpoints=[endpoint],
                alert_id=None,
                event_type="digest.daily",
                sequence=0,
                payload=notify.envelope("digest.daily", data, now),
                now=now,
                dedupe=f"digest:{slot}:{held[-1].id}",
            )
            for item in held:
                item.delivery_id = rows[0].id
            sent += 1
    return sent


def purge(session: Session, settings: AlertsSettings, now: datetime) -> int:
    """Forget settled deliveries (their attempts, and digest items they carried) past retention."""
    cutoff = now - settings.retention
    settled = (Delivery.status.in_(outbox.SETTLED), Delivery.settled_at < cutoff)
    ids = list(session.execute(select(Delivery.id).where(*settled).limit(5000)).scalars())
    if not ids:
        return 0
    session.execute(delete(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(ids)))
    # Deleted with their digest, not orphaned: an orphan would look unsent and go out again.
    session.execute(delete(DigestItem).where(DigestItem.delivery_id.in_(ids)))
    # The predicate again: a delivery replayed since it was selected is kept.
    session.execute(delete(Delivery).where(Delivery.id.in_(ids), *settled))
    return len(ids)


# --------------------------------------------------------------------------------------------
# Rows and parts


def _targets(session: Session, ids: set[int]) -> dict[int, Target]:
    if not ids:
        return {}
    return {t.id: t for t in session.execute(select(Target).where(Target.id.in_(ids))).scalars()}


def _alert_row(
    session: Session, watch: Watch, target_id: int, incident_id: int, now: datetime
) -> Alert:
    """The alert of a rule for a target (and incident), locked; created normal if new."""
    row = session.execute(
        select(Alert)
        .where(
            Alert.rule_id == watch.rule.id,
            Alert.target_id == target_id,
            Alert.incident_id == incident_id,
        )
        .with_for_update()
    ).scalar_one_or_none()
    if row is not None:
        return row
    row = Alert(
        tenant_id=watch.subscription.tenant_id,
        subscription_id=watch.subscription.id,
        rule_id=watch.rule.id,
        target_id=target_id,
        incident_id=incident_id,
        state=rules.AlertState.NORMAL.value,
        since=now,
        transitions=[],
        sequence=0,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row


def _state(row: Alert) -> rules.Alert:
    return rules.Alert(
        state=rules.AlertState(row.state),
        since=row.since,
        condition_since=row.condition_since,
        cleared_since=row.cleared_since,
        last_band=Band(row.band) if row.band else None,
        transitions=tuple(datetime.fromisoformat(t) for t in row.transitions),
        last_notified_at=row.last_notified_at,
        last_notified_band=Band(row.last_notified_band) if row.last_notified_band else None,
        last_notified_state=(
            rules.AlertState(row.last_notified_state) if row.last_notified_state else None
        ),
    )


def _store(row: Alert, alert: rules.Alert, now: datetime) -> None:
    row.state = alert.state.value
    row.since = alert.since
    row.condition_since = alert.condition_since
    row.cleared_since = alert.cleared_since
    row.transitions = [t.isoformat() for t in alert.transitions]
    row.last_notified_at = alert.last_notified_at
    row.last_notified_band = alert.last_notified_band.value if alert.last_notified_band else None
    row.last_notified_state = alert.last_notified_state.value if alert.last_notified_state else None
    row.updated_at = now


def _alert_part(
    base_url: str, row: Alert, state: str, kind: str, reason: str, since: datetime
) -> dict[str, Any]:
    return {
        "id": row.id,
        "url": f"{base_url.rstrip('/')}/v1/alerts/{row.id}",
        "state": state,
        "sequence": row.sequence,
        "kind": kind,
        "reason": reason,
        "since": notify.iso(since),
    }


def _rule_part(watch: Watch) -> dict[str, Any]:
    return {"id": watch.rule.id, **watch.params.model_dump(mode="json")}


def _feature(target: Target) -> dict[str, Any]:
    return notify.target_feature(
        target.id, target.kind, target.name, target.coordinates, target.tags
    )


def _top_incidents(session: Session, top: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The change's top incidents with their titles and times."""
    ids = [t["incident_id"] for t in top[: notify.MAX_TOP_INCIDENTS]]
    if not ids:
        return []
    found = {
        i.id: i for i in session.execute(select(Incident).where(Incident.id.in_(ids))).scalars()
    }
    out = []
    for t in top[: notify.MAX_TOP_INCIDENTS]:
        incident = found.get(t["incident_id"])
        out.append(
            {
                **t,
                "title": (incident.title or None) if incident else None,
                "occurred_at": notify.iso(incident.occurred_at) if incident else None,
            }
        )
    return out
