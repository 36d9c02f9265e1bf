"""What an OpenAPI fuzzer found: every refusal is a documented problem document, never a 5xx."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from services.core.problems import MAX_FIELD_ERRORS
from services.scoring.schemas import SiteIn
from tests.conftest import Api
from tests.conftest import assert_problem as problem_document

PROBLEM = "application/problem+json"
PROBLEM_REF = "#/components/schemas/ProblemDocument"
SITE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [-1.63, 14.10]},
    "properties": {"name": "Djibo camp", "country": "BFA"},
}


def assert_problem(response: Any, status: int, field: str, where: str) -> dict[str, Any]:
    """Check a problem document of `status` that names `field` in request part `where`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    doc: dict[str, Any] = response.json()
    assert doc["type"].startswith("https://riskalert.dev/problems/")
    assert {(e["field"], e["in"]) for e in doc["errors"]} == {(field, where)}
    assert field in doc["detail"]
    return doc


def operations(api: Api) -> dict[tuple[str, str], dict[str, Any]]:
    """Every operation of the published OpenAPI document, by (method, path)."""
    paths = api.client.get("/openapi.json").json()["paths"]
    return {(m.upper(), p): op for p, ops in paths.items() for m, op in ops.items()}


def test_every_v1_operation_documents_its_refusals_as_problem_documents(api: Api) -> None:
    ops = operations(api)
    for (method, path), op in ops.items():
        if not path.startswith("/v1/"):
            continue
        for status in ("401", "403", "422", "503"):
            content = op["responses"][status]["content"]
            assert content == {PROBLEM: {"schema": {"$ref": PROBLEM_REF}}}, (method, path, status)
    assert "404" in ops[("GET", "/v1/sites/{site_id}")]["responses"]
    assert "404" in ops[("POST", "/v1/backtests")]["responses"]
    assert "413" in ops[("POST", "/v1/incidents/batch")]["responses"]
    assert "409" in ops[("POST", "/v1/tenants")]["responses"]
    assert "400" in ops[("PUT", "/v1/corridors/{corridor_id}")]["responses"]
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert schemas["ProblemDocument"]["required"] == ["type", "title", "status", "detail"]
    assert schemas["FieldError"]["required"] == ["in", "pointer", "field", "reason"]


def test_refusals_carry_a_status_the_schema_documents(api: Api) -> None:
    ops = operations(api)
    cases = [
        ("GET", "/v1/sites", "/v1/sites", {}, None),  # no key: 401
        ("POST", "/v1/tenants", "/v1/tenants", api.a, {"name": "x"}),  # not admin: 403
        ("GET", "/v1/sites/{site_id}", "/v1/sites/77", api.a, None),  # unknown: 404
        ("POST", "/v1/sites", "/v1/sites", api.a, b"\xff\xfe{"),  # not UTF-8: 400
    ]
    for method, template, url, headers, body in cases:
        if isinstance(body, bytes):
            response = api.client.request(
                method, url, headers={**headers, "Content-Type": "application/json"}, content=body
            )
        else:
            response = api.client.request(method, url, headers=headers, json=body)
        assert response.headers["content-type"].startswith(PROBLEM), url
        assert str(response.status_code) in ops[(method, template)]["responses"], url


@pytest.mark.parametrize("target_id", [2**31, 2**63, 10**20])
def test_backtest_of_a_target_id_beyond_the_id_range_is_refused_not_a_500(
    api: Api, target_id: int
) -> None:
    body = {"targets": [{"kind": "site", "id": target_id}], "times": ["2025-06-01T00:00:00Z"]}
    response = api.client.post("/v1/backtests", headers=api.a, json=body)
    doc = assert_problem(response, 422, "targets.0.id", "body")
    assert doc["errors"][0]["pointer"] == "/targets/0/id"


@pytest.mark.parametrize("tenant_id", [2**31, 2**63, 10**20])
def test_api_key_for_a_tenant_id_beyond_the_id_range_is_refused_not_a_500(
    api: Api, tenant_id: int
) -> None:
    body = {"name": "k", "tenant_id": tenant_id, "roles": ["scores:read"]}
    response = api.client.post("/v1/api-keys", headers=api.admin, json=body)
    assert_problem(response, 422, "tenant_id", "body")


def test_empty_idempotency_key_is_refused_as_the_schema_says(api: Api) -> None:
    op = operations(api)[("POST", "/v1/sites")]
    header = next(p for p in op["parameters"] if p["name"] == "Idempotency-Key")
    assert header["schema"]["anyOf"][0]["minLength"] == 1
    response = api.client.post("/v1/sites", headers={**api.a, "Idempotency-Key": ""}, json=SITE)
    assert_problem(response, 422, "Idempotency-Key", "header")


@pytest.mark.parametrize("value", ["0.5", "12", "1735689600000"])
def test_numbers_are_not_read_as_unix_times_in_queries(api: Api, value: str) -> None:
    site_id = api.client.post("/v1/sites", headers=api.a, json=SITE).json()["id"]
    response = api.client.get(f"/v1/sites/{site_id}/score", headers=api.a, params={"as_of": value})
    assert_problem(response, 422, "as_of", "query")
    response = api.client.get(
        f"/v1/sites/{site_id}/score-history", headers=api.a, params={"until": value}
    )
    assert_problem(response, 422, "until", "query")
    response = api.client.get("/v1/incidents", headers=api.ingest, params={"since": value})
    assert_problem(response, 422, "since", "query")


def test_numbers_are_not_read_as_unix_times_in_bodies(api: Api) -> None:
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [-1.63, 14.1]}}
    response = api.client.post(
        "/v1/scores", headers=api.a, json={**point, "properties": {"as_of": 0}}
    )
    assert_problem(response, 422, "properties.as_of", "body")
    response = api.client.post(
        "/v1/scores", headers=api.a, json={**point, "properties": {"as_of": "2025-06-01T00:00Z"}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["as_of"] == "2025-06-01T00:00:00Z"


def test_incident_time_window_errors_point_at_the_query(api: Api) -> None:
    response = api.client.get(
        "/v1/incidents", headers=api.ingest, params={"since": "1800-01-01T00:00:00Z"}
    )
    doc = assert_problem(response, 422, "since", "query")
    assert doc["errors"][0]["pointer"] == "/since"


def test_malformed_json_names_the_whole_body(api: Api) -> None:
    response = api.client.post(
        "/v1/sites", headers={**api.a, "Content-Type": "application/json"}, content=b"{"
    )
    doc = assert_problem(response, 422, "body", "body")
    assert doc["errors"][0]["pointer"] == ""


@pytest.mark.parametrize(
    ("method", "url", "allow"),
    [
        ("OPTIONS", "/v1/sites", "GET, POST"),
        ("PATCH", "/v1/sites/1", "GET, PUT, DELETE"),
        ("DELETE", "/v1/model/versions", "GET, POST"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_method_not_allowed_lists_every_method_of_the_path(
    api: Api, method: str, url: str, allow: str
) -> None:
    response = api.client.request(method, url, headers=api.a)
    assert response.status_code == 405
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.headers["allow"] == allow


def test_a_tenant_key_cannot_be_given_platform_roles(api: Api) -> None:
    for role in ("admin", "incidents:write"):
        response = api.client.post(
            "/v1/api-keys",
            headers=api.admin,
            json={"name": "sneaky", "tenant_id": api.tenant_a, "roles": [role]},
        )
        doc = assert_problem(response, 422, "body", "body")
        assert role in doc["detail"] + " ".join(e["reason"] for e in doc["errors"])


def test_a_platform_key_cannot_be_given_tenant_roles(api: Api) -> None:
    response = api.client.post(
        "/v1/api-keys", headers=api.admin, json={"name": "odd", "roles": ["scores:read"]}
    )
    assert response.status_code == 422


def test_a_tenant_key_holding_admin_in_the_database_is_not_an_admin(api: Api) -> None:
    from services.core.auth import Role, generate_key
    from services.core.models import ApiKey
    from services.scoring import jobs

    raw, prefix, key_hash = generate_key()
    with api.app.state.sessions.begin() as session:
        session.add(
            ApiKey(
                tenant_id=api.tenant_a, name="legacy", prefix=prefix, key_hash=key_hash,
                roles=[Role.ADMIN.value], created_at=jobs.utc_now(),
            )
        )  # fmt: skip
    headers = {"Authorization": f"Bearer {raw}"}
    assert api.client.get("/v1/tenants", headers=headers).status_code == 403
    assert api.client.get("/v1/api-keys", headers=headers).status_code == 403


def test_a_score_as_of_the_future_is_refused(api: Api) -> None:
    site = api.client.post(
        "/v1/sites",
        headers=api.a,
        json={
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [-1.5, 14.0]},
            "properties": {"name": "s", "country": "BFA"},
        },
    ).json()
    response = api.client.get(
        f"/v1/sites/{site['id']}/score", params={"as_of": "2199-01-01T00:00:00Z"}, headers=api.a
    )
    assert_problem(response, 422, "as_of", "query")


def test_concurrent_posts_of_one_incident_store_it_once_and_never_fail_with_5xx(
    api: Api,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    body = {
        "source": "race",
        "source_id": "one",
        "category": "ied",
        "occurred_at": "2025-06-01T00:00:00Z",
        "location": {"type": "Point", "coordinates": [-1.5, 14.0]},
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(
            pool.map(
                lambda _: (
                    api.client.post("/v1/incidents", json=body, headers=api.ingest).status_code
                ),
                range(4),
            )
        )
    assert set(statuses) <= {200, 201, 409}, statuses
    assert 201 in statuses
    listed = api.client.get("/v1/incidents", headers=api.ingest).json()["features"]
    assert [f["properties"]["source_id"] for f in listed] == ["one"]


def test_a_key_for_a_tenant_that_does_not_exist_is_422_naming_tenant_id(api: Api) -> None:
    response = api.client.post(
        "/v1/api-keys",
        headers=api.admin,
        json={"name": "orphan", "tenant_id": 424242, "roles": ["scores:read"]},
    )
    assert_problem(response, 422, "tenant_id", "body")


def unknown_keys(count: int) -> dict[str, int]:
    return {f"key{i:06d}": 0 for i in range(count)}


def test_a_body_of_110000_unknown_keys_gets_the_first_50_and_a_count_of_the_rest(
    api: Api,
) -> None:
    body = json.dumps({**SITE, **unknown_keys(110_000)}).encode()
    assert 1_700_000 < len(body) < api.settings.max_body_bytes

    response = api.client.post(
        "/v1/sites", headers={**api.a, "Content-Type": "application/json"}, content=body
    )

    assert response.status_code == 422, response.text[:500]
    assert len(response.content) < 20_000
    doc = response.json()
    assert [e["field"] for e in doc["errors"]] == [f"key{i:06d}" for i in range(50)]
    assert {e["reason"] for e in doc["errors"]} == {"Extra inputs are not permitted"}
    assert doc["errors_omitted"] == 110_000 - 50
    assert doc["detail"].endswith("key000049 (and 109950 more errors)")
    assert api.client.get("/v1/sites", headers=api.a).json()["features"] == []


def test_a_member_named_by_the_empty_string_is_named_so_in_the_problem(api: Api) -> None:
    response = api.client.post("/v1/sites", json={**SITE, "": True}, headers=api.a)

    doc = problem_document(response, 422)
    assert [(e["field"], e["pointer"]) for e in doc["errors"]] == [('""', "/")]
    assert doc["errors"][0]["reason"] == "Extra inputs are not permitted"


def test_a_flood_of_unknown_fields_costs_pydantic_only_the_errors_a_document_lists() -> None:
    # Building one error per field, which the document would not list, held the event loop
    # for seconds: validation stops at the first MAX_FIELD_ERRORS, and counts the rest.
    nested = {**SITE, "properties": {**SITE["properties"], **unknown_keys(10_000)}}
    for body in ({**SITE, **unknown_keys(10_000)}, nested):
        with pytest.raises(ValidationError) as refused:
            SiteIn.model_validate(body)
        assert refused.value.error_count() == MAX_FIELD_ERRORS + 1


def test_many_invalid_values_list_the_first_50_errors_and_count_the_others(api: Api) -> None:
    points = [{"lon": str(-1.5 - i / 100), "lat": 14.0} for i in range(60)]
    response = api.client.post(
        "/v1/backtests",
        headers=api.a,
        json={"points": points, "times": ["2025-06-01T00:00:00Z"]},
    )
    assert response.status_code == 422, response.text
    doc = response.json()
    assert [e["field"] for e in doc["errors"]] == [f"points.{i}.lon" for i in range(50)]
    assert doc["errors_omitted"] == 10


def test_the_problem_schema_documents_the_count_of_errors_left_out(api: Api) -> None:
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    omitted = schemas["ProblemDocument"]["properties"]["errors_omitted"]
    assert (omitted["type"], omitted["minimum"]) == ("integer", 0)


def _bare_key(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def test_two_credentials_naming_different_keys_are_refused_not_one_picked(api: Api) -> None:
    a, b = _bare_key(api.a), _bare_key(api.b)
    for bearer, header in ((a, b), ("rak_not_a_key", b), (a, "rak_not_a_key")):
        response = api.client.get(
            "/v1/sites", headers={"Authorization": f"Bearer {bearer}", "X-API-Key": header}
        )
        doc = problem_document(response, 400)
        assert doc["type"].endswith("/conflicting-credentials")
        assert "X-API-Key" in doc["detail"]


def test_the_same_key_in_both_headers_is_accepted(api: Api) -> None:
    a = _bare_key(api.a)
    response = api.client.get("/v1/sites", headers={"Authorization": f"Bearer {a}", "X-API-Key": a})
    assert response.status_code == 200, response.text


def test_a_malformed_authorization_beside_a_valid_key_is_refused_not_ignored(api: Api) -> None:
    response = api.client.get(
        "/v1/sites", headers={"Authorization": "Basic dXNlcjpwYXNz", "X-API-Key": _bare_key(api.a)}
    )
    doc = problem_document(response, 401)
    assert "Bearer" in doc["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_the_imports_list_documents_its_before_cursor_as_before(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    params = spec["paths"]["/v1/imports"]["get"]["parameters"]
    [before] = [p for p in params if p["name"] == "before"]
    assert "older than" in before["description"]
    assert "after" not in before["description"]
