"""Alert previews: a rule replayed over a past period on as-of scores, without sending anything."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.alerts import preview
from services.alerts.api.preview import router
from services.alerts.models import Rule, Subscription
from services.alerts.preview import PreviewIn, Sample, Sent, ThresholdRuleIn
from services.alerts.schemas import EventRuleIn
from services.scoring import risk
from services.scoring.taxonomy import (
    Band,
    Category,
    Lifecycle,
    LocationPrecision,
    TargetKind,
    TimePrecision,
)
from tests.conftest import Api, assert_problem, error_fields
from tests.test_rescoring import (
    BASE_LAT,
    BASE_LON,
    create_site,
    east_of_base,
    incident_body,
    post_incident,
)

PATH = "/v1/alert-previews"
T0 = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday


def _include(api: Api) -> Api:
    """The app with the preview routes (included here until the alerts router includes them)."""
    if not any(getattr(r, "path", None) == PATH for r in api.app.routes):
        api.app.include_router(router)
    return api


# --------------------------------------------------------------------------------------------
# The replay, on its own


# Bands every 20 points, so the replay tests read the same whatever the shipped bands are.
EVEN_BANDS = dataclasses.replace(risk.DEFAULT_PARAMS, band_thresholds=(20.0, 40.0, 60.0, 80.0))


def series(values: Sequence[float], *, step: timedelta = timedelta(hours=1)) -> list[Sample]:
    """Samples `step` apart from T0, banded every 20 points."""
    return [Sample(T0 + k * step, v, risk.band_for(v, EVEN_BANDS)) for k, v in enumerate(values)]


def kinds(notices: Sequence[preview.Notice]) -> list[str]:
    return [n.kind for n in notices]


def test_oscillation_inside_the_hysteresis_gap_fires_once_and_never_resolves() -> None:
    rule = ThresholdRuleIn(raise_at=60, clear_at=50)

    notices = preview.replay(rule, series([10, 65, 55, 65, 52, 64, 51, 66]))

    assert kinds(notices) == ["firing"]
    assert notices[0].at == T0 + timedelta(hours=1)
    assert notices[0].reason == "score at or above 60.0"


def test_oscillation_across_both_levels_is_damped_to_one_firing_and_one_resolved() -> None:
    rule = ThresholdRuleIn(raise_at=60, clear_at=50, flap_window=timedelta(days=1))

    notices = preview.replay(rule, series([10, 70, 40, 70, 40, 70, 40, 70, 40]))

    assert kinds(notices).count("firing") <= 1
    assert kinds(notices).count("resolved") <= 1
    assert kinds(notices) == ["firing", "resolved"]


def test_score_falling_below_clear_at_resolves_and_a_later_rise_fires_again() -> None:
    rule = ThresholdRuleIn(raise_at=60, clear_at=50)

    notices = preview.replay(rule, series([10, 70, 45, 45, 70], step=timedelta(hours=6)))

    assert kinds(notices) == ["firing", "resolved", "firing"]
    assert [n.at for n in notices] == [T0 + timedelta(hours=h) for h in (6, 12, 24)]


def test_pending_fires_only_once_the_condition_has_held_long_enough() -> None:
    rule = ThresholdRuleIn(raise_at=60, clear_at=50, pending=timedelta(hours=2))

    notices = preview.replay(rule, series([10, 70, 70, 70, 70]))

    assert kinds(notices) == ["firing"]
    assert notices[0].at == T0 + timedelta(hours=3)


def test_band_rise_while_firing_escalates_and_repeat_every_repeats() -> None:
    escalating = preview.replay(ThresholdRuleIn(raise_at=40, clear_at=30), series([10, 45, 85]))
    assert kinds(escalating) == ["firing", "escalated"]
    assert escalating[1].band is Band.CRITICAL

    repeating = preview.replay(
        ThresholdRuleIn(raise_at=40, clear_at=30, repeat_every=timedelta(hours=2)),
        series([45, 45, 45, 45, 45]),
    )
    assert kinds(repeating) == ["firing", "repeat", "repeat"]


def test_band_metric_compares_bands_not_scores() -> None:
    rule = ThresholdRuleIn(metric="band", raise_at=Band.HIGH)

    notices = preview.replay(rule, series([10, 59, 61, 75, 59]))

    assert kinds(notices) == ["firing", "resolved"]
    assert notices[0].band is Band.HIGH
    # The reasons name the band, never its rank.
    assert [n.reason for n in notices] == ["band at or above high", "band below high"]


def test_empty_series_sends_nothing() -> None:
    assert preview.replay(ThresholdRuleIn(raise_at=1, clear_at=0), []) == []


def test_step_times_include_both_ends_of_the_period() -> None:
    times = preview.step_times(T0, T0 + timedelta(hours=12), timedelta(hours=6))
    assert times == [T0, T0 + timedelta(hours=6), T0 + timedelta(hours=12)]
    assert preview.evaluations(T0, T0 + timedelta(hours=13), timedelta(hours=6)) == 3


def test_counts_per_week_cover_every_week_and_sum_to_the_total() -> None:
    sent = [
        Sent(T0 + timedelta(days=1), "firing", 1),
        Sent(T0 + timedelta(days=2), "resolved", 1),
        Sent(T0 + timedelta(days=16), "firing", 2),
    ]
    counts = preview.summarize(
        ThresholdRuleIn(raise_at=50),
        sent,
        since=T0 + timedelta(hours=5),
        until=T0 + timedelta(days=20),
        names={1: "one", 2: "two"},
    )

    assert [(w.week_start.isoformat(), w.count) for w in counts.counts_per_week] == [
        ("2025-03-03", 2),
        ("2025-03-10", 0),
        ("2025-03-17", 1),
    ]
    assert sum(w.count for w in counts.counts_per_week) == counts.total == 3
    assert counts.counts_by_kind == {
        "firing": 2,
        "resolved": 1,
        "escalated": 0,
        "repeat": 0,
        "flapping": 0,
    }
    assert [(t.target_id, t.target_name, t.count) for t in counts.counts_by_target] == [
        (1, "one", 2),
        (2, "two", 1),
    ]


def model_incident(
    incident_id: int, category: Category, km: float, *, occurred: datetime, reported: datetime
) -> risk.Incident:
    lat, lon = east_of_base(km)
    return risk.Incident(
        id=incident_id,
        category=category,
        occurred_at=occurred,
        occurred_precision=TimePrecision.DAY,
        reported_at=reported,
        lat=lat,
        lon=lon,
        location_precision=LocationPrecision.EXACT,
        scope_countries=frozenset(),
        scope_admin1=frozenset(),
        target_foreign_owned_only=False,
        target_sectors=frozenset(),
        target_type=None,
        victim_expatriate=False,
        victim_sector=None,
        fatalities_claimed=None,
        fatalities_best=None,
        source_reliability=0.8,
        lifecycle=Lifecycle.CONFIRMED,
    )


def test_event_rule_matches_each_incident_at_its_report_time_within_the_radius() -> None:
    site = risk.Target(kind=TargetKind.SITE, coordinates=((BASE_LON, BASE_LAT),), radius_km=10)
    day = timedelta(days=1)
    near = model_incident(1, Category.KIDNAPPING, 30, occurred=T0, reported=T0 + day)
    far = model_incident(2, Category.KIDNAPPING, 90, occurred=T0, reported=T0 + day)
    assault = model_incident(3, Category.ARMED_ASSAULT, 5, occurred=T0, reported=T0 + day)
    backfill = model_incident(4, Category.KIDNAPPING, 5, occurred=T0, reported=T0 + 10 * day)

    hits = preview.match_events(
        EventRuleIn(trigger="kidnapping_nearby", radius_km=50),
        [backfill, assault, far, near],
        [(7, site)],
    )

    assert [(h.target_id, h.incident.id) for h in hits] == [(7, 1)]
    assert hits[0].match.distance_km == pytest.approx(30, abs=1)


def test_check_names_every_field_at_fault() -> None:
    body = PreviewIn.model_validate(
        {
            "rule": {"kind": "threshold", "raise_at": 50},
            "rule_id": 3,
            "subscription_id": 1,
            "target_ids": [1],
            "since": "2025-03-03T00:00:00Z",
            "until": "2025-03-02T00:00:00Z",
        }
    )
    fields = {e["field"] for e in preview.check(body, T0 - timedelta(days=5))}
    assert fields == {"rule", "rule_id", "subscription_id", "target_ids", "until"}


# --------------------------------------------------------------------------------------------
# Through the API: a mine with incidents arriving over eight weeks


@dataclass(frozen=True)
class Story:
    """A site hit by an assault in week 2, a bigger one in week 5 and a kidnapping in week 6."""

    api: Api
    site: int
    far: int
    since: datetime
    until: datetime
    reported: dict[str, datetime]

    def body(self, **fields: Any) -> dict[str, Any]:
        return {"since": iso(self.since), "until": iso(self.until), **fields}

    def post(self, headers: dict[str, str] | None = None, **fields: Any) -> Any:
        return self.api.client.post(PATH, headers=headers or self.api.a, json=self.body(**fields))

    def preview(self, **fields: Any) -> dict[str, Any]:
        response = self.post(**fields)
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        return doc

    def backtest(self, target: int, times: Sequence[datetime]) -> list[float]:
        response = self.api.client.post(
            "/v1/backtests",
            headers=self.api.a,
            json={"targets": [{"kind": "site", "id": target}], "times": [iso(t) for t in times]},
        )
        assert response.status_code == 200, response.text
        values: list[float] = response.json()["scores"][0]
        return values


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def next_step(story: Story, moment: datetime, step: timedelta = timedelta(hours=6)) -> datetime:
    """The first evaluation time at or after `moment`."""
    return story.since + -((story.since - moment) // step) * step


@pytest.fixture
def story(api: Api) -> Story:
    return tell(api)


def story_model() -> dict[str, Any]:
    """A hand-set model version for the story, so its alerts do not move when the shipped
    defaults are refitted: one 30 km scale, a 60-day half-life, weight 1.2 for every group, an
    escalation gain of 0.25, and the probability x / (1 + x) of the intensity x, banded every
    20 points."""
    params = dataclasses.replace(
        risk.DEFAULT_PARAMS,
        spatial_scales_km=(30.0,),
        half_lives_days=(60.0,),
        coefficients={g: ((1.2,),) for g in risk.DEFAULT_PARAMS.coefficients},
        escalation_gain=0.25,
        calibration=tuple(
            (x, x / (1.0 + x)) for x in (0.0, 0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 9, 19, 99)
        ),
        band_thresholds=(20.0, 40.0, 60.0, 80.0),
    )
    return params.to_dict()


def tell(api: Api) -> Story:
    """Register the two sites and report the three incidents, each three hours after it."""
    _include(api)
    published = api.client.post(
        "/v1/model/versions", headers=api.admin, json={"params": story_model(), "note": "story"}
    )
    assert published.status_code == 201, published.text
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(weeks=9)
    since = start - timedelta(days=start.weekday())  # a Monday, nine to ten weeks ago
    site = create_site(api, "Mine", *east_of_base(0), tags=["mines"])
    far = create_site(api, "Far office", *east_of_base(1500))
    reported = {}
    incidents = {
        "assault-1": (9, 5, {"fatalities": {"best": 20}, "title": "Assault on the mine road"}),
        "assault-2": (30, 3, {"fatalities": {"best": 100}, "title": "Assault on the mine camp"}),
        "kidnap": (40, 30, {"category": "kidnapping", "fatalities": {}, "title": "Engineer taken"}),
    }
    for source_id, (day, km, fields) in incidents.items():
        occurred = since + timedelta(days=day)
        reported[source_id] = occurred + timedelta(hours=3)
        body = incident_body(
            source_id,
            *east_of_base(km),
            occurred_at=iso(occurred),
            reported_at=iso(reported[source_id]),
        )
        post_incident(api, {**body, **fields})
    api.drain()
    return Story(api, site, far, since, since + timedelta(weeks=8), reported)


def add_rule(api: Api, tenant_id: int, params: dict[str, Any], **scope: Any) -> tuple[int, int]:
    """A subscription (scope `all` unless told) with one rule, written directly; (sub, rule)."""
    now = datetime.now(UTC)
    with api.app.state.sessions.begin() as session:
        sub = Subscription(
            tenant_id=tenant_id,
            name="watch",
            scope=scope.get("scope", "all"),
            target_id=scope.get("target_id"),
            tag=scope.get("tag"),
            endpoint_ids=[],
            digest_bands=[],
            enabled=False,
            created_at=now,
            updated_at=now,
        )
        session.add(sub)
        session.flush()
        kind = params["kind"]
        body = ThresholdRuleIn if kind == "threshold" else EventRuleIn
        rule = Rule(
            subscription_id=sub.id,
            tenant_id=tenant_id,
            kind=kind,
            params=body.model_validate(params).model_dump(mode="json"),
            enabled=False,
            seeded=True,
            created_at=now,
            updated_at=now,
        )
        session.add(rule)
        session.flush()
        return sub.id, rule.id


LOW = {"kind": "threshold", "raise_at": 20, "clear_at": 10}
HIGH = {"kind": "threshold", "raise_at": 75, "clear_at": 70}


def test_low_threshold_fires_after_the_first_assault_is_reported_and_says_why(
    story: Story,
) -> None:
    doc = story.preview(rule=LOW)

    assert doc["targets"] == 2
    assert doc["evaluations"] == 8 * 7 * 4 + 1
    assert doc["step"] == "PT6H"
    first = doc["alerts"][0]
    assert first["kind"] == "firing"
    assert first["target_id"] == story.site
    assert first["target_name"] == "Mine"
    assert at(first["at"]) == next_step(story, story.reported["assault-1"])
    assert first["score"] >= 20
    assert first["reason"] == "score at or above 20.0"
    assert [w["source_id"] for w in first["why"]] == ["assault-1"]
    assert first["why"][0]["title"] == "Assault on the mine road"
    assert first["why"][0]["distance_km"] == pytest.approx(5, abs=1)
    # The score is the as-of score a backtest gives for that time.
    assert story.backtest(story.site, [at(first["at"])]) == [first["score"]]
    assert story.backtest(story.site, [at(first["at"]) - timedelta(hours=6)]) == [0.0]
    # Nothing ever reaches the office 1,500 km away.
    assert {a["target_id"] for a in doc["alerts"]} == {story.site}
    assert doc["counts_by_target"] == [
        {"target_id": story.site, "target_name": "Mine", "count": doc["total"]}
    ]
    assert doc["truncated"] is False
    assert doc["baseline"] is None


def test_alerts_are_chronological_and_counts_per_week_sum_to_them(story: Story) -> None:
    doc = story.preview(rule=LOW)

    times = [at(a["at"]) for a in doc["alerts"]]
    assert times == sorted(times)
    assert doc["total"] == len(doc["alerts"]) >= 2
    weeks = doc["counts_per_week"]
    assert [w["week_start"] for w in weeks] == [
        (story.since + timedelta(weeks=k)).date().isoformat() for k in range(9)
    ]
    assert sum(w["count"] for w in weeks) == doc["total"]
    assert sum(doc["counts_by_kind"].values()) == doc["total"]
    firing_week = preview.week_start(times[0]).isoformat()
    assert next(w["count"] for w in weeks if w["week_start"] == firing_week) >= 1
    # The bigger assault raises the band while the alert fires: one escalation, explained.
    [escalated] = [a for a in doc["alerts"] if a["kind"] == "escalated"]
    assert at(escalated["at"]) == next_step(story, story.reported["assault-2"])
    assert escalated["why"][0]["source_id"] == "assault-2"
    assert {w["source_id"] for w in escalated["why"]} >= {"assault-1", "assault-2"}


def test_higher_threshold_fires_later_and_less_often(story: Story) -> None:
    low = story.preview(rule=LOW)
    high = story.preview(rule=HIGH)

    assert 0 < high["total"] < low["total"]
    first = high["alerts"][0]
    assert first["kind"] == "firing"
    assert at(first["at"]) == next_step(story, story.reported["assault-2"])
    assert first["why"][0]["source_id"] == "assault-2"


def test_score_dropping_through_the_clear_level_previews_resolved_then_firing_again(
    story: Story,
) -> None:
    doc = story.preview(rule={"kind": "threshold", "raise_at": 60, "clear_at": 58})

    kinds_seen = [a["kind"] for a in doc["alerts"]]
    assert kinds_seen[:3] == ["firing", "resolved", "firing"]
    resolved = doc["alerts"][1]
    before, then = story.backtest(
        story.site, [at(resolved["at"]) - timedelta(hours=6), at(resolved["at"])]
    )
    assert before >= 58 > then == resolved["score"]
    assert at(doc["alerts"][2]["at"]) == next_step(story, story.reported["assault-2"])


def test_kidnapping_rule_previews_triggered_with_the_incident_and_its_distance(
    story: Story,
) -> None:
    doc = story.preview(rule={"kind": "event", "trigger": "kidnapping_nearby", "radius_km": 50})

    [alert] = doc["alerts"]
    assert alert["kind"] == "triggered"
    assert alert["target_id"] == story.site
    assert at(alert["at"]) == story.reported["kidnap"]
    assert alert["band"] == "critical"
    assert alert["score"] is None
    assert alert["distance_km"] == pytest.approx(30, abs=1)
    assert alert["incident"]["source_id"] == "kidnap"
    assert alert["incident"]["title"] == "Engineer taken"
    assert "30 km from the site" in alert["reason"]
    assert alert["why"] == [alert["incident"]]
    assert doc["counts_by_kind"] == {"triggered": 1}
    assert doc["evaluations"] == 0

    narrow = story.preview(rule={"kind": "event", "trigger": "kidnapping_nearby", "radius_km": 20})
    assert narrow["alerts"] == []
    assert narrow["total"] == 0
    assert all(w["count"] == 0 for w in narrow["counts_per_week"])


def test_changes_to_a_stored_rule_come_with_the_stored_rules_counts_as_baseline(
    story: Story,
) -> None:
    api = story.api
    _, rule_id = add_rule(api, api.tenant_a, LOW, scope="target", target_id=story.site)

    doc = story.preview(rule_id=rule_id, changes={"raise_at": 75, "clear_at": 70})

    assert doc["rule_id"] == rule_id
    assert (doc["rule"]["raise_at"], doc["rule"]["clear_at"]) == (75, 70)
    assert doc["rule"]["cooldown"] == "PT30M"  # the stored fields not changed are kept
    assert doc["targets"] == 1  # the stored rule's subscription: the mine only
    baseline = doc["baseline"]
    assert baseline["rule"]["raise_at"] == 20
    assert baseline["total"] == story.preview(rule=LOW)["total"]
    assert doc["total"] < baseline["total"]
    assert sum(w["count"] for w in baseline["counts_per_week"]) == baseline["total"]
    assert "alerts" not in baseline

    unchanged = story.preview(rule_id=rule_id)
    assert unchanged["baseline"] is None
    assert unchanged["rule"]["raise_at"] == 20


def test_changes_may_turn_a_threshold_rule_into_an_event_rule(story: Story) -> None:
    api = story.api
    _, rule_id = add_rule(api, api.tenant_a, LOW)

    doc = story.preview(rule_id=rule_id, changes={"kind": "event", "trigger": "kidnapping_nearby"})

    assert doc["rule"]["kind"] == "event"
    assert doc["total"] == 1
    assert doc["baseline"]["rule"]["kind"] == "threshold"
    assert doc["baseline"]["total"] >= 2


def test_subscription_and_target_ids_choose_the_targets(story: Story) -> None:
    api = story.api
    sub, _ = add_rule(api, api.tenant_a, LOW, scope="tag", tag="mines")

    by_tag = story.preview(rule=LOW, subscription_id=sub)
    assert by_tag["targets"] == 1
    assert {a["target_id"] for a in by_tag["alerts"]} == {story.site}

    office = story.preview(rule=LOW, target_ids=[story.far])
    assert office["targets"] == 1
    assert office["total"] == 0


def test_truncated_alerts_still_count_in_full(
    story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preview, "MAX_ALERTS", 1)

    doc = story.preview(rule=LOW)

    assert len(doc["alerts"]) == 1
    assert doc["truncated"] is True
    assert doc["total"] >= 2


def problem_fields(response: Any, status: int = 422) -> set[str]:
    return error_fields(assert_problem(response, status))


def test_rule_and_rule_id_together_or_neither_are_refused_naming_both(story: Story) -> None:
    _, rule_id = add_rule(story.api, story.api.tenant_a, LOW)

    assert problem_fields(story.post(rule=LOW, rule_id=rule_id)) == {"rule", "rule_id"}
    assert problem_fields(story.post()) == {"rule", "rule_id"}
    assert problem_fields(story.post(rule=LOW, changes={"raise_at": 5})) == {"changes"}


def test_invalid_changes_are_refused_naming_the_changed_field(story: Story) -> None:
    _, rule_id = add_rule(story.api, story.api.tenant_a, LOW)

    fields = problem_fields(story.post(rule_id=rule_id, changes={"raise_at": 500}))
    assert fields == {"changes.raise_at"}
    assert problem_fields(story.post(rule_id=rule_id, changes={"clear_at": 30})) == {"changes"}
    assert problem_fields(story.post(rule_id=rule_id, changes={"colour": "red"})) == {
        "changes.colour"
    }


def test_period_problems_name_the_field(story: Story) -> None:
    now = datetime.now(UTC)
    client, headers = story.api.client, story.api.a

    def post(**fields: Any) -> Any:
        return client.post(PATH, headers=headers, json={"rule": LOW, **fields})

    future = post(since=iso(now - timedelta(days=1)), until=iso(now + timedelta(hours=1)))
    assert problem_fields(future) == {"until"}
    backwards = post(since=iso(story.until), until=iso(story.since))
    assert problem_fields(backwards) == {"until"}
    too_long = post(since=iso(now - timedelta(days=400)), until=iso(now - timedelta(days=1)))
    assert problem_fields(too_long) == {"until"}
    naive = post(since="2025-03-01T00:00:00", until=iso(story.until))
    assert problem_fields(naive) == {"since"}
    assert problem_fields(story.post(rule=LOW, step="PT5M")) == {"step"}
    assert problem_fields(story.post(rule={"raise_at": 20})) == {"rule"}  # kind is required
    many = story.post(rule=LOW, target_ids=list(range(1, 1002)))
    assert problem_fields(many) == {"target_ids"}


def test_too_many_target_time_pairs_is_413_naming_step(api_factory: Callable[..., Api]) -> None:
    story = tell(api_factory(max_backtest_pairs=100))

    response = story.post(rule=LOW)
    assert problem_fields(response, 413) == {"step"}
    assert "450 (target, time) pairs" in response.json()["detail"]

    every_other_day = story.preview(rule=LOW, step="P2D")
    assert every_other_day["evaluations"] == 29
    event = story.preview(rule={"kind": "event", "trigger": "kidnapping_nearby"})
    assert event["total"] == 1, "event rules score nothing, so the pair limit does not apply"


def test_another_tenants_rule_or_subscription_is_404_and_their_target_422(story: Story) -> None:
    api = story.api
    sub_b, rule_b = add_rule(api, api.tenant_b, LOW)
    response = api.client.post(
        "/v1/sites",
        headers=api.b,
        json={
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [BASE_LON, BASE_LAT]},
            "properties": {"name": "B's site", "country": "MLI"},
        },
    )
    assert response.status_code == 201, response.text
    site_b = response.json()["id"]

    assert_problem(story.post(rule_id=rule_b), 404)
    assert_problem(story.post(rule_id=rule_b, changes={"raise_at": 5}), 404)
    assert_problem(story.post(rule=LOW, subscription_id=sub_b), 404)
    assert problem_fields(story.post(rule=LOW, target_ids=[story.site, site_b])) == {"target_ids.1"}
    assert problem_fields(story.post(rule=LOW, subscription_id=1, target_ids=[story.site])) == {
        "subscription_id",
        "target_ids",
    }


def test_a_key_without_alerts_read_is_refused(story: Story) -> None:
    assert_problem(story.post(headers=story.api.a_read, rule=LOW), 403)
    assert_problem(story.post(headers=story.api.ingest, rule=LOW), 403)
