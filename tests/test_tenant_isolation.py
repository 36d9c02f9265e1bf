"""One tenant never sees, changes or learns of another tenant's sites, corridors, scores,
endpoints, subscriptions, alerts and deliveries."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from services.alerts.api import router as alerts_router
from services.alerts.models import Delivery
from services.core.ids import MAX_ID
from services.core.problems import PROBLEM_BASE, PROBLEM_MEDIA_TYPE
from tests.conftest import Api, assert_problem, error_fields

PATH_PARAM = re.compile(r"\{([^}]+)\}")
HTTP_METHODS = ("get", "put", "post", "patch", "delete")
# Path parameters naming platform resources, which no tenant owns.
# Imports and polled feeds are platform-wide too (ingest keys only).
PLATFORM_PARAMS = frozenset(
    {"incident_id", "key_id", "tenant_id", "format", "import_id", "name", "letter_id", "fit_id"}
)
# Path parameters that are capabilities, not tenant resources: whoever holds an email's
# unsubscribe link may use it, without a key (tested in test_alerts_api.py).
CAPABILITY_PARAMS = frozenset({"token"})
# Incidents are platform-wide intelligence (the incidents behind every tenant's scores): any
# reader key may read them, so tenant B reading one is not a leak of tenant A's data.
SHARED_READS = frozenset({("GET", "/v1/incidents/{incident_id}")})
# The tenant routes this file must reach; renaming one without updating the walk fails here.
EXPECTED_TENANT_OPERATIONS = frozenset(
    (method, f"/v1/{kind}s/{{{kind}_id}}{suffix}")
    for kind in ("site", "corridor")
    for method, suffix in (
        ("GET", ""),
        ("PUT", ""),
        ("DELETE", ""),
        ("GET", "/score"),
        ("GET", "/score-history"),
    )
) | {
    ("GET", "/v1/endpoints/{endpoint_id}"),
    ("PATCH", "/v1/endpoints/{endpoint_id}"),
    ("DELETE", "/v1/endpoints/{endpoint_id}"),
    ("POST", "/v1/endpoints/{endpoint_id}/rotate-secret"),
    ("POST", "/v1/endpoints/{endpoint_id}/test"),
    ("GET", "/v1/subscriptions/{subscription_id}"),
    ("PATCH", "/v1/subscriptions/{subscription_id}"),
    ("DELETE", "/v1/subscriptions/{subscription_id}"),
    ("POST", "/v1/subscriptions/{subscription_id}/rules"),
    ("PUT", "/v1/subscriptions/{subscription_id}/rules/{rule_id}"),
    ("DELETE", "/v1/subscriptions/{subscription_id}/rules/{rule_id}"),
    ("GET", "/v1/alerts/{alert_id}"),
    ("POST", "/v1/alerts/{alert_id}/acknowledge"),
    ("POST", "/v1/alerts/{alert_id}/snooze"),
    ("DELETE", "/v1/alerts/{alert_id}/snooze"),
    ("GET", "/v1/deliveries/{delivery_id}"),
    ("POST", "/v1/deliveries/{delivery_id}/replay"),
}


def _alerts_routes() -> frozenset[tuple[str, str]]:
    """Every (method, path) the alerts service serves, read from its own router."""
    app = FastAPI()
    app.include_router(alerts_router)
    return frozenset(
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    )


# A route added to the alerts service is walked by the 404 walk below when it names a tenant's
# resource in its path, and must have an entry in COLLECTION_CHECKS otherwise: both tests fail
# until it does.
ALERTS_ROUTES = _alerts_routes()
ALERTS_ROUTES_BY_ID = frozenset(
    (method, path)
    for method, path in ALERTS_ROUTES
    if PATH_PARAM.search(path) and not set(PATH_PARAM.findall(path)) & CAPABILITY_PARAMS
)
ALERTS_COLLECTION_ROUTES = frozenset(
    (method, path) for method, path in ALERTS_ROUTES if not PATH_PARAM.search(path)
)


def site_body(name: str = "Mine", lon: float = -8.0, lat: float = 12.6) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"name": name, "country": "MLI", "sector": "mining"},
    }


def corridor_body(name: str = "Road") -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": [[-8.0, 12.6], [-7.5, 11.4]]},
        "properties": {"name": name, "countries": ["MLI"]},
    }


def incident_body(source_id: str = "inc-1") -> dict[str, Any]:
    occurred = datetime.now(UTC) - timedelta(days=1)
    return {
        "source": "test",
        "source_id": source_id,
        "category": "armed_assault",
        "occurred_at": occurred.isoformat(),
        "location": {"type": "Point", "coordinates": [-8.0, 12.7]},
        "country": "MLI",
    }


# Request bodies by the schema a route's OpenAPI operation names.
BODIES = {
    "SiteIn": site_body("B's replacement"),
    "CorridorIn": corridor_body("B's replacement"),
    "EndpointPatch": {"name": "B's", "enabled": False},
    "RotateSecretIn": {"grace": "PT1H"},
    "DeadLetterResolveIn": {"note": "B"},
    "SubscriptionPatch": {"name": "B's", "enabled": False},
    "ThresholdRuleIn": {"kind": "threshold", "raise_at": 50},
    "SnoozeIn": {"until_band_rises": True},
}


def assert_not_found_problem(response: httpx.Response, what: str) -> None:
    assert response.status_code == 404, f"{what}: {response.status_code} {response.text}"
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE), what
    doc = response.json()
    assert doc["type"] == PROBLEM_BASE + "not-found", what
    assert doc["status"] == 404, what


def request_body(operation: dict[str, Any]) -> dict[str, Any] | None:
    """A minimal valid body for an operation, or None when it takes none."""
    body = operation.get("requestBody")
    if body is None:
        return None
    schema = body["content"]["application/json"]["schema"]
    if schema.get("type") == "string":
        return None  # a file posted as is (imports): an empty body is as good as any here
    # An optional body is anyOf [model, null]; a discriminated union is oneOf its models; a
    # file import is a string or a list of API pages (no model).
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(schema))
    if not refs:
        return None
    name = refs[0].rsplit("/", 1)[-1].removesuffix("-Input")
    assert name in BODIES, f"no body for schema {name}: add a minimal valid one to BODIES"
    return BODIES[name]


def operations(api: Api) -> list[tuple[str, str, dict[str, Any], list[str]]]:
    """Every (method, path, operation, path parameters) of the live OpenAPI schema."""
    schema = api.client.get("/openapi.json").json()
    out = []
    for path, item in schema["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                out.append((method.upper(), path, item[method], PATH_PARAM.findall(path)))
    return out


def make_tenant_a_resources(api: Api) -> dict[str, int]:
    site = api.client.post("/v1/sites", headers=api.a, json=site_body("A's mine"))
    corridor = api.client.post("/v1/corridors", headers=api.a, json=corridor_body("A's road"))
    assert site.status_code == 201, site.text
    assert corridor.status_code == 201, corridor.text
    return {"site_id": site.json()["id"], "corridor_id": corridor.json()["id"]}


def make_alert_resources(api: Api, headers: dict[str, str], site_id: int) -> dict[str, int]:
    """An endpoint, a subscription with its rule on `site_id`, the alert it raised and a
    delivery, for the tenant whose key `headers` carries."""
    endpoint = api.client.post(
        "/v1/endpoints",
        headers=headers,
        json={"kind": "email", "name": "Desk", "address": "desk@example.com"},
    )
    assert endpoint.status_code == 201, endpoint.text
    subscription = api.client.post(
        "/v1/subscriptions",
        headers=headers,
        json={
            "name": "Watch",
            "scope": "target",
            "target_id": site_id,
            "endpoint_ids": [endpoint.json()["id"]],
            "rules": [{"kind": "threshold", "raise_at": 0}],  # fires on any score
        },
    )
    assert subscription.status_code == 201, subscription.text
    delivery = api.client.post(f"/v1/endpoints/{endpoint.json()['id']}/test", headers=headers)
    assert delivery.status_code == 202, delivery.text
    api.drain_alerts()
    alerts = api.client.get("/v1/alerts", headers=headers).json()["alerts"]
    assert len(alerts) == 1, alerts
    return {
        "endpoint_id": endpoint.json()["id"],
        "subscription_id": subscription.json()["id"],
        "rule_id": subscription.json()["rules"][0]["id"],
        "alert_id": alerts[0]["id"],
        "delivery_id": delivery.json()["id"],
    }


def tenant_a_state(api: Api, ids: dict[str, int]) -> dict[str, Any]:
    """What tenant A reads of each of its resources."""
    paths = {
        "site": f"/v1/sites/{ids['site_id']}",
        "corridor": f"/v1/corridors/{ids['corridor_id']}",
        "endpoint": f"/v1/endpoints/{ids['endpoint_id']}",
        "subscription": f"/v1/subscriptions/{ids['subscription_id']}",
        "alert": f"/v1/alerts/{ids['alert_id']}",
        "delivery": f"/v1/deliveries/{ids['delivery_id']}",
    }
    return {name: api.client.get(path, headers=api.a).json() for name, path in paths.items()}


def make_platform_resources(api: Api) -> dict[str, int]:
    incident = api.client.post("/v1/incidents", headers=api.ingest, json=incident_body())
    key = api.client.post(
        "/v1/api-keys",
        headers=api.admin,
        json={"name": "a2", "tenant_id": api.tenant_a, "roles": ["scores:read"]},
    )
    assert incident.status_code == 201, incident.text
    assert key.status_code == 201, key.text
    return {
        "incident_id": incident.json()["id"],
        "key_id": key.json()["id"],
        "tenant_id": api.tenant_a,
        # Imports and feeds need an ingest key: B is refused before anything is looked up.
        "format": "acled",
        "import_id": 1,
        "name": "acled-sahel",
        # Dead letters and model fits are the operators' (admin keys only): B is refused
        # before any lookup.
        "letter_id": 1,
        "fit_id": 1,
    }


def test_tenant_b_gets_404_problem_on_every_route_naming_tenant_a_resources(api: Api) -> None:
    a_ids = make_tenant_a_resources(api)
    a_ids.update(make_alert_resources(api, api.a, a_ids["site_id"]))
    before = tenant_a_state(api, a_ids)
    walked = set()
    for method, path, operation, params in operations(api):
        if not params or set(params) & (PLATFORM_PARAMS | CAPABILITY_PARAMS):
            continue
        unknown = [p for p in params if p not in a_ids]
        assert not unknown, f"{method} {path}: give tenant A an id for {unknown} in this test"
        body = request_body(operation)
        url = path.format(**a_ids)
        response = api.client.request(method, url, headers=api.b, json=body)
        assert_not_found_problem(response, f"B {method} {url}")
        # The answer must not tell "another tenant's" from "no such id".
        missing = api.client.request(
            method, path.format(**dict.fromkeys(a_ids, MAX_ID)), headers=api.b, json=body
        )
        assert_not_found_problem(missing, f"B {method} {path} on a missing id")
        assert response.json()["detail"] == missing.json()["detail"]
        walked.add((method, path))
    assert walked >= EXPECTED_TENANT_OPERATIONS, EXPECTED_TENANT_OPERATIONS - walked
    assert walked >= ALERTS_ROUTES_BY_ID, ALERTS_ROUTES_BY_ID - walked
    # B's writes were refused: A's resources are still there, unchanged.
    assert tenant_a_state(api, a_ids) == before


def test_tenant_b_gets_no_success_on_platform_routes_except_shared_incident_reads(
    api: Api,
) -> None:
    ids = make_platform_resources(api)
    walked = set()
    for method, path, operation, params in operations(api):
        if not set(params) & PLATFORM_PARAMS:
            continue
        assert set(params) <= PLATFORM_PARAMS, f"{method} {path}: mixed parameters {params}"
        url = path.format(**ids)
        response = api.client.request(method, url, headers=api.b, json=request_body(operation))
        if (method, path) in SHARED_READS:
            # Not tenant-owned: B sees exactly what A sees.
            assert response.status_code == 200, response.text
            assert api.client.request(method, url, headers=api.a).json() == response.json()
        else:
            assert response.status_code in (403, 404), f"B {method} {url}: {response.text}"
            assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
        walked.add((method, path))
    assert walked >= {("GET", "/v1/incidents/{incident_id}"), ("DELETE", "/v1/api-keys/{key_id}")}
    # The key B tried to revoke still works.
    keys = api.client.get("/v1/api-keys", headers=api.admin).json()
    assert next(k for k in keys if k["id"] == ids["key_id"])["revoked_at"] is None


def test_tenant_b_lists_only_its_own_sites_and_corridors(api: Api) -> None:
    a_ids = make_tenant_a_resources(api)
    b_site = api.client.post("/v1/sites", headers=api.b, json=site_body("B's mine")).json()
    sites = api.client.get("/v1/sites", headers=api.b).json()["features"]
    corridors = api.client.get("/v1/corridors", headers=api.b).json()["features"]
    assert [s["id"] for s in sites] == [b_site["id"]]
    assert a_ids["corridor_id"] not in [c["id"] for c in corridors]
    assert corridors == []


def test_tenant_b_change_feed_has_none_of_tenant_a_targets(api: Api) -> None:
    a_ids = make_tenant_a_resources(api)
    b_site = api.client.post("/v1/sites", headers=api.b, json=site_body("B's mine")).json()
    # An incident near both tenants' sites moves both scores.
    assert api.client.post("/v1/incidents", headers=api.ingest, json=incident_body()).is_success
    api.drain()
    a_feed = api.client.get("/v1/score-changes", headers=api.a).json()["changes"]
    b_feed = api.client.get("/v1/score-changes", headers=api.b).json()["changes"]
    assert {c["target"]["id"] for c in a_feed} == set(a_ids.values())
    assert {c["target"]["id"] for c in b_feed} == {b_site["id"]}
    assert len(b_feed) == 2  # created, then moved by the incident


def test_tenant_b_backtest_naming_tenant_a_target_is_404(api: Api) -> None:
    a_ids = make_tenant_a_resources(api)
    for kind, target_id in (("site", a_ids["site_id"]), ("corridor", a_ids["corridor_id"])):
        body = {"targets": [{"kind": kind, "id": target_id}], "times": ["2025-06-01T00:00:00Z"]}
        assert api.client.post("/v1/backtests", headers=api.a, json=body).status_code == 200
        response = api.client.post("/v1/backtests", headers=api.b, json=body)
        assert_not_found_problem(response, f"B backtest of A's {kind}")


def test_tenant_b_audit_log_has_none_of_tenant_a_entries(api: Api) -> None:
    make_tenant_a_resources(api)
    api.client.post("/v1/sites", headers=api.b, json=site_body("B's mine"))
    a_entries = api.client.get("/v1/audit-log", headers=api.a).json()["entries"]
    b_entries = api.client.get("/v1/audit-log", headers=api.b).json()["entries"]
    assert {e["tenant_id"] for e in a_entries} == {api.tenant_a}
    assert {e["tenant_id"] for e in b_entries} == {api.tenant_b}
    assert [e["action"] for e in b_entries] == ["site.create"]


def admin_operations(api: Api) -> list[tuple[str, str, dict[str, Any] | None]]:
    key_id = make_platform_resources(api)["key_id"]
    model = api.client.get("/v1/model", headers=api.admin).json()
    return [
        ("POST", "/v1/tenants", {"name": "Intruder"}),
        ("GET", "/v1/tenants", None),
        ("POST", "/v1/api-keys", {"name": "x", "tenant_id": None, "roles": ["admin"]}),
        ("GET", "/v1/api-keys", None),
        ("DELETE", f"/v1/api-keys/{key_id}", None),
        ("POST", "/v1/model/versions", {"params": model["params"], "note": "intrusion"}),
        ("GET", "/v1/dead-letters", None),
        ("GET", "/v1/dead-letters/1", None),
        ("POST", "/v1/dead-letters/1/resolve", {"note": "intrusion"}),
        ("POST", "/v1/model/fits", {"dry_run": True}),
        ("GET", "/v1/model/fits", None),
        ("GET", "/v1/model/fits/1", None),
    ]


def test_tenant_and_ingest_keys_get_403_on_admin_routes(api: Api) -> None:
    admin_ops = admin_operations(api)
    # Every operation the schema marks as admin-only is in the list above.
    documented = {
        (m, re.sub(r"\{\w+\}", "{id}", p))
        for m, p, op, _ in operations(api)
        if "(admin)" in op["summary"]
    }
    listed = {(m, re.sub(r"/\d+(?=/|$)", "/{id}", p)) for m, p, _ in admin_ops}
    assert documented <= listed, documented - listed
    for headers in (api.a, api.b, api.a_read, api.ingest):
        for method, path, body in admin_ops:
            response = api.client.request(method, path, headers=headers, json=body)
            assert response.status_code == 403, f"{method} {path}: {response.text}"
            assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    # The admin reaches them (so the 403s above are about the key, not a broken route).
    assert api.client.get("/v1/tenants", headers=api.admin).status_code == 200
    assert api.client.get("/v1/api-keys", headers=api.admin).status_code == 200
    assert api.client.get("/v1/model/versions", headers=api.admin).json()[0]["version"] == 1


def test_unknown_or_missing_key_gets_401_problem(api: Api) -> None:
    site_id = make_tenant_a_resources(api)["site_id"]
    for headers in (
        {"Authorization": "Bearer rak_not_a_real_key"},
        {"X-API-Key": "rak_not_a_real_key"},
        {},
    ):
        for method, path in (
            ("GET", "/v1/sites"),
            ("GET", f"/v1/sites/{site_id}"),
            ("GET", "/v1/tenants"),
            ("GET", "/v1/score-changes"),
        ):
            response = api.client.request(method, path, headers=headers)
            assert response.status_code == 401, f"{headers} {method} {path}"
            assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
            assert response.json()["type"] == PROBLEM_BASE + "unauthenticated"
            assert response.headers["www-authenticate"] == "Bearer"


# --------------------------------------------------------------------------------------------
# Alerts routes without a resource in the path: lists, filters, creations, recover, previews


@dataclass
class AlertsScene:
    """Tenants A and B, each with a site, an endpoint, a subscription, an alert and deliveries,
    every delivery failed (so a recover would replay it)."""

    api: Api
    a: dict[str, int]
    b: dict[str, int]
    a_deliveries: set[int]
    b_deliveries: set[int]

    def listed(self, path: str, key: str, headers: dict[str, str], **params: Any) -> set[int]:
        response = self.api.client.get(path, headers=headers, params={"limit": 500, **params})
        assert response.status_code == 200, f"{path} {params}: {response.text}"
        return {item["id"] for item in response.json()[key]}

    def b_lists(self, path: str, key: str, **params: Any) -> set[int]:
        return self.listed(path, key, self.api.b, **params)

    def a_lists(self, path: str, key: str, **params: Any) -> set[int]:
        return self.listed(path, key, self.api.a, **params)


def make_alerts_scene(api: Api) -> AlertsScene:
    a = make_tenant_a_resources(api)
    a.update(make_alert_resources(api, api.a, a["site_id"]))
    b_site = api.client.post("/v1/sites", headers=api.b, json=site_body("B's mine"))
    assert b_site.status_code == 201, b_site.text
    b = {"site_id": b_site.json()["id"]}
    b.update(make_alert_resources(api, api.b, b["site_id"]))
    factory = api.app.state.sessions
    with factory.begin() as session:
        session.execute(update(Delivery).values(status="failed"))
    scene = AlertsScene(api, a, b, set(), set())
    scene.a_deliveries = scene.a_lists("/v1/deliveries", "deliveries")
    scene.b_deliveries = scene.b_lists("/v1/deliveries", "deliveries")
    assert scene.a_deliveries, "tenant A has no delivery"
    assert scene.b_deliveries, "tenant B has no delivery"
    return scene


def _same_refusal(missing: httpx.Response, others: httpx.Response, status: int, what: str) -> None:
    """B is refused alike whether an id is another tenant's or nobody's."""
    doc = assert_problem(others, status)
    assert doc == {**assert_problem(missing, status), "instance": doc.get("instance")}, what


def check_list_endpoints(scene: AlertsScene) -> None:
    assert scene.b_lists("/v1/endpoints", "endpoints") == {scene.b["endpoint_id"]}


def check_create_endpoint(scene: AlertsScene) -> None:
    body = {"kind": "email", "name": "B's second", "address": "second@b.example.com"}
    created = scene.api.client.post("/v1/endpoints", headers=scene.api.b, json=body)
    assert created.status_code == 201, created.text
    assert created.json()["id"] not in scene.a_lists("/v1/endpoints", "endpoints")
    assert created.json()["id"] in scene.b_lists("/v1/endpoints", "endpoints")


def check_list_subscriptions(scene: AlertsScene) -> None:
    assert scene.b_lists("/v1/subscriptions", "subscriptions") == {scene.b["subscription_id"]}


def check_create_subscription(scene: AlertsScene) -> None:
    api = scene.api

    def body(target_id: int, endpoint_id: int) -> dict[str, Any]:
        return {
            "name": "B's watch on A's site",
            "scope": "target",
            "target_id": target_id,
            "endpoint_ids": [endpoint_id],
            "rules": [{"kind": "threshold", "raise_at": 0}],
        }

    others = api.client.post(
        "/v1/subscriptions", headers=api.b, json=body(scene.a["site_id"], scene.a["endpoint_id"])
    )
    missing = api.client.post("/v1/subscriptions", headers=api.b, json=body(MAX_ID, MAX_ID))
    _same_refusal(missing, others, 422, "B subscribing to A's site through A's endpoint")
    assert error_fields(others.json()) == {"target_id", "endpoint_ids.0"}
    # Nor can B point its own subscription at them.
    changed = api.client.patch(
        f"/v1/subscriptions/{scene.b['subscription_id']}",
        headers=api.b,
        json={
            "scope": "target",
            "target_id": scene.a["site_id"],
            "endpoint_ids": [scene.a["endpoint_id"]],
        },
    )
    assert error_fields(assert_problem(changed, 422)) == {"target_id", "endpoint_ids.0"}
    assert scene.b_lists("/v1/subscriptions", "subscriptions") == {scene.b["subscription_id"]}


def check_list_alerts(scene: AlertsScene) -> None:
    assert scene.b_lists("/v1/alerts", "alerts") == {scene.b["alert_id"]}
    for name, value in (
        ("subscription_id", scene.a["subscription_id"]),
        ("target_id", scene.a["site_id"]),
    ):
        # A filter naming A's resource finds nothing, as one naming no resource at all.
        assert scene.b_lists("/v1/alerts", "alerts", **{name: value}) == set(), name
        assert scene.a_lists("/v1/alerts", "alerts", **{name: value}) == {scene.a["alert_id"]}


def check_list_deliveries(scene: AlertsScene) -> None:
    assert scene.b_lists("/v1/deliveries", "deliveries") == scene.b_deliveries
    assert not scene.a_deliveries & scene.b_deliveries
    for name in ("endpoint_id", "alert_id"):
        assert scene.b_lists("/v1/deliveries", "deliveries", **{name: scene.a[name]}) == set()
        assert scene.a_lists("/v1/deliveries", "deliveries", **{name: scene.a[name]})
    for status in ("failed", "pending"):
        assert scene.b_lists("/v1/deliveries", "deliveries", status=status) <= scene.b_deliveries


def check_recover_deliveries(scene: AlertsScene) -> None:
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    recovered = scene.api.client.post(
        "/v1/deliveries/recover", headers=scene.api.b, json={"since": since}
    )
    assert recovered.status_code == 202, recovered.text
    assert set(recovered.json()["replayed"]) == scene.b_deliveries
    # A's failed deliveries stay failed: B's recover queued none of them.
    still = scene.a_lists("/v1/deliveries", "deliveries", status="failed")
    assert still == scene.a_deliveries


def check_preview(scene: AlertsScene) -> None:
    api = scene.api
    now = datetime.now(UTC)
    period = {
        "since": (now - timedelta(days=2)).isoformat(),
        "until": (now - timedelta(minutes=1)).isoformat(),
    }
    always = {"kind": "threshold", "raise_at": 0}

    def post(**fields: Any) -> httpx.Response:
        return api.client.post("/v1/alert-previews", headers=api.b, json={**period, **fields})

    for field, status in (("rule_id", 404), ("subscription_id", 404)):
        extra = {} if field == "rule_id" else {"rule": always}
        _same_refusal(
            post(**extra, **{field: MAX_ID}),
            post(**extra, **{field: scene.a[field]}),
            status,
            f"B previewing with A's {field}",
        )
    others = post(rule=always, target_ids=[scene.a["site_id"]])
    assert error_fields(assert_problem(others, 422)) == {"target_ids.0"}
    missing = post(rule=always, target_ids=[MAX_ID])
    reason = others.json()["errors"][0]["reason"].replace(str(scene.a["site_id"]), "#")
    assert reason == missing.json()["errors"][0]["reason"].replace(str(MAX_ID), "#")
    # Without targets, a preview replays on B's targets only.
    own = post(rule=always)
    assert own.status_code == 200, own.text
    doc = own.json()
    assert doc["targets"] == 1
    assert {a["target_id"] for a in doc["alerts"]} == {scene.b["site_id"]}
    assert {c["target_id"] for c in doc["counts_by_target"]} == {scene.b["site_id"]}


# Each alerts route without a resource in its path, and the check that B learns nothing of A
# through it. The 404 walk covers the routes naming a resource.
COLLECTION_CHECKS: dict[tuple[str, str], Callable[[AlertsScene], None]] = {
    ("GET", "/v1/endpoints"): check_list_endpoints,
    ("POST", "/v1/endpoints"): check_create_endpoint,
    ("GET", "/v1/subscriptions"): check_list_subscriptions,
    ("POST", "/v1/subscriptions"): check_create_subscription,
    ("GET", "/v1/alerts"): check_list_alerts,
    ("GET", "/v1/deliveries"): check_list_deliveries,
    ("POST", "/v1/deliveries/recover"): check_recover_deliveries,
    ("POST", "/v1/alert-previews"): check_preview,
}


def test_every_alerts_route_has_a_tenant_isolation_check() -> None:
    unchecked = ALERTS_COLLECTION_ROUTES - set(COLLECTION_CHECKS)
    assert not unchecked, f"add a check to COLLECTION_CHECKS for {sorted(unchecked)}"
    assert set(COLLECTION_CHECKS) <= ALERTS_COLLECTION_ROUTES, "a checked route is gone"
    capability = ALERTS_ROUTES - ALERTS_COLLECTION_ROUTES - ALERTS_ROUTES_BY_ID
    assert capability == {
        ("GET", "/v1/unsubscribe/{token}"),
        ("POST", "/v1/unsubscribe/{token}"),
    }


def test_tenant_b_lists_filters_creates_recovers_and_previews_nothing_of_tenant_a(
    api: Api,
) -> None:
    scene = make_alerts_scene(api)
    before = tenant_a_state(api, scene.a)
    for route, check in COLLECTION_CHECKS.items():
        try:
            check(scene)
        except AssertionError as exc:
            raise AssertionError(f"{route[0]} {route[1]}: {exc}") from exc
    assert tenant_a_state(api, scene.a) == before
