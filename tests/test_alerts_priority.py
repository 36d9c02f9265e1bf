"""Urgent first: event alerts are claimed before threshold notices and digests, and an endpoint
has no more deliveries in flight than it tolerates, across every worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.alerts import outbox
from services.alerts.models import Delivery, Endpoint, EndpointSecret
from services.alerts.signing import generate_secret
from tests.conftest import Api, assert_problem, error_fields
from tests.test_alerts_api import created, hooks  # noqa: F401  (the fixture)

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def _endpoint(api: Api, *, max_in_flight: int | None = None) -> int:
    with api.app.state.sessions.begin() as session:
        hook = Endpoint(
            tenant_id=api.tenant_a, kind="webhook", name="ops",
            address="https://hooks.example.com/x", enabled=True, max_in_flight=max_in_flight,
            created_at=NOW, updated_at=NOW,
        )  # fmt: skip
        session.add(hook)
        session.flush()
        session.add(EndpointSecret(endpoint_id=hook.id, secret=generate_secret(), created_at=NOW))
        return hook.id


def _enqueue(api: Api, endpoint_id: int, event_type: str, count: int, at: datetime) -> list[int]:
    with api.app.state.sessions.begin() as session:
        hook = session.get(Endpoint, endpoint_id)
        assert hook is not None
        rows = [
            row
            for _ in range(count)
            for row in outbox.enqueue(
                session,
                tenant_id=api.tenant_a,
                endpoints=[hook],
                alert_id=None,
                event_type=event_type,
                sequence=0,
                payload={"type": event_type},
                now=at,
            )
        ]
        return [r.id for r in rows]


def _claim(session: Session, **overrides: Any) -> list[outbox.Claimed]:
    args: dict[str, Any] = {
        "owner": "w1",
        "limit": 10,
        "now": NOW + timedelta(minutes=1),
        "lease": timedelta(seconds=45),
        "slots": 2,
    }
    args.update(overrides)
    return outbox.claim(session, **args)


@pytest.mark.parametrize(
    ("event_type", "priority"),
    [
        ("alert.triggered", outbox.URGENT),
        ("alert.updated", outbox.URGENT),
        ("endpoint.test", outbox.URGENT),
        ("alert.firing", outbox.NOTICE),
        ("alert.escalated", outbox.NOTICE),
        ("endpoint.disabled", outbox.NOTICE),
        ("digest.daily", outbox.BULK),
    ],
)
def test_event_alerts_go_first_and_digests_last(event_type: str, priority: int) -> None:
    assert outbox.priority_of(event_type) == priority


def test_an_event_alert_is_claimed_before_older_threshold_notices_to_the_same_endpoint(
    api: Api,
) -> None:
    hook = _endpoint(api)
    _enqueue(api, hook, "digest.daily", 3, NOW - timedelta(minutes=5))
    _enqueue(api, hook, "alert.firing", 200, NOW - timedelta(minutes=2))
    [urgent] = _enqueue(api, hook, "alert.triggered", 1, NOW)

    with api.app.state.sessions.begin() as session:
        first, second = _claim(session)

    assert first.id == urgent
    assert second.event_type == "alert.firing"


def test_event_alerts_go_first_across_endpoints(api: Api) -> None:
    busy, quiet = _endpoint(api, max_in_flight=5), _endpoint(api, max_in_flight=5)
    _enqueue(api, busy, "alert.firing", 5, NOW - timedelta(minutes=2))
    urgent = _enqueue(api, quiet, "alert.triggered", 2, NOW)

    with api.app.state.sessions.begin() as session:
        claimed = _claim(session, limit=2)

    assert [c.id for c in claimed] == urgent


def test_an_endpoint_never_has_more_in_flight_than_its_limit_across_workers(api: Api) -> None:
    limited, default = _endpoint(api, max_in_flight=3), _endpoint(api)
    _enqueue(api, limited, "alert.firing", 10, NOW)
    _enqueue(api, default, "alert.firing", 10, NOW)
    factory = api.app.state.sessions

    with factory.begin() as session:
        first = _claim(session, owner="w1", limit=4)
    with factory.begin() as session:
        second = _claim(session, owner="w2", limit=10)
    with factory.begin() as session:
        third = _claim(session, owner="w3", limit=10)

    taken = [c.endpoint_id for c in first + second]
    assert taken.count(limited) == 3
    assert taken.count(default) == 2  # RISKALERT_ALERTS_ENDPOINT_SLOTS
    assert third == []


def test_a_dead_workers_deliveries_do_not_count_against_the_limit(api: Api) -> None:
    hook = _endpoint(api)
    _enqueue(api, hook, "alert.firing", 4, NOW)
    with api.app.state.sessions.begin() as session:
        assert len(_claim(session, owner="dead")) == 2
    # Past the lease (before the reaper has run): the endpoint's places are free again.
    later = NOW + timedelta(minutes=5)

    with api.app.state.sessions.begin() as session:
        again = _claim(session, owner="w2", now=later)

    assert len(again) == 2


def test_two_workers_claiming_at_once_do_not_fill_the_same_endpoint_twice(api: Api) -> None:
    if api.settings.database_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer: claims cannot overlap")
    hook = _endpoint(api)
    _enqueue(api, hook, "alert.firing", 6, NOW)
    factory = api.app.state.sessions

    with factory.begin() as first:
        mine = _claim(first, owner="w1")
        # w1 has not committed: w2 must leave this endpoint to it rather than count stale rows.
        with factory.begin() as second:
            theirs = _claim(second, owner="w2")
    with factory.begin() as session:
        after = _claim(session, owner="w3")

    assert (len(mine), len(theirs), len(after)) == (2, 0, 0)


def test_max_in_flight_is_set_shown_changed_and_reset_through_the_api(
    hooks: Api,  # noqa: F811
) -> None:
    body = {"kind": "webhook", "name": "ops", "url": "http://127.0.0.1:9/hook"}
    endpoint = created(
        hooks.client.post("/v1/endpoints", json={**body, "max_in_flight": 8}, headers=hooks.a)
    )
    assert endpoint["max_in_flight"] == 8
    path = f"/v1/endpoints/{endpoint['id']}"

    changed = hooks.client.patch(path, json={"max_in_flight": 4}, headers=hooks.a)
    assert changed.json()["max_in_flight"] == 4
    renamed = hooks.client.patch(path, json={"name": "ops 2"}, headers=hooks.a)
    assert renamed.json()["max_in_flight"] == 4
    reset = hooks.client.patch(path, json={"max_in_flight": None}, headers=hooks.a)

    assert reset.json()["max_in_flight"] is None
    with hooks.app.state.sessions() as session:
        row = session.execute(select(Endpoint).where(Endpoint.id == endpoint["id"])).scalar_one()
    assert row.max_in_flight is None


@pytest.mark.parametrize("value", [0, 33, "4", 2.5, True])
def test_an_unusable_max_in_flight_is_refused_naming_the_field(
    hooks: Api,  # noqa: F811
    value: Any,
) -> None:
    body = {"kind": "webhook", "name": "ops", "url": "http://127.0.0.1:9/hook"}

    doc = assert_problem(
        hooks.client.post("/v1/endpoints", json={**body, "max_in_flight": value}, headers=hooks.a),
        422,
    )

    assert error_fields(doc) == {"max_in_flight"}
    with hooks.app.state.sessions() as session:
        assert session.execute(select(Delivery)).first() is None
        assert session.execute(select(Endpoint)).first() is None


def test_a_window_full_of_a_busy_endpoints_backlog_does_not_hide_the_others(api: Api) -> None:
    hanging, healthy = _endpoint(api), _endpoint(api)
    _enqueue(api, hanging, "alert.firing", 60, NOW - timedelta(minutes=5))
    [waiting] = _enqueue(api, healthy, "alert.firing", 1, NOW)
    with api.app.state.sessions.begin() as session:
        assert [c.endpoint_id for c in _claim(session, owner="w1")] == [hanging, hanging]

    # Every candidate of a window of 4 x 5 is the hanging endpoint's, and it has no place left.
    with api.app.state.sessions.begin() as session:
        claimed = _claim(session, owner="w2", limit=5)

    assert [c.id for c in claimed] == [waiting]


def test_picking_keeps_order_and_each_endpoints_room() -> None:
    candidates = [(1, 10, None), (2, 10, None), (3, 10, None), (4, 11, 1), (5, 11, 1), (6, 12, 4)]

    assert outbox.pick(candidates, {10: 1}, slots=2, limit=10) == [1, 4, 6]
    assert outbox.pick(candidates, {}, slots=2, limit=10) == [1, 2, 4, 6]
    assert outbox.pick(candidates, {12: 0}, slots=2, limit=2) == [1, 2]
