"""The alert pipeline in-process: feeds in, alert states and outbox rows out, in one transaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.alerts import jobs as alert_jobs
from services.alerts import outbox, pipeline
from services.alerts.models import Alert, Delivery, Endpoint, EndpointSecret, Rule, Subscription
from services.alerts.signing import generate_secret
from services.alerts.webhooks import AttemptResult
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
        assert outbox.reap(session, later) == 1
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
