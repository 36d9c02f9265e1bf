"""The synthetic ACLED/UCDP generator: deterministic, realistic in space, time, mix and text."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from datetime import date, datetime
from typing import Literal

import numpy as np
import pytest

from services.feeds import synth
from services.scoring.geo import haversine_km, point_to_polyline_km

START = date(2024, 1, 1)
END = date(2025, 1, 1)
ROWS = 2_000


@pytest.fixture(scope="module")
def events() -> list[synth.Event]:
    return synth.generate(7, ROWS, START, END)


@pytest.fixture(scope="module")
def ucdp(events: list[synth.Event]) -> list[synth.UcdpEvent]:
    return synth.ucdp_events(events, 7)


def _acled_text(
    events: list[synth.Event],
    *,
    hxl: bool = False,
    date_style: Literal["iso", "long"] = "iso",
    columns: Literal["new", "old"] = "new",
) -> str:
    buf = io.StringIO()
    synth.write_acled_csv(events, buf, hxl=hxl, date_style=date_style, columns=columns)
    return buf.getvalue()


def _ucdp_text(rows: list[synth.UcdpEvent]) -> str:
    buf = io.StringIO()
    synth.write_ucdp_csv(rows, buf)
    return buf.getvalue()


def test_same_seed_writes_same_bytes_and_another_seed_differs() -> None:
    a = synth.generate(3, 500, START, END)
    b = synth.generate(3, 500, START, END)
    c = synth.generate(4, 500, START, END)
    assert _acled_text(a) == _acled_text(b)
    assert _ucdp_text(synth.ucdp_events(a, 3)) == _ucdp_text(synth.ucdp_events(b, 3))
    assert _acled_text(a) != _acled_text(c)


@pytest.mark.parametrize("rows", [0, 1, 17, 999])
def test_generate_returns_exactly_the_rows_asked_for_in_date_order(rows: int) -> None:
    events = synth.generate(11, rows, START, END)
    assert len(events) == rows
    assert [e.key for e in events] == list(range(rows))
    assert [e.day for e in events] == sorted(e.day for e in events)
    assert all(START <= e.day < END for e in events)
    assert len({e.event_id_cnty for e in events}) == rows


def test_every_town_has_its_admin_regions_and_a_known_country() -> None:
    assert {t.name for t in synth.TOWNS} == set(synth.TOWN_ADMIN)
    assert {t.country for t in synth.TOWNS} <= set(synth.COUNTRIES)


def test_new_acled_csv_parses_with_the_documented_header(events: list[synth.Event]) -> None:
    rows = list(csv.DictReader(io.StringIO(_acled_text(events))))
    assert len(rows) == ROWS
    assert tuple(rows[0]) == synth.ACLED_COLUMNS_NEW
    for row, event in zip(rows, events, strict=True):
        assert re.fullmatch(r"[A-Z]{3}\d+", row["event_id_cnty"])
        assert row["event_id_cnty"].startswith(row["iso"])
        assert date.fromisoformat(row["event_date"]) == event.day
        assert row["year"] == str(event.day.year)
        assert row["time_precision"] in {"1", "2", "3"}
        assert row["geo_precision"] in {"1", "2", "3"}
        assert float(row["latitude"]) == pytest.approx(event.lat, abs=1e-4)
        assert int(row["fatalities"]) == event.fatalities
        assert int(row["timestamp"]) > datetime(2024, 1, 1).timestamp()
        assert row["inter1"] in synth.INTER_LABELS.values()
    precision = Counter(r["time_precision"] for r in rows)
    assert precision["1"] > 0.7 * ROWS
    targeted = [r for r in rows if r["civilian_targeting"]]
    assert targeted
    assert all(r["actor2"].startswith("Civilians") for r in targeted)


def test_old_acled_csv_drops_the_newer_columns_and_uses_numeric_codes(
    events: list[synth.Event],
) -> None:
    rows = list(csv.DictReader(io.StringIO(_acled_text(events, columns="old"))))
    assert tuple(rows[0]) == synth.ACLED_COLUMNS_OLD
    assert not {"disorder_type", "civilian_targeting", "tags"} & set(rows[0])
    assert {r["iso"] for r in rows} <= {str(c.iso_numeric) for c in synth.COUNTRIES.values()}
    assert {r["iso"] for r in rows if r["country"] == "Mali"} == {"466"}
    assert all(re.fullmatch(r"[1-8]0|[1-8][1-8]", r["interaction"]) for r in rows)


def test_hxl_row_sits_under_the_header_and_long_dates_parse(events: list[synth.Event]) -> None:
    text = _acled_text(events[:50], hxl=True, date_style="long")
    header, tags, *rows = list(csv.reader(io.StringIO(text)))
    assert len(tags) == len(header)
    assert all(t == "" or t.startswith("#") for t in tags)
    assert tags[header.index("latitude")] == "#geo+lat"
    assert tags[header.index("event_date")].startswith("#date")
    when = header.index("event_date")
    for row, event in zip(rows, events[:50], strict=True):
        assert datetime.strptime(row[when], "%d %B %Y").date() == event.day
        assert re.fullmatch(r"\d{2} [A-Z][a-z]+ \d{4}", row[when])


def test_api_pages_hold_every_event_as_strings(events: list[synth.Event]) -> None:
    pages = synth.acled_api_pages(events[:250], 100)
    assert [p["count"] for p in pages] == [100, 100, 50]
    assert all(p["status"] == 200 and p["success"] for p in pages)
    data = [row for p in pages for row in p["data"]]
    assert [row["event_id_cnty"] for row in data] == [e.event_id_cnty for e in events[:250]]
    assert all(tuple(row) == synth.ACLED_COLUMNS_NEW for row in data)
    assert all(isinstance(v, str) for row in data for v in row.values())
    # A client stopping at the first short page must stop even when pages are exactly full.
    assert [p["count"] for p in synth.acled_api_pages(events[:200], 100)] == [100, 100, 0]


def test_events_cluster_near_towns_and_along_roads(events: list[synth.Event]) -> None:
    lat = np.array([e.lat for e in events])
    lon = np.array([e.lon for e in events])
    t_lat = np.array([t.lat for t in synth.TOWNS])
    t_lon = np.array([t.lon for t in synth.TOWNS])
    to_town = haversine_km(lat[:, None], lon[:, None], t_lat[None, :], t_lon[None, :]).min(axis=1)
    to_road = np.min(
        [
            point_to_polyline_km(lat, lon, [(a.lon, a.lat), (b.lon, b.lat)])[0]
            for a, b in synth.ROADS
        ],
        axis=0,
    )
    near = np.minimum(to_town, to_road)
    assert np.mean(near <= 60.0) > 0.95
    assert np.mean(to_town <= 60.0) > 0.5
    # Clustered, not uniform over the Sahel box: the same share of a uniform cloud is far lower.
    rng = np.random.default_rng(0)
    u_lat, u_lon = rng.uniform(10.0, 23.0, 2_000), rng.uniform(-12.0, 16.0, 2_000)
    u_town = haversine_km(u_lat[:, None], u_lon[:, None], t_lat[None, :], t_lon[None, :])
    assert np.mean(u_town.min(axis=1) <= 60.0) < 0.3


def test_daily_and_weekly_counts_are_overdispersed_unlike_a_poisson_process(
    events: list[synth.Event],
) -> None:
    days = (END - START).days
    daily = np.bincount([(e.day - START).days for e in events], minlength=days)
    weekly = np.add.reduceat(daily, np.arange(0, days, 7))
    poisson = np.random.default_rng(0).poisson(daily.mean(), size=days)
    assert poisson.var() / poisson.mean() < 1.15
    assert daily.var() / daily.mean() > 1.2
    assert weekly.var() / weekly.mean() > 2.0


def test_category_mix_is_that_of_the_central_sahel(events: list[synth.Event]) -> None:
    subs = Counter(e.sub_event_type for e in events)
    assert subs.most_common(1)[0][0] == "Attack"
    assert {k.sub_event_type for k in synth.KINDS if k.share >= 0.01} <= set(subs)
    parents = {
        "Attack": ("Violence against civilians", "Political violence"),
        "Armed clash": ("Battles", "Political violence"),
        "Remote explosive/landmine/IED": ("Explosions/Remote violence", "Political violence"),
        "Air/drone strike": ("Explosions/Remote violence", "Political violence"),
        "Abduction/forced disappearance": ("Violence against civilians", "Political violence"),
        "Non-state actor overtakes territory": ("Battles", "Political violence"),
        "Headquarters or base established": ("Strategic developments", "Strategic developments"),
        "Looting/property destruction": ("Strategic developments", "Strategic developments"),
        "Peaceful protest": ("Protests", "Demonstrations"),
        "Violent demonstration": ("Riots", "Demonstrations"),
    }
    for e in events:
        if e.sub_event_type in parents:
            assert (e.event_type, e.disorder_type) == parents[e.sub_event_type]
    violence = sum(e.disorder_type == "Political violence" for e in events)
    assert 0.6 * ROWS < violence < 0.9 * ROWS
    assert 0.02 * ROWS < subs["Peaceful protest"] < 0.15 * ROWS
    assert sum(e.actor1.startswith("JNIM") for e in events) > 0.2 * ROWS


def test_fatalities_are_zero_inflated_with_a_heavy_tail(events: list[synth.Event]) -> None:
    f = np.array([e.fatalities for e in events])
    assert np.mean(f == 0) > 0.45
    assert np.mean((f >= 1) & (f <= 5)) > 0.2
    assert 0 < np.sum(f >= 20) < 0.05 * ROWS
    assert f.max() >= 50
    quiet = {"Peaceful protest", "Headquarters or base established", "Other"}
    assert all(e.fatalities == 0 for e in events if e.sub_event_type in quiet)
    clashes = f[[e.sub_event_type == "Armed clash" for e in events]]
    abductions = f[[e.sub_event_type == "Abduction/forced disappearance" for e in events]]
    assert clashes.mean() > 3 * abductions.mean()


def test_notes_hide_kidnappings_in_attacks_and_threats_in_statements(
    events: list[synth.Event],
) -> None:
    kidnap_words = re.compile(r"abduct|kidnap|hostage", re.IGNORECASE)
    hidden = [e for e in events if e.sub_event_type == "Attack" and e.signal == "kidnapping"]
    assert len(hidden) >= 5
    assert all(kidnap_words.search(e.notes) for e in hidden)
    assert any(re.search(r"foreign|expatriate", e.notes) for e in hidden)
    assert not any(e.inter1 == 1 for e in hidden)
    plain = [e for e in events if e.sub_event_type == "Attack" and e.signal == ""]
    assert not any(kidnap_words.search(e.notes) for e in plain)
    threats = [e for e in events if e.signal == "threat"]
    assert threats
    assert all(
        e.event_type == "Strategic developments" and "threatened" in e.notes for e in threats
    )
    assert all(e.actor1.startswith(("JNIM", "Boko Haram")) for e in threats)
    assert any(re.search(r"hostage|expatriate|convoy", e.notes) for e in events
               if e.sub_event_type == "Abduction/forced disappearance")  # fmt: skip
    assert all(e.notes.startswith("On ") for e in events)
    assert all(e.location in e.notes for e in events if e.sub_event_type != "Other")


def test_ucdp_rows_are_consistent_and_match_their_acled_event(
    events: list[synth.Event], ucdp: list[synth.UcdpEvent]
) -> None:
    assert all(u.low <= u.best <= u.high for u in ucdp)
    assert all(u.best >= 1 for u in ucdp)
    assert len({u.id for u in ucdp}) == len(ucdp)
    assert [u.date_start for u in ucdp] == sorted(u.date_start for u in ucdp)
    matched = [u for u in ucdp if u.event_key is not None]
    lethal = [e for e in events if e.fatalities > 0 and e.disorder_type == "Political violence"]
    assert 0.4 * len(lethal) < len(matched) < 0.8 * len(lethal)
    assert 0 < len(ucdp) - len(matched) < 0.15 * len(matched)
    assert len({u.event_key for u in matched}) == len(matched)
    for u in matched:
        assert u.event_key is not None
        e = events[u.event_key]
        assert e.fatalities > 0
        assert float(haversine_km(e.lat, e.lon, u.lat, u.lon)) <= 10.0
        assert abs((u.date_start - e.day).days) <= 1
        assert u.country == e.country
        assert 0.4 * e.fatalities - 1 <= u.best <= 2.0 * e.fatalities + 1
        if u.type_of_violence == 3:
            assert u.side_b == "Civilians"
            assert e.civilian_targeting
    assert {u.type_of_violence for u in ucdp} == {1, 2, 3}


def test_ucdp_csv_has_the_ged_columns_and_timestamps(ucdp: list[synth.UcdpEvent]) -> None:
    rows = list(csv.DictReader(io.StringIO(_ucdp_text(ucdp))))
    assert tuple(rows[0]) == synth.UCDP_COLUMNS
    assert len(rows) == len(ucdp)
    for row in rows:
        start = datetime.strptime(row["date_start"], "%Y-%m-%d %H:%M:%S.%f")
        end = datetime.strptime(row["date_end"], "%Y-%m-%d %H:%M:%S.%f")
        assert start <= end
        assert int(row["low"]) <= int(row["best"]) <= int(row["high"])
        deaths = ("deaths_a", "deaths_b", "deaths_civilians", "deaths_unknown")
        assert sum(int(row[k]) for k in deaths) == int(row["best"])
        assert 1 <= int(row["where_prec"]) <= 7
        assert 1 <= int(row["date_prec"]) <= 5
        assert row["type_of_violence"] in {"1", "2", "3"}
        assert row["geom_wkt"] == f"POINT ({row['longitude']} {row['latitude']})"
    mali = next(r for r in rows if r["country"] == "Mali")
    assert mali["country_id"] == "432"
