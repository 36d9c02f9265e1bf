"""Incident ingest, query and read over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from services.core.db import (
    STALE_GROWTH,
    STALE_MIN_PAGES,
    is_sqlite,
    make_engine,
    make_sessionmaker,
    refresh_statistics,
)
from tests.conftest import Api, assert_problem, error_fields, setter

DJIBO = (-1.63, 14.10)
TIMBUKTU = (-3.01, 16.73)
MAHOU = (-4.45, 12.10)
DAKAR = (-17.44, 14.69)


def iso(moment: datetime) -> str:
    """An ISO 8601 UTC timestamp as clients send it."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def ago(**delta: float) -> datetime:
    """A moment in the past, relative to the wall clock the app also uses."""
    return datetime.now(UTC) - timedelta(**delta)


def incident(source_id: str = "evt-1", **fields: Any) -> dict[str, Any]:
    """A valid point incident at Djibo; `fields` override or add top-level fields."""
    body: dict[str, Any] = {
        "source": "acled",
        "source_id": source_id,
        "category": "armed_assault",
        "occurred_at": iso(ago(days=2)),
        "location": {"type": "Point", "coordinates": list(DJIBO)},
        "country": "BFA",
        "fatalities": {"best": 20},
        "title": "Assault on military positions",
    }
    body.update(fields)
    return body


def site(name: str, lonlat: tuple[float, float], country: str, **props: Any) -> dict[str, Any]:
    """A site body as a GeoJSON Feature."""
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": list(lonlat)},
        "properties": {"name": name, "country": country, **props},
    }


def stored(api: Api, **params: Any) -> list[dict[str, Any]]:
    """Every incident the API lists, retracted ones included unless told otherwise."""
    params.setdefault("include_retracted", "true")
    response = api.client.get("/v1/incidents", params=params, headers=api.ingest)
    assert response.status_code == 200, response.text
    features: list[dict[str, Any]] = response.json()["features"]
    return features


def site_score(api: Api, site_id: int, **params: Any) -> dict[str, Any]:
    """A site's score document."""
    response = api.client.get(f"/v1/sites/{site_id}/score", params=params, headers=api.a)
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def create_site(api: Api, body: dict[str, Any]) -> int:
    """Register a site for tenant A and return its id."""
    response = api.client.post("/v1/sites", json=body, headers=api.a)
    assert response.status_code == 201, response.text
    site_id: int = response.json()["id"]
    return site_id


# --- single ingest ---------------------------------------------------------------------------


def test_new_incident_is_created_and_served_as_geojson_feature(api: Api) -> None:
    response = api.client.post("/v1/incidents", json=incident(), headers=api.ingest)

    assert response.status_code == 201, response.text
    feature = response.json()
    assert feature["type"] == "Feature"
    assert isinstance(feature["id"], int)
    assert feature["geometry"] == {"type": "Point", "coordinates": list(DJIBO)}
    props = feature["properties"]
    assert props["source"] == "acled"
    assert props["source_id"] == "evt-1"
    assert props["category"] == "armed_assault"
    assert props["revision"] == 1
    assert props["fatalities"]["best"] == 20
    assert props["scope"] is None
    read = api.client.get(f"/v1/incidents/{feature['id']}", headers=api.a_read)
    assert read.status_code == 200
    assert read.json() == feature


def test_second_report_of_same_event_updates_instead_of_duplicating(api: Api) -> None:
    first = api.client.post("/v1/incidents", json=incident(), headers=api.ingest).json()

    body = incident(fatalities={"claimed": 100, "best": 30})
    second = api.client.post("/v1/incidents", json=body, headers=api.ingest)

    assert second.status_code == 200, second.text
    assert second.json()["id"] == first["id"]
    assert second.json()["properties"]["revision"] == 2
    assert second.json()["properties"]["fatalities"]["claimed"] == 100
    assert second.json()["properties"]["reported_at"] == first["properties"]["reported_at"]
    assert [f["id"] for f in stored(api)] == [first["id"]]


def test_identical_resend_is_unchanged_and_keeps_its_revision(api: Api) -> None:
    body = incident()
    first = api.client.post("/v1/incidents", json=body, headers=api.ingest).json()

    again = api.client.post("/v1/incidents", json=body, headers=api.ingest)

    assert again.status_code == 200, again.text
    assert again.json()["id"] == first["id"]
    assert again.json()["properties"]["revision"] == 1
    assert again.json()["properties"]["updated_at"] == first["properties"]["updated_at"]
    assert len(stored(api)) == 1


def test_area_scoped_threat_without_location_is_stored_with_null_geometry(api: Api) -> None:
    threat = incident(
        "threat-1",
        category="explicit_threat",
        location=None,
        country=None,
        fatalities={},
        scope={"countries": ["MLI", "BFA", "NER"]},
        target_profile={"foreign_owned_only": True, "sectors": ["mining"]},
        title="Video threat to international companies",
    )
    del threat["location"]

    response = api.client.post("/v1/incidents", json=threat, headers=api.ingest)

    assert response.status_code == 201, response.text
    feature = response.json()
    assert feature["geometry"] is None
    assert sorted(feature["properties"]["scope"]["countries"]) == ["BFA", "MLI", "NER"]
    assert feature["properties"]["target_profile"] == {
        "foreign_owned_only": True,
        "sectors": ["mining"],
    }


def test_area_scoped_threat_raises_only_matching_sites_in_scope(api: Api) -> None:
    mine = create_site(
        api,
        site("Foreign gold mine", (-11.4, 12.6), "MLI", sector="mining", foreign_owned=True),
    )
    local = create_site(api, site("Local depot", (-8.0, 12.65), "MLI", sector="logistics"))
    outside = create_site(
        api, site("Dakar office", DAKAR, "SEN", sector="mining", foreign_owned=True)
    )
    threat = incident(
        "threat-1",
        category="explicit_threat",
        country=None,
        fatalities={},
        scope={"countries": ["MLI", "BFA", "NER"]},
        target_profile={"foreign_owned_only": True, "sectors": ["mining"]},
    )
    del threat["location"]
    assert api.client.post("/v1/incidents", json=threat, headers=api.ingest).status_code == 201

    api.drain()

    # A threat adjusts the odds of the sites it is aimed at; the others keep the fitted value.
    scored = {s: site_score(api, s) for s in (mine, local, outside)}
    assert scored[mine]["probability"] > scored[mine]["generic_probability"]
    assert [a["kind"] for a in scored[mine]["adjustments"]] == ["threats"]
    for other in (local, outside):
        assert scored[other]["probability"] == scored[other]["generic_probability"]
        assert scored[other]["adjustments"] == []


def test_retraction_removes_incident_from_nearby_site_score(api: Api) -> None:
    site_id = create_site(api, site("Djibo camp", DJIBO, "BFA"))
    posted = api.client.post("/v1/incidents", json=incident(), headers=api.ingest).json()
    api.drain()
    before = site_score(api, site_id)
    assert before["score"] > 0
    assert [c["incident_id"] for c in before["contributions"]] == [posted["id"]]

    retracted = api.client.post(
        "/v1/incidents", json=incident(lifecycle="retracted"), headers=api.ingest
    )
    assert retracted.status_code == 200, retracted.text
    assert retracted.json()["properties"]["revision"] == 2
    api.drain()

    after = site_score(api, site_id)
    assert after["score"] == 0
    assert after["band"] == "low"
    assert after["contributions"] == []
    assert stored(api, include_retracted="false") == []
    assert [f["id"] for f in stored(api)] == [posted["id"]]


def test_incident_reported_after_as_of_is_invisible_to_that_score(api: Api) -> None:
    site_id = create_site(api, site("Djibo camp", DJIBO, "BFA"))
    body = incident(occurred_at=iso(ago(days=10)), reported_at=iso(ago(days=2)))
    posted = api.client.post("/v1/incidents", json=body, headers=api.ingest)
    assert posted.status_code == 201, posted.text
    api.drain()

    before_report = site_score(api, site_id, as_of=iso(ago(days=5)))
    after_report = site_score(api, site_id, as_of=iso(ago(days=1)))

    assert before_report["score"] == 0
    assert before_report["incident_count"] == 0
    assert after_report["score"] > 0
    assert [c["incident_id"] for c in after_report["contributions"]] == [posted.json()["id"]]


def _drop_location(body: dict[str, Any]) -> None:
    del body["location"]


INVALID_INCIDENTS: list[Any] = [
    pytest.param(setter("location.coordinates", [-1.63, 95.0]), "location.coordinates.1", id="lat"),
    pytest.param(setter("occurred_at", "2025-06-01T10:00:00"), "occurred_at", id="naive-time"),
    pytest.param(setter("occurred_at", iso(ago(days=-1))), "occurred_at", id="future"),
    pytest.param(setter("fatalities", {"best": -1}), "fatalities.best", id="negative-deaths"),
    pytest.param(setter("fatalities", {"low": 10, "best": 5}), "fatalities", id="low-over-best"),
    pytest.param(setter("category", "alien_invasion"), "category", id="unknown-category"),
    pytest.param(setter("severity", 3), "severity", id="unknown-field"),
    pytest.param(setter("title", "Attack\x00 on camp"), "title", id="nul-in-title"),
    pytest.param(setter("occurred_at", "0001-01-01T00:00:00Z"), "occurred_at", id="year-1"),
]


@pytest.mark.parametrize(("mutate", "field"), INVALID_INCIDENTS)
def test_invalid_incident_is_422_naming_the_field_and_not_stored(
    api: Api, mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    body = incident()
    mutate(body)

    response = api.client.post("/v1/incidents", json=body, headers=api.ingest)

    doc = assert_problem(response, 422)
    assert field in error_fields(doc), doc
    pointers = {e["pointer"] for e in doc["errors"]}
    assert "/" + field.replace(".", "/") in pointers
    assert stored(api) == []


def test_incident_without_location_or_scope_is_422_and_not_stored(api: Api) -> None:
    body = incident()
    del body["location"]

    response = api.client.post("/v1/incidents", json=body, headers=api.ingest)

    doc = assert_problem(response, 422)
    reasons = " ".join(e["reason"] for e in doc["errors"])
    assert "location" in reasons
    assert "scope" in reasons
    assert [e["field"] for e in doc["errors"]] == ["scope"]
    assert stored(api) == []


# --- batches ---------------------------------------------------------------------------------


def test_batch_stores_good_items_and_reports_bad_ones_by_index(api: Api) -> None:
    items = [
        incident("b-0"),
        incident("b-1", location={"type": "Point", "coordinates": [-1.6, 95.0]}),
        incident("b-2", location={"type": "Point", "coordinates": list(TIMBUKTU)}),
        incident("b-3", occurred_at=iso(ago(days=-2))),
        {"source": "acled"},
    ]

    response = api.client.post("/v1/incidents/batch", json={"items": items}, headers=api.ingest)

    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["created"], result["updated"], result["unchanged"], result["rejected"]) == (
        2,
        0,
        0,
        3,
    )
    by_index = {r["index"]: r for r in result["results"]}
    assert sorted(by_index) == [0, 1, 2, 3, 4]
    assert [by_index[i]["status"] for i in range(5)] == [
        "created",
        "rejected",
        "created",
        "rejected",
        "rejected",
    ]
    assert "location.coordinates.1" in error_fields(by_index[1]["problem"])
    assert "occurred_at" in error_fields(by_index[3]["problem"])
    assert {"source_id", "category", "occurred_at"} <= error_fields(by_index[4]["problem"])
    for index in (1, 3, 4):
        assert by_index[index]["problem"]["status"] == 422
        assert by_index[index]["id"] is None
    assert sorted(f["properties"]["source_id"] for f in stored(api)) == ["b-0", "b-2"]
    assert {f["id"] for f in stored(api)} == {by_index[0]["id"], by_index[2]["id"]}


def test_resent_batch_counts_unchanged_and_updated_items(api: Api) -> None:
    items = [incident("b-0"), incident("b-1")]
    api.client.post("/v1/incidents/batch", json={"items": items}, headers=api.ingest)

    items[1] = incident("b-1", lifecycle="updated", fatalities={"best": 25})
    again = api.client.post("/v1/incidents/batch", json={"items": items}, headers=api.ingest)

    assert again.status_code == 200, again.text
    result = again.json()
    assert (result["created"], result["updated"], result["unchanged"], result["rejected"]) == (
        0,
        1,
        1,
        0,
    )
    assert [r["status"] for r in result["results"]] == ["unchanged", "updated"]
    assert len(stored(api)) == 2


def test_duplicate_source_id_inside_one_batch_is_rejected_by_index(api: Api) -> None:
    items = [incident("dup", title="first"), incident("other"), incident("dup", title="second")]

    response = api.client.post("/v1/incidents/batch", json={"items": items}, headers=api.ingest)

    assert response.status_code == 200, response.text
    result = response.json()
    assert [r["status"] for r in result["results"]] == ["created", "created", "rejected"]
    problem = result["results"][2]["problem"]
    assert problem["type"].endswith("/duplicate-in-batch")
    assert "item 0" in problem["detail"]
    assert result["rejected"] == 1
    titles = {f["properties"]["source_id"]: f["properties"]["title"] for f in stored(api)}
    assert titles == {"dup": "first", "other": "Assault on military positions"}


def test_batch_over_max_items_is_413_and_stores_nothing(
    api_factory: Callable[..., Api],
) -> None:
    api = api_factory(max_batch_items=2)
    items = [incident(f"b-{i}") for i in range(3)]

    response = api.client.post("/v1/incidents/batch", json={"items": items}, headers=api.ingest)

    doc = assert_problem(response, 413)
    assert doc["type"].endswith("/batch-too-large")
    assert stored(api) == []
    ok = api.client.post("/v1/incidents/batch", json={"items": items[:2]}, headers=api.ingest)
    assert ok.status_code == 200
    assert ok.json()["created"] == 2


def test_empty_batch_is_422(api: Api) -> None:
    response = api.client.post("/v1/incidents/batch", json={"items": []}, headers=api.ingest)

    assert "items" in error_fields(assert_problem(response, 422))


# --- idempotency -----------------------------------------------------------------------------


def test_idempotency_key_replays_first_response_without_new_revision(api: Api) -> None:
    headers = {**api.ingest, "Idempotency-Key": "req-1"}
    body = incident()
    first = api.client.post("/v1/incidents", json=body, headers=headers)
    assert first.status_code == 201

    replay = api.client.post("/v1/incidents", json=body, headers=headers)

    assert replay.status_code == 201
    assert replay.json() == first.json()
    one = api.client.get(f"/v1/incidents/{first.json()['id']}", headers=api.ingest).json()
    assert one["properties"]["revision"] == 1
    assert len(stored(api)) == 1


def test_idempotency_key_reused_with_different_body_is_422_and_changes_nothing(
    api: Api,
) -> None:
    headers = {**api.ingest, "Idempotency-Key": "req-1"}
    body = incident()
    first = api.client.post("/v1/incidents", json=body, headers=headers).json()

    other = api.client.post(
        "/v1/incidents", json={**body, "fatalities": {"best": 99}}, headers=headers
    )

    doc = assert_problem(other, 409)
    assert doc["type"].endswith("/idempotency-key-reused")
    one = api.client.get(f"/v1/incidents/{first['id']}", headers=api.ingest).json()
    assert one["properties"]["revision"] == 1
    assert one["properties"]["fatalities"]["best"] == 20


def test_idempotent_batch_replays_its_result(api: Api) -> None:
    headers = {**api.ingest, "Idempotency-Key": "batch-1"}
    body = {"items": [incident("b-0"), incident("b-1")]}
    first = api.client.post("/v1/incidents/batch", json=body, headers=headers)

    replay = api.client.post("/v1/incidents/batch", json=body, headers=headers)

    assert replay.status_code == 200
    assert replay.json() == first.json()
    assert replay.json()["created"] == 2


# --- queries ---------------------------------------------------------------------------------


def _seed_for_queries(api: Api) -> dict[str, int]:
    bodies = {
        "djibo": incident("q-djibo", occurred_at=iso(ago(days=20))),
        "timbuktu": incident(
            "q-timbuktu",
            category="indirect_fire",
            country="MLI",
            location={"type": "Point", "coordinates": list(TIMBUKTU)},
            occurred_at=iso(ago(days=10)),
        ),
        "mahou": incident(
            "q-mahou",
            country="MLI",
            location={"type": "Point", "coordinates": list(MAHOU)},
            occurred_at=iso(ago(days=3)),
        ),
        "threat": incident(
            "q-threat",
            category="explicit_threat",
            country=None,
            scope={"countries": ["MLI"]},
            occurred_at=iso(ago(days=5)),
        ),
    }
    del bodies["threat"]["location"]
    ids = {}
    for name, body in bodies.items():
        response = api.client.post("/v1/incidents", json=body, headers=api.ingest)
        assert response.status_code == 201, response.text
        ids[name] = response.json()["id"]
    return ids


def _names(api: Api, ids: dict[str, int], params: dict[str, Any]) -> set[str]:
    response = api.client.get("/v1/incidents", params=params, headers=api.a_read)
    assert response.status_code == 200, response.text
    by_id = {v: k for k, v in ids.items()}
    return {by_id[f["id"]] for f in response.json()["features"]}


def test_incident_query_filters_by_bbox_time_category_and_country(api: Api) -> None:
    ids = _seed_for_queries(api)

    assert _names(api, ids, {}) == {"djibo", "timbuktu", "mahou", "threat"}
    assert _names(api, ids, {"bbox": "-2,13,-1,15"}) == {"djibo"}
    assert _names(api, ids, {"bbox": "-5,11,-1,17"}) == {"djibo", "timbuktu", "mahou"}
    assert _names(api, ids, {"since": iso(ago(days=12))}) == {"timbuktu", "mahou", "threat"}
    assert _names(api, ids, {"until": iso(ago(days=8))}) == {"djibo", "timbuktu"}
    window = {"since": iso(ago(days=12)), "until": iso(ago(days=4))}
    assert _names(api, ids, window) == {"timbuktu", "threat"}
    assert _names(api, ids, {"category": "armed_assault"}) == {"djibo", "mahou"}
    both = {"category": ["armed_assault", "indirect_fire"]}
    assert _names(api, ids, both) == {"djibo", "timbuktu", "mahou"}
    assert _names(api, ids, {"country": "MLI"}) == {"timbuktu", "mahou"}
    combined = {"country": "MLI", "category": "armed_assault", "bbox": "-5,11,-1,17"}
    assert _names(api, ids, combined) == {"mahou"}


def test_a_bbox_with_its_corners_swapped_is_refused_naming_the_swapped_pair(api: Api) -> None:
    for bbox, reason in (
        ("-1,13,-2,15", "min_lon above max_lon"),
        ("-2,15,-1,13", "min_lat above max_lat"),
    ):
        response = api.client.get("/v1/incidents", params={"bbox": bbox}, headers=api.a)
        problem = assert_problem(response, 422)
        assert problem["errors"] == [
            {"in": "query", "pointer": "/bbox", "field": "bbox", "reason": reason}
        ]


def test_incident_pages_follow_next_cursor_to_the_end(api: Api) -> None:
    ids = _seed_for_queries(api)
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 3}

    for _ in range(10):
        page = api.client.get("/v1/incidents", params=params, headers=api.a_read).json()
        assert page["type"] == "FeatureCollection"
        assert len(page["features"]) <= 3
        seen.extend(f["id"] for f in page["features"])
        if page["next_cursor"] is None:
            break
        params["after"] = page["next_cursor"]
    else:
        pytest.fail("pagination did not end")

    assert seen == sorted(ids.values())


@pytest.mark.parametrize(
    "bbox",
    ["10,0,5,5", "0,10,5,5", "-200,0,0,10", "0,0,10,95", "1,2,3", "a,b,c,d"],
)
def test_bad_bbox_is_422_naming_bbox(api: Api, bbox: str) -> None:
    response = api.client.get("/v1/incidents", params={"bbox": bbox}, headers=api.a_read)

    assert "bbox" in error_fields(assert_problem(response, 422))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "2025-06-01T00:00:00"}, "since"),
        ({"until": "0001-01-01T00:00:00Z"}, "until"),
        ({"country": "mli"}, "country"),
        ({"category": "alien_invasion"}, "category.0"),
        ({"limit": 0}, "limit"),
        ({"after": -1}, "after"),
    ],
)
def test_bad_query_parameter_is_422_naming_it(api: Api, params: dict[str, Any], field: str) -> None:
    response = api.client.get("/v1/incidents", params=params, headers=api.a_read)

    assert field in error_fields(assert_problem(response, 422))


def test_unknown_incident_is_404_problem(api: Api) -> None:
    response = api.client.get("/v1/incidents/999999", headers=api.a_read)

    assert assert_problem(response, 404)["type"].endswith("/not-found")


# --- authentication and roles ----------------------------------------------------------------


def test_incident_routes_without_key_are_401(api: Api) -> None:
    for response in (
        api.client.post("/v1/incidents", json=incident()),
        api.client.post("/v1/incidents/batch", json={"items": [incident()]}),
        api.client.get("/v1/incidents"),
    ):
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
    unknown = {"Authorization": "Bearer rak_not_a_real_key"}
    assert_problem(api.client.get("/v1/incidents", headers=unknown), 401)
    assert stored(api) == []


def test_tenant_keys_cannot_post_incidents(api: Api) -> None:
    for headers in (api.a, api.a_read):
        one = api.client.post("/v1/incidents", json=incident(), headers=headers)
        batch = api.client.post(
            "/v1/incidents/batch", json={"items": [incident()]}, headers=headers
        )
        assert assert_problem(one, 403)["type"].endswith("/forbidden")
        assert_problem(batch, 403)
    assert stored(api) == []


def test_admin_key_can_post_incidents(api: Api) -> None:
    response = api.client.post("/v1/incidents", json=incident(), headers=api.admin)

    assert response.status_code == 201, response.text


def test_batches_that_grow_the_incident_table_leave_its_planner_statistics_current(
    api: Api, db_url: str
) -> None:
    factory = api.app.state.sessions
    for batch in range(2):
        items = [
            incident(
                f"grow-{batch}-{i}",
                location={"type": "Point", "coordinates": [-1 - i / 1000, 12 + i / 1000]},
            )
            for i in range(1000)
        ]
        response = api.client.post("/v1/incidents/batch", json={"items": items}, headers=api.ingest)
        assert response.json()["created"] == 1000, response.text

    if is_sqlite(db_url):
        assert refresh_statistics(factory, "incident") is False  # no statistics to keep
        return
    with factory() as session:
        pages, analyzed = session.execute(
            text(
                "SELECT pg_relation_size('incident') / current_setting('block_size')::int, "
                "relpages FROM pg_class WHERE relname = 'incident'"
            )
        ).one()
    assert pages >= STALE_MIN_PAGES  # the batches grew it past the bound: analyzed since
    assert pages <= STALE_GROWTH * analyzed
    assert refresh_statistics(factory, "incident") is False  # current: nothing to do


def test_refreshing_statistics_of_an_unreachable_database_reports_it_and_raises_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=2")
    try:
        assert refresh_statistics(make_sessionmaker(engine), "incident") is False
    finally:
        engine.dispose()
    assert "could not analyze incident" in caplog.text
