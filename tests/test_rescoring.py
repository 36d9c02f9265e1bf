"""Rescoring: what an incident, a decay tick or a new model queues, and what reaches the feed."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from services.core import activity
from services.core.problems import PROBLEM_MEDIA_TYPE
from services.scoring import geo, incidents, jobs, queue, scores
from services.scoring.feed import worth_recording
from services.scoring.models import CurrentScore, RescoreMark
from services.scoring.schemas import ForecastOut, IncidentIn, ScoreOut, TargetRef
from services.scoring.taxonomy import Band, TargetKind
from tests.conftest import Api

# Near Bamako; other places are given by their distance from here.
BASE_LAT, BASE_LON = 12.6, -8.0
KM_PER_DEGREE_LON = 111.32 * 0.9759  # cos(12.6 degrees)


def east_of_base(km: float) -> tuple[float, float]:
    """(lat, lon) about `km` east of the base point."""
    return BASE_LAT, BASE_LON + km / KM_PER_DEGREE_LON


def site_body(
    name: str, lat: float, lon: float, country: str = "MLI", **props: Any
) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"name": name, "country": country, **props},
    }


def incident_body(
    source_id: str, lat: float | None = None, lon: float | None = None, **fields: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": "test",
        "source_id": source_id,
        "category": "armed_assault",
        "occurred_at": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
        "fatalities": {"best": 20},
    }
    if lat is not None and lon is not None:
        body["location"] = {"type": "Point", "coordinates": [lon, lat]}
    body.update(fields)
    return body


def create_site(api: Api, name: str, lat: float, lon: float, **props: Any) -> int:
    response = api.client.post("/v1/sites", headers=api.a, json=site_body(name, lat, lon, **props))
    assert response.status_code == 201, response.text
    site_id: int = response.json()["id"]
    return site_id


def post_incident(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post("/v1/incidents", headers=api.ingest, json=body)
    assert response.status_code in (200, 201), response.text
    doc: dict[str, Any] = response.json()
    return doc


def queued(api: Api) -> dict[int, str]:
    """The rescoring queue, once the incident feed is read: target id -> cause."""
    with api.app.state.sessions.begin() as session:
        now = datetime.now(UTC)
        queue.consume_incident_feed(session, scores.ensure_model(session, now).params, now, 1000)
        rows = session.execute(select(RescoreMark.target_id, RescoreMark.cause))
        return {target_id: cause for target_id, cause in rows}


def site_score(api: Api, site_id: int) -> float:
    response = api.client.get(f"/v1/sites/{site_id}/score", headers=api.a)
    assert response.status_code == 200, response.text
    value: float = response.json()["score"]
    return value


def feed(api: Api, after: int = 0, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = api.client.get(
        "/v1/score-changes", headers=headers or api.a, params={"after": after, "limit": 500}
    )
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def test_incident_queues_a_site_50_km_away_and_not_one_1500_km_away(api: Api) -> None:
    near = create_site(api, "near", *east_of_base(50))
    far = create_site(api, "far", *east_of_base(1500))
    assert 1400 < geo.haversine_km(BASE_LAT, BASE_LON, *east_of_base(1500)) < 1600
    assert queued(api) == {}, "a new target is scored when created, not queued"

    post_incident(api, incident_body("near-base", BASE_LAT, BASE_LON))

    marks = queued(api)
    assert near in marks
    assert far not in marks
    assert marks[near] == "incident"


def _read_feed(api: Api, session: Any) -> int:
    now = datetime.now(UTC)
    params = scores.ensure_model(session, now).params
    return queue.consume_incident_feed(session, params, now, 1000)


def test_ingest_writes_no_queue_rows_the_worker_queues_them_from_the_feed_once(
    api: Api,
) -> None:
    near = create_site(api, "near", *east_of_base(50))
    post_incident(api, incident_body("near-base", BASE_LAT, BASE_LON))
    with api.app.state.sessions() as session:
        assert session.execute(select(RescoreMark.target_id)).first() is None

    with api.app.state.sessions.begin() as session:
        assert _read_feed(api, session) == 1
    with api.app.state.sessions.begin() as session:
        assert _read_feed(api, session) == 0, "the cursor moved past the entry"
        marks = session.execute(select(RescoreMark.target_id)).scalars().all()
    assert marks == [near]


def test_feed_read_that_rolls_back_is_read_again(api: Api) -> None:
    near = create_site(api, "near", *east_of_base(50))
    post_incident(api, incident_body("near-base", BASE_LAT, BASE_LON))
    session = api.app.state.sessions()
    try:
        session.begin()
        assert _read_feed(api, session) == 1
        session.rollback()  # a worker that dies before committing
    finally:
        session.close()
    assert queued(api) == {near: "incident"}


def test_second_feed_reader_skips_at_once_while_the_first_holds_the_cursor(
    api: Api, db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises writers: a second reader waits for the write lock")
    create_site(api, "near", *east_of_base(50))
    queued(api)  # the cursor row exists (the migration makes it; the test database is emptied)
    post_incident(api, incident_body("near-base", BASE_LAT, BASE_LON))
    with api.app.state.sessions.begin() as first:
        assert _read_feed(api, first) == 1
        with api.app.state.sessions.begin() as second:
            assert _read_feed(api, second) == 0


def test_an_incident_snapshot_reads_back_as_the_same_model_version() -> None:
    body = incident_body("snap", BASE_LAT, BASE_LON)
    body.update(
        scope={"countries": ["MLI", "BFA"]},
        target_profile={"foreign_owned_only": True, "sectors": ["mining"]},
        victim_profile={"expatriate": True, "sector": "mining"},
    )
    data = IncidentIn.model_validate(body)
    now = datetime.now(UTC)
    row = incidents.Incident(id=7, revision=1, **incidents._columns(data, now))
    model = incidents.to_model(row)
    assert incidents.from_snapshot(incidents.snapshot(model)) == model


def test_area_scoped_threat_queues_only_targets_in_its_scope(api: Api) -> None:
    in_scope = create_site(api, "mali foreign", 12.6, -8.0, foreign_owned=True)
    local = create_site(api, "mali local", 12.7, -8.1, foreign_owned=False)
    other_country = create_site(api, "niger foreign", 13.5, 2.1, country="NER", foreign_owned=True)
    corridor = api.client.post(
        "/v1/corridors",
        headers=api.b,
        json={
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [[-8.0, 12.6], [-7.5, 11.4]]},
            "properties": {"name": "road", "countries": ["MLI"], "foreign_owned": True},
        },
    ).json()["id"]

    post_incident(
        api,
        incident_body(
            "threat",
            category="explicit_threat",
            scope={"countries": ["MLI"]},
            target_profile={"foreign_owned_only": True},
            fatalities={},
        ),
    )

    assert set(queued(api)) == {in_scope, corridor}
    assert local not in queued(api)
    assert other_country not in queued(api)


def test_change_feed_after_drain_has_entries_for_changed_targets_only(api: Api) -> None:
    near = create_site(api, "near", *east_of_base(50))
    far = create_site(api, "far", *east_of_base(1500))
    cursor = feed(api)["next_cursor"]

    post_incident(api, incident_body("near-base", BASE_LAT, BASE_LON))
    assert api.drain() >= 1
    assert queued(api) == {}

    changes = feed(api, after=cursor)["changes"]
    assert [c["target"]["id"] for c in changes] == [near]
    [change] = changes
    assert change["target"]["name"] == "near"
    assert change["cause"] == "incident"
    assert change["previous_score"] == 0
    assert change["score"] > 0
    assert change["top_incidents"][0]["category"] == "armed_assault"
    assert site_score(api, far) == 0


def test_queued_target_whose_score_does_not_move_gets_no_feed_entry(api: Api) -> None:
    site = create_site(api, "site", *east_of_base(50))
    api.drain()
    cursor = feed(api)["next_cursor"]
    # Decay over a moment moves no score by change_min_delta.
    jobs.queue_decay(api.app.state.sessions)
    assert api.drain() == 1
    assert feed(api, after=cursor)["changes"] == []
    with api.app.state.sessions() as session:
        stored = session.get(CurrentScore, site)
        assert stored is not None
        assert stored.as_of > datetime.now(UTC) - timedelta(minutes=1)


def test_score_changes_cursor_pages_through_every_entry_in_increasing_id_order(api: Api) -> None:
    for i in range(5):
        create_site(api, f"site {i}", *east_of_base(10 * i))
    post_incident(api, incident_body("near-base", BASE_LAT, BASE_LON))
    api.drain()
    everything = [c["id"] for c in feed(api)["changes"]]
    assert len(everything) == 10  # five "created", five moved by the incident
    assert everything == sorted(set(everything))

    seen: list[int] = []
    cursor = 0
    for _ in range(20):
        response = api.client.get(
            "/v1/score-changes", headers=api.a, params={"after": cursor, "limit": 3}
        )
        page = response.json()
        if not page["changes"]:
            assert page["next_cursor"] == cursor
            break
        assert len(page["changes"]) <= 3
        seen.extend(c["id"] for c in page["changes"])
        assert page["next_cursor"] == page["changes"][-1]["id"]
        cursor = page["next_cursor"]
    else:
        pytest.fail("the feed did not end")
    assert seen == everything


def test_moving_an_incident_rescores_its_old_and_new_neighbourhoods(api: Api) -> None:
    old_place = create_site(api, "old place", BASE_LAT, BASE_LON)
    new_place = create_site(api, "new place", 13.5, 2.1, country="NER")
    assert geo.haversine_km(BASE_LAT, BASE_LON, 13.5, 2.1) > 1000
    first = incident_body("moving", BASE_LAT, BASE_LON)
    post_incident(api, first)
    api.drain()
    assert site_score(api, old_place) > 0
    assert site_score(api, new_place) == 0
    cursor = feed(api)["next_cursor"]

    moved = dict(first, location={"type": "Point", "coordinates": [2.1, 13.5]}, country="NER")
    assert post_incident(api, moved)["properties"]["revision"] == 2
    assert set(queued(api)) == {old_place, new_place}

    api.drain()
    assert site_score(api, old_place) == 0
    assert site_score(api, new_place) > 0
    assert {c["target"]["id"] for c in feed(api, after=cursor)["changes"]} == {
        old_place,
        new_place,
    }


def test_decay_tick_queues_every_target_once_even_when_run_twice(api: Api) -> None:
    ids = {create_site(api, f"site {i}", *east_of_base(300 * i)) for i in range(3)}
    b_site = api.client.post(
        "/v1/sites", headers=api.b, json=site_body("b", BASE_LAT, BASE_LON)
    ).json()["id"]
    ids.add(b_site)

    jobs.queue_decay(api.app.state.sessions)
    jobs.queue_decay(api.app.state.sessions)

    marks = queued(api)
    assert set(marks) == ids
    assert set(marks.values()) == {"decay"}
    assert api.drain() == len(ids)
    assert queued(api) == {}


def test_regional_tail_beyond_immediate_reach_is_fed_on_the_decay_tick_as_decay(
    api: Api,
) -> None:
    site = create_site(api, "site", BASE_LAT, BASE_LON)
    # A version with a faint regional term: a little weight on the widest scale (200 km).
    params = api.client.get("/v1/model", headers=api.admin).json()["params"]
    params["coefficients"]["attack"][-1][-1] = 0.03
    published = api.client.post(
        "/v1/model/versions", headers=api.admin, json={"params": params, "note": "regional"}
    )
    assert published.status_code == 201, published.text
    api.drain()
    cursor = feed(api)["next_cursor"]
    # Severe attacks 260 km away: beyond the immediate rescoring reach (where the kernel falls
    # below 2 % of its peak), within the full one.
    for i in range(3):
        post_incident(
            api,
            incident_body(
                f"far-{i}", *east_of_base(260), fatalities={"best": 200}, source_reliability=0.9
            ),
        )
    assert queued(api) == {}

    jobs.queue_decay(api.app.state.sessions)
    api.drain()

    [change] = feed(api, after=cursor)["changes"]
    assert change["target"]["id"] == site
    assert change["cause"] == "decay"
    assert change["score"] >= 1


def wait_until(condition: Callable[[], bool], *, timeout: float = 10.0) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; each poll is one request."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
    return condition()


def test_inline_worker_raises_site_score_after_incident_post_without_drain(
    api_factory: Callable[..., Api],
) -> None:
    # Polled as fast as a score is read (from this process's cache): no per-key limit, and no
    # rest after a batch shared with requests, which the polling itself would cause (the rest
    # has its own test below).
    api = api_factory(inline_worker=True, rate_limit="", inline_rescore_pause=0)
    site = create_site(api, "site", *east_of_base(20))
    assert site_score(api, site) == 0

    post_incident(api, incident_body("near-base", BASE_LAT, BASE_LON))

    rescored = wait_until(lambda: site_score(api, site) > 0, timeout=30)
    assert rescored, "the worker did not rescore in 30 s"


def test_inline_worker_rests_after_a_batch_only_when_it_shared_the_process(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three batches: a request arrives during the first (0.4 s) and the third (0.3 s), nothing
    # during the second (whose length is never asked); then the queue is empty.
    batches = iter([(500, True), (500, False), (200, True), (0, False)])
    clock = iter([10.0, 10.4, 20.0, 30.0, 30.3, 40.0])
    rests: list[float] = []

    def batch(*_: Any, **__: Any) -> int:
        taken, shared = next(batches)
        if shared:
            activity.touch()
        return taken

    monkeypatch.setattr(jobs, "rescore_pending", batch)
    monkeypatch.setattr(jobs.time, "perf_counter", lambda: next(clock))
    worker = jobs.RescoreWorker(api.app.state.sessions, api.settings, pause=3.0)
    monkeypatch.setattr(worker._stop, "wait", lambda seconds: rests.append(seconds))

    worker._catch_up()

    assert rests == pytest.approx([1.2, 0.9]), "3x the shared batches; none alone, none idle"


def test_worker_of_another_process_is_woken_by_notify_without_polling(
    api: Api, db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("NOTIFY wakes workers on PostgreSQL; SQLite runs one process")
    # A worker that would poll only once a minute: only the NOTIFY sent when the API's
    # unit of work commits can wake it within the deadline.
    settings = api.settings.model_copy(update={"worker_poll_interval": timedelta(minutes=1)})
    worker = jobs.RescoreWorker(api.app.state.sessions, settings)
    site = create_site(api, "site", *east_of_base(20))
    worker.start()
    try:
        assert worker.listening.wait(10), "the listener did not connect"
        post_incident(api, incident_body("near-base", BASE_LAT, BASE_LON))
        assert wait_until(lambda: site_score(api, site) > 0), "NOTIFY did not wake the worker"
    finally:
        worker.stop()


def test_publishing_a_model_version_creates_version_2_queues_everything_and_is_audited(
    api: Api,
) -> None:
    ids = {create_site(api, f"site {i}", *east_of_base(300 * i)) for i in range(3)}
    model = api.client.get("/v1/model", headers=api.a).json()
    assert model["version"] == 1
    params = copy.deepcopy(model["params"])
    params["escalation_gain"] = 0.5

    response = api.client.post(
        "/v1/model/versions", headers=api.admin, json={"params": params, "note": "heavier"}
    )

    assert response.status_code == 201, response.text
    published = response.json()
    assert published["version"] == 2
    assert published["active"] is True
    assert published["params"]["escalation_gain"] == 0.5
    assert api.client.get("/v1/model", headers=api.a).json()["version"] == 2
    versions = api.client.get("/v1/model/versions", headers=api.a).json()
    assert [(v["version"], v["active"]) for v in versions] == [(2, True), (1, False)]
    marks = queued(api)
    assert set(marks) == ids
    assert set(marks.values()) == {"model"}

    entries = api.client.get("/v1/audit-log", headers=api.admin).json()["entries"]
    [entry] = [e for e in entries if e["action"] == "model.publish"]
    assert entry["resource"] == "model/2"
    assert entry["before"]["version"] == 1
    assert entry["after"]["version"] == 2
    assert entry["after"]["note"] == "heavier"

    cursor = feed(api)["next_cursor"]
    api.drain()
    changes = feed(api, after=cursor)["changes"]
    # A new model version is a change for every target, whatever the score did.
    assert {c["target"]["id"] for c in changes} == ids
    assert {c["model_version"] for c in changes} == {2}
    assert {c["cause"] for c in changes} == {"model"}


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("threat_factor",), -1.0, "threat_factor"),
        (("calibration",), [[0.0, 0.5], [1.0, 0.2]], "calibration"),
        (("lookback_days",), 0, "lookback_days"),
    ],
)
def test_invalid_model_params_give_422_naming_the_parameter(
    api: Api, path: tuple[str, ...], value: Any, named: str
) -> None:
    create_site(api, "site", BASE_LAT, BASE_LON)
    params = copy.deepcopy(api.client.get("/v1/model", headers=api.admin).json()["params"])
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value

    response = api.client.post(
        "/v1/model/versions", headers=api.admin, json={"params": params, "note": "bad"}
    )

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    doc = response.json()
    assert named in doc["detail"]
    assert any(named in e["reason"] for e in doc["errors"])
    assert api.client.get("/v1/model", headers=api.a).json()["version"] == 1
    assert queued(api) == {}


def test_model_is_readable_by_tenant_and_ingest_keys(api: Api) -> None:
    for headers in (api.a, api.b, api.a_read, api.ingest):
        response = api.client.get("/v1/model", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["version"] == 1
        assert "coefficients" in response.json()["params"]
        assert response.json()["report"]["validation"]["model"]["brier"] > 0


def _doc(score: float, band: Band, version: int = 1) -> ScoreOut:
    return ScoreOut(
        target=TargetRef(kind=TargetKind.SITE, id=1),
        score=score,
        probability=score / 100.0,
        generic_probability=score / 100.0,
        band=band,
        model_version=version,
        as_of=datetime(2025, 6, 1, tzinfo=UTC),
        forecast=ForecastOut(distance_km=50.0, horizon_days=30.0),
        components={},
        adjustments=[],
        escalation={},
        incident_count=0,
        contributions=[],
        hotspots=[],
    )


def _stored(
    value: float, band: Band, version: int = 1, *, fed: tuple[float, Band] | None = None
) -> CurrentScore:
    fed_value, fed_band = fed or (value, band)
    return CurrentScore(
        target_id=1,
        model_version=version,
        value=value,
        band=band.value,
        fed_value=fed_value,
        fed_band=fed_band.value,
    )


def test_score_moves_below_min_delta_are_not_changes_but_band_and_model_changes_are() -> None:
    assert worth_recording(None, _doc(0.0, Band.LOW), 1.0), "a first score is a change"
    assert not worth_recording(_stored(10.0, Band.LOW), _doc(10.9, Band.LOW), 1.0)
    assert worth_recording(_stored(10.0, Band.LOW), _doc(11.0, Band.LOW), 1.0)
    assert worth_recording(_stored(10.0, Band.LOW), _doc(9.0, Band.LOW), 1.0)
    # A band change is written however small the move.
    assert worth_recording(_stored(19.9, Band.LOW), _doc(20.0, Band.MODERATE), 1.0)
    assert worth_recording(_stored(20.0, Band.MODERATE), _doc(19.9, Band.LOW), 50.0)
    assert worth_recording(_stored(10.0, Band.LOW), _doc(10.0, Band.LOW, version=2), 1.0)


def test_slow_drift_is_fed_once_it_adds_up_from_the_last_fed_score() -> None:
    # Stored 10.6 after unfed steps from 10.0: 10.9 is 0.3 from stored but 0.9 from fed.
    drifting = _stored(10.6, Band.LOW, fed=(10.0, Band.LOW))
    assert not worth_recording(drifting, _doc(10.9, Band.LOW), 1.0)
    assert worth_recording(drifting, _doc(11.0, Band.LOW), 1.0)


def test_feed_skips_moves_below_change_min_delta_but_records_band_changes(
    api_factory: Callable[..., Api],
) -> None:
    api = api_factory(change_min_delta=100.0)
    site = create_site(api, "site", BASE_LAT, BASE_LON)
    cursor = feed(api)["next_cursor"]

    # Weak and a little away: the score rises but stays in the low band.
    weak = incident_body(
        "weak", *east_of_base(60), category="looting", fatalities={}, source_reliability=0.1
    )
    post_incident(api, weak)
    api.drain()
    weak_score = site_score(api, site)
    assert 0 < weak_score < 20
    assert feed(api, after=cursor)["changes"] == []

    post_incident(api, incident_body("strong", BASE_LAT, BASE_LON, fatalities={"best": 200}))
    api.drain()
    [change] = feed(api, after=cursor)["changes"]
    assert change["band"] != "low"
    # Measured from what the feed last said (the first score), not the unfed weak_score.
    assert change["previous_band"] == "low"
    assert change["previous_score"] == 0
    assert weak_score > 0


def test_incident_cache_picks_up_new_and_retracted_incidents_without_a_full_reload(
    api: Api,
) -> None:
    factory = api.app.state.sessions
    cache = scores.IncidentCache()
    t0 = datetime.now(UTC)
    with factory.begin() as session:
        model = scores.ensure_model(session, t0)
        incidents.upsert(session, IncidentIn.model_validate(incident_body("a", 14.0, -1.5)), t0)
        incidents.upsert(session, IncidentIn.model_validate(incident_body("b", 14.1, -1.5)), t0)
    with factory.begin() as session:
        assert len(cache.loaded(session, model.params, t0).incident_set) == 2

    t1 = t0 + timedelta(seconds=5)
    retracted = incident_body("a", 14.0, -1.5) | {"lifecycle": "retracted"}
    with factory.begin() as session:
        incidents.upsert(session, IncidentIn.model_validate(retracted), t1)
        incidents.upsert(session, IncidentIn.model_validate(incident_body("c", 14.2, -1.5)), t1)
    with factory.begin() as session:
        loaded = cache.loaded(session, model.params, t1 + timedelta(seconds=1))

    assert len(loaded.incident_set) == 2  # b and c; a is retracted
    assert {row.source_id for row in loaded.rows.values()} == {"a", "b", "c"}
