"""The OpenAPI document tells the truth: what it calls valid is accepted, what it refuses is
refused, and every path answers the methods it lists (issue 16, 4).

Each test checks a request against the published schema (as a fuzzer reads it) and against the
API, so the two cannot drift apart again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.conftest import Api, assert_problem, error_fields

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# A value each path parameter takes, so that a request reaches a real route's template.
PATH_VALUES = {"format": "ucdp", "name": "acled", "token": "abc"}


def document(api: Api) -> dict[str, Any]:
    doc: dict[str, Any] = api.client.get("/openapi.json").json()
    return doc


def valid(doc: dict[str, Any], schema: str, value: Any) -> bool:
    """Whether `value` is valid under the component `schema`, as a fuzzer judges it."""
    if schema not in doc["components"]["schemas"]:
        schema = schema.removesuffix("-Input")  # named so only when responses use it too
    root = {"$ref": f"#/components/schemas/{schema}", "components": doc["components"]}
    return Draft202012Validator(root).is_valid(value)


def parameter(doc: dict[str, Any], method: str, path: str, name: str) -> dict[str, Any]:
    [found] = [p for p in doc["paths"][path][method]["parameters"] if p["name"] == name]
    return found


def param_valid(doc: dict[str, Any], method: str, path: str, name: str, value: Any) -> bool:
    schema = parameter(doc, method, path, name)["schema"]
    return Draft202012Validator({**schema, "components": doc["components"]}).is_valid(value)


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


# --- time ranges -----------------------------------------------------------------------------


def test_every_date_time_a_request_takes_states_the_years_the_code_accepts(api: Api) -> None:
    doc = document(api)
    unbounded = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("format") == "date-time" and "pattern" not in node:
                unbounded.append(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            walk(operation.get("parameters", []), f"{method.upper()} {path}")
    request_schemas = {
        name: schema
        for name, schema in doc["components"]["schemas"].items()
        if name.endswith(("In", "-Input", "Patch"))
    }
    walk(request_schemas, "components")
    assert unbounded == []


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("1900-01-01T00:00:00Z", True),
        ("2200-12-31T23:59:59Z", True),
        # The year as written decides: an offset may carry the UTC time past either end.
        ("2200-12-31T23:00:00-05:00", True),
        ("1900-01-01T00:30:00+01:00", True),
        ("1899-12-31T23:59:59Z", False),
        ("2201-01-01T00:00:00Z", False),
        ("0888-08-13T19:43:14-13:05", False),
    ],
)
def test_query_times_are_accepted_exactly_when_the_schema_says(
    api: Api, value: str, accepted: bool
) -> None:
    doc = document(api)
    assert param_valid(doc, "get", "/v1/alerts", "since", value) is accepted
    response = api.client.get("/v1/alerts", params={"since": value}, headers=api.a)
    if accepted:
        assert response.status_code == 200, response.text
    else:
        assert error_fields(assert_problem(response, 422)) == {"since"}


def test_body_times_are_accepted_exactly_when_the_schema_says(api: Api) -> None:
    doc = document(api)
    for value, accepted in (("2200-12-31T23:00:00-05:00", True), ("2201-01-01T00:00:00Z", False)):
        body = {"times": [value], "points": [{"lon": -1.5, "lat": 14.0}]}
        assert valid(doc, "BacktestIn", body) is accepted
        response = api.client.post("/v1/backtests", json=body, headers=api.a)
        assert (response.status_code == 200) is accepted, response.text


# --- durations: snooze, rotation grace -------------------------------------------------------


def test_rotation_grace_states_its_seven_days(api: Api) -> None:
    doc = document(api)
    for grace, accepted in (("P7D", True), ("PT168H", True), (604800, True), ("P8D", False)):
        assert valid(doc, "RotateSecretIn", {"grace": grace}) is accepted, grace
    assert not valid(doc, "RotateSecretIn", {"grace": 604801})
    assert not valid(doc, "RotateSecretIn", {"grace": True})


def test_rule_durations_state_their_bounds(api: Api) -> None:
    doc = document(api)
    rule = {"kind": "threshold", "raise_at": 50}
    assert valid(doc, "ThresholdRuleIn-Input", {**rule, "cooldown": "P30D"})
    assert not valid(doc, "ThresholdRuleIn-Input", {**rule, "cooldown": "P31D"})
    assert not valid(doc, "ThresholdRuleIn-Input", {**rule, "repeat_every": "PT1M"})
    assert not valid(doc, "ThresholdRuleIn-Input", {**rule, "flap_window": 0})
    # A rule names its kind: the API reads it by that.
    assert not valid(doc, "ThresholdRuleIn-Input", {"raise_at": 50})


def test_a_snooze_takes_exactly_one_of_until_and_until_band_rises(api: Api) -> None:
    doc = document(api)
    soon = iso(datetime.now(UTC) + timedelta(hours=3))
    assert valid(doc, "SnoozeIn", {"until": soon})
    assert valid(doc, "SnoozeIn", {"until_band_rises": True})
    assert not valid(doc, "SnoozeIn", {})
    assert not valid(doc, "SnoozeIn", {"until": soon, "until_band_rises": True})
    until = doc["components"]["schemas"]["SnoozeIn"]["properties"]["until"]
    assert "30 days" in until["description"]


# --- PATCH nulls ----------------------------------------------------------------------------


def test_patch_fields_that_cannot_be_null_do_not_say_null(api: Api) -> None:
    doc = document(api)
    for field in ("name", "url", "address", "enabled"):
        assert not valid(doc, "EndpointPatch", {field: None}), field
    assert valid(doc, "EndpointPatch", {"max_in_flight": None})
    for field in ("name", "scope", "endpoint_ids", "digest_bands", "enabled"):
        assert not valid(doc, "SubscriptionPatch", {field: None}), field
    assert valid(doc, "SubscriptionPatch", {"target_id": None})
    assert valid(doc, "SubscriptionPatch", {"tag": None})


def test_a_null_the_patch_schema_refuses_the_api_refuses(api: Api) -> None:
    made = api.client.post(
        "/v1/endpoints",
        json={"kind": "email", "name": "Desk", "address": "desk@example.com"},
        headers=api.a,
    )
    assert made.status_code == 201, made.text
    url = f"/v1/endpoints/{made.json()['id']}"
    doc = assert_problem(api.client.patch(url, json={"enabled": None}, headers=api.a), 422)
    assert error_fields(doc) == {"enabled"}
    assert api.client.patch(url, json={"max_in_flight": None}, headers=api.a).status_code == 200


# --- cross-field rules the schema states ------------------------------------------------------


def test_a_preview_takes_subscription_id_or_target_ids_not_both(api: Api) -> None:
    doc = document(api)
    now = datetime.now(UTC)
    body = {
        "rule": {"kind": "threshold", "raise_at": 50},
        "since": iso(now - timedelta(days=3)),
        "until": iso(now - timedelta(days=1)),
    }
    assert valid(doc, "PreviewIn", {**body, "subscription_id": 1})
    assert valid(doc, "PreviewIn", {**body, "target_ids": [1]})
    assert not valid(doc, "PreviewIn", {**body, "subscription_id": 1, "target_ids": [1]})
    assert valid(doc, "PreviewIn", {**body, "subscription_id": 1, "target_ids": None})
    # ... and exactly one of rule and rule_id; changes only with rule_id.
    assert not valid(doc, "PreviewIn", {**body, "rule_id": 1})
    rule_free = {k: v for k, v in body.items() if k != "rule"}
    assert not valid(doc, "PreviewIn", rule_free)
    assert not valid(doc, "PreviewIn", {**body, "changes": {}})
    assert valid(doc, "PreviewIn", {**rule_free, "rule_id": 1, "changes": {}})

    both = {**body, "subscription_id": 1, "target_ids": [1]}
    refused = assert_problem(api.client.post("/v1/alert-previews", json=both, headers=api.a), 422)
    assert {"subscription_id", "target_ids"} <= error_fields(refused)


CORRIDOR = {
    "type": "Feature",
    "properties": {"name": "Road", "countries": ["BFA"]},
}


def test_a_line_string_of_one_repeated_position_is_refused_by_schema_and_api(api: Api) -> None:
    doc = document(api)
    same = {**CORRIDOR, "geometry": {"type": "LineString", "coordinates": [[-1.5, 12], [-1.5, 12]]}}
    assert not valid(doc, "CorridorIn", same)
    assert_problem(api.client.post("/v1/corridors", json=same, headers=api.a), 422)
    line = {**CORRIDOR, "geometry": {"type": "LineString", "coordinates": [[-1.5, 12], [-1, 13]]}}
    assert valid(doc, "CorridorIn", line)
    assert api.client.post("/v1/corridors", json=line, headers=api.a).status_code == 201


def test_rule_levels_follow_the_metric_and_stay_within_0_to_100(api: Api) -> None:
    doc = document(api)
    assert valid(doc, "ThresholdRuleIn-Input", {"kind": "threshold", "raise_at": 100})
    assert not valid(doc, "ThresholdRuleIn-Input", {"kind": "threshold", "raise_at": 101})
    assert not valid(doc, "ThresholdRuleIn-Input", {"kind": "threshold", "raise_at": "high"})
    band = {"kind": "threshold", "metric": "band"}
    assert valid(doc, "ThresholdRuleIn-Input", {**band, "raise_at": "high"})
    assert not valid(doc, "ThresholdRuleIn-Input", {**band, "raise_at": 50})


@pytest.mark.parametrize(
    ("schema", "body"),
    [
        ("EndpointIn", {"kind": "email", "name": "x", "address": "a@b.co", "url": "https://a.b"}),
        ("EndpointIn", {"kind": "webhook", "name": "x"}),
        ("SubscriptionIn", {"scope": "all", "tag": "x"}),
        ("SubscriptionIn", {"scope": "target"}),
        ("BacktestIn", {"times": ["2025-01-01T00:00:00Z"]}),
        ("ApiKeyIn", {"name": "k", "tenant_id": 1, "roles": ["admin"]}),
        ("ApiKeyIn", {"name": "k", "roles": ["scores:read"]}),
        ("IncidentIn", {"source": "s", "source_id": "1", "category": "ied"}),
    ],
)
def test_combinations_the_code_refuses_the_schema_refuses(
    api: Api, schema: str, body: dict[str, Any]
) -> None:
    doc = document(api)
    if schema == "SubscriptionIn":
        rules = [{"kind": "threshold", "raise_at": 50}]
        body = {"name": "s", "endpoint_ids": [1], "rules": rules, **body}
    if schema == "IncidentIn":
        body = {**body, "occurred_at": "2025-01-01T00:00:00Z"}
    assert not valid(doc, schema, body)


# --- page sizes --------------------------------------------------------------------------------


def test_every_limit_states_this_deployments_page_cap(api_factory: Callable[..., Api]) -> None:
    api = api_factory(max_page_size=7)
    doc = document(api)
    limits = [
        p
        for operations in doc["paths"].values()
        for operation in operations.values()
        for p in operation.get("parameters", [])
        if p["name"] == "limit"
    ]
    assert len(limits) >= 10
    for limit in limits:
        assert limit["schema"]["x-deployment"] == {
            "variable": "RISKALERT_MAX_PAGE_SIZE",
            "value": 7,
        }
        assert "Here: 7 (RISKALERT_MAX_PAGE_SIZE)" in limit["description"]
        assert "served as that many" in limit["description"]
    batch = doc["components"]["schemas"]["IncidentBatchIn"]["properties"]["items"]
    assert batch["maxItems"] == api.settings.max_batch_items


def test_a_limit_above_the_cap_is_served_capped_as_the_schema_says(
    api_factory: Callable[..., Api],
) -> None:
    api = api_factory(max_page_size=1)
    for name in ("a", "b"):
        body = {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [-1.5, 14.0]},
            "properties": {"name": name, "country": "BFA"},
        }
        assert api.client.post("/v1/sites", json=body, headers=api.a).status_code == 201
    page = api.client.get("/v1/sites", params={"limit": 5000}, headers=api.a)
    assert page.status_code == 200
    assert len(page.json()["features"]) == 1
    assert page.json()["next_cursor"] is not None


# --- methods ------------------------------------------------------------------------------------


def key_for(api: Api, path: str) -> dict[str, str]:
    """A key that passes the path's role check: a refused key is answered before the method."""
    if re.match(r"^/v1/(incidents($|/batch$)|imports|feeds)", path):
        return api.ingest
    if re.match(r"^/v1/(tenants|api-keys|model/versions|model/fits|dead-letters)", path):
        return api.admin
    return api.a


def concrete(path: str) -> str:
    """The path with each parameter filled in with a value its route takes."""
    for name, value in PATH_VALUES.items():
        path = path.replace("{" + name + "}", value)
    while "{" in path:
        start = path.index("{")
        path = path[:start] + "1" + path[path.index("}") + 1 :]
    return path


def test_options_lists_exactly_the_methods_each_path_documents(api: Api) -> None:
    doc = document(api)
    wrong = {}
    for path, operations in doc["paths"].items():
        documented = {m.upper() for m in operations}
        response = api.client.options(concrete(path), headers=key_for(api, path))
        allowed = {m.strip() for m in response.headers.get("allow", "").split(",")} - {"HEAD"}
        if allowed != documented:
            wrong[path] = (sorted(allowed), sorted(documented))
    assert wrong == {}


def test_a_method_a_path_does_not_document_is_405_naming_those_it_does(api: Api) -> None:
    doc = document(api)
    wrong = {}
    for path, operations in doc["paths"].items():
        documented = {m.upper() for m in operations}
        for method in set(METHODS) - documented:
            response = api.client.request(method, concrete(path), headers=key_for(api, path))
            allowed = {m.strip() for m in response.headers.get("allow", "").split(",")}
            if response.status_code != 405 or allowed - {"HEAD"} != documented:
                wrong[f"{method} {path}"] = (response.status_code, sorted(allowed))
    assert wrong == {}


def test_post_to_an_import_is_405_not_a_422_about_its_format(api: Api) -> None:
    response = api.client.post("/v1/imports/1", headers=api.ingest)
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET"
    refused = api.client.post("/v1/imports/no-such-format", headers=api.ingest)
    assert error_fields(assert_problem(refused, 422)) == {"format"}


# --- what the schema says of every text, number and duration ------------------------------------


def test_free_text_the_api_refuses_with_nul_characters_says_so(api: Api) -> None:
    doc = document(api)
    site = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [-1.5, 14.0]},
        "properties": {"name": "a\x00b", "country": "BFA"},
    }
    assert not valid(doc, "SiteIn", site)
    assert_problem(api.client.post("/v1/sites", json=site, headers=api.a), 422)
    assert valid(doc, "SiteIn", {**site, "properties": {"name": "ab", "country": "BFA"}})


def test_a_nul_in_one_batch_item_rejects_that_item_not_the_batch(api: Api) -> None:
    good = {
        "source": "analyst",
        "source_id": "ok-1",
        "category": "ied",
        "occurred_at": "2025-06-01T00:00:00Z",
        "location": {"type": "Point", "coordinates": [-1.5, 14.0]},
    }
    bad = {**good, "source_id": "bad-1", "title": "a\x00b"}
    response = api.client.post(
        "/v1/incidents/batch", json={"items": [good, bad]}, headers=api.ingest
    )
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["created", "rejected"]


def test_an_integer_written_with_a_fraction_of_zero_is_the_integer(api: Api) -> None:
    doc = document(api)
    assert valid(doc, "EndpointPatch", {"max_in_flight": 8.0})  # JSON Schema's reading
    made = api.client.post(
        "/v1/endpoints",
        json={"kind": "email", "name": "Desk", "address": "desk@example.com"},
        headers=api.a,
    )
    url = f"/v1/endpoints/{made.json()['id']}"
    patched = api.client.patch(url, json={"max_in_flight": 8.0}, headers=api.a)
    assert patched.status_code == 200, patched.text
    assert patched.json()["max_in_flight"] == 8
    assert_problem(api.client.patch(url, json={"max_in_flight": 8.5}, headers=api.a), 422)


def test_durations_in_answers_are_described_as_the_iso_8601_the_api_writes(api: Api) -> None:
    doc = document(api)
    claimed = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("format") == "duration":
                claimed.append(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    # RFC 3339's grammar, which `format: duration` names, has no P1Y1D, PT2H4S or PT0.5S.
    walk(doc, "")
    assert claimed == []
    out = doc["components"]["schemas"]["ThresholdRuleOut"]["properties"]["cooldown"]
    for written in ("P1Y1D", "PT2H4S", "PT0.5S", "PT30M"):
        assert Draft202012Validator(out).is_valid(written), written


def test_an_import_sent_as_json_is_described_as_api_pages(api: Api) -> None:
    doc = document(api)
    content = doc["paths"]["/v1/imports/{format}"]["post"]["requestBody"]["content"]
    json_body = Draft202012Validator(content["application/json"]["schema"])
    assert json_body.is_valid({"data": []})
    assert json_body.is_valid([{"Result": []}])
    assert not json_body.is_valid("a,b,c")
    assert not Draft202012Validator(content["text/csv"]["schema"]).is_valid("")


def test_a_body_that_is_not_utf8_gets_a_400_every_json_operation_documents(api: Api) -> None:
    doc = document(api)
    wrong = {}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            response = api.client.request(
                method.upper(),
                concrete(path),
                content=b"\xa7D\xfe\xff",
                headers={**key_for(api, path), "Content-Type": "application/json"},
            )
            if str(response.status_code) not in operation["responses"]:
                wrong[f"{method.upper()} {path}"] = response.status_code
            elif response.status_code == 400:
                assert_problem(response, 400)
    assert wrong == {}
