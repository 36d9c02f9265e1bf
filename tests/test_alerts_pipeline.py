"""The alert pipeline in-process: feeds in, alert states and outbox rows out, in one transaction."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.alerts import jobs as alert_jobs
from services.alerts import outbox, pipeline, rules, subscriptions, webhooks
from services.alerts.models import (
    Alert,
    AlertEvent,
    Delivery,
    DeliveryAttempt,
    Endpoint,
    EndpointSecret,
    Rule,
    Subscription,
)
from services.alerts.signing import generate_secret
from services.alerts.webhooks import AttemptResult
from services.scoring.models import CurrentScore
from services.scoring.taxonomy import Band
from tests.conftest import Api
from tests.test_rescoring import create_site, east_of_base, incident_body, post_incident


def add_watch(
    api: Api,
    target_id: int | None,
    rule: dict[str, Any],
    *,
    url: str = "https://hooks.example.com/riskalert",
    digest_bands: list[str] | None = None,
    tag: str | None = None,
) -> tuple[int, int, int]:
    """An endpoint and a subscription with one rule, written directly; (endpoint, sub, rule)."""
    now = datetime.now(UTC)
    with api.app.state.sessions.begin() as session:
        endpoint = Endpoint(
            tenant_id=api.tenant_a,
            kind="webhook",
            name="ops",
            address=url,
            enabled=True,
            created_at=now,
            updated_at=now,
        )
        session.add(endpoint)
        session.flush()
        session.add(
            EndpointSecret(endpoint_id=endpoint.id, secret=generate_secret(), created_at=now)
        )
        sub = Subscription(
            tenant_id=api.tenant_a,
            name="watch",
            scope="target" if target_id else "tag" if tag else "all",
            target_id=target_id,
            tag=tag,
            endpoint_ids=[endpoint.id],
            digest_bands=digest_bands or [],
            enabled=True,
            created_at=now,
            updated_at=now,
        )
        session.add(sub)
        session.flush()
        row = Rule(
            subscription_id=sub.id,
            tenant_id=api.tenant_a,
            kind=rule.get("kind", "threshold"),
            params=pipeline.parse_rule(rule.get("kind", "threshold"), rule).model_dump(mode="json"),
            enabled=True,
            seeded=False,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        return endpoint.id, sub.id, row.id


def deliveries(api: Api) -> list[Delivery]:
    with api.app.state.sessions() as session:
        return list(session.execute(select(Delivery).order_by(Delivery.id)).scalars())


def alerts(api: Api) -> list[Alert]:
    with api.app.state.sessions() as session:
        return list(session.execute(select(Alert).order_by(Alert.id)).scalars())


def attack(api: Api, source_id: str, km: float, **fields: Any) -> None:
    lat, lon = east_of_base(km)
    post_incident(api, incident_body(source_id, lat, lon, **fields))


def test_score_crossing_a_threshold_writes_one_alert_and_one_delivery(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    api.drain_alerts()
    add_watch(api, site, {"raise_at": 5, "clear_at": 2})
    api.drain_alerts()
    assert deliveries(api) == []

    attack(api, "a1", 3)
    api.drain_alerts()

    [alert] = alerts(api)
    assert (alert.state, alert.sequence, alert.target_id) == ("firing", 1, site)
    [delivery] = deliveries(api)
    assert delivery.event_type == "alert.firing"
    assert delivery.status == "pending"
    assert delivery.message_id.startswith("msg_")
    data = delivery.payload["data"]
    assert data["target"]["geometry"]["type"] == "Point"
    assert data["score"]["current"] >= 5
    assert data["alert"]["url"].endswith(f"/v1/alerts/{alert.id}")
    assert data["top_incidents"][0]["category"] == "armed_assault"
    assert "Score" in data["why"]


def test_a_band_rule_fires_naming_the_band_not_its_rank(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    api.drain_alerts()
    add_watch(api, site, {"metric": "band", "raise_at": "moderate"})
    api.drain_alerts()

    attack(api, "a1", 3)
    api.drain_alerts()

    [delivery] = deliveries(api)
    assert delivery.event_type == "alert.firing"
    reason = delivery.payload["data"]["alert"]["reason"]
    assert reason == "band at or above moderate"
    assert "band at or above moderate" in delivery.payload["data"]["why"]


def test_replaying_the_feed_after_a_restart_sends_nothing_new(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    add_watch(api, site, {"raise_at": 5, "clear_at": 2})
    attack(api, "a1", 3)
    api.drain_alerts()
    before = len(deliveries(api))

    # A restart re-reads nothing (the cursor moved with the outbox); a re-evaluation of the same
    # score is silent by construction.
    assert alert_jobs.drain(api.app.state.sessions, api.settings) == 0
    with api.app.state.sessions.begin() as session:
        pipeline.reevaluate_due(session, api.settings, datetime.now(UTC) + timedelta(hours=1))
    assert len(deliveries(api)) == before == 1


def test_rule_created_above_an_existing_score_fires_when_seeded(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    attack(api, "a1", 3)
    api.drain_alerts()
    add_watch(api, site, {"raise_at": 5, "clear_at": 2})

    api.drain_alerts()

    [delivery] = deliveries(api)
    assert delivery.event_type == "alert.firing"


def test_kidnapping_near_a_site_triggers_an_event_alert_once(api: Api) -> None:
    site = create_site(api, "Camp", *east_of_base(0))
    add_watch(api, site, {"kind": "event", "trigger": "kidnapping_nearby", "radius_km": 50})
    body = incident_body("k1", *east_of_base(20), category="kidnapping")
    post_incident(api, body)
    api.drain_alerts()
    # A revision of the same incident does not alert again: subscribers are told of it.
    post_incident(api, {**body, "title": "Two engineers kidnapped (updated)"})
    attack(api, "far", 400, category="kidnapping")
    api.drain_alerts()

    delivery, update = deliveries(api)
    assert delivery.event_type == "alert.triggered"
    incident = delivery.payload["data"]["incident"]
    assert 15 < incident["distance_km"] < 25
    assert "kidnapping" in delivery.payload["data"]["why"].lower()
    assert update.event_type == "alert.updated"
    assert update.alert_id == delivery.alert_id
    assert update.payload["data"]["alert"]["sequence"] == 2
    assert update.payload["data"]["incident"]["title"] == "Two engineers kidnapped (updated)"
    assert "report was revised" in update.payload["data"]["why"]


def test_event_rules_by_tag_and_for_all_targets_alert_only_for_the_targets_they_watch(
    api: Api,
) -> None:
    tagged = create_site(api, "Tagged camp", *east_of_base(0), tags=["gold"])
    plain = create_site(api, "Plain camp", *east_of_base(300))
    rule = {"kind": "event", "trigger": "kidnapping_nearby", "radius_km": 50}
    by_tag, _, _ = add_watch(api, None, rule, tag="gold")
    everything, _, _ = add_watch(api, None, rule)
    attack(api, "k-tagged", 10, category="kidnapping")
    attack(api, "k-plain", 310, category="kidnapping")
    api.drain_alerts()

    sent = {(d.endpoint_id, d.payload["data"]["target"]["id"]) for d in deliveries(api)}
    assert sent == {(by_tag, tagged), (everything, tagged), (everything, plain)}


def test_digest_band_holds_the_notification_for_the_daily_digest(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    every_band = ["low", "moderate", "elevated", "high", "critical"]
    add_watch(api, site, {"raise_at": 5, "clear_at": 2}, digest_bands=every_band)
    attack(api, "a1", 3)
    api.drain_alerts()
    assert deliveries(api) == []

    with api.app.state.sessions.begin() as session:
        assert pipeline.send_digests(session, api.settings, datetime.now(UTC)) == 1
    [digest] = deliveries(api)
    assert digest.event_type == "digest.daily"
    assert len(digest.payload["data"]["items"]) == 1


def test_a_newer_state_supersedes_an_unsent_older_one(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    endpoint_id, _, _ = add_watch(api, site, {"raise_at": 5, "clear_at": 2, "cooldown": 0})
    attack(api, "a1", 3)
    api.drain_alerts()
    post_incident(api, {**incident_body("a1", *east_of_base(3)), "lifecycle": "retracted"})
    api.drain_alerts()

    rows = deliveries(api)
    assert [(d.event_type, d.status) for d in rows] == [
        ("alert.firing", "superseded"),
        ("alert.resolved", "pending"),
    ]
    assert rows[1].sequence > rows[0].sequence
    assert all(d.endpoint_id == endpoint_id for d in rows)


def _claim(session: Session, **overrides: Any) -> list[outbox.Claimed]:
    args: dict[str, Any] = {
        "owner": "w1",
        "limit": 10,
        "now": datetime.now(UTC),
        "lease": timedelta(seconds=45),
        "slots": 2,
    }
    args.update(overrides)
    return outbox.claim(session, **args)


def test_a_claimed_delivery_is_not_claimed_again_until_its_lease_expires(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    add_watch(api, site, {"raise_at": 5, "clear_at": 2})
    attack(api, "a1", 3)
    api.drain_alerts()
    factory = api.app.state.sessions
    with factory.begin() as session:
        [first] = _claim(session)
    with factory.begin() as session:
        assert _claim(session, owner="w2") == []
    later = datetime.now(UTC) + timedelta(minutes=1)
    with factory.begin() as session:
        assert len(outbox.reap(session, later)) == 1
    with factory.begin() as session:
        [again] = _claim(session, owner="w2", now=later)
    assert again.message_id == first.message_id
    assert again.attempt == 2
    assert again.token != first.token


def _attempted(claimed: outbox.Claimed, outcome: str, **fields: Any) -> outbox.Attempted:
    result = AttemptResult(
        outcome=outcome,  # type: ignore[arg-type]
        status_code=fields.pop("status_code", None),
        error_class=fields.pop("error_class", None),
        error=fields.pop("error", None),
        response_body=None,
        duration_ms=1.0,
        **fields,
    )
    return outbox.Attempted(claimed, result, datetime.now(UTC))


def _settle(api: Api, attempts: list[outbox.Attempted], now: datetime) -> list[outbox.Settled]:
    with api.app.state.sessions.begin() as session:
        return outbox.settle(
            session, attempts, now=now, owner="w1", settings=api.settings, rng=Random(1)
        )


def _one_pending_delivery(api: Api) -> tuple[int, outbox.Claimed]:
    """An endpoint with one test delivery, claimed; plus an email endpoint of the same tenant."""
    now = datetime.now(UTC)
    with api.app.state.sessions.begin() as session:
        hook = Endpoint(
            tenant_id=api.tenant_a, kind="webhook", name="hook",
            address="https://hooks.example.com/x", enabled=True, created_at=now, updated_at=now,
        )  # fmt: skip
        mail = Endpoint(
            tenant_id=api.tenant_a, kind="email", name="desk", address="desk@example.com",
            enabled=True, unsubscribe_token="tok-" + str(now.timestamp()),
            created_at=now, updated_at=now,
        )  # fmt: skip
        session.add_all([hook, mail])
        session.flush()
        session.add(EndpointSecret(endpoint_id=hook.id, secret=generate_secret(), created_at=now))
        outbox.enqueue(
            session, tenant_id=api.tenant_a, endpoints=[hook], alert_id=None,
            event_type="endpoint.test", sequence=0, payload={"type": "endpoint.test"}, now=now,
        )  # fmt: skip
        hook_id = hook.id
    with api.app.state.sessions.begin() as session:
        [claimed] = _claim(session)
    return hook_id, claimed


def test_410_disables_the_endpoint_cancels_its_queue_and_emails_the_owner(api: Api) -> None:
    hook_id, claimed = _one_pending_delivery(api)
    with api.app.state.sessions.begin() as session:
        hook = session.get(Endpoint, hook_id)
        assert hook is not None
        outbox.enqueue(
            session, tenant_id=api.tenant_a, endpoints=[hook], alert_id=None,
            event_type="endpoint.test", sequence=0, payload={"type": "endpoint.test"},
            now=datetime.now(UTC),
        )  # fmt: skip

    [settled] = _settle(api, [_attempted(claimed, "gone", status_code=410)], datetime.now(UTC))

    assert (settled.status, settled.disabled_endpoint) == ("failed", hook_id)
    rows = {d.id: d for d in deliveries(api)}
    assert rows[claimed.id].status == "failed"
    statuses = sorted((d.event_type, d.status) for d in rows.values() if d.id != claimed.id)
    assert statuses == [("endpoint.disabled", "pending"), ("endpoint.test", "cancelled")]
    with api.app.state.sessions() as session:
        hook = session.get(Endpoint, hook_id)
        assert hook is not None
        assert not hook.enabled
        assert "410" in (hook.disabled_reason or "")


def test_an_endpoint_failing_for_the_whole_disable_period_is_disabled(api: Api) -> None:
    hook_id, claimed = _one_pending_delivery(api)
    start = datetime.now(UTC)
    [first] = _settle(api, [_attempted(claimed, "retry", status_code=500)], start)
    assert first.status == "pending"

    later = start + api.settings.disable_after + timedelta(seconds=1)
    with api.app.state.sessions.begin() as session:
        [again] = _claim(session, now=later)
    [second] = _settle(api, [_attempted(again, "retry", status_code=500)], later)

    assert (second.status, second.disabled_endpoint) == ("failed", hook_id)


def test_a_spent_retry_schedule_fails_the_delivery(api: Api) -> None:
    api.settings.retry_schedule = [timedelta(0)]
    _, claimed = _one_pending_delivery(api)

    [settled] = _settle(api, [_attempted(claimed, "retry", status_code=503)], datetime.now(UTC))

    assert settled.status == "failed"


def test_settling_with_a_lost_lease_only_logs_the_attempt(api: Api) -> None:
    _, claimed = _one_pending_delivery(api)
    later = datetime.now(UTC) + timedelta(minutes=5)
    with api.app.state.sessions.begin() as session:
        outbox.reap(session, later)
    with api.app.state.sessions.begin() as session:
        [again] = _claim(session, now=later, owner="w2")

    [stale] = _settle(api, [_attempted(claimed, "delivered", status_code=200)], later)
    assert stale.status == "lease-lost"
    [fresh] = _settle(api, [_attempted(again, "delivered", status_code=200)], later)
    assert fresh.status == "succeeded"
    [row] = [d for d in deliveries(api) if d.id == claimed.id]
    assert row.status == "succeeded"
    assert row.attempts == 2


def test_a_firing_held_back_by_the_cooldown_goes_out_when_it_ends(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    add_watch(api, site, {"raise_at": 5, "clear_at": 2, "cooldown": "PT10M", "flap_changes": 5})
    body = incident_body("a1", *east_of_base(3))
    post_incident(api, body)
    api.drain_alerts()
    post_incident(api, {**body, "lifecycle": "retracted"})
    api.drain_alerts()
    post_incident(api, {**body, "source_id": "a2"})
    api.drain_alerts()
    assert [d.event_type for d in deliveries(api)] == ["alert.firing", "alert.resolved"]
    [alert] = alerts(api)
    assert alert.state == "firing"
    assert alert.next_check_at is not None
    assert alert.last_notified_at is not None
    assert alert.next_check_at == alert.last_notified_at + timedelta(minutes=10)

    with api.app.state.sessions.begin() as session:
        pipeline.reevaluate_due(session, api.settings, alert.next_check_at + timedelta(seconds=1))

    kinds = [d.event_type for d in deliveries(api)]
    assert kinds == ["alert.firing", "alert.resolved", "alert.firing"]


# ---------------------------------------------------------------------------------------------
# Notices seeded from the current state say why


def test_a_rule_created_above_the_current_score_fires_explained_by_that_score(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    attack(api, "a1", 3, title="Attack")
    api.drain_alerts()
    add_watch(api, site, {"raise_at": 5, "clear_at": 2})

    api.drain_alerts()

    [delivery] = deliveries(api)
    data = delivery.payload["data"]
    assert data["score"]["previous"] is None  # this rule saw no move: it was created above it
    assert data["score"]["components"]
    assert sum(data["score"]["components"].values()) > 0
    [top] = data["top_incidents"]
    assert (top["category"], top["title"]) == ("armed_assault", "Attack")
    assert top["points"] > 0
    assert top["occurred_at"]
    reason = data["alert"]["reason"]
    assert (
        reason == "score at or above 5.0, where the target already stood when the rule was created"
    )
    assert reason in data["why"]
    assert "largest contribution: Attack" in data["why"]
    [alert] = alerts(api)
    with api.app.state.sessions() as session:
        [event] = session.execute(
            select(AlertEvent).where(AlertEvent.alert_id == alert.id)
        ).scalars()
    assert event.reason == reason


def test_a_rule_changed_while_its_target_stands_above_it_says_it_was_changed(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    attack(api, "a1", 3)
    api.drain_alerts()
    _, _, rule_id = add_watch(api, site, {"raise_at": 99, "clear_at": 98})
    api.drain_alerts()
    assert deliveries(api) == []

    with api.app.state.sessions.begin() as session:
        rule = session.get(Rule, rule_id)
        assert rule is not None
        body = pipeline.parse_rule("threshold", {"raise_at": 5, "clear_at": 2})
        subscriptions.replace_rule(session, rule, body, datetime.now(UTC) + timedelta(seconds=1))
    api.drain_alerts()

    [delivery] = deliveries(api)
    data = delivery.payload["data"]
    assert data["alert"]["reason"].endswith("already stood when the rule was changed")
    assert data["score"]["components"]
    assert data["top_incidents"][0]["category"] == "armed_assault"


def test_seed_snapshot_carries_the_explanation_of_the_stored_score() -> None:
    document = {
        "score": 63.0,
        "components": {"violence": 50.1, "threat": 12.9},
        "contributions": [
            {"incident_id": i, "category": "ied", "points": 10.0 - i, "title": "x", "why": "y"}
            for i in range(7)
        ],
    }
    score = CurrentScore(
        target_id=1, model_version=2, value=63.4, band="high",
        as_of=datetime(2026, 1, 1, tzinfo=UTC), document=json.dumps(document), fed_value=63.0,
        fed_band="high",
    )  # fmt: skip

    snapshot = pipeline.seed_snapshot(score, "created")

    assert (snapshot["current"], snapshot["band"], snapshot["previous"]) == (63.0, "high", None)
    assert snapshot["components"] == {"violence": 50.1, "threat": 12.9}
    assert snapshot["top_incidents"][0] == {"incident_id": 0, "category": "ied", "points": 10.0}
    assert len(snapshot["top_incidents"]) == 5
    assert snapshot["seeded"] == "created"


def test_only_a_firing_on_the_plain_raising_reason_is_told_it_was_seeded() -> None:
    rule = rules.ThresholdRule(raise_at=5, clear_at=2)
    firing = rules.Decision(True, "firing", rule.raising)
    seeded = {"seeded": "changed"}

    told = pipeline.seeded_reason(firing, rule, seeded)

    assert (
        told.reason
        == "score at or above 5, where the target already stood when the rule was changed"
    )
    assert pipeline.seeded_reason(firing, rule, {"feed_id": 3}) == firing
    assert pipeline.seeded_reason(firing, rule, None) == firing
    escalated = rules.Decision(True, "escalated", "band rose from elevated to high")
    assert pipeline.seeded_reason(escalated, rule, seeded) == escalated


# ---------------------------------------------------------------------------------------------
# An escalation whose firing was superseded


def test_an_escalation_that_supersedes_its_unsent_firing_carries_what_a_firing_does(
    api: Api,
) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    add_watch(api, site, {"raise_at": 5, "clear_at": 2})
    attack(api, "far", 30, fatalities={"best": 0})
    api.drain_alerts()
    attack(api, "near", 1)  # the band rises while the firing still waits to be sent
    api.drain_alerts()

    firing, escalated = deliveries(api)
    assert (firing.event_type, firing.status) == ("alert.firing", "superseded")
    assert (escalated.event_type, escalated.status) == ("alert.escalated", "pending")
    data = escalated.payload["data"]
    # The receiver may never have seen the firing: the escalation opens the alert by itself.
    assert data["alert"]["open"] is True
    assert data["alert"]["state"] == "firing"
    assert data["alert"]["since"] == firing.payload["data"]["alert"]["since"]
    assert data["score"]["components"]
    assert data["top_incidents"]
    assert data["score"]["band"] == "critical"
    assert firing.payload["data"]["alert"]["open"] is True


def test_a_resolved_notice_says_the_alert_is_no_longer_open(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    add_watch(api, site, {"raise_at": 5, "clear_at": 2, "cooldown": 0})
    attack(api, "a1", 3)
    api.drain_alerts()
    post_incident(api, {**incident_body("a1", *east_of_base(3)), "lifecycle": "retracted"})
    api.drain_alerts()

    _, resolved = deliveries(api)
    assert resolved.event_type == "alert.resolved"
    assert resolved.payload["data"]["alert"]["open"] is False


# ---------------------------------------------------------------------------------------------
# Snoozes: the question apart from the clearing


def _repeat() -> rules.Decision:
    return rules.Decision(True, "repeat", "still firing")


def test_a_band_snooze_ends_when_the_band_rises_above_it_and_holds_otherwise() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    snooze = pipeline.Snooze(band=Band.HIGH)

    assert pipeline.snooze_now(snooze, Band.CRITICAL, now) == pipeline.Snooze()
    assert pipeline.snooze_now(snooze, Band.HIGH, now) == snooze
    reason = pipeline.held_back(snooze, False, _repeat(), now)
    assert reason == "snoozed until the band rises above high"


def test_a_timed_snooze_holds_until_its_time_then_ends() -> None:
    until = datetime(2026, 1, 1, 12, tzinfo=UTC)
    snooze = pipeline.Snooze(until=until)
    before = until - timedelta(minutes=1)

    assert pipeline.snooze_now(snooze, Band.LOW, before) == snooze
    assert pipeline.held_back(snooze, False, _repeat(), before) == (
        "snoozed until 2026-01-01T12:00:00Z"
    )
    assert pipeline.snooze_now(snooze, Band.LOW, until) == pipeline.Snooze()


def test_asking_whether_a_notice_is_held_back_changes_nothing() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ended = pipeline.Snooze(until=now - timedelta(seconds=1))

    assert pipeline.held_back(ended, False, _repeat(), now) is None
    assert ended == pipeline.Snooze(until=now - timedelta(seconds=1))
    assert pipeline.held_back(pipeline.Snooze(), True, _repeat(), now) == pipeline.ACKNOWLEDGED
    firing = rules.Decision(True, "firing", "score at or above 5")
    assert pipeline.held_back(pipeline.Snooze(), True, firing, now) is None


# ---------------------------------------------------------------------------------------------
# Leases leave a trace


def test_the_reaper_logs_each_delivery_it_takes_back_from_a_worker(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    hook_id, claimed = _one_pending_delivery(api)
    overdue = timedelta(seconds=12)
    later = claimed.lease_expires_at + overdue

    with caplog.at_level(logging.WARNING, logger="services.alerts.jobs"):
        assert alert_jobs.reap(api.app.state.sessions, lambda: later) == 1

    [record] = [r for r in caplog.records if r.name == "services.alerts.jobs"]
    assert record.levelno == logging.WARNING
    fields = record.__dict__
    assert (fields["delivery_id"], fields["endpoint_id"]) == (claimed.id, hook_id)
    assert (fields["lease_owner"], fields["attempt"], fields["overdue_s"]) == ("w1", 1, 12.0)
    message = record.getMessage()
    assert f"delivery {claimed.id}" in message
    assert "w1" in message
    assert "12.0 s" in message


def _reclaimed_by_w2(api: Api) -> tuple[outbox.Claimed, outbox.Claimed, datetime]:
    """A delivery claimed by w1, whose lease expired and was reaped, then claimed by w2."""
    _, claimed = _one_pending_delivery(api)
    later = claimed.lease_expires_at + timedelta(seconds=1)
    with api.app.state.sessions.begin() as session:
        outbox.reap(session, later)
    with api.app.state.sessions.begin() as session:
        [again] = _claim(session, now=later, owner="w2")
    return claimed, again, later


def _attempt_log(api: Api, delivery_id: int) -> list[DeliveryAttempt]:
    with api.app.state.sessions() as session:
        query = (
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id == delivery_id)
            .order_by(DeliveryAttempt.number, DeliveryAttempt.id)
        )
        return list(session.execute(query).scalars())


def test_a_stale_attempt_is_recorded_once_in_place_of_the_reapers_placeholder(api: Api) -> None:
    stale, fresh, later = _reclaimed_by_w2(api)
    factory = api.app.state.sessions
    args: dict[str, Any] = {"now": later, "settings": api.settings, "rng": Random(1)}
    with factory.begin() as session:
        outbox.settle(
            session, [_attempted(stale, "delivered", status_code=200)], owner="w1", **args
        )
    with factory.begin() as session:
        outbox.settle(
            session, [_attempted(fresh, "delivered", status_code=200)], owner="w2", **args
        )

    log = _attempt_log(api, stale.id)
    assert [(a.number, a.outcome, a.worker) for a in log] == [
        (1, "delivered", "w1"),
        (2, "delivered", "w2"),
    ]
    assert log[0].error_class == "lease_expired"
    assert "after its lease expired" in (log[0].error or "")


def test_a_stale_attempt_is_logged_not_thrown_away(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    stale, _, later = _reclaimed_by_w2(api)
    args: dict[str, Any] = {"owner": "w1", "settings": api.settings, "rng": Random(1)}

    with caplog.at_level(logging.WARNING, logger="services.alerts.jobs"):
        alert_jobs.settle_and_claim(
            api.app.state.sessions, [_attempted(stale, "delivered", status_code=200)], 0,
            clock=lambda: later, **args,
        )  # fmt: skip

    [record] = [r for r in caplog.records if r.name == "services.alerts.jobs"]
    assert record.levelno == logging.WARNING
    assert (record.__dict__["delivery_id"], record.__dict__["attempt"]) == (stale.id, 1)
    assert record.__dict__["outcome"] == "delivered"
    assert "after its lease expired" in record.getMessage()


# ---------------------------------------------------------------------------------------------
# Sending after a stall


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The webhook sends the worker makes (answered 204 at once), with their arguments."""
    made: list[dict[str, Any]] = []

    def send(client: Any, **kwargs: Any) -> AttemptResult:
        made.append(kwargs)
        return AttemptResult("delivered", 204, None, None, "", 1.0)

    monkeypatch.setattr(webhooks, "send_webhook", send)
    return made


def _worker_claiming(api: Api, name: str) -> tuple[alert_jobs.AlertsWorker, outbox.Claimed, _Clock]:
    """A delivery due now, claimed by a worker (not started) whose clock the test moves."""
    _one_pending_delivery_unclaimed(api)
    clock = _Clock(datetime.now(UTC))
    worker = alert_jobs.AlertsWorker(api.app.state.sessions, api.settings, clock=clock, name=name)
    [item] = alert_jobs.settle_and_claim(
        api.app.state.sessions, [], 10, owner=name, settings=api.settings, rng=Random(1),
        clock=clock,
    )  # fmt: skip
    return worker, item, clock


def _one_pending_delivery_unclaimed(api: Api) -> None:
    now = datetime.now(UTC)
    with api.app.state.sessions.begin() as session:
        hook = Endpoint(
            tenant_id=api.tenant_a, kind="webhook", name="hook",
            address="https://hooks.example.com/x", enabled=True, created_at=now, updated_at=now,
        )  # fmt: skip
        session.add(hook)
        session.flush()
        session.add(EndpointSecret(endpoint_id=hook.id, secret=generate_secret(), created_at=now))
        outbox.enqueue(
            session, tenant_id=api.tenant_a, endpoints=[hook], alert_id=None,
            event_type="endpoint.test", sequence=0, payload={"type": "endpoint.test"}, now=now,
        )  # fmt: skip


def test_a_worker_stalled_past_its_lease_between_claim_and_send_sends_nothing(
    api: Api, sends: list[dict[str, Any]]
) -> None:
    worker, item, clock = _worker_claiming(api, "w1")
    clock.now = item.lease_expires_at + timedelta(seconds=1)  # the stall

    try:
        done = worker._attempt(item)
    finally:
        worker._pool.shutdown()

    assert sends == []
    assert not done.sent
    args: dict[str, Any] = {"settings": api.settings, "rng": Random(1), "clock": clock}
    alert_jobs.settle_and_claim(api.app.state.sessions, [done], 0, owner="w1", **args)
    [row] = deliveries(api)
    # Handed back, due now, with no attempt counted: nothing was sent.
    assert (row.status, row.attempts, row.lease_token) == ("pending", 0, None)
    assert _attempt_log(api, row.id) == []
    [again] = alert_jobs.settle_and_claim(api.app.state.sessions, [], 10, owner="w2", **args)
    assert (again.id, again.attempt) == (item.id, 1)


def test_an_unsent_attempt_whose_lease_was_reaped_leaves_the_delivery_to_its_new_holder(
    api: Api, sends: list[dict[str, Any]]
) -> None:
    worker, item, clock = _worker_claiming(api, "w1")
    clock.now = item.lease_expires_at + timedelta(seconds=1)
    factory = api.app.state.sessions
    args: dict[str, Any] = {"settings": api.settings, "rng": Random(1), "clock": clock}
    alert_jobs.reap(factory, clock)
    [again] = alert_jobs.settle_and_claim(factory, [], 10, owner="w2", **args)

    try:
        done = worker._attempt(item)
    finally:
        worker._pool.shutdown()
    alert_jobs.settle_and_claim(factory, [done], 0, owner="w1", **args)

    assert sends == []
    [row] = deliveries(api)
    assert (row.status, row.lease_token, row.attempts) == ("sending", again.token, 2)
    [lost] = _attempt_log(api, row.id)
    assert (lost.number, lost.outcome) == (1, "lost")
    assert "nothing was sent" in (lost.error or "")


def test_an_attempt_deadline_counts_from_the_claim_not_from_the_send(
    api: Api, sends: list[dict[str, Any]]
) -> None:
    worker, item, clock = _worker_claiming(api, "w1")
    lease = item.lease_expires_at - item.leased_at
    clock.now = item.leased_at + lease / 2  # half the lease went by before the send

    try:
        done = worker._attempt(item)
    finally:
        worker._pool.shutdown()

    assert done.sent
    [send] = sends
    expected = (lease * alert_jobs.LEASE_SHARE - lease / 2).total_seconds()
    assert send["total_timeout_s"] == pytest.approx(expected)


def test_the_send_budget_is_what_is_left_of_the_lease_share_since_the_claim() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    item = outbox.Claimed(
        id=1, token="t", attempt=1, endpoint_id=1, kind="webhook", address="https://x.example",
        secrets=(), message_id="msg_x", event_type="endpoint.test", payload={},
        unsubscribe_token=None, leased_at=start, lease_expires_at=start + timedelta(seconds=40),
    )  # fmt: skip

    assert alert_jobs.send_budget(item, start) == timedelta(seconds=32)
    assert alert_jobs.send_budget(item, start + timedelta(seconds=30)) == timedelta(seconds=2)
    assert alert_jobs.send_budget(item, start + timedelta(seconds=32)) is None
    assert alert_jobs.send_budget(item, start + timedelta(seconds=50)) is None
