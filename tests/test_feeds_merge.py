"""One event, one incident: the merge rule on hand-made cases, and what merging does to
scores, the incident API and alerts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.alerts.models import Alert
from services.scoring import incidents, merge
from services.scoring.models import Incident
from services.scoring.schemas import IncidentIn
from services.scoring.taxonomy import Category, Lifecycle, LocationPrecision, TimePrecision
from tests.conftest import Api
from tests.test_alerts_pipeline import add_watch, deliveries
from tests.test_rescoring import create_site, east_of_base, incident_body, post_incident

DAY = datetime(2025, 6, 1, tzinfo=UTC)
KM_PER_DEGREE_LAT = 111.19


def report(
    ident: int,
    source: str = "acled",
    category: Category = Category.ARMED_ASSAULT,
    *,
    km_north: float = 0.0,
    days: float = 0.0,
    time: TimePrecision = TimePrecision.DAY,
    place: LocationPrecision = LocationPrecision.EXACT,
) -> merge.Report:
    return merge.Report(
        id=ident, source=source, source_id=f"{source}-{ident}", category=category,
        occurred_at=DAY + timedelta(days=days), occurred_precision=time,
        lat=14.0 + km_north / KM_PER_DEGREE_LAT, lon=-1.0, location_precision=place,
        scoped=False, lifecycle=Lifecycle.CONFIRMED, merged_into_id=None,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# The rule


def test_two_sources_close_in_time_and_place_describe_one_event() -> None:
    acled = report(1)
    ucdp = report(2, "ucdp", Category.ARMED_ASSAULT, km_north=6, days=1)
    # 6 of 10 km and 1 of 2 days.
    assert merge.distance(acled, ucdp) == pytest.approx(1.1, abs=0.01)


def test_fatality_figures_rank_candidates_but_do_not_decide() -> None:
    acled = replace(report(1), fatalities=12)
    assert merge.distance(acled, replace(report(2, "ucdp"), fatalities=12)) == 0
    # A factor of three weighs like a gap at its limit; a thousandfold one still merges.
    assert merge.distance(acled, replace(report(3, "ucdp"), fatalities=38)) == pytest.approx(
        1.0, abs=0.03
    )
    assert merge.distance(acled, replace(report(4, "ucdp"), fatalities=12_000)) is not None
    assert merge.distance(acled, report(5, "ucdp")) == 0  # unknown: no evidence either way


@pytest.mark.parametrize(
    ("km", "place", "same"),
    [
        (9.5, LocationPrecision.EXACT, True),
        (11, LocationPrecision.EXACT, False),
        (24, LocationPrecision.NEAR, True),
        (26, LocationPrecision.NEAR, False),
        (59, LocationPrecision.REGION, True),
        (61, LocationPrecision.REGION, False),
    ],
)
def test_the_place_limit_widens_with_location_uncertainty(
    km: float, place: LocationPrecision, same: bool
) -> None:
    other = report(2, "ucdp", km_north=km, place=place)
    assert (merge.distance(report(1), other) is not None) is same


@pytest.mark.parametrize(
    ("days", "time", "same"),
    [
        (1.9, TimePrecision.DAY, True),
        (2.1, TimePrecision.DAY, False),
        (7.9, TimePrecision.WEEK, True),
        (8.1, TimePrecision.WEEK, False),
        (31.5, TimePrecision.MONTH, True),
        (32.5, TimePrecision.MONTH, False),
    ],
)
def test_the_time_limit_is_the_sum_of_both_slacks(
    days: float, time: TimePrecision, same: bool
) -> None:
    other = report(2, "ucdp", days=days, time=time)
    assert (merge.distance(report(1), other) is not None) is same


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        # A coarse lethal-violence code matches any lethal category of another source.
        (Category.IED, Category.ARMED_CLASH, True),
        (Category.KIDNAPPING, Category.ARMED_ASSAULT, True),
        # Same family across sources.
        (Category.IED, Category.VBIED, True),
        (Category.INDIRECT_FIRE, Category.AIR_DRONE_STRIKE, True),
        # Different things.
        (Category.IED, Category.INDIRECT_FIRE, False),
        (Category.KIDNAPPING, Category.EXPLICIT_THREAT, False),
        (Category.LOOTING, Category.ARMED_ASSAULT, False),
        (Category.POLITICAL_STATEMENT, Category.EXPLICIT_THREAT, False),
    ],
)
def test_categories_must_be_able_to_describe_one_event(
    a: Category, b: Category, same: bool
) -> None:
    assert (merge.distance(report(1, "acled", a), report(2, "ucdp", b)) is not None) is same


def test_distinct_ids_from_one_source_are_distinct_events_however_alike() -> None:
    # ACLED's "one of 28 separate events": rows alike in all but their ids.
    first = replace(report(1), fatalities=3)
    assert merge.distance(first, replace(report(2), fatalities=3)) is None
    assert merge.distance(first, report(2, km_north=3)) is None
    assert merge.distance(first, report(2, time=TimePrecision.MONTH)) is None
    # Another source's report of the same place and day is the same event.
    assert merge.distance(first, replace(report(2, "ucdp"), fatalities=3)) == 0


def test_the_index_never_joins_one_sources_reports_into_one_event() -> None:
    index = merge.Index()
    index.put(report(1))
    assert index.best_event(report(2)) is None
    assert index.best_event(report(3, "ucdp")) == report(1)


def test_retracted_scoped_and_unlocated_reports_never_merge() -> None:
    other = report(2, "ucdp")
    assert merge.distance(replace(report(1), lifecycle=Lifecycle.RETRACTED), other) is None
    assert merge.distance(replace(report(1), scoped=True), other) is None
    assert merge.distance(replace(report(1), lat=None, lon=None), other) is None


def test_the_index_finds_the_nearest_event_and_keeps_one_report_per_source() -> None:
    index = merge.Index()
    near = report(1, km_north=2)
    far = report(2, km_north=8)
    index.put(near)
    index.put(far)
    ucdp = report(3, "ucdp")
    assert index.best_event(ucdp) == near
    index.put(replace(ucdp, merged_into_id=near.id))
    # A second UCDP report of the same place and day cannot join the event UCDP already has:
    # it joins the other one.
    assert index.best_event(report(4, "ucdp", days=0.2)) == far


def test_the_index_reaches_month_precise_reports_weeks_away() -> None:
    index = merge.Index()
    vague = report(1, "ucdp", time=TimePrecision.MONTH, days=-25)
    index.put(vague)
    assert index.best_event(report(2)) == vague
    assert index.best_event(report(3, days=40)) is None


# --------------------------------------------------------------------------------------------
# Stored: scores, the API, alerts


def source_body(source: str, source_id: str, km: float, **fields: Any) -> dict[str, Any]:
    return incident_body(source_id, *east_of_base(km), source=source, **fields)


def score_of(api: Api, site: int) -> float:
    api.drain()
    response = api.client.get(f"/v1/sites/{site}/score", headers=api.a)
    assert response.status_code == 200, response.text
    value: float = response.json()["score"]
    return value


def stored(api: Api, source: str, source_id: str) -> Incident:
    with api.app.state.sessions() as session:
        row = session.execute(
            select(Incident).where(Incident.source == source, Incident.source_id == source_id)
        ).scalar_one()
        session.expunge(row)
        return row


def test_a_second_source_merges_into_the_event_and_it_counts_once(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    first = post_incident(api, source_body("acled", "MLI1", 10, fatalities={"best": 12}))
    alone = score_of(api, site)
    second = post_incident(
        api, source_body("ucdp", "901", 14, fatalities={"low": 10, "best": 20, "high": 30})
    )
    assert score_of(api, site) == pytest.approx(alone, abs=0.01)
    assert second["properties"]["merged_into"] == first["id"]

    doc = api.client.get(f"/v1/incidents/{first['id']}", headers=api.ingest).json()
    reports = {(r["source"], r["fatalities"]["best"]) for r in doc["properties"]["sources"]}
    assert reports == {("acled", 12), ("ucdp", 20)}
    listed = api.client.get("/v1/incidents", headers=api.ingest).json()["features"]
    assert [f["id"] for f in listed] == [first["id"]]
    everything = api.client.get(
        "/v1/incidents", headers=api.ingest, params={"include_merged": "true"}
    ).json()["features"]
    assert {f["id"] for f in everything} == {first["id"], second["id"]}


def test_a_report_of_another_event_is_not_merged_and_counts(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    post_incident(api, source_body("acled", "MLI1", 10))
    alone = score_of(api, site)
    week_before = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    other = post_incident(api, source_body("ucdp", "902", 10, occurred_at=week_before))
    assert other["properties"]["merged_into"] is None
    assert score_of(api, site) > alone


def test_the_event_is_known_from_its_first_report_whichever_source(api: Api) -> None:
    now = datetime.now(UTC)
    occurred = (now - timedelta(days=3)).isoformat()
    post_incident(
        api, source_body("acled", "MLI1", 10, occurred_at=occurred, reported_at=now.isoformat())
    )
    early = (now - timedelta(days=2)).isoformat()
    post_incident(api, source_body("ucdp", "903", 12, occurred_at=occurred, reported_at=early))
    assert stored(api, "acled", "MLI1").reported_at == datetime.fromisoformat(early)


def test_retracting_the_first_report_leaves_the_event_on_the_other(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    body = source_body("acled", "MLI1", 10)
    first = post_incident(api, body)
    second = post_incident(api, source_body("ucdp", "904", 12))
    counted = score_of(api, site)

    post_incident(api, {**body, "lifecycle": "retracted"})
    assert stored(api, "ucdp", "904").merged_into_id is None
    assert stored(api, "acled", "MLI1").merged_into_id == second["id"]
    # The event still counts once, now through the UCDP report (same place within 2 km).
    assert score_of(api, site) == pytest.approx(counted, rel=0.15)
    doc = api.client.get(f"/v1/incidents/{first['id']}", headers=api.ingest).json()
    assert doc["properties"]["merged_into"] == second["id"]

    post_incident(api, {**source_body("ucdp", "904", 12), "lifecycle": "retracted"})
    assert score_of(api, site) < counted / 2


def test_a_revision_that_no_longer_matches_splits_off_and_counts_alone(api: Api) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    post_incident(api, source_body("acled", "MLI1", 10))
    post_incident(api, source_body("ucdp", "905", 12))
    once = score_of(api, site)
    # UCDP moves its event 40 km away: no longer the same event.
    post_incident(api, source_body("ucdp", "905", 52))
    assert stored(api, "ucdp", "905").merged_into_id is None
    assert score_of(api, site) > once


def alerts(api: Api) -> int:
    with api.app.state.sessions() as session:
        return session.execute(select(func.count()).select_from(Alert)).scalar_one()


def test_subscribers_get_one_alert_per_event_and_updates_for_its_other_reports(api: Api) -> None:
    site = create_site(api, "Camp", *east_of_base(0))
    add_watch(api, site, {"kind": "event", "trigger": "kidnapping_nearby", "radius_km": 50})
    post_incident(api, source_body("acled", "MLI7", 20, category="kidnapping"))
    api.drain_alerts()
    post_incident(api, source_body("ucdp", "906", 22, category="armed_assault"))
    api.drain_alerts()
    post_incident(api, {**source_body("acled", "MLI7", 20, category="kidnapping"),
                        "lifecycle": "retracted"})  # fmt: skip
    api.drain_alerts()

    assert alerts(api) == 1
    sent = [(d.event_type, d.payload["data"]["why"].lower()) for d in deliveries(api)]
    assert [kind for kind, _ in sent] == ["alert.triggered", "alert.updated", "alert.updated"]
    assert "another report of the same event came in (ucdp)" in sent[1][1]
    assert "a ucdp report" not in sent[1][1]
    assert "the acled report was retracted" in sent[2][1]
    sequences = [d.payload["data"]["alert"]["sequence"] for d in deliveries(api)]
    assert sequences == [1, 2, 3]


# --------------------------------------------------------------------------------------------
# One ingest reads only what it could merge with


def stream_values(seed: int, count: int, shift: timedelta, now: datetime) -> list[dict[str, Any]]:
    """A random stream of reports in one small region: near misses, merges, and reports that
    repeat another of their source under a new id."""
    rng = Random(seed)
    bodies: list[dict[str, Any]] = []
    for i in range(count):
        if bodies and rng.random() < 0.15:
            # The same source sends the same report under another id: another event.
            body = {**rng.choice(bodies), "source_id": f"dup-{i}"}
            lon, lat = body["location"]["coordinates"]
            body["location"] = {"type": "Point", "coordinates": [lon + 0.003, lat]}
        else:
            day = DAY + timedelta(days=rng.uniform(-25, 25), hours=rng.uniform(0, 24))
            body = {
                "source": rng.choice(["acled", "ucdp", "news"]),
                "source_id": f"r-{i}",
                "category": rng.choice(["armed_assault", "armed_clash", "ied", "kidnapping"]),
                "occurred_at": day.isoformat(),
                "occurred_precision": rng.choice(["day", "day", "week", "month"]),
                "location": {
                    "type": "Point",
                    "coordinates": [-1.0 + rng.uniform(-0.8, 0.8), 14.0 + rng.uniform(-0.8, 0.8)],
                },
                "location_precision": rng.choice(["exact", "exact", "near", "region"]),
                "actors": [rng.choice(["jnim", "issp"])],
                "fatalities": {"best": rng.choice([1, 3, 12])},
                "title": rng.choice(["", "ambush on the road", "attack on a village"]),
            }
        bodies.append(body)
    out = []
    for body in bodies:
        data = IncidentIn.model_validate(
            {**body, "occurred_at": datetime.fromisoformat(body["occurred_at"]) + shift}
        )
        out.append(incidents.values(data, now))
    return out


def merged_events(session: Session, ids: list[int]) -> dict[str, str | None]:
    rows = session.execute(select(Incident).where(Incident.id.in_(ids))).scalars().all()
    by_id = {row.id: row.source_id for row in rows}
    return {
        row.source_id: by_id[row.merged_into_id] if row.merged_into_id else None for row in rows
    }


def event_sources(session: Session, ids: list[int]) -> list[list[str]]:
    """The sources of each event's reports."""
    rows = session.execute(select(Incident).where(Incident.id.in_(ids))).scalars().all()
    events: dict[int, list[str]] = {}
    for row in rows:
        events.setdefault(row.merged_into_id or row.id, []).append(row.source)
    return list(events.values())


@pytest.mark.parametrize(
    "sizes", [(1, 4), (21, 60)], ids=["ingests-read-candidates", "batches-read-days"]
)
def test_one_ingest_merges_as_if_it_had_read_every_day_around(
    sessions: sessionmaker[Session], sizes: tuple[int, int]
) -> None:
    # The same stream, in the same requests of 1 to 4 reports (or batches of 21 to 60), stored
    # twice, the first run's reports deleted before the second: once with indexes that read
    # whole days (as an import does), once with the ingest's.
    now = DAY + timedelta(days=5000)
    results = []
    sources: list[list[str]] = []
    for whole_days in (True, False):
        with sessions.begin() as session:
            session.execute(update(Incident).values(merged_into_id=None))
            session.execute(delete(Incident))
        rows = stream_values(seed=5, count=240, shift=timedelta(0), now=now)
        chunks = Random(9)
        ids: list[int] = []
        start = 0
        while start < len(rows):
            size = chunks.randint(*sizes)
            with sessions.begin() as session:
                index = merge.Index() if whole_days else None
                done = incidents.upsert_rows(session, rows[start : start + size], now, index)
                ids.extend(u.incident.id for u in done)
            start += size
        with sessions() as session:
            results.append(merged_events(session, ids))
            sources += event_sources(session, ids)
    read_all, read_candidates = results
    assert read_candidates == read_all
    merged = sum(v is not None for v in read_all.values())
    assert merged > 40, "the stream should exercise merging"
    assert sum(k.startswith("dup-") for k in read_all) > 20, "and same-source repeats"
    assert all(len(set(event)) == len(event) for event in sources)


def test_one_ingest_reads_its_candidates_not_every_report_nearby(
    sessions: sessionmaker[Session],
) -> None:
    now = DAY + timedelta(days=1)
    spot = {"type": "Point", "coordinates": [-1.0, 14.0]}
    base = {"category": "kidnapping", "occurred_at": DAY, "location": spot}
    bodies = [
        # Another source's report of an event, and two that are too far in time or place ...
        {**base, "source": "acled", "source_id": "event"},
        {**base, "source": "acled", "source_id": "late", "occurred_at": DAY + timedelta(days=9)},
        {**base, "source": "acled", "source_id": "away",
         "location": {"type": "Point", "coordinates": [1.0, 14.0]}},
        # ... then another source, same day and place: 300 reports, each its own event. The
        # first joins the acled event.
        *({**base, "source": "news", "source_id": f"n{i}", "title": f"kidnapping {i}"}
          for i in range(300)),
    ]  # fmt: skip
    with sessions.begin() as session:
        for body in bodies:
            data = IncidentIn.model_validate(body)
            incidents.upsert_rows(session, [incidents.values(data, now)], now, merge.Index())
    probe = IncidentIn.model_validate(
        {**base, "source": "news", "source_id": "new", "title": "kidnapping 7"}
    )
    with sessions.begin() as session:
        (done,) = incidents.upsert_many(session, [probe], now)
        index = merge.Index(local=True)
        index.load(session, [merge.Report.of(done.incident)], [done.incident])
        # Itself, the acled event and the news report that joined it: not the 299 other news
        # reports around, not even n7, whose text it repeats under another id.
        assert len(index) == 3
        # The event has a news report already: the probe is an event of its own.
        assert done.incident.merged_into_id is None
