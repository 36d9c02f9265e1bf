"""Scoring targets in a batch: every target is scored exactly as it would be alone.

The world is a seeded, realistic mix over the Sahel: incidents of every category, some area-scoped,
some reported after as_of, some retracted or merged; sites and corridors of every mode and profile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, TypeVar

import numpy as np
import pytest

from services.scoring.risk import (
    DEFAULT_PARAMS,
    Incident,
    IncidentSet,
    Score,
    Target,
    score_target,
    score_targets,
    terms,
)
from services.scoring.taxonomy import (
    Category,
    Lifecycle,
    LocationPrecision,
    Mode,
    Sector,
    TargetKind,
    TargetType,
    TimePrecision,
)

AS_OF = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
SEEDS = (11, 23, 57)
REL = 1e-12
COUNTRIES = ("MLI", "BFA", "NER", "SEN", "MRT", "GIN")
ADMIN1 = ("Mopti", "Gao", "Kayes", "Sahel", "Tillaberi", "Segou", "Tombouctou")
# Targets' countries and regions.
AREAS = tuple(frozenset(a) for a in ((), ("MLI",), ("MLI",), ("BFA",), ("NER",), ("MLI", "BFA")))
REGIONS = tuple(frozenset(r) for r in ((), (), ("Mopti",), ("Gao",), ("Sahel",)))
# Where incidents cluster, (lon, lat): central Mali, Liptako-Gourma, western Mali, Niger.
CLUSTERS = ((-4.2, 14.5), (-0.5, 14.2), (-10.5, 13.2), (2.5, 13.8), (-3.0, 16.7))
# A one-degree cell holding several sites.
SHARED_CELL = (-4.0, 14.0)
# Sites beyond every incident's reach (1,000 km and more from the Sahel box), in no scoped area.
FAR_AWAY = ((-32.0, 15.0), (20.0, 34.0), (35.0, -5.0))

T = TypeVar("T")


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """One of `options`, uniformly."""
    return options[int(rng.integers(len(options)))]


def some(rng: np.random.Generator, options: Sequence[T], most: int) -> frozenset[T]:
    """Between 0 and `most` distinct members of `options`."""
    count = int(rng.integers(most + 1))
    chosen = rng.choice(len(options), size=count, replace=False)
    return frozenset(options[int(k)] for k in chosen)


def random_incidents(rng: np.random.Generator) -> list[Incident]:
    """150-300 incidents of every kind over the Sahel and the year before AS_OF."""
    n = int(rng.integers(150, 301))
    categories = list(Category)
    out = []
    for k in range(n):
        # Every category at least once, then at random.
        category = categories[k] if k < len(categories) else pick(rng, categories)
        area = rng.random() < 0.12
        lat: float | None
        lon: float | None
        if area:
            lat = lon = None
        elif rng.random() < 0.5:
            c_lon, c_lat = pick(rng, CLUSTERS)
            lat = float(np.clip(c_lat + rng.normal(0.0, 0.4), 10.0, 20.0))
            lon = float(np.clip(c_lon + rng.normal(0.0, 0.4), -12.0, 5.0))
        else:
            lat, lon = float(rng.uniform(10.0, 20.0)), float(rng.uniform(-12.0, 5.0))
        countries = some(rng, COUNTRIES, 3) if area else frozenset()
        admin1 = some(rng, ADMIN1, 2) if area else frozenset()
        if area and not countries and not admin1:
            countries = frozenset({pick(rng, COUNTRIES)})
        occurred = AS_OF - timedelta(days=float(rng.uniform(0.0, 365.0)))
        reported = occurred + timedelta(hours=float(rng.uniform(0.0, 96.0)))
        if rng.random() < 0.06:
            # Reported only after as_of: must not count.
            reported = AS_OF + timedelta(days=float(rng.uniform(0.01, 10.0)))
        threat = category is Category.EXPLICIT_THREAT
        kidnapping = category is Category.KIDNAPPING
        lifecycle = pick(
            rng,
            (Lifecycle.CONFIRMED,) * 6
            + (Lifecycle.DEVELOPING,) * 2
            + (Lifecycle.UPDATED, Lifecycle.RETRACTED),
        )
        out.append(
            Incident(
                id=1000 + k,
                category=category,
                occurred_at=occurred,
                occurred_precision=pick(rng, list(TimePrecision)),
                reported_at=reported,
                lat=lat,
                lon=lon,
                location_precision=(
                    LocationPrecision.REGION if area else pick(rng, list(LocationPrecision))
                ),
                scope_countries=countries,
                scope_admin1=admin1,
                target_foreign_owned_only=threat and bool(rng.random() < 0.4),
                target_sectors=some(rng, list(Sector), 2) if threat else frozenset(),
                target_type=pick(
                    rng, [TargetType.FOREIGN_FIRM, TargetType.MINING, *TargetType, None]
                ),
                victim_expatriate=kidnapping and bool(rng.random() < 0.5),
                victim_sector=pick(rng, [*Sector, None, None, None]),
                fatalities_claimed=int(rng.integers(0, 120)) if rng.random() < 0.4 else None,
                fatalities_best=int(rng.integers(0, 40)) if rng.random() < 0.5 else None,
                source_reliability=float(rng.uniform(0.0, 1.0)),
                lifecycle=lifecycle,
                title=f"incident {1000 + k}",
                merged=bool(rng.random() < 0.03),
            )
        )
    return out


def profile(rng: np.random.Generator) -> dict[str, Any]:
    """A random firm profile: sector (mining often), ownership, staff, countries and regions."""
    return {
        "sector": pick(rng, [*Sector, Sector.MINING, None, None]),
        "foreign_owned": bool(rng.random() < 0.5),
        "expat_staff": bool(rng.random() < 0.5),
        # Few areas, so that targets of different profiles share one.
        "countries": pick(rng, AREAS),
        "admin1": pick(rng, REGIONS),
    }


def random_targets(rng: np.random.Generator) -> list[Target]:
    """40-80 sites and corridors: every mode, several sites in one cell, some far from all."""
    out: list[Target] = []
    for _ in range(5):
        lonlat = (
            SHARED_CELL[0] + float(rng.uniform(0.05, 0.95)),
            SHARED_CELL[1] + float(rng.uniform(0.05, 0.95)),
        )
        out.append(
            Target(TargetKind.SITE, (lonlat,), float(rng.uniform(0.0, 30.0)), **profile(rng))
        )
    for lonlat in FAR_AWAY:
        out.append(
            Target(
                TargetKind.SITE,
                (lonlat,),
                10.0,
                sector=Sector.MINING,
                foreign_owned=True,
                expat_staff=True,
                countries=frozenset({"FRA"}),
            )
        )
    modes: list[Mode | None] = [*Mode, None]
    for k in range(int(rng.integers(32, 73))):
        if k % 3 == 0:
            mode = modes[(k // 3) % len(modes)]
            lon, lat = float(rng.uniform(-12.0, 5.0)), float(rng.uniform(10.0, 20.0))
            vertices = [(lon, lat)]
            for _ in range(int(rng.integers(1, 5))):
                lon += float(rng.uniform(-1.5, 1.5))
                lat += float(rng.uniform(-1.0, 1.0))
                vertices.append((lon, lat))
            out.append(
                Target(
                    TargetKind.CORRIDOR,
                    tuple(vertices),
                    float(rng.uniform(0.0, 10.0)),
                    mode=mode,
                    **profile(rng),
                )
            )
        else:
            if rng.random() < 0.5:
                c_lon, c_lat = pick(rng, CLUSTERS)
                lonlat = (c_lon + float(rng.normal(0.0, 0.5)), c_lat + float(rng.normal(0.0, 0.5)))
            else:
                lonlat = (float(rng.uniform(-12.0, 5.0)), float(rng.uniform(10.0, 20.0)))
            radius = pick(rng, (0.0, 1.0, 5.0, 25.0, float(rng.uniform(0.0, 50.0))))
            out.append(Target(TargetKind.SITE, (lonlat,), radius, **profile(rng)))
    order = rng.permutation(len(out))
    return [out[int(k)] for k in order]


@dataclass(frozen=True, slots=True)
class World:
    """A seeded mix of incidents and targets."""

    incidents: tuple[Incident, ...]
    incident_set: IncidentSet
    targets: tuple[Target, ...]


@cache
def world(seed: int) -> World:
    """The world of `seed`, built once per test session."""
    rng = np.random.default_rng(seed)
    incidents = random_incidents(rng)
    targets = random_targets(rng)
    return World(tuple(incidents), IncidentSet(incidents, DEFAULT_PARAMS), tuple(targets))


@cache
def alone(seed: int) -> tuple[Score, ...]:
    """Each target of the world of `seed` scored on its own."""
    w = world(seed)
    return tuple(score_target(t, w.incident_set, AS_OF, DEFAULT_PARAMS) for t in w.targets)


def differences(batch: object, alone: object, path: str = "") -> list[str]:
    """Where two scores differ: floats beyond REL relative, anything else (types too) at all."""
    if type(batch) is not type(alone):
        return [f"{path}: type {type(batch).__name__} != {type(alone).__name__}"]
    if isinstance(batch, float) and isinstance(alone, float):
        if math.isclose(batch, alone, rel_tol=REL, abs_tol=0.0) or (
            math.isnan(batch) and math.isnan(alone)
        ):
            return []
        return [f"{path}: {batch!r} != {alone!r}"]
    if is_dataclass(batch) and not isinstance(batch, type):
        return [
            d
            for f in fields(batch)
            for d in differences(getattr(batch, f.name), getattr(alone, f.name), f"{path}.{f.name}")
        ]
    if isinstance(batch, Mapping) and isinstance(alone, Mapping):
        if list(batch) != list(alone):
            return [f"{path}: keys {list(batch)} != {list(alone)}"]
        return [d for k in batch for d in differences(batch[k], alone[k], f"{path}[{k!r}]")]
    if isinstance(batch, tuple | list) and isinstance(alone, tuple | list):
        if len(batch) != len(alone):
            return [f"{path}: {len(batch)} items != {len(alone)}: {batch!r} != {alone!r}"]
        pairs = enumerate(zip(batch, alone, strict=True))
        return [d for k, (a, b) in pairs for d in differences(a, b, f"{path}[{k}]")]
    return [] if batch == alone else [f"{path}: {batch!r} != {alone!r}"]


def assert_same_scores(
    batch: Sequence[Score], alone: Sequence[Score], targets: Sequence[Target]
) -> None:
    """Each batch score equals its target's score alone, field by field."""
    assert len(batch) == len(alone) == len(targets)
    found = [
        f"target {j} ({t.kind.value} {t.coordinates[0]}){d}"
        for j, (b, a, t) in enumerate(zip(batch, alone, targets, strict=True))
        for d in differences(b, a)
    ]
    assert not found, f"{len(found)} differences, first ones:\n" + "\n".join(found[:20])


def background() -> float:
    """The probability of a place without incidents: the calibration at intensity 0."""
    return float(terms.calibrate(np.asarray(0.0), DEFAULT_PARAMS))


@pytest.mark.parametrize("seed", SEEDS)
def test_the_mix_holds_every_kind_of_incident_and_target(seed: int) -> None:
    w = world(seed)
    assert 150 <= len(w.incidents) <= 300
    assert 40 <= len(w.targets) <= 80
    assert {i.category for i in w.incidents} == set(Category)
    assert any(i.lat is None and i.scope_admin1 for i in w.incidents)
    assert any(i.reported_at > AS_OF for i in w.incidents)
    assert any(i.lifecycle is Lifecycle.RETRACTED for i in w.incidents)
    corridors = [t for t in w.targets if t.kind is TargetKind.CORRIDOR]
    assert {t.mode for t in corridors} == {*Mode, None}
    assert any(t.sector is Sector.MINING for t in w.targets)


@pytest.mark.parametrize("seed", SEEDS)
def test_scored_alone_the_mix_has_adjustments_hotspots_and_targets_without_incidents(
    seed: int,
) -> None:
    w, expected = world(seed), alone(seed)
    assert {a.kind for s in expected for a in s.adjustments} == {
        "threats",
        "corridor_mode",
        "mining_targeted",
        "foreign_firm_targeted",
        "expatriate_kidnapping",
        "victim_sector",
    }
    assert {c.category for s in expected for c in s.contributions} == set(Category)
    assert any(s.hotspots for s in expected)
    far = [s for s, t in zip(expected, w.targets, strict=True) if t.coordinates[0] in FAR_AWAY]
    assert len(far) == len(FAR_AWAY)
    assert all(s.incident_count == 0 and s.probability == background() for s in far)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_target_in_a_batch_scores_exactly_as_it_would_alone(seed: int) -> None:
    w = world(seed)
    batch = score_targets(w.targets, w.incident_set, AS_OF, DEFAULT_PARAMS)
    assert_same_scores(batch, alone(seed), w.targets)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_order_of_targets_in_a_batch_changes_no_score(seed: int) -> None:
    w, expected = world(seed), alone(seed)
    order = [int(k) for k in np.random.default_rng(seed + 1).permutation(len(w.targets))]
    shuffled = [w.targets[k] for k in order]
    batch = score_targets(shuffled, w.incident_set, AS_OF, DEFAULT_PARAMS)
    assert_same_scores(batch, [expected[k] for k in order], shuffled)


@pytest.mark.parametrize("seed", SEEDS)
def test_duplicated_targets_in_a_batch_each_get_the_same_score_as_alone(seed: int) -> None:
    w, expected = world(seed), alone(seed)
    twice = [*w.targets, *w.targets[::-1]]
    batch = score_targets(twice, w.incident_set, AS_OF, DEFAULT_PARAMS)
    assert_same_scores(batch, [*expected, *expected[::-1]], twice)


@pytest.mark.parametrize("seed", SEEDS)
def test_reports_after_as_of_retracted_and_merged_ones_change_no_score_in_a_batch(
    seed: int,
) -> None:
    w, expected = world(seed), alone(seed)
    counting = [i for i in w.incidents if i.counts and i.reported_at <= AS_OF]
    assert len(counting) < len(w.incidents)
    only_counting = IncidentSet(counting, DEFAULT_PARAMS)
    batch = score_targets(w.targets, only_counting, AS_OF, DEFAULT_PARAMS)
    assert_same_scores(batch, expected, w.targets)
    ignored = {i.id for i in w.incidents} - {i.id for i in counting}
    named = {c.incident_id for s in expected for c in s.contributions} | {
        k for s in expected for a in s.adjustments for k in a.incident_ids
    }
    assert not named & ignored


def test_an_empty_batch_scores_nothing() -> None:
    w = world(SEEDS[0])
    assert score_targets([], w.incident_set, AS_OF, DEFAULT_PARAMS) == []
    assert score_targets([], IncidentSet([], DEFAULT_PARAMS), AS_OF, DEFAULT_PARAMS) == []


def test_without_incidents_every_target_in_a_batch_gets_the_background_probability() -> None:
    targets = world(SEEDS[0]).targets
    empty = IncidentSet([], DEFAULT_PARAMS)
    batch = score_targets(targets, empty, AS_OF, DEFAULT_PARAMS)
    alone = [score_target(t, empty, AS_OF, DEFAULT_PARAMS) for t in targets]
    assert_same_scores(batch, alone, targets)
    for result in batch:
        assert result.probability == result.generic_probability == background()
        assert result.incident_count == 0
        assert result.contributions == ()
        assert result.adjustments == ()
        assert result.hotspots == ()


@pytest.mark.parametrize(
    ("invalid", "message"),
    [
        (
            Target(TargetKind.SITE, ((-4.0, 14.0), (-3.0, 14.0)), 5.0),
            "a site has exactly one",
        ),
        (Target(TargetKind.CORRIDOR, ((-4.0, 14.0),), 5.0, mode=Mode.ROAD), "a corridor has at"),
        (Target(TargetKind.SITE, ((-4.0, 14.0),), -1.0), "radius_km must be non-negative"),
        (
            Target(TargetKind.CORRIDOR, ((-4.0, 14.0), (-3.0, 15.0)), -0.5, mode=Mode.AIR),
            "radius_km must be non-negative",
        ),
    ],
)
def test_an_invalid_target_is_refused_alone_and_in_a_batch(invalid: Target, message: str) -> None:
    w = world(SEEDS[0])
    with pytest.raises(ValueError, match=message):
        score_target(invalid, w.incident_set, AS_OF, DEFAULT_PARAMS)
    with pytest.raises(ValueError, match=message):
        score_targets(
            [*w.targets[:5], invalid, *w.targets[5:]], w.incident_set, AS_OF, DEFAULT_PARAMS
        )
