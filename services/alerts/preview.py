"""Alert previews: the notifications a rule would have sent over a past period, from as-of scores.

The replay (`replay`, `match_events`, `summarize`) is pure; `run` loads the rule, the targets
and the incidents once, scores each target at each step from what was reported by then, and
explains only the moments a notification would have gone out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, WithJsonSchema
from sqlalchemy import select
from sqlalchemy.engine import Row as SqlRow
from sqlalchemy.orm import Session

from services.alerts import notify, rules, triggers
from services.alerts.models import Rule, Subscription
from services.alerts.pipeline import applies
from services.alerts.schemas import (
    STORED,
    EventRuleIn,
    RuleIn,
    Strict,
    ThresholdRuleIn,
    Trigger,
    duration_schema,
)
from services.core.ids import RowId
from services.core.problems import Problem, field_errors, not_found
from services.scoring import geo, incidents, risk, scores
from services.scoring import targets as scoring_targets
from services.scoring.models import Incident, Target
from services.scoring.schemas import Timestamp, given
from services.scoring.taxonomy import Band, Category, Lifecycle

MAX_TARGET_IDS = 1000
MAX_ALERTS = 1000
MAX_PERIOD = timedelta(days=366)
MIN_STEP = timedelta(minutes=15)
DEFAULT_STEP = timedelta(hours=6)

PreviewKind = Literal["firing", "resolved", "escalated", "repeat", "flapping", "triggered"]
THRESHOLD_KINDS: tuple[PreviewKind, ...] = ("firing", "resolved", "escalated", "repeat", "flapping")
EVENT_KINDS: tuple[PreviewKind, ...] = ("triggered",)

RuleBody = ThresholdRuleIn | EventRuleIn
_RULE = TypeAdapter[RuleBody](RuleIn)


# --------------------------------------------------------------------------------------------
# Bodies


class PreviewIn(Strict):
    """A rule (or a change to a stored one), the targets and the past period to replay it over."""

    # What `check` refuses across fields, said in the schema.
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {"oneOf": [given("rule"), given("rule_id")]},
                {"anyOf": [{"not": given("changes")}, given("rule_id")]},
                {"not": given("subscription_id", "target_ids")},
            ]
        }
    )

    rule: RuleIn | None = Field(None, description="A rule body to preview; or give rule_id.")
    rule_id: RowId | None = Field(None, description="One of the tenant's stored rules.")
    changes: dict[str, Any] | None = Field(
        None,
        description=(
            "With rule_id: fields merged over the stored rule (a different `kind` replaces it). "
            "The response then also carries the stored rule's counts as `baseline`."
        ),
    )
    subscription_id: RowId | None = Field(
        None, description="Preview on this subscription's targets (its scope)."
    )
    target_ids: Annotated[list[RowId], Field(max_length=MAX_TARGET_IDS)] | None = Field(
        None,
        description=(
            "Preview on these targets. Without targets or subscription: the rule's subscription "
            "for rule_id, otherwise every target of the tenant."
        ),
    )
    since: Timestamp = Field(description="Start of the period (RFC 3339 with a time zone).")
    until: Timestamp = Field(description="End of the period, not in the future.")
    step: Annotated[
        timedelta,
        Field(ge=MIN_STEP, le=MAX_PERIOD),
        WithJsonSchema(duration_schema(MIN_STEP, MAX_PERIOD), mode="validation"),
    ] = Field(
        DEFAULT_STEP,
        description="Time between two evaluations of threshold rules (ISO 8601 duration).",
    )


class PreviewIncident(BaseModel):
    """An incident behind a preview alert: a top contributor to the score, or the trigger."""

    incident_id: int
    source: str
    source_id: str
    title: str
    category: Category
    occurred_at: datetime
    reported_at: datetime
    points: float | None = Field(description="Points it added to the score (threshold rules).")
    share: float | None = Field(description="Its share of the score (threshold rules).")
    distance_km: float | None
    why: str


class PreviewAlert(BaseModel):
    """One notification the rule would have sent."""

    target_id: int
    target_name: str
    at: datetime
    kind: PreviewKind
    score: float | None = Field(description="The as-of score at `at` (threshold rules).")
    band: Band = Field(description="The as-of band (threshold), or the rule's severity (event).")
    reason: str
    why: list[PreviewIncident] = Field(
        description="Top contributing incidents at that moment, or the triggering incident."
    )
    incident: PreviewIncident | None = Field(None, description="The trigger (event rules).")
    distance_km: float | None = Field(None, description="Trigger to target (event rules).")


class WeekCount(BaseModel):
    """Notifications in the ISO week starting (Monday, UTC) on `week_start`."""

    week_start: date
    count: int


class TargetCount(BaseModel):
    """Notifications for one target."""

    target_id: int
    target_name: str
    count: int


class PreviewCounts(BaseModel):
    """How many notifications a rule would have sent over the period, and how they spread."""

    rule: RuleIn
    total: int
    counts_per_week: list[WeekCount]
    counts_by_kind: dict[str, int]
    counts_by_target: list[TargetCount] = Field(description="Targets with any, most first.")


class PreviewOut(PreviewCounts):
    """The notifications a rule would have sent, first ones first, and their counts."""

    rule_id: int | None
    since: datetime
    until: datetime
    step: timedelta
    model_version: int
    targets: int = Field(description="How many targets the rule was replayed on.")
    evaluations: int = Field(description="Times each target was scored (threshold rules).")
    alerts: list[PreviewAlert]
    truncated: bool = Field(description=f"True when more than {MAX_ALERTS} alerts were cut.")
    baseline: PreviewCounts | None = Field(
        None, description="The stored rule unchanged (rule_id with changes)."
    )


# --------------------------------------------------------------------------------------------
# The replay (pure)


@dataclass(frozen=True, slots=True)
class Sample:
    """A target's as-of score at one time."""

    at: datetime
    score: float
    band: Band


@dataclass(frozen=True, slots=True)
class Notice:
    """A notification a threshold rule would have sent."""

    at: datetime
    kind: PreviewKind
    score: float
    band: Band
    reason: str


def replay(rule: ThresholdRuleIn, series: Sequence[Sample]) -> list[Notice]:
    """Run evaluate, decide and notified over one target's score series, oldest first."""
    if not series:
        return []
    threshold = rule.threshold()
    alert = rules.Alert.initial(series[0].at)
    out: list[Notice] = []
    for sample in series:
        measured = rule.measure(sample.score, sample.band)
        after = rules.evaluate(alert, threshold, measured, sample.band, sample.at)
        decision = rules.decide(alert, after, threshold, sample.at)
        if decision.notify:
            after = rules.notified(after, decision, sample.band, sample.at)
            kind = decision.kind
            assert kind != "none"
            out.append(Notice(sample.at, kind, sample.score, sample.band, decision.reason))
        alert = after
    return out


@dataclass(frozen=True, slots=True)
class Hit:
    """An incident that would have triggered an event rule for a target when it was reported."""

    target_id: int
    incident: risk.Incident
    match: triggers.Match


def match_events(
    rule: EventRuleIn,
    found: Iterable[risk.Incident],
    targets: Sequence[tuple[int, risk.Target]],
) -> list[Hit]:
    """Each incident matched against each target at the time it was reported, oldest first."""
    # Nearby triggers need the incident within the radius; a box test skips far targets cheaply.
    nearby = rule.trigger is not Trigger.THREAT_MATCHING
    boxes = [_box(spec, rule.radius_km) for _, spec in targets]
    hits: list[Hit] = []
    for incident in sorted(found, key=lambda i: (i.reported_at, i.id)):
        for (target_id, spec), box in zip(targets, boxes, strict=True):
            if nearby and not _inside(incident, box):
                continue
            match = triggers.match(rule, incident, spec, incident.reported_at)
            if match is not None:
                hits.append(Hit(target_id, incident, match))
    return hits


def step_times(since: datetime, until: datetime, step: timedelta) -> list[datetime]:
    """since, since + step, ... up to until (inclusive)."""
    return [since + k * step for k in range(evaluations(since, until, step))]


def evaluations(since: datetime, until: datetime, step: timedelta) -> int:
    """How many step times lie in [since, until]."""
    return (until - since) // step + 1 if until >= since else 0


def week_start(moment: datetime) -> date:
    """The Monday (UTC) of the ISO week holding `moment`."""
    day = moment.date()
    return day - timedelta(days=day.weekday())


@dataclass(frozen=True, slots=True)
class Sent:
    """What the counts need of one notification."""

    at: datetime
    kind: PreviewKind
    target_id: int


def summarize(
    rule: RuleBody,
    sent: Sequence[Sent],
    *,
    since: datetime,
    until: datetime,
    names: Mapping[int, str],
) -> PreviewCounts:
    """Counts per week (every week of the period, zeros too), per kind and per target."""
    weeks = Counter(week_start(s.at) for s in sent)
    first, last = week_start(since), week_start(until)
    per_week = [
        WeekCount(week_start=first + timedelta(weeks=k), count=weeks[first + timedelta(weeks=k)])
        for k in range((last - first).days // 7 + 1)
    ]
    kinds = THRESHOLD_KINDS if isinstance(rule, ThresholdRuleIn) else EVENT_KINDS
    by_kind = Counter(s.kind for s in sent)
    by_target = Counter(s.target_id for s in sent)
    return PreviewCounts(
        rule=rule,
        total=len(sent),
        counts_per_week=per_week,
        counts_by_kind={kind: by_kind[kind] for kind in kinds},
        counts_by_target=[
            TargetCount(target_id=t, target_name=names.get(t, ""), count=n)
            for t, n in sorted(by_target.items(), key=lambda item: (-item[1], item[0]))
        ],
    )


def check(data: PreviewIn, now: datetime) -> list[dict[str, Any]]:
    """What is wrong across the fields of a preview request (each error names its field)."""
    errors: list[dict[str, Any]] = []
    if (data.rule is None) == (data.rule_id is None):
        reason = "give exactly one of rule (a rule body) and rule_id (a stored rule)"
        errors += [_error(("rule",), reason), _error(("rule_id",), reason)]
    if data.changes is not None and data.rule_id is None:
        errors.append(_error(("changes",), "changes apply to a stored rule: give rule_id"))
    if data.subscription_id is not None and data.target_ids is not None:
        reason = "give subscription_id or target_ids, not both"
        errors += [_error(("subscription_id",), reason), _error(("target_ids",), reason)]
    if data.until > now:
        errors.append(_error(("until",), f"must not be in the future (now is {notify.iso(now)})"))
    if data.since >= data.until:
        errors.append(_error(("until",), "must be after since"))
    elif data.until - data.since > MAX_PERIOD:
        errors.append(_error(("until",), f"the period must not exceed {MAX_PERIOD.days} days"))
    return errors


# --------------------------------------------------------------------------------------------
# Loading and scoring (I/O)


@dataclass(frozen=True, slots=True)
class Chosen:
    """The rule to preview, and the stored one it changes (for the baseline)."""

    rule: RuleBody
    rule_id: int | None
    stored: RuleBody | None
    subscription: Subscription | None


Replayed = tuple[Sent, Notice | Hit]


def run(
    session: Session,
    model: scores.ActiveModel,
    tenant_id: int,
    data: PreviewIn,
    *,
    now: datetime,
    max_pairs: int,
) -> PreviewOut:
    """Replay a rule over a tenant's targets and a past period (reads only)."""
    errors = check(data, now)
    if errors:
        raise _invalid(errors)
    chosen = choose_rule(session, tenant_id, data)
    found = choose_targets(session, tenant_id, data, chosen.subscription)
    replayed = [chosen.rule] if chosen.stored is None else [chosen.rule, chosen.stored]
    scored = any(isinstance(r, ThresholdRuleIn) for r in replayed)
    count = evaluations(data.since, data.until, data.step) if scored else 0
    if count * len(found) > max_pairs:
        reason = (
            f"{len(found)} targets x {count} times = {count * len(found)} (target, time) "
            f"pairs, at most {max_pairs}: use a longer step, a shorter period or fewer targets"
        )
        raise Problem(413, "preview-too-large", reason, errors=[_error(("step",), reason)])

    series = score_series(session, model, found, data) if scored and found else None
    names = {t.id: t.name for t in found}
    main, rows = _notifications(session, chosen.rule, series, found, data)
    counts = summarize(
        chosen.rule, [s for s, _ in main], since=data.since, until=data.until, names=names
    )
    baseline = None
    if chosen.stored is not None:
        base, _ = _notifications(session, chosen.stored, series, found, data)
        baseline = summarize(
            chosen.stored, [s for s, _ in base], since=data.since, until=data.until, names=names
        )

    by_id = {t.id: t for t in found}
    alerts: list[PreviewAlert] = []
    for sent, item in main[:MAX_ALERTS]:
        target = by_id[sent.target_id]
        if isinstance(item, Notice):
            assert series is not None
            alerts.append(_threshold_alert(target, item, series.why(target, item.at)))
        else:
            assert isinstance(chosen.rule, EventRuleIn)
            alerts.append(_event_alert(target, item, rows[item.incident.id], chosen.rule))
    return PreviewOut(
        **counts.model_dump(exclude={"rule"}),
        rule=chosen.rule,
        rule_id=chosen.rule_id,
        since=data.since,
        until=data.until,
        step=data.step,
        model_version=model.version,
        targets=len(found),
        evaluations=count,
        alerts=alerts,
        truncated=len(main) > MAX_ALERTS,
        baseline=baseline,
    )


def _notifications(
    session: Session,
    rule: RuleBody,
    series: Series | None,
    found: Sequence[Target],
    data: PreviewIn,
) -> tuple[list[Replayed], dict[int, incidents.Row]]:
    """Every notification of `rule`, in order, with the incident rows of event triggers."""
    out: list[Replayed] = []
    rows: dict[int, incidents.Row] = {}
    if isinstance(rule, ThresholdRuleIn):
        if series is not None:
            out = [
                (Sent(n.at, n.kind, target_id), n)
                for target_id, samples in series.samples.items()
                for n in replay(rule, samples)
            ]
    elif found:
        loaded, rows = load_event_incidents(session, rule, found, data)
        specs = [(t.id, scoring_targets.to_model(t)) for t in found]
        out = [
            (Sent(h.incident.reported_at, "triggered", h.target_id), h)
            for h in match_events(rule, loaded, specs)
        ]
    out.sort(key=lambda pair: (pair[0].at, pair[0].target_id, _incident_id(pair[1])))
    return out, rows


def choose_rule(session: Session, tenant_id: int, data: PreviewIn) -> Chosen:
    """The rule body to preview: given, stored, or stored with changes (404 for others')."""
    if data.rule is not None:
        return Chosen(data.rule, None, None, None)
    assert data.rule_id is not None
    found = session.execute(
        select(Rule, Subscription)
        .join(Subscription, Subscription.id == Rule.subscription_id)
        .where(Rule.id == data.rule_id, Subscription.tenant_id == tenant_id)
    ).first()
    if found is None:
        raise not_found("rule")
    row, subscription = found
    stored = _RULE.validate_python({"kind": row.kind, **row.params}, context={STORED: True})
    if data.changes is None:
        return Chosen(stored, row.id, None, subscription)
    kind = data.changes.get("kind", row.kind)
    # Another kind shares no fields with the stored rule: the changes are then the whole rule.
    merged = {**row.params, **data.changes} if kind == row.kind else dict(data.changes)
    try:
        changed = _RULE.validate_python({**merged, "kind": kind})
    except ValidationError as exc:
        # loc starts with the union's tag; `changes` is flat, so name its key (not union members).
        errors = [{**e, "loc": ("changes", *e["loc"][1:2])} for e in exc.errors()]
        raise _invalid(field_errors(errors)) from exc
    return Chosen(changed, row.id, stored, subscription)


def choose_targets(
    session: Session, tenant_id: int, data: PreviewIn, rule_subscription: Subscription | None
) -> list[Target]:
    """The tenant's targets to replay on, by id (422 for ids that are not the tenant's)."""
    query = select(Target).where(Target.tenant_id == tenant_id).order_by(Target.id)
    if data.target_ids is not None:
        found = {
            t.id: t
            for t in session.execute(query.where(Target.id.in_(set(data.target_ids)))).scalars()
        }
        missing = [
            _error(("target_ids", i), f"target {t} is not one of the tenant's targets")
            for i, t in enumerate(data.target_ids)
            if t not in found
        ]
        if missing:
            raise _invalid(missing)
        return [found[t] for t in sorted(set(data.target_ids))]
    subscription = rule_subscription
    if data.subscription_id is not None:
        subscription = session.execute(
            select(Subscription).where(
                Subscription.id == data.subscription_id, Subscription.tenant_id == tenant_id
            )
        ).scalar_one_or_none()
        if subscription is None:
            raise not_found("subscription")
    if subscription is not None and subscription.scope == "target":
        query = query.where(Target.id == subscription.target_id)
    chosen = list(session.execute(query).scalars())
    if subscription is None:
        return chosen
    return [t for t in chosen if applies(subscription, t)]


@dataclass(frozen=True, slots=True)
class Series:
    """Every target's as-of score at every step, and the incidents they were computed from."""

    model: scores.ActiveModel
    loaded: scores.LoadedIncidents
    specs: dict[int, risk.Target]
    samples: dict[int, list[Sample]]

    def why(self, target: Target, at: datetime) -> list[PreviewIncident]:
        """The incidents contributing most to the target's score at `at`."""
        score = risk.score_target(
            self.specs[target.id],
            self.loaded.incident_set,
            at,
            self.model.params,
            explain_top=notify.MAX_TOP_INCIDENTS,
        )
        doc = scores.document(scores.ref_for(target), score, self.model.version, self.loaded.rows)
        out = []
        for c in doc.contributions:
            row = self.loaded.rows[c.incident_id]
            distance = c.factors.get("distance_km")
            out.append(
                PreviewIncident(
                    incident_id=c.incident_id,
                    source=c.source,
                    source_id=c.source_id,
                    title=c.title,
                    category=c.category,
                    occurred_at=row.occurred_at,
                    reported_at=row.reported_at,
                    points=c.points,
                    share=c.share,
                    distance_km=float(distance) if isinstance(distance, float | int) else None,
                    why=c.why,
                )
            )
        return out


def score_series(
    session: Session, model: scores.ActiveModel, found: Sequence[Target], data: PreviewIn
) -> Series:
    """Score every target at every step from what was reported by then (one incident load)."""
    times = step_times(data.since, data.until, data.step)
    params = model.params
    box = scores.influence_box(
        [c for t in found for c in t.coordinates], max(t.radius_km for t in found), params
    )
    loaded = scores.load_incidents(session, params, box=box, until=times[-1], since=times[0])
    specs = {t.id: scoring_targets.to_model(t) for t in found}
    samples: dict[int, list[Sample]] = {target_id: [] for target_id in specs}
    # Every target at one step is one batch.
    for at in times:
        scored = risk.score_targets(
            list(specs.values()), loaded.incident_set, at, params, explain_top=0
        )
        for target_id, score in zip(specs, scored, strict=True):
            samples[target_id].append(Sample(at, score.value, score.band))
    return Series(model, loaded, specs, samples)


def load_event_incidents(
    session: Session, rule: EventRuleIn, chosen: Sequence[Target], data: PreviewIn
) -> tuple[list[risk.Incident], dict[int, incidents.Row]]:
    """Incidents reported in the period that could trigger `rule` for one of the targets."""
    if not chosen:
        return [], {}
    if rule.trigger is Trigger.KIDNAPPING_NEARBY:
        categories = [Category.KIDNAPPING]
    elif rule.trigger is Trigger.THREAT_MATCHING:
        categories = [Category.EXPLICIT_THREAT]
    else:
        categories = list(rule.categories)
    query = select(*incidents.MODEL_COLUMNS).where(
        Incident.reported_at >= data.since,
        Incident.reported_at <= data.until,
        Incident.category.in_([c.value for c in categories]),
        Incident.lifecycle != Lifecycle.RETRACTED.value,
        Incident.merged_into_id.is_(None),
    )
    if rule.trigger is not Trigger.THREAT_MATCHING:
        lons = [c[0] for t in chosen for c in t.coordinates]
        lats = [c[1] for t in chosen for c in t.coordinates]
        min_lon, min_lat, max_lon, max_lat = geo.bbox_spanning(
            min(lats), max(lats), min(lons), max(lons), rule.radius_km
        )
        query = query.where(
            Incident.lat.between(min_lat, max_lat), Incident.lon.between(min_lon, max_lon)
        )
    rows: dict[int, incidents.Row] = {
        row.id: cast(SqlRow[Any], row) for row in session.execute(query)
    }
    return [incidents.to_model(r) for r in rows.values()], rows


# --------------------------------------------------------------------------------------------
# Parts


def _threshold_alert(target: Target, notice: Notice, why: list[PreviewIncident]) -> PreviewAlert:
    return PreviewAlert(
        target_id=target.id,
        target_name=target.name,
        at=notice.at,
        kind=notice.kind,
        score=notice.score,
        band=notice.band,
        reason=notice.reason,
        why=why,
    )


def _event_alert(target: Target, hit: Hit, row: incidents.Row, rule: EventRuleIn) -> PreviewAlert:
    distance = None if hit.match.distance_km is None else round(hit.match.distance_km, 1)
    incident = PreviewIncident(
        incident_id=hit.incident.id,
        source=row.source,
        source_id=row.source_id,
        title=row.title,
        category=hit.incident.category,
        occurred_at=hit.incident.occurred_at,
        reported_at=hit.incident.reported_at,
        points=None,
        share=None,
        distance_km=distance,
        why=hit.match.why,
    )
    return PreviewAlert(
        target_id=target.id,
        target_name=target.name,
        at=hit.incident.reported_at,
        kind="triggered",
        score=None,
        band=rule.severity,
        reason=hit.match.why,
        why=[incident],
        incident=incident,
        distance_km=distance,
    )


def _incident_id(item: Notice | Hit) -> int:
    return item.incident.id if isinstance(item, Hit) else 0


def _box(spec: risk.Target, radius_km: float) -> tuple[float, float, float, float]:
    lons = [c[0] for c in spec.coordinates]
    lats = [c[1] for c in spec.coordinates]
    return geo.bbox_spanning(min(lats), max(lats), min(lons), max(lons), radius_km)


def _inside(incident: risk.Incident, box: tuple[float, float, float, float]) -> bool:
    if incident.lat is None or incident.lon is None:
        return False
    min_lon, min_lat, max_lon, max_lat = box
    return min_lat <= incident.lat <= max_lat and min_lon <= incident.lon <= max_lon


def _error(loc: tuple[str | int, ...], reason: str) -> dict[str, Any]:
    return field_errors([{"loc": loc, "msg": reason}])[0]


def _invalid(errors: list[dict[str, Any]]) -> Problem:
    fields = ", ".join(sorted({e["field"] for e in errors}))
    return Problem(422, "validation", f"invalid value in: {fields}", errors=errors)
