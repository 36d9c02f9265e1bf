"""Sites, corridors, their scores and history, ad-hoc scores and backtests over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from services.scoring.models import Target
from tests.conftest import DELETE, Api, assert_problem, error_fields, setter

DJIBO = (-1.63, 14.10)
DAKAR = (-17.44, 14.69)
# The road Ouagadougou to Djibo, through Kaya-ish waypoints.
OUAGA_DJIBO = [(-1.52, 12.37), (-1.55, 13.0), (-1.58, 13.5), (-1.63, 14.10)]
NEAR_ROAD = (-1.58, 13.5)


def iso(moment: datetime) -> str:
    """An ISO 8601 UTC timestamp as clients send it."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def ago(**delta: float) -> datetime:
    """A moment in the past, relative to the wall clock the app also uses."""
    return datetime.now(UTC) - timedelta(**delta)


def site(
    name: str = "Djibo camp",
    lonlat: tuple[float, float] = DJIBO,
    country: str = "BFA",
    **props: Any,
) -> dict[str, Any]:
    """A site body as a GeoJSON Feature."""
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": list(lonlat)},
        "properties": {"name": name, "country": country, **props},
    }


def corridor(
    name: str = "Ouagadougou - Djibo",
    coordinates: list[tuple[float, float]] | None = None,
    **props: Any,
) -> dict[str, Any]:
    """A corridor body as a GeoJSON Feature."""
    return {
        "type": "Feature",
        "geometry": {
            "type": "LineString",
            "coordinates": [list(c) for c in coordinates or OUAGA_DJIBO],
        },
        "properties": {"name": name, "countries": ["BFA"], **props},
    }


def incident(
    source_id: str = "evt-1", lonlat: tuple[float, float] = DJIBO, **fields: Any
) -> dict[str, Any]:
    """A valid armed assault; `fields` override top-level fields."""
    body: dict[str, Any] = {
        "source": "acled",
        "source_id": source_id,
        "category": "armed_assault",
        "occurred_at": iso(ago(days=2)),
        "location": {"type": "Point", "coordinates": list(lonlat)},
        "country": "BFA",
        "fatalities": {"best": 20},
        "title": f"Assault {source_id}",
    }
    body.update(fields)
    return body


def post(api: Api, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """POST and expect 200 or 201."""
    response = api.client.post(path, json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    doc: dict[str, Any] = response.json()
    return doc


def get(api: Api, path: str, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    """GET and expect 200."""
    response = api.client.get(path, params=params, headers=headers)
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def changes_for(api: Api, headers: dict[str, str], target_id: int) -> list[dict[str, Any]]:
    """Every change-feed entry of one target, following the cursor."""
    out: list[dict[str, Any]] = []
    after = 0
    for _ in range(100):
        page = get(api, "/v1/score-changes", headers, after=after, limit=50)
        out.extend(c for c in page["changes"] if c["target"]["id"] == target_id)
        if not page["changes"]:
            return out
        after = page["next_cursor"]
    pytest.fail("change feed did not end")


# --- sites -----------------------------------------------------------------------------------


def test_created_site_is_geojson_feature_with_current_score(api: Api) -> None:
    response = api.client.post(
        "/v1/sites", json=site(sector="mining", foreign_owned=True, tags=["north"]), headers=api.a
    )

    assert response.status_code == 201, response.text
    feature = response.json()
    assert feature["type"] == "Feature"
    assert feature["geometry"] == {"type": "Point", "coordinates": list(DJIBO)}
    props = feature["properties"]
    assert props["name"] == "Djibo camp"
    assert props["radius_km"] == 25.0
    assert props["sector"] == "mining"
    assert props["foreign_owned"] is True
    assert props["tags"] == ["north"]
    assert props["current_score"]["score"] == 0
    assert props["current_score"]["band"] == "low"
    assert props["current_score"]["model_version"] >= 1
    assert get(api, f"/v1/sites/{feature['id']}", api.a_read) == feature


def test_site_created_near_known_incident_is_scored_at_once(api: Api) -> None:
    post(api, "/v1/incidents", incident(), api.ingest)

    feature = post(api, "/v1/sites", site(), api.a)

    assert feature["properties"]["current_score"]["score"] > 0
    score = get(api, f"/v1/sites/{feature['id']}/score", api.a)
    assert score["score"] == feature["properties"]["current_score"]["score"]
    assert score["target"] == {"kind": "site", "id": feature["id"], "name": "Djibo camp"}


def test_sites_list_as_feature_collection_filtered_by_tag(api: Api) -> None:
    north = post(api, "/v1/sites", site("A", tags=["north"]), api.a)["id"]
    post(api, "/v1/sites", site("B", DAKAR, "SEN", tags=["west"]), api.a)
    gold = post(api, "/v1/sites", site("C", tags=["north", "gold"]), api.a)["id"]

    everything = get(api, "/v1/sites", api.a_read)
    tagged = get(api, "/v1/sites", api.a_read, tag="north")

    assert everything["type"] == "FeatureCollection"
    assert [f["properties"]["name"] for f in everything["features"]] == ["A", "B", "C"]
    assert all(f["properties"]["current_score"] is not None for f in everything["features"])
    assert [f["id"] for f in tagged["features"]] == [north, gold]
    assert get(api, "/v1/sites", api.a_read, tag="nope")["features"] == []


def test_site_pages_follow_next_cursor_to_the_end(api: Api) -> None:
    ids = [post(api, "/v1/sites", site(f"S{i}"), api.a)["id"] for i in range(5)]
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 2}

    for _ in range(10):
        page = get(api, "/v1/sites", api.a_read, **params)
        assert len(page["features"]) <= 2
        seen.extend(f["id"] for f in page["features"])
        if page["next_cursor"] is None:
            break
        params["after"] = page["next_cursor"]
    else:
        pytest.fail("pagination did not end")

    assert seen == ids


def test_tag_filter_finds_matches_behind_many_untagged_sites(api: Api) -> None:
    for i in range(6):
        post(api, "/v1/sites", site(f"plain {i}"), api.a)
    tagged = post(api, "/v1/sites", site("tagged", tags=["gold"]), api.a)["id"]
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 1, "tag": "gold"}

    for _ in range(20):
        page = get(api, "/v1/sites", api.a_read, **params)
        seen.extend(f["id"] for f in page["features"])
        if page["next_cursor"] is None:
            break
        params["after"] = page["next_cursor"]

    assert seen == [tagged]


def test_other_tenant_cannot_see_or_change_a_site(api: Api) -> None:
    site_id = post(api, "/v1/sites", site(), api.a)["id"]

    assert_problem(api.client.get(f"/v1/sites/{site_id}", headers=api.b), 404)
    assert_problem(api.client.get(f"/v1/sites/{site_id}/score", headers=api.b), 404)
    assert_problem(api.client.put(f"/v1/sites/{site_id}", json=site(), headers=api.b), 404)
    assert_problem(api.client.delete(f"/v1/sites/{site_id}", headers=api.b), 404)
    assert get(api, "/v1/sites", api.b)["features"] == []
    assert get(api, f"/v1/sites/{site_id}", api.a)["properties"]["name"] == "Djibo camp"


def test_read_only_and_ingest_keys_cannot_write_sites(api: Api) -> None:
    assert_problem(api.client.post("/v1/sites", json=site(), headers=api.a_read), 403)
    assert_problem(api.client.post("/v1/sites", json=site(), headers=api.ingest), 403)
    assert_problem(api.client.post("/v1/sites", json=site()), 401)
    assert get(api, "/v1/sites", api.a)["features"] == []


def test_put_replaces_site_and_rescores_it(api: Api) -> None:
    created = post(api, "/v1/sites", site("Dakar office", DAKAR, "SEN", tags=["west"]), api.a)
    post(api, "/v1/incidents", incident(), api.ingest)
    api.drain()
    assert get(api, f"/v1/sites/{created['id']}/score", api.a)["score"] == 0

    response = api.client.put(
        f"/v1/sites/{created['id']}",
        json=site("Djibo camp", DJIBO, "BFA", radius_km=10),
        headers=api.a,
    )

    assert response.status_code == 200, response.text
    replaced = response.json()
    assert replaced["id"] == created["id"]
    assert replaced["geometry"]["coordinates"] == list(DJIBO)
    assert replaced["properties"]["name"] == "Djibo camp"
    assert replaced["properties"]["country"] == "BFA"
    assert replaced["properties"]["radius_km"] == 10
    assert replaced["properties"]["tags"] == []
    assert replaced["properties"]["current_score"]["score"] > 0
    assert get(api, f"/v1/sites/{created['id']}", api.a) == replaced
    assert get(api, f"/v1/sites/{created['id']}/score", api.a)["score"] > 0
    causes = [c["cause"] for c in changes_for(api, api.a, created["id"])]
    assert causes == ["created", "updated"]


def test_deleted_site_is_gone_and_feed_gets_deleted_entry(api: Api) -> None:
    post(api, "/v1/incidents", incident(), api.ingest)
    site_id = post(api, "/v1/sites", site(), api.a)["id"]

    response = api.client.delete(f"/v1/sites/{site_id}", headers=api.a)

    assert response.status_code == 204
    assert response.content == b""
    assert_problem(api.client.get(f"/v1/sites/{site_id}", headers=api.a), 404)
    assert_problem(api.client.get(f"/v1/sites/{site_id}/score", headers=api.a), 404)
    assert_problem(api.client.delete(f"/v1/sites/{site_id}", headers=api.a), 404)
    feed = changes_for(api, api.a, site_id)
    assert [c["cause"] for c in feed] == ["created", "deleted"]
    assert feed[-1]["score"] == 0
    assert feed[-1]["previous_score"] == feed[0]["score"] > 0
    assert feed[-1]["target"]["kind"] == "site"
    assert changes_for(api, api.b, site_id) == []


LINE = {"type": "LineString", "coordinates": [list(c) for c in OUAGA_DJIBO]}

INVALID_SITES: list[Any] = [
    pytest.param(setter("geometry.coordinates", [-1.6]), "geometry.coordinates.1", id="one-coord"),
    pytest.param(setter("geometry.coordinates", [200, 14]), "geometry.coordinates.0", id="lon-200"),
    pytest.param(setter("geometry.coordinates", [-1.6, -91]), "geometry.coordinates.1", id="lat"),
    pytest.param(setter("geometry", LINE), "geometry.type", id="linestring-for-site"),
    pytest.param(setter("properties.radius_km", 0), "properties.radius_km", id="radius-0"),
    pytest.param(setter("properties.country", DELETE), "properties.country", id="no-country"),
    pytest.param(setter("properties.country", "bfa"), "properties.country", id="lowercase"),
    pytest.param(setter("properties.colour", "red"), "properties.colour", id="unknown-field"),
    pytest.param(setter("properties.name", "a\x00b"), "properties.name", id="nul-in-name"),
]


@pytest.mark.parametrize(("mutate", "field"), INVALID_SITES)
def test_invalid_site_is_422_naming_what_is_wrong(
    api: Api, mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    body = site()
    mutate(body)

    response = api.client.post("/v1/sites", json=body, headers=api.a)

    doc = assert_problem(response, 422)
    assert field in error_fields(doc), doc
    assert get(api, "/v1/sites", api.a)["features"] == []


def _line(points: list[list[float]]) -> Callable[[dict[str, Any]], None]:
    return setter("geometry.coordinates", points)


MANY_POINTS = [[-1.5 + i * 0.001, 12.0 + i * 0.001] for i in range(1001)]

INVALID_CORRIDORS: list[Any] = [
    pytest.param(_line([[-1.52, 12.37]]), "geometry.coordinates", id="one-point"),
    pytest.param(_line([[-1.5, 12.0]] * 3), "geometry", id="identical-points"),
    pytest.param(_line(MANY_POINTS), "geometry.coordinates", id="1001-points"),
    pytest.param(_line([[-1.5, 12.0], [200, 12.0]]), "geometry.coordinates.1.0", id="lon-200"),
    pytest.param(
        setter("geometry", {"type": "Point", "coordinates": [-1.5, 12.0]}),
        "geometry.type",
        id="point-for-corridor",
    ),
    pytest.param(setter("properties.buffer_km", 0), "properties.buffer_km", id="buffer-0"),
    pytest.param(setter("properties.countries", []), "properties.countries", id="no-countries"),
    pytest.param(setter("properties.mode", "rail"), "properties.mode", id="unknown-mode"),
]


@pytest.mark.parametrize(("mutate", "field"), INVALID_CORRIDORS)
def test_invalid_corridor_is_422_naming_what_is_wrong(
    api: Api, mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    body = corridor()
    mutate(body)

    response = api.client.post("/v1/corridors", json=body, headers=api.a)

    doc = assert_problem(response, 422)
    assert field in error_fields(doc), doc
    assert get(api, "/v1/corridors", api.a)["features"] == []


def test_identical_points_reason_says_positions_must_differ(api: Api) -> None:
    body = corridor(coordinates=[(-1.5, 12.0), (-1.5, 12.0)])

    doc = assert_problem(api.client.post("/v1/corridors", json=body, headers=api.a), 422)

    assert any("distinct" in e["reason"] for e in doc["errors"]), doc


# --- corridors -------------------------------------------------------------------------------


def test_corridor_round_trips_as_geojson_with_current_score(api: Api) -> None:
    created = post(api, "/v1/corridors", corridor(mode="road", tags=["supply"]), api.a)

    assert created["type"] == "Feature"
    assert created["geometry"]["type"] == "LineString"
    assert created["geometry"]["coordinates"] == [list(c) for c in OUAGA_DJIBO]
    assert created["properties"]["buffer_km"] == 10.0
    assert created["properties"]["mode"] == "road"
    assert created["properties"]["current_score"]["band"] == "low"
    assert get(api, f"/v1/corridors/{created['id']}", api.a) == created
    listed = get(api, "/v1/corridors", api.a, tag="supply")
    assert [f["id"] for f in listed["features"]] == [created["id"]]
    assert_problem(api.client.get(f"/v1/sites/{created['id']}", headers=api.a), 404)


def test_corridor_score_has_hotspots_after_incident_near_the_road(api: Api) -> None:
    corridor_id = post(api, "/v1/corridors", corridor(), api.a)["id"]
    far = post(api, "/v1/corridors", corridor("Dakar ring", [(-17.5, 14.7), (-17.4, 14.75)]), api.a)
    incident_id = post(api, "/v1/incidents", incident(lonlat=NEAR_ROAD), api.ingest)["id"]

    api.drain()

    score = get(api, f"/v1/corridors/{corridor_id}/score", api.a)
    assert score["target"]["kind"] == "corridor"
    assert score["score"] > 0
    assert [c["incident_id"] for c in score["contributions"]] == [incident_id]
    hotspots = score["hotspots"]
    assert hotspots
    assert all(h["type"] == "Feature" for h in hotspots)
    assert all(h["geometry"]["type"] == "LineString" for h in hotspots)
    worst = hotspots[0]
    assert worst["properties"]["score"] == max(h["properties"]["score"] for h in hotspots)
    assert worst["properties"]["incident_count"] >= 1
    lats = [c[1] for c in worst["geometry"]["coordinates"]]
    assert min(lats) - 0.5 <= NEAR_ROAD[1] <= max(lats) + 0.5
    far_score = get(api, f"/v1/corridors/{far['id']}/score", api.a)
    assert far_score["score"] == 0
    assert far_score["hotspots"] == []


def test_put_corridor_replaces_geometry_and_rescores(api: Api) -> None:
    post(api, "/v1/incidents", incident(lonlat=NEAR_ROAD), api.ingest)
    created = post(api, "/v1/corridors", corridor("Dakar", [(-17.5, 14.7), (-17.4, 14.75)]), api.a)
    assert created["properties"]["current_score"]["score"] == 0

    response = api.client.put(
        f"/v1/corridors/{created['id']}", json=corridor(mode="air"), headers=api.a
    )

    assert response.status_code == 200, response.text
    assert response.json()["properties"]["mode"] == "air"
    assert response.json()["properties"]["current_score"]["score"] > 0


def test_deleted_corridor_is_gone_and_feed_gets_deleted_entry(api: Api) -> None:
    corridor_id = post(api, "/v1/corridors", corridor(), api.a)["id"]

    assert api.client.delete(f"/v1/corridors/{corridor_id}", headers=api.a).status_code == 204

    assert_problem(api.client.get(f"/v1/corridors/{corridor_id}", headers=api.a), 404)
    assert [c["cause"] for c in changes_for(api, api.a, corridor_id)] == ["created", "deleted"]


# --- scores as of, history -------------------------------------------------------------------


def test_score_as_of_before_any_incident_is_zero_and_low(api: Api) -> None:
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    post(api, "/v1/incidents", incident(occurred_at=iso(ago(days=10))), api.ingest)
    api.drain()

    past = get(api, f"/v1/sites/{site_id}/score", api.a, as_of=iso(ago(days=30)))
    now = get(api, f"/v1/sites/{site_id}/score", api.a)

    assert past["score"] == 0
    assert past["band"] == "low"
    assert past["incident_count"] == 0
    assert past["contributions"] == []
    assert now["score"] > 0


@pytest.mark.parametrize(
    "as_of", ["2025-06-01T00:00:00", "0001-01-01T00:00:00Z", "not-a-time", "2025-13-01T00:00:00Z"]
)
def test_bad_as_of_is_422_naming_it(api: Api, as_of: str) -> None:
    site_id = post(api, "/v1/sites", site(), api.a)["id"]

    response = api.client.get(f"/v1/sites/{site_id}/score", params={"as_of": as_of}, headers=api.a)

    assert "as_of" in error_fields(assert_problem(response, 422))


def test_score_history_lists_changes_oldest_first(api: Api) -> None:
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    post(api, "/v1/incidents", incident("h-1", fatalities={"best": 5}), api.ingest)
    api.drain()
    post(api, "/v1/incidents", incident("h-2", fatalities={"best": 80}), api.ingest)
    api.drain()

    history = get(api, f"/v1/sites/{site_id}/score-history", api.a_read)

    assert history["target"] == {"kind": "site", "id": site_id, "name": "Djibo camp"}
    points = history["points"]
    assert [p["cause"] for p in points] == ["created", "incident", "incident"]
    assert [p["change_id"] for p in points] == sorted(p["change_id"] for p in points)
    assert [p["as_of"] for p in points] == sorted(p["as_of"] for p in points)
    assert points[0]["score"] == 0
    assert points[0]["previous_score"] is None
    assert points[0]["score"] < points[1]["score"] < points[2]["score"]
    assert points[2]["previous_score"] == points[1]["score"]
    current = get(api, f"/v1/sites/{site_id}/score", api.a)["score"]
    assert points[-1]["score"] == current
    first_page = get(api, f"/v1/sites/{site_id}/score-history", api.a_read, limit=2)
    assert [p["change_id"] for p in first_page["points"]] == [p["change_id"] for p in points[:2]]
    rest = get(
        api, f"/v1/sites/{site_id}/score-history", api.a_read, after=first_page["next_cursor"]
    )
    assert [p["change_id"] for p in rest["points"]] == [points[2]["change_id"]]


# --- ad-hoc scores and backtests -------------------------------------------------------------


def test_adhoc_point_is_scored_like_a_site(api: Api) -> None:
    incident_id = post(api, "/v1/incidents", incident(), api.ingest)["id"]
    body = {"type": "Feature", "geometry": {"type": "Point", "coordinates": list(DJIBO)}}

    near = post(api, "/v1/scores", body, api.a_read)
    far = post(
        api,
        "/v1/scores",
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": list(DAKAR)}},
        api.a_read,
    )
    before = post(api, "/v1/scores", {**body, "properties": {"as_of": iso(ago(days=5))}}, api.a)

    assert near["target"] == {"kind": "site", "id": None, "name": None}
    assert near["score"] > 0
    assert [c["incident_id"] for c in near["contributions"]] == [incident_id]
    assert far["score"] == 0
    assert before["score"] == 0


def test_adhoc_line_is_scored_like_a_corridor_with_hotspots(api: Api) -> None:
    post(api, "/v1/incidents", incident(lonlat=NEAR_ROAD), api.ingest)
    body = {
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": [list(c) for c in OUAGA_DJIBO]},
        "properties": {"radius_km": 10, "mode": "road", "countries": ["BFA"]},
    }

    scored = post(api, "/v1/scores", body, api.a)

    assert scored["target"]["kind"] == "corridor"
    assert scored["target"]["id"] is None
    assert scored["score"] > 0
    assert scored["hotspots"]


def test_adhoc_score_needs_a_tenant_key_and_valid_geometry(api: Api) -> None:
    body = {"type": "Feature", "geometry": {"type": "Point", "coordinates": list(DJIBO)}}
    polygon = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": []}}

    assert_problem(api.client.post("/v1/scores", json=body, headers=api.ingest), 403)
    assert_problem(api.client.post("/v1/scores", json=body), 401)
    assert_problem(api.client.post("/v1/scores", json=polygon, headers=api.a), 422)


def test_backtest_returns_points_by_times_matrix(api: Api) -> None:
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    times = [iso(ago(days=d)) for d in (30, 20, 10, 1)]
    body = {
        "points": [{"lon": lon, "lat": lat} for lon, lat in (DJIBO, DAKAR, NEAR_ROAD)],
        "targets": [{"kind": "site", "id": site_id}],
        "times": times,
    }

    result = post(api, "/v1/backtests", body, api.a_read)

    assert len(result["times"]) == 4
    assert len(result["scores"]) == 4
    assert all(len(row) == 4 for row in result["scores"])
    assert len(result["bands"]) == 4
    assert all(len(row) == 4 for row in result["bands"])
    assert result["model_version"] >= 1


def test_backtest_of_several_targets_gives_each_its_score_as_of_each_time(api: Api) -> None:
    for n, days in enumerate((12, 3)):
        at = dict(occurred_at=iso(ago(days=days)), reported_at=iso(ago(days=days)))
        post(api, "/v1/incidents", incident(f"evt-{n}", **at), api.ingest)
    near = post(api, "/v1/sites", site("Djibo camp", DJIBO, "BFA", radius_km=10), api.a)["id"]
    far = post(api, "/v1/sites", site(), api.a)["id"]
    road = post(api, "/v1/corridors", corridor(), api.a)["id"]
    times = [iso(ago(days=d)) for d in (20, 8, 1)]
    refs = [("site", near), ("site", far), ("corridor", road)]
    body = {"targets": [{"kind": k, "id": i} for k, i in refs], "times": times}

    result = post(api, "/v1/backtests", body, api.a)

    expected = [
        [get(api, f"/v1/{kind}s/{target_id}/score", api.a, as_of=t)["score"] for t in times]
        for kind, target_id in refs
    ]
    assert result["scores"] == expected
    assert result["scores"][0][0] < result["scores"][0][2], "the incidents raise the near site"


def test_backtest_never_uses_an_incident_before_it_was_reported(api: Api) -> None:
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    body_incident = incident(occurred_at=iso(ago(days=10)), reported_at=iso(ago(days=5)))
    post(api, "/v1/incidents", body_incident, api.ingest)
    body = {
        "points": [{"lon": DJIBO[0], "lat": DJIBO[1]}, {"lon": DAKAR[0], "lat": DAKAR[1]}],
        "targets": [{"kind": "site", "id": site_id}],
        # Occurred but not yet reported; reported; long after.
        "times": [iso(ago(days=8)), iso(ago(days=4)), iso(ago(days=1))],
    }

    result = post(api, "/v1/backtests", body, api.a)

    djibo, dakar, stored_site = result["scores"]
    assert djibo[0] == 0
    assert djibo[1] > 0
    assert djibo[2] > 0
    assert stored_site[0] == 0
    assert stored_site[1] > 0
    assert dakar == [0, 0, 0]
    assert result["bands"][0][0] == "low"


def test_backtest_over_max_pairs_is_413(api_factory: Callable[..., Api]) -> None:
    api = api_factory(max_backtest_pairs=3)
    times = [iso(ago(days=2)), iso(ago(days=1))]
    body = {"points": [{"lon": DJIBO[0], "lat": DJIBO[1]}, {"lon": 0, "lat": 0}], "times": times}

    response = api.client.post("/v1/backtests", json=body, headers=api.a)

    assert assert_problem(response, 413)["type"].endswith("/backtest-too-large")
    small = {**body, "points": body["points"][:1]}
    assert api.client.post("/v1/backtests", json=small, headers=api.a).status_code == 200


def test_backtest_of_another_tenants_site_is_404(api: Api) -> None:
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    body = {"targets": [{"kind": "site", "id": site_id}], "times": [iso(ago(days=1))]}

    assert_problem(api.client.post("/v1/backtests", json=body, headers=api.b), 404)
    assert_problem(
        api.client.post("/v1/backtests", json={"times": [iso(ago(days=1))]}, headers=api.a), 422
    )


def test_idempotency_key_on_site_create_replays_without_second_site(api: Api) -> None:
    headers = {**api.a, "Idempotency-Key": "site-1"}
    first = api.client.post("/v1/sites", json=site(), headers=headers)
    assert first.status_code == 201, first.text

    replay = api.client.post("/v1/sites", json=site(), headers=headers)
    other = api.client.post("/v1/sites", json=site("Another"), headers=headers)

    assert replay.status_code == 201
    assert replay.json() == first.json()
    assert assert_problem(other, 409)["type"].endswith("/idempotency-key-reused")
    assert [f["id"] for f in get(api, "/v1/sites", api.a)["features"]] == [first.json()["id"]]


# --- strict types ------------------------------------------------------------------------------


def point(lonlat: list[Any], **props: Any) -> dict[str, Any]:
    """An ad-hoc point body, with raw JSON values."""
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": lonlat},
            "properties": props}  # fmt: skip


LOOSELY_TYPED: list[Any] = [
    pytest.param("/v1/sites", setter("geometry.coordinates", ["-1.63", 14.1]),
                 "geometry.coordinates.0", id="site-lon-string"),
    pytest.param("/v1/sites", setter("geometry.coordinates", [-1.63, True]),
                 "geometry.coordinates.1", id="site-lat-true"),
    pytest.param("/v1/sites", setter("properties.expat_staff", 0), "properties.expat_staff",
                 id="expat-staff-0"),
    pytest.param("/v1/sites", setter("properties.foreign_owned", "true"),
                 "properties.foreign_owned", id="foreign-owned-string"),
    pytest.param("/v1/sites", setter("properties.radius_km", "25"), "properties.radius_km",
                 id="radius-string"),
    # A union names each of its types: neither an integer nor a string.
    pytest.param("/v1/sites", setter("id", False), "id.int", id="feature-id-false"),
    pytest.param("/v1/sites", setter("properties.country", "XXX"), "properties.country",
                 id="country-xxx"),
    pytest.param("/v1/corridors", setter("properties.countries", ["BFA", "ZZZ"]),
                 "properties.countries.1", id="corridor-country-zzz"),
    pytest.param("/v1/corridors", setter("geometry.coordinates", [[-1.5, 12.0], [False, 13.0]]),
                 "geometry.coordinates.1.0", id="corridor-lon-false"),
    pytest.param("/v1/corridors", setter("properties.buffer_km", True), "properties.buffer_km",
                 id="buffer-true"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "mutate", "field"), LOOSELY_TYPED)
def test_a_value_of_the_wrong_json_type_or_an_unknown_country_is_422_naming_it(
    api: Api, path: str, mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    body = site() if path == "/v1/sites" else corridor()
    mutate(body)

    response = api.client.post(path, json=body, headers=api.a)

    doc = assert_problem(response, 422)
    assert field in error_fields(doc), doc
    assert all(f.startswith(field.split(".int")[0]) for f in error_fields(doc)), doc
    assert get(api, path, api.a)["features"] == []


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (point(["-1.63", "14.1"]),
         {"geometry.Point.coordinates.0", "geometry.Point.coordinates.1"}),
        (point([-1.63, 14.1], expat_staff=1), {"properties.expat_staff"}),
        (point([-1.63, 14.1], countries=["XXX"]), {"properties.countries.0"}),
    ],
)  # fmt: skip
def test_adhoc_scores_take_numbers_flags_and_countries_strictly(
    api: Api, body: dict[str, Any], fields: set[str]
) -> None:
    doc = assert_problem(api.client.post("/v1/scores", json=body, headers=api.a), 422)
    assert error_fields(doc) == fields, doc


def test_incident_numbers_flags_and_countries_are_strict_but_integers_are_numbers(
    api: Api,
) -> None:
    cases = [
        (incident(location={"type": "Point", "coordinates": ["-1.63", 14.1]}),
         "location.coordinates.0"),
        (incident(fatalities={"best": "20"}), "fatalities.best"),
        (incident(reported_at_estimated=1), "reported_at_estimated"),
        (incident(source_reliability="0.9"), "source_reliability"),
        (incident(country="XXX"), "country"),
        (incident(location=None, scope={"countries": ["BFA", "XXX"]}), "scope.countries.1"),
    ]  # fmt: skip
    for body, field in cases:
        doc = assert_problem(api.client.post("/v1/incidents", json=body, headers=api.ingest), 422)
        assert error_fields(doc) == {field}, (body, doc)
    # A long string of digits is text too long, not a number (a union names each of its types).
    too_long = incident(source_fields={"code": "1" * 2001})
    doc = assert_problem(api.client.post("/v1/incidents", json=too_long, headers=api.ingest), 422)
    assert "source_fields.code.constrained-str" in error_fields(doc), doc
    # JSON integers are numbers: whole-degree coordinates and a reliability of 1.
    accepted = incident(location={"type": "Point", "coordinates": [-2, 14]}, source_reliability=1)
    assert post(api, "/v1/incidents", accepted, api.ingest)["geometry"]["coordinates"] == [-2, 14]


def test_whole_degree_coordinates_and_a_string_or_number_feature_id_are_accepted(
    api: Api,
) -> None:
    first = post(api, "/v1/sites", {**site(lonlat=(-2, 14)), "id": "mine-7"}, api.a)
    second = post(api, "/v1/sites", {**site(name="Kaya"), "id": 7}, api.a)
    assert first["geometry"]["coordinates"] == [-2, 14]
    assert first["properties"]["country"] == "BFA"
    assert second["id"] != 7


def test_a_site_stored_with_a_code_from_before_the_iso_check_is_still_served(api: Api) -> None:
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    corridor_id = post(api, "/v1/corridors", corridor(), api.a)["id"]
    with api.app.state.sessions.begin() as session:
        session.execute(update(Target).values(countries=["XXX"]))

    assert get(api, f"/v1/sites/{site_id}", api.a)["properties"]["country"] == "XXX"
    served = get(api, f"/v1/corridors/{corridor_id}", api.a)
    assert served["properties"]["countries"] == ["XXX"]
