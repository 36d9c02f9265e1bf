"""Seeded synthetic Sahel data for the benchmarks: sites, corridors and incidents as API bodies."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from services.feeds.synth import TOWNS, Town

LAT_RANGE = (10.0, 25.0)
LON_RANGE = (-12.0, 16.0)
KM_PER_DEGREE = 111.2

# Category mix, roughly that of ACLED's Central Sahel events.
CATEGORY_MIX: dict[str, float] = {
    "armed_assault": 0.20,
    "armed_clash": 0.19,
    "ied": 0.11,
    "indirect_fire": 0.04,
    "vbied": 0.01,
    "suicide_bombing": 0.005,
    "air_drone_strike": 0.08,
    "anti_aircraft_fire": 0.005,
    "kidnapping": 0.06,
    "explicit_threat": 0.04,
    "looting": 0.08,
    "territory_seizure": 0.02,
    "base_established": 0.01,
    "political_statement": 0.02,
    "other_violence": 0.11,
}
TARGET_TYPES = ("military", "civilians", "foreign_firm", "mining", "logistics", "government")
SECTORS = ("mining", "logistics", "energy", "construction", "agriculture", "humanitarian")
AREA_SCOPED_SHARE = 0.02
BRANCHING_RATIO = 0.55  # expected offspring per incident (self-excitation)
OFFSPRING_DELAY_DAYS = 4.0
OFFSPRING_SPREAD_KM = 15.0


def _town_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lat = np.array([t.lat for t in TOWNS])
    lon = np.array([t.lon for t in TOWNS])
    w = np.array([t.weight for t in TOWNS], dtype=float)
    return lat, lon, w / w.sum()


def _nearest_town(lat: float, lon: float) -> Town:
    lats, lons, _ = _town_arrays()
    d = (lats - lat) ** 2 + ((lons - lon) * math.cos(math.radians(lat))) ** 2
    return TOWNS[int(np.argmin(d))]


def _clip(lat: float, lon: float) -> tuple[float, float]:
    return (
        round(float(np.clip(lat, *LAT_RANGE)), 5),
        round(float(np.clip(lon, *LON_RANGE)), 5),
    )


def _neighbours(i: int, k: int) -> list[int]:
    lats, lons, _ = _town_arrays()
    d = (lats - lats[i]) ** 2 + ((lons - lons[i]) * math.cos(math.radians(lats[i]))) ** 2
    return [int(j) for j in np.argsort(d)[1 : k + 1]]


def _road_point(rng: np.random.Generator) -> tuple[float, float]:
    """A point on (or just off) a road between a town and one of its near neighbours."""
    _, _, w = _town_arrays()
    a = int(rng.choice(len(TOWNS), p=w))
    b = int(rng.choice(_neighbours(a, 4)))
    f = rng.uniform()
    lat = TOWNS[a].lat + f * (TOWNS[b].lat - TOWNS[a].lat) + rng.normal(0, 0.04)
    lon = TOWNS[a].lon + f * (TOWNS[b].lon - TOWNS[a].lon) + rng.normal(0, 0.04)
    return lat, lon


def sites(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """`n` site bodies (GeoJSON Features), clustered around towns."""
    rng = np.random.default_rng(seed)
    _, _, w = _town_arrays()
    out = []
    for i in range(n):
        town = TOWNS[int(rng.choice(len(TOWNS), p=w))]
        if rng.uniform() < 0.1:
            lat, lon = town.lat + rng.normal(0, 1.0), town.lon + rng.normal(0, 1.0)
        else:
            lat, lon = town.lat + rng.normal(0, 0.2), town.lon + rng.normal(0, 0.2)
        lat, lon = _clip(lat, lon)
        sector = SECTORS[int(rng.integers(len(SECTORS)))] if rng.uniform() < 0.8 else None
        out.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": {
                    "name": f"site {i} near {town.name}",
                    "radius_km": float(rng.choice([5.0, 10.0, 25.0, 50.0], p=[0.2, 0.3, 0.4, 0.1])),
                    "sector": sector,
                    "foreign_owned": bool(rng.uniform() < 0.4),
                    "expat_staff": bool(rng.uniform() < 0.3),
                    "country": _nearest_town(lat, lon).country,
                    "tags": [sector or "office"],
                },
            }
        )
    return out


def corridors(n: int, seed: int = 2) -> list[dict[str, Any]]:
    """`n` corridor bodies: 2-6 vertex lines between towns; mostly road, some air and river."""
    rng = np.random.default_rng(seed)
    _, _, w = _town_arrays()
    airports = [i for i, t in enumerate(TOWNS) if t.airport]
    river = [i for i, t in enumerate(TOWNS) if t.on_river]
    out = []
    for i in range(n):
        roll = rng.uniform()
        if roll < 0.12:
            mode = "air"
            a, b = (int(x) for x in rng.choice(airports, size=2, replace=False))
            line = [(TOWNS[a].lon, TOWNS[a].lat), (TOWNS[b].lon, TOWNS[b].lat)]
        else:
            mode = "river" if roll < 0.15 else "road"
            if mode == "river":
                k = int(rng.integers(len(river) - 1))
                a, b = river[k], river[k + 1]
            else:
                a = int(rng.choice(len(TOWNS), p=w))
                b = int(rng.choice(_neighbours(a, 4)))
            n_vertices = int(rng.integers(2, 7))
            line = [(TOWNS[a].lon, TOWNS[a].lat)]
            for k in range(1, n_vertices - 1):
                f = k / (n_vertices - 1)
                line.append(
                    (
                        TOWNS[a].lon + f * (TOWNS[b].lon - TOWNS[a].lon) + rng.normal(0, 0.08),
                        TOWNS[a].lat + f * (TOWNS[b].lat - TOWNS[a].lat) + rng.normal(0, 0.08),
                    )
                )
            line.append((TOWNS[b].lon, TOWNS[b].lat))
        coords = [list(reversed(_clip(lat, lon))) for lon, lat in line]
        sector = "logistics" if rng.uniform() < 0.5 else None
        out.append(
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": coords},
                "properties": {
                    "name": f"{mode} {TOWNS[a].name} - {TOWNS[b].name} #{i}",
                    "buffer_km": float(rng.choice([5.0, 10.0, 20.0])),
                    "mode": mode,
                    "countries": sorted({TOWNS[a].country, TOWNS[b].country}),
                    "sector": sector,
                    "foreign_owned": bool(rng.uniform() < 0.3),
                    "expat_staff": bool(rng.uniform() < 0.2),
                    "tags": [mode],
                },
            }
        )
    return out


def _fatalities(rng: np.random.Generator, category: str) -> dict[str, int | None]:
    if category in ("explicit_threat", "political_statement", "base_established"):
        return {}
    if rng.uniform() < 0.25:
        return {}
    # Heavy-tailed: most events kill 0-3, a few kill dozens.
    best = int(min(500, math.floor(rng.lognormal(0.3, 1.4)) if rng.uniform() < 0.7 else 0))
    out: dict[str, int | None] = {
        "low": int(best * 0.7),
        "best": best,
        "high": math.ceil(best * 1.5),
    }
    if rng.uniform() < 0.3:
        out["claimed"] = int(best * rng.uniform(1.5, 4.0)) + 1
    return out


def _incident_body(
    rng: np.random.Generator,
    index: int,
    category: str,
    occurred_at: datetime,
    end: datetime,
    location: tuple[float, float] | None,
    source: str,
) -> dict[str, Any]:
    reported_at = min(end, occurred_at + timedelta(hours=float(rng.exponential(20.0))))
    precision = str(rng.choice(["exact", "near", "region"], p=[0.75, 0.2, 0.05]))
    body: dict[str, Any] = {
        "source": source,
        "source_id": f"{source}-{index}",
        "category": category,
        "occurred_at": occurred_at.isoformat(),
        "occurred_precision": str(rng.choice(["day", "week", "month"], p=[0.9, 0.08, 0.02])),
        "reported_at": reported_at.isoformat(),
        "location_precision": precision,
        "source_reliability": round(float(rng.uniform(0.4, 0.95)), 2),
        "lifecycle": str(
            rng.choice(
                ["confirmed", "developing", "updated", "retracted"], p=[0.85, 0.1, 0.04, 0.01]
            )
        ),
        "title": f"{category.replace('_', ' ')} #{index}",
        "fatalities": _fatalities(rng, category),
    }
    if location is None:
        countries = sorted({TOWNS[int(i)].country for i in rng.integers(len(TOWNS), size=2)})
        body["scope"] = {"countries": countries}
        body["country"] = countries[0]
    else:
        lat, lon = _clip(*location)
        body["location"] = {"type": "Point", "coordinates": [lon, lat]}
        body["country"] = _nearest_town(lat, lon).country
    if category == "kidnapping":
        body["victim_profile"] = {
            "expatriate": bool(rng.uniform() < 0.2),
            "sector": SECTORS[int(rng.integers(len(SECTORS)))] if rng.uniform() < 0.5 else None,
        }
    elif category in ("explicit_threat", "political_statement"):
        body["target_profile"] = {
            "foreign_owned_only": bool(rng.uniform() < 0.3),
            "sectors": [SECTORS[int(rng.integers(len(SECTORS)))]] if rng.uniform() < 0.4 else [],
        }
    if rng.uniform() < 0.6:
        body["target_type"] = TARGET_TYPES[int(rng.integers(len(TARGET_TYPES)))]
    return body


def incidents(
    n: int, end: datetime, *, days: float = 365.0, seed: int = 3, source: str = "bench"
) -> list[dict[str, Any]]:
    """`n` incident bodies over `days` before `end`, clustered near towns and roads, self-exciting.

    A Hawkes-like cluster process: background events uniform in time, each spawning on average
    BRANCHING_RATIO offspring a few days later and a few km away, mostly of the same category.
    """
    rng = np.random.default_rng(seed)
    _, _, w = _town_arrays()
    categories = list(CATEGORY_MIX)
    p = np.array(list(CATEGORY_MIX.values()))
    p = p / p.sum()
    span_s = days * 86_400.0
    events: list[tuple[float, str, tuple[float, float] | None]] = []
    for _ in range(100):  # bounded: each round adds roughly n events
        if len(events) >= n:
            break
        pending: list[tuple[float, str, tuple[float, float] | None]] = []
        for _ in range(max(1, int(n * (1 - BRANCHING_RATIO)))):
            category = str(rng.choice(categories, p=p))
            t = float(rng.uniform(0, span_s))
            location: tuple[float, float] | None
            if category in ("explicit_threat", "political_statement") and (
                rng.uniform() < AREA_SCOPED_SHARE / 0.06
            ):
                location = None
            elif rng.uniform() < 0.6:
                town = TOWNS[int(rng.choice(len(TOWNS), p=w))]
                location = (town.lat + rng.normal(0, 0.3), town.lon + rng.normal(0, 0.3))
            else:
                location = _road_point(rng)
            pending.append((t, category, location))
        generation = 0
        while pending and generation < 20:
            events.extend(pending)
            children = []
            for t, category, location in pending:
                for _ in range(int(rng.poisson(BRANCHING_RATIO))):
                    ct = t + float(rng.exponential(OFFSPRING_DELAY_DAYS)) * 86_400.0
                    if ct > span_s:
                        continue
                    cc = category if rng.uniform() < 0.7 else str(rng.choice(categories, p=p))
                    cl = None
                    if location is not None:
                        spread = OFFSPRING_SPREAD_KM / KM_PER_DEGREE
                        cl = (
                            location[0] + rng.normal(0, spread),
                            location[1] + rng.normal(0, spread),
                        )
                    children.append((ct, cc, cl))
            pending = children
            generation += 1
    chosen = sorted(rng.choice(len(events), size=n, replace=False).tolist())
    picked = sorted((events[i] for i in chosen), key=lambda e: e[0])
    start = end - timedelta(seconds=span_s)
    return [
        _incident_body(rng, i, category, start + timedelta(seconds=t), end, location, source)
        for i, (t, category, location) in enumerate(picked)
    ]


def backtest_points(n: int, seed: int = 4) -> list[dict[str, float]]:
    """`n` bare points for a backtest, placed like sites."""
    return [
        {"lon": s["geometry"]["coordinates"][0], "lat": s["geometry"]["coordinates"][1]}
        for s in sites(n, seed=seed)
    ]
