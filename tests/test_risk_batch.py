"""Scoring targets in a batch: every target is scored exactly as it would be alone.

The world is tests.riskmix's seeded, realistic mix over the Sahel: incidents of every category,
some area-scoped, some reported after as_of, some retracted or merged; sites and corridors of every
mode and profile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from functools import cache

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
from services.scoring.taxonomy import Category, Lifecycle, Mode, Sector, TargetKind
from tests.riskmix import AS_OF, FAR_AWAY, random_incidents, random_targets

SEEDS = (11, 23, 57)
REL = 1e-12


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
