"""The alert pipeline in-process: feeds in, alert states and outbox rows out, in one transaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.alerts import jobs as alert_jobs
from services.alerts import outbox, pipeline
from services.alerts.models import Alert, Delivery, Endpoint, EndpointSecret, Rule, Subscription
from services.alerts.signing import generate_secret
from tests.conftest import Api
from tests.test_rescoring import create_site, east_of_base, incident_body, post_incident


def add_watch(
    api: Api,
    target_id: int | None,
    rule: dict[str, Any],
    *,
    url: str = "https://hooks.example.com/riskalert",
    digest_bands: list[str] | None = None,
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
        session.add(EndpointSecret(endpoint_id=endpoint.id, secret=generate_secret(), created_at=now))
        sub = Subscription(
            tenant_id=api.tenant_a,
            name="watch",
            scope="target" if target_id else "all",
            target_id=target_id,
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
    # A revision of the same incident does not alert again.
    post_incident(api, {**body, "title": "Two engineers kidnapped (updated)"})
    attack(api, "far", 400, category="kidnapping")
    api.drain_alerts()

    [delivery] = deliveries(api)
    assert delivery.event_type == "alert.triggered"
    incident = delivery.payload["data"]["incident"]
    assert 15 < incident["distance_km"] < 25
    assert "kidnapping" in delivery.payload["data"]["why"].lower()


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
        "busy": {},
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
    assert again.attempt == 2 and again.token != first.token
