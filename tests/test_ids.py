"""Ids outlive their rows (dedupe keys, feeds, links sent to receivers): never handed out again.

SQLite hands a deleted newest row's id to the next row unless the table is AUTOINCREMENT; a
re-created subscription's alerts then met the deleted one's dedupe keys and stopped every
tenant's alerts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, pool, text

from services.core.db import Base
from services.scoring.models import Incident, IncidentChange
from tests.conftest import Api
from tests.test_alerts_api import ALWAYS, created, email, site, subscription
from tests.test_alerts_pipeline import attack, deliveries
from tests.test_rescoring import east_of_base, incident_body, post_incident

KIDNAPPING = {"kind": "event", "trigger": "kidnapping_nearby", "radius_km": 50}


@pytest.mark.parametrize(
    ("path", "make"),
    [
        ("/v1/subscriptions", lambda api, ep: subscription(api, [ep])),
        ("/v1/endpoints", lambda api, ep: email(api, address="second@example.com")),
        ("/v1/sites", lambda api, ep: {"id": site(api)}),
    ],
    ids=["subscription", "endpoint", "site"],
)
def test_the_id_of_a_deleted_row_is_never_handed_out_again(
    api: Api, path: str, make: Callable[[Api, int], dict[str, Any]]
) -> None:
    endpoint_id = email(api)["id"]
    first = make(api, endpoint_id)["id"]
    assert api.client.delete(f"{path}/{first}", headers=api.a).status_code == 204

    second = make(api, endpoint_id)["id"]

    assert second > first


def test_every_table_with_a_surrogate_id_is_autoincrement_on_sqlite(
    sqlite_template: Any,
) -> None:
    engine = create_engine(f"sqlite:///{sqlite_template}", poolclass=pool.NullPool)
    with engine.connect() as conn:
        created_as = dict(
            conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'table'")).all()
        )
    engine.dispose()
    surrogate = {
        name
        for name, table in Base.metadata.tables.items()
        if [c.name for c in table.primary_key.columns] == ["id"]
    }

    assert surrogate  # every table with a surrogate key, including ones added later
    assert {n for n in surrogate if "AUTOINCREMENT" not in created_as[n]} == set()


def test_recreating_a_deleted_subscription_alerts_again_and_every_tenant_keeps_its_alerts(
    api: Api,
) -> None:
    site(api)
    endpoint_id = email(api)["id"]
    body = {"name": "watch", "scope": "all", "endpoint_ids": [endpoint_id], "rules": [ALWAYS]}
    first = created(api.client.post("/v1/subscriptions", json=body, headers=api.a))
    api.drain_alerts()
    assert [d.event_type for d in deliveries(api)] == ["alert.firing"]
    assert api.client.delete(f"/v1/subscriptions/{first['id']}", headers=api.a).status_code == 204

    created(api.client.post("/v1/subscriptions", json=body, headers=api.a))
    # Tenant B's kidnapping alert, behind the re-created subscription's notice in the feeds.
    b_site = created(
        api.client.post(
            "/v1/sites",
            json={
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": list(reversed(east_of_base(0)))},
                "properties": {"name": "B camp", "country": "MLI"},
            },
            headers=api.b,
        )
    )["id"]
    b_hook = created(
        api.client.post(
            "/v1/endpoints",
            json={"kind": "email", "name": "b", "address": "b@example.com"},
            headers=api.b,
        )
    )["id"]
    created(
        api.client.post(
            "/v1/subscriptions",
            json={"name": "b", "scope": "target", "target_id": b_site, "endpoint_ids": [b_hook],
                  "rules": [KIDNAPPING]},
            headers=api.b,
        )
    )  # fmt: skip
    api.drain_alerts()
    attack(api, "k1", 2, category="kidnapping")
    api.drain_alerts()

    kinds = [(d.tenant_id, d.event_type) for d in deliveries(api)]
    assert kinds.count((api.tenant_a, "alert.firing")) == 2  # the re-created rule fired too
    assert (api.tenant_b, "alert.triggered") in kinds


def test_an_incident_id_is_never_handed_out_again_after_its_row_is_gone(api: Api) -> None:
    # Incidents take their ids before they are inserted (services.scoring.incidents._new_ids).
    first = post_incident(api, incident_body("gone", *east_of_base(0)))["id"]
    with api.app.state.sessions.begin() as session:
        session.execute(delete(IncidentChange).where(IncidentChange.incident_id == first))
        session.execute(delete(Incident).where(Incident.id == first))

    second = post_incident(api, incident_body("next", *east_of_base(50)))["id"]

    assert second > first
