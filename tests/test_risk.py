"""The risk model: what counts, the formula's terms, the probability and how it is explained.

Firm-specific adjustments on the odds (profiles, corridor modes, threats) are in
tests/test_risk_adjustments.py. DEFAULT_PARAMS is refitted from time to time, so tests with it
assert relations; tests that need numbers use SIMPLE, whose terms can be worked out by hand.
"""

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from services.scoring.geo import FloatArray, haversine_km, point_to_polyline_km
from services.scoring.risk import (
    DEFAULT_PARAMS,
    Incident,
    IncidentSet,
    ModelParams,
    Score,
    Target,
    area_scope_matches,
    band_for,
    influence_radius_km,
    intensities,
    is_current,
    max_influence_km,
    probabilities,
    score_points,
    score_target,
    terms,
)
from services.scoring.taxonomy import (
    Band,
    Category,
    Component,
    Lifecycle,
    LocationPrecision,
    Mode,
    Sector,
    TargetKind,
    TargetType,
    TimePrecision,
)

AS_OF = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
BKO = (-7.9499, 12.5335)  # (lon, lat)
TOM = (-3.0075, 16.7305)
MINE_SW_MALI = (-11.0, 12.6)  # (lon, lat), near the Guinea and Senegal borders
SITE_SENEGAL = (-12.2, 12.9)
KM_PER_DEG_LAT = 111.195

# One spatial scale (20 km) and one half-life (30 days) with coefficient 1 for every group, and a
# calibration of two straight pieces above a 2 % background: numbers a test can work out by hand.
SIMPLE = replace(
    DEFAULT_PARAMS,
    spatial_scales_km=(20.0,),
    half_lives_days=(30.0,),
    coefficients={g: ((1.0,),) for g in DEFAULT_PARAMS.group_names},
    calibration=((0.0, 0.02), (1.0, 0.5), (4.0, 0.9)),
    escalation_gain=0.0,
)
# SIMPLE with escalation switched on.
ESCALATING = replace(SIMPLE, escalation_gain=0.25)


def incident(**overrides: Any) -> Incident:
    """A confirmed, exactly located armed assault a day before AS_OF, 10 km north of the mine."""
    values: dict[str, Any] = {
        "id": 1,
        "category": Category.ARMED_ASSAULT,
        "occurred_at": AS_OF - timedelta(days=1),
        "occurred_precision": TimePrecision.DAY,
        "reported_at": AS_OF - timedelta(days=1),
        "lat": MINE_SW_MALI[1] + 0.09,
        "lon": MINE_SW_MALI[0],
        "location_precision": LocationPrecision.EXACT,
        "scope_countries": frozenset(),
        "scope_admin1": frozenset(),
        "target_foreign_owned_only": False,
        "target_sectors": frozenset(),
        "target_type": TargetType.MILITARY,
        "victim_expatriate": False,
        "victim_sector": None,
        "fatalities_claimed": None,
        "fatalities_best": None,
        "source_reliability": 0.9,
        "lifecycle": Lifecycle.CONFIRMED,
    }
    values.update(overrides)
    return Incident(**values)


def aged(days: float, **overrides: Any) -> Incident:
    """incident() that occurred and was reported `days` before AS_OF."""
    moment = AS_OF - timedelta(days=days)
    return incident(occurred_at=moment, reported_at=moment, **overrides)


def site(lonlat: tuple[float, float] = MINE_SW_MALI, **overrides: Any) -> Target:
    """A site with a 5 km radius in Mali, no profile unless overridden."""
    values: dict[str, Any] = {
        "kind": TargetKind.SITE,
        "coordinates": (lonlat,),
        "radius_km": 5.0,
        "countries": frozenset({"MLI"}),
    }
    values.update(overrides)
    return Target(**values)


def bare_site(lonlat: tuple[float, float] = MINE_SW_MALI, radius_km: float = 0.0) -> Target:
    """A site with no profile and no countries: what score_points scores."""
    return Target(kind=TargetKind.SITE, coordinates=(lonlat,), radius_km=radius_km)


def air_leg(mode: Mode | None = Mode.AIR) -> Target:
    """The Bamako - Timbuktu leg, flown unless another mode is given."""
    return Target(
        kind=TargetKind.CORRIDOR,
        coordinates=(BKO, TOM),
        radius_km=5.0,
        mode=mode,
        countries=frozenset({"MLI"}),
    )


def road_to_sikasso(mode: Mode | None = Mode.ROAD) -> Target:
    """The Bamako - Sikasso road, driven unless another mode is given."""
    return Target(
        kind=TargetKind.CORRIDOR,
        coordinates=(BKO, (-6.6, 12.0), (-5.67, 11.32)),
        radius_km=2.0,
        mode=mode,
        countries=frozenset({"MLI"}),
    )


def score(
    target: Target,
    incidents: list[Incident],
    as_of: datetime = AS_OF,
    params: ModelParams = DEFAULT_PARAMS,
    explain_top: int = 20,
) -> Score:
    """Score a target against a fresh IncidentSet (default parameters unless given)."""
    return score_target(
        target, IncidentSet(incidents, params), as_of, params, explain_top=explain_top
    )


def background(params: ModelParams) -> float:
    """The probability of a place without incidents: the calibration at intensity 0."""
    return float(terms.calibrate(np.asarray(0.0), params))


def at_points(
    fn: Callable[..., FloatArray],
    lonlats: list[tuple[float, float]],
    incidents: IncidentSet,
    params: ModelParams,
    as_of: datetime = AS_OF,
) -> FloatArray:
    """A bulk path (intensities, probabilities, score_points) at (lon, lat) points as of a time."""
    lats = np.array([lat for _, lat in lonlats])
    lons = np.array([lon for lon, _ in lonlats])
    result: FloatArray = fn(lats, lons, np.full(lats.shape, as_of.timestamp()), incidents, params)
    return result


def number(factors: Mapping[str, float | str | None], key: str) -> float:
    """A numeric factor of a contribution."""
    value = factors[key]
    assert isinstance(value, float)
    return value


def synthetic_incidents(n: int, seed: int = 7) -> list[Incident]:
    """Seeded incidents of every kind spread over the Sahel and the 400 days before AS_OF.

    Victim and target profiles go on point incidents only: an area-scoped incident with a target
    profile is hidden from the bare path, see
    test_suspected_bug_area_scoped_incident_with_target_profile_hidden_from_fitted_part
    (tests/test_risk_adjustments.py).
    """
    rng = np.random.default_rng(seed)
    categories = list(Category)
    sectors = list(Sector)
    out = []
    for i in range(n):
        area = rng.random() < 0.02
        occurred = AS_OF - timedelta(days=float(rng.uniform(0, 400)))
        profiled = not area and rng.random() < 0.2
        out.append(
            incident(
                id=i,
                category=categories[int(rng.integers(len(categories)))],
                occurred_at=occurred,
                reported_at=occurred + timedelta(days=float(rng.uniform(0, 5))),
                occurred_precision=list(TimePrecision)[int(rng.integers(3))],
                lat=None if area else float(rng.uniform(10, 25)),
                lon=None if area else float(rng.uniform(-12, 16)),
                location_precision=list(LocationPrecision)[int(rng.integers(3))],
                scope_countries=frozenset({"MLI"}) if area and rng.random() < 0.5 else frozenset(),
                target_foreign_owned_only=profiled and bool(rng.random() < 0.3),
                target_sectors=(
                    frozenset({sectors[int(rng.integers(len(sectors)))]})
                    if profiled
                    else frozenset()
                ),
                target_type=list(TargetType)[int(rng.integers(len(TargetType)))],
                victim_expatriate=bool(rng.random() < 0.1),
                victim_sector=sectors[int(rng.integers(len(sectors)))] if profiled else None,
                fatalities_best=int(rng.integers(0, 50)) if rng.random() < 0.5 else None,
                fatalities_claimed=int(rng.integers(0, 100)) if rng.random() < 0.5 else None,
                source_reliability=float(rng.uniform(0, 1)),
                lifecycle=Lifecycle.DEVELOPING if rng.random() < 0.2 else Lifecycle.CONFIRMED,
            )
        )
    return out


def nearby_incidents(n: int, seed: int = 8, first_id: int = 5000) -> list[Incident]:
    """Seeded incidents of every category within 2 degrees of the mine, some with profiles."""
    rng = np.random.default_rng(seed)
    return [
        aged(
            float(rng.uniform(0, 400)),
            id=first_id + k,
            category=list(Category)[int(rng.integers(len(Category)))],
            lat=MINE_SW_MALI[1] + float(rng.uniform(-2, 2)),
            lon=MINE_SW_MALI[0] + float(rng.uniform(-2, 2)),
            fatalities_best=int(rng.integers(0, 20)),
            victim_sector=Sector.MINING if k % 3 == 0 else None,
            victim_expatriate=k % 5 == 0,
            target_sectors=frozenset({Sector.ENERGY}) if k % 4 == 0 else frozenset(),
            target_type=list(TargetType)[int(rng.integers(len(TargetType)))],
        )
        for k in range(n)
    ]


# What counts


def test_empty_incident_set_scores_the_background_probability_and_nothing_else() -> None:
    for params in (DEFAULT_PARAMS, SIMPLE):
        result = score(site(), [], params=params)
        assert result.probability == result.generic_probability == background(params)
        assert result.value == pytest.approx(100 * background(params), abs=0.05)
        assert result.contributions == ()
        assert result.adjustments == ()
        assert result.incident_count == 0
        assert result.escalation["factor"] == 0.0
        assert result.components[Component.BACKGROUND] == pytest.approx(
            100 * background(params), abs=0.005
        )
        assert all(v == 0.0 for k, v in result.components.items() if k is not Component.BACKGROUND)
    assert score(site(), [], params=SIMPLE).value == 2.0


def test_incident_is_ignored_as_of_before_it_was_reported() -> None:
    late = incident(reported_at=AS_OF + timedelta(days=2))
    assert score(site(), [late]).probability == background(DEFAULT_PARAMS)
    assert score(site(), [late], AS_OF + timedelta(days=3)).probability > background(DEFAULT_PARAMS)


def test_incident_occurring_after_as_of_is_ignored() -> None:
    future = incident(occurred_at=AS_OF + timedelta(hours=1))
    assert score(site(), [future]).probability == background(DEFAULT_PARAMS)


def test_retracted_incident_is_ignored_and_dropped_from_the_set() -> None:
    retracted = incident(lifecycle=Lifecycle.RETRACTED)
    assert score(site(), [retracted]).probability == background(DEFAULT_PARAMS)
    assert len(IncidentSet([retracted, incident(id=2)], DEFAULT_PARAMS)) == 1


def test_merged_incident_is_ignored_and_dropped_from_the_set() -> None:
    merged = incident(merged=True)
    assert score(site(), [merged]).probability == background(DEFAULT_PARAMS)
    assert len(IncidentSet([merged, incident(id=2)], DEFAULT_PARAMS)) == 1


def test_incident_older_than_the_lookback_is_ignored() -> None:
    old = aged(DEFAULT_PARAMS.lookback_days + 1)
    assert score(site(), [old]).probability == background(DEFAULT_PARAMS)


def test_area_scoped_incident_counts_at_the_area_distance_for_targets_in_its_area_only() -> None:
    area_attack = incident(
        id=7,
        lat=None,
        lon=None,
        location_precision=LocationPrecision.REGION,
        scope_countries=frozenset({"MLI"}),
    )
    in_mali = score(site(), [area_attack], params=SIMPLE)
    in_senegal = score(
        site(SITE_SENEGAL, countries=frozenset({"SEN"})), [area_attack], params=SIMPLE
    )
    assert in_mali.generic_probability > background(SIMPLE)
    assert in_senegal.probability == background(SIMPLE)
    factors = in_mali.contributions[0].factors
    assert factors["distance_km"] is None
    assert factors["distance_basis"] == "area"
    assert factors["effective_distance_km"] == SIMPLE.area_distance_km
    assert "area-wide (MLI)" in in_mali.contributions[0].why


def test_admin1_scope_must_match_when_given() -> None:
    scoped = incident(lat=None, lon=None, scope_admin1=frozenset({"ML-3"}))
    assert area_scope_matches(scoped, site(admin1=frozenset({"ML-3"})))
    assert not area_scope_matches(scoped, site(admin1=frozenset({"ML-4"})))
    inside = score(site(admin1=frozenset({"ML-3"})), [scoped], params=SIMPLE)
    outside = score(site(admin1=frozenset({"ML-4"})), [scoped], params=SIMPLE)
    assert inside.probability > outside.probability == background(SIMPLE)


def test_naive_as_of_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        score(site(), [incident()], AS_OF.replace(tzinfo=None))


def test_naive_incident_times_are_refused_when_the_set_is_built() -> None:
    with pytest.raises(ValueError, match=r"incident 1 occurred_at must be timezone-aware"):
        IncidentSet([incident(occurred_at=AS_OF.replace(tzinfo=None))], DEFAULT_PARAMS)
    with pytest.raises(ValueError, match=r"incident 1 reported_at must be timezone-aware"):
        IncidentSet([incident(reported_at=AS_OF.replace(tzinfo=None))], DEFAULT_PARAMS)


# The formula's terms


def test_one_incident_gives_the_calibration_of_its_weight_worked_out_by_hand() -> None:
    event = incident(fatalities_best=30, source_reliability=0.8)
    assert event.lat is not None
    assert event.lon is not None
    p = SIMPLE
    d = float(haversine_km(MINE_SW_MALI[1], MINE_SW_MALI[0], event.lat, event.lon))
    static = (
        (1.0 + p.severity_log_coefficient * math.log10(31.0))
        * (p.credibility_floor + (1.0 - p.credibility_floor) * 0.8)
        * p.location_factor[LocationPrecision.EXACT]
        * p.time_precision_factor[TimePrecision.DAY]
    )
    d_eff = math.hypot(d, p.location_sigma_km[LocationPrecision.EXACT])
    c = static * math.exp(-d_eff / 20.0) * 0.5 ** (1.0 / 30.0)
    expected = float(np.interp(c, [0.0, 1.0, 4.0], [0.02, 0.5, 0.9]))

    result = score(site(), [event], params=p)
    assert result.generic_probability == pytest.approx(expected, rel=1e-12)
    assert result.probability == result.generic_probability
    assert result.value == pytest.approx(100 * expected, abs=0.05)
    assert result.contributions[0].factors["effective_distance_km"] == pytest.approx(d_eff, 1e-3)


def test_decay_halves_at_the_half_life() -> None:
    decays = [
        score(site(), [aged(days)], params=SIMPLE).contributions[0].factors["decay"]
        for days in (0.0, 30.0, 60.0)
    ]
    assert decays == pytest.approx([1.0, 0.5, 0.25])


def test_kernel_falls_with_the_distance_blurred_by_the_location_sigma() -> None:
    for precision in (LocationPrecision.EXACT, LocationPrecision.NEAR, LocationPrecision.REGION):
        result = score(site(), [incident(location_precision=precision)], params=SIMPLE)
        factors = result.contributions[0].factors
        distance = factors["distance_km"]
        assert isinstance(distance, float)
        d_eff = math.hypot(distance, SIMPLE.location_sigma_km[precision])
        assert factors["effective_distance_km"] == pytest.approx(d_eff, abs=1e-3)
        assert factors["kernel"] == pytest.approx(math.exp(-d_eff / 20.0), rel=1e-4)
        assert factors["precision"] == SIMPLE.location_factor[precision]


def test_independent_fatality_figure_is_preferred_over_the_claimed_one() -> None:
    both = score(site(), [incident(fatalities_claimed=100, fatalities_best=30)]).contributions[0]
    assert both.factors["fatalities_used"] == 30.0
    assert both.factors["fatalities_basis"] == "independent"
    assert both.factors["severity"] == pytest.approx(
        1 + DEFAULT_PARAMS.severity_log_coefficient * math.log10(31)
    )
    assert "30 killed (independent figure)" in both.why


def test_claimed_fatalities_alone_are_discounted() -> None:
    claimed = score(site(), [incident(fatalities_claimed=100)]).contributions[0]
    assert claimed.factors["fatalities_used"] == 100 * DEFAULT_PARAMS.claimed_fatalities_discount
    assert claimed.factors["fatalities_basis"] == "claimed, discounted"
    assert "100 killed claimed, counted as" in claimed.why
    none = score(site(), [incident()]).contributions[0]
    assert none.factors["fatalities_basis"] == "none"
    assert none.factors["fatalities_used"] is None
    assert none.factors["severity"] == 1.0


def test_more_fatalities_and_more_reliable_sources_score_higher() -> None:
    def probability(**overrides: Any) -> float:
        return score(site(), [incident(**overrides)], params=SIMPLE).probability

    base = probability(fatalities_best=1)
    assert probability(fatalities_best=100) > base
    assert probability(fatalities_best=1, source_reliability=0.1) < base
    assert probability(fatalities_best=1, lifecycle=Lifecycle.DEVELOPING) < base
    assert probability(fatalities_best=1, occurred_precision=TimePrecision.MONTH) < base


def test_nearer_incident_scores_higher_and_one_beyond_the_reach_counts_nothing() -> None:
    for params in (DEFAULT_PARAMS, SIMPLE):

        def generic(degrees_north: float, p: ModelParams = params) -> float:
            event = incident(lat=MINE_SW_MALI[1] + degrees_north)
            return score(site(), [event], params=p).generic_probability

        assert generic(0.1) > generic(1.0) >= generic(5.0) == background(params)
        assert generic(0.1) > background(params)


def test_distance_is_measured_from_the_sites_point_not_the_edge_of_its_radius() -> None:
    events = [incident(id=k, lat=MINE_SW_MALI[1] + 0.05 * k) for k in range(1, 8)]
    results = [score(site(radius_km=r), events) for r in (0.0, 5.0, 50.0)]
    assert len({r.value for r in results}) == 1
    assert len({r.probability for r in results}) == 1
    assert results[0].probability > background(DEFAULT_PARAMS)


def test_decay_fades_smoothly_to_nothing_at_the_lookback_without_a_cliff() -> None:
    # The old model fell from 80 to 0 in one step at the lookback.
    slow = replace(SIMPLE, half_lives_days=(365.0,))
    event = incident(lat=MINE_SW_MALI[1], fatalities_best=30)
    for params in (DEFAULT_PARAMS, slow):
        results = [
            score(site(), [event], event.occurred_at + timedelta(days=d), params)
            for d in range(300, int(params.lookback_days) + 1)
        ]
        values = np.array([r.value for r in results])
        start = values[0] - 100 * background(params)
        assert start > 0.0
        steps = np.diff(values)
        assert np.all(steps <= 0.0)
        # At least ten days to fall the whole way: no step is more than a tenth of it.
        assert np.max(-steps) <= 0.1 * start
        assert results[-1].probability == background(params)
        assert results[-1].contributions == ()


def test_escalation_multiplies_the_intensity_by_one_plus_the_factor() -> None:
    burst = [aged(k + 1, id=k) for k in range(5)]
    calm_set, escalating_set = IncidentSet(burst, SIMPLE), IncidentSet(burst, ESCALATING)
    result = score_target(site(), escalating_set, AS_OF, ESCALATING)
    factor = result.escalation["factor"]
    assert factor > 0.0
    raw = at_points(intensities, [MINE_SW_MALI], calm_set, SIMPLE)[0]
    total = at_points(intensities, [MINE_SW_MALI], escalating_set, ESCALATING)[0]
    assert total == pytest.approx(raw * (1.0 + factor), rel=1e-9)
    assert result.generic_probability == pytest.approx(
        float(terms.calibrate(np.asarray(total), ESCALATING)), rel=1e-9
    )


def test_recent_burst_against_a_quiet_baseline_escalates_and_a_steady_tempo_does_not() -> None:
    steady = [aged(3 + 7 * k, id=k) for k in range(15)]
    burst = [aged(k + 1, id=100 + k) for k in range(5)]
    steady_result = score(site(), steady, params=ESCALATING)
    burst_result = score(site(), steady + burst, params=ESCALATING)
    assert steady_result.escalation["factor"] < 0.05
    assert burst_result.escalation["local_ratio"] > 2.0
    assert burst_result.escalation["factor"] > 0.1
    assert burst_result.components[Component.ESCALATION] > 0.0
    assert score(site(), steady + burst, params=SIMPLE).components[Component.ESCALATION] == 0.0


# The probability, the value and the bands


def test_calibration_never_falls_and_starts_at_the_background() -> None:
    for params in (DEFAULT_PARAMS, SIMPLE):
        top = params.calibration[-1][0]
        grid = np.linspace(0.0, 2.0 * top, 2001)
        p = terms.calibrate(grid, params)
        assert np.all(np.diff(p) >= 0.0)
        assert p[0] == background(params)
        assert np.all((p >= 0.0) & (p < 1.0))


def test_probabilities_are_the_calibrated_intensities_and_never_fall_as_they_rise() -> None:
    incident_set = IncidentSet(synthetic_incidents(800, seed=4), DEFAULT_PARAMS)
    rng = np.random.default_rng(2)
    points = [(float(lon), float(lat)) for lon, lat in rng.uniform((-11, 11), (8, 20), (200, 2))]
    lam = at_points(intensities, points, incident_set, DEFAULT_PARAMS)
    p = at_points(probabilities, points, incident_set, DEFAULT_PARAMS)
    np.testing.assert_array_equal(p, terms.calibrate(lam, DEFAULT_PARAMS))
    order = np.argsort(lam, kind="stable")
    assert np.all(np.diff(p[order]) >= 0.0)
    assert len(set(lam.tolist())) > 100


def test_more_incidents_nearby_never_lower_the_generic_probability() -> None:
    events = nearby_incidents(60)
    mine = site(sector=Sector.MINING, foreign_owned=True)
    generic = [score(mine, events[:k]).generic_probability for k in range(len(events) + 1)]
    # A tolerance for summation order only: an incident that adds 0 may move the last bit.
    assert np.all(np.diff(generic) >= -1e-12)
    assert generic[-1] > generic[0]


def test_value_is_the_probability_in_percent_rounded_to_one_decimal() -> None:
    incidents = synthetic_incidents(400, seed=3)
    targets = [site(), site(sector=Sector.MINING, foreign_owned=True), road_to_sikasso()]
    for params in (DEFAULT_PARAMS, SIMPLE):
        for target in targets:
            result = score(target, incidents, params=params)
            assert 0.0 <= result.probability < 1.0
            assert result.value == pytest.approx(100 * result.probability, abs=0.05 + 1e-9)
            assert result.value * 10 == pytest.approx(round(result.value * 10), abs=1e-9)
            assert result.band is band_for(result.value, params)


def test_bands_are_probability_ranges_with_critical_from_fifty_percent() -> None:
    values = [0.0, 4.9, 5.0, 14.9, 15.0, 29.9, 30.0, 49.9, 50.0, 100.0]
    assert [band_for(v, DEFAULT_PARAMS) for v in values] == [
        Band.LOW, Band.LOW, Band.MODERATE, Band.MODERATE, Band.ELEVATED,
        Band.ELEVATED, Band.HIGH, Band.HIGH, Band.CRITICAL, Band.CRITICAL,
    ]  # fmt: skip
    more_likely_than_not = score(
        site(), [incident(lat=MINE_SW_MALI[1], fatalities_best=30)], params=SIMPLE
    )
    assert more_likely_than_not.probability >= 0.5
    assert more_likely_than_not.band is Band.CRITICAL


def test_components_sum_to_the_value() -> None:
    burst = [aged(k + 1, id=10_000 + k, category=Category.KIDNAPPING) for k in range(5)]
    incidents = synthetic_incidents(400, seed=3) + nearby_incidents(40) + burst
    mine = site(sector=Sector.MINING, foreign_owned=True, expat_staff=True)
    for params in (DEFAULT_PARAMS, ESCALATING):
        for target in (mine, bare_site(), road_to_sikasso(), air_leg()):
            result = score(target, incidents, params=params, explain_top=10_000)
            assert result.value > 0.0
            # value within 0.05 of 100 p, five components each within 0.005 of theirs.
            assert sum(result.components.values()) == pytest.approx(result.value, abs=0.08)
            fixed = (
                result.components[Component.ESCALATION] + result.components[Component.BACKGROUND]
            )
            assert sum(c.points for c in result.contributions) + fixed == pytest.approx(
                result.value, abs=0.08
            )
    assert score(mine, incidents, params=ESCALATING).components[Component.ESCALATION] > 0.0


# Fast bulk paths


def test_score_points_agrees_with_score_target_on_bare_sites() -> None:
    incident_set = IncidentSet(synthetic_incidents(1500, seed=11), DEFAULT_PARAMS)
    rng = np.random.default_rng(5)
    lats = np.repeat(rng.uniform(11, 20, 8), 6)
    lons = np.repeat(rng.uniform(-10, 10, 8), 6)
    times = [AS_OF - timedelta(days=float(d)) for d in rng.uniform(0, 200, lats.shape[0])]
    stamps = np.array([t.timestamp() for t in times])
    fast = score_points(lats, lons, stamps, incident_set, DEFAULT_PARAMS, radius_km=7.5)
    fast_p = probabilities(lats, lons, stamps, incident_set, DEFAULT_PARAMS)
    slow = [
        score_target(
            bare_site((float(lon), float(lat)), radius_km=7.5),
            incident_set,
            t,
            DEFAULT_PARAMS,
            explain_top=0,
        )
        for lat, lon, t in zip(lats, lons, times, strict=True)
    ]
    assert np.count_nonzero(fast) > len(slow) // 2
    np.testing.assert_allclose(fast, [s.value for s in slow], atol=1e-6)
    np.testing.assert_allclose(fast_p, [s.probability for s in slow], rtol=1e-9, atol=1e-12)


def test_score_points_counts_unscoped_area_incidents_like_score_target() -> None:
    statement = incident(category=Category.POLITICAL_STATEMENT, lat=None, lon=None)
    incident_set = IncidentSet([statement], SIMPLE)
    fast = at_points(probabilities, [(-2.0, 14.0)], incident_set, SIMPLE)
    slow = score_target(bare_site((-2.0, 14.0)), incident_set, AS_OF, SIMPLE)
    assert fast[0] > background(SIMPLE)
    assert fast[0] == pytest.approx(slow.probability, rel=1e-12)


def test_influence_radius_covers_sigma_and_reach_and_is_none_for_area_scoped() -> None:
    area = incident(lat=None, lon=None, scope_countries=frozenset({"MLI"}))
    assert influence_radius_km(area, DEFAULT_PARAMS) is None
    exact = influence_radius_km(incident(), DEFAULT_PARAMS)
    region = influence_radius_km(
        incident(location_precision=LocationPrecision.REGION), DEFAULT_PARAMS
    )
    sigma = DEFAULT_PARAMS.location_sigma_km
    assert exact == pytest.approx(sigma[LocationPrecision.EXACT] + DEFAULT_PARAMS.reach_km)
    assert region == pytest.approx(sigma[LocationPrecision.REGION] + DEFAULT_PARAMS.reach_km)
    assert region is not None
    assert max_influence_km(DEFAULT_PARAMS) >= region


def test_incident_counts_up_to_the_reach_and_not_beyond_it() -> None:
    reach = SIMPLE.reach_km

    def intensity(km_north: float) -> float:
        event = incident(lat=MINE_SW_MALI[1] + km_north / KM_PER_DEG_LAT)
        return float(
            at_points(intensities, [MINE_SW_MALI], IncidentSet([event], SIMPLE), SIMPLE)[0]
        )

    assert intensity(reach - 5.0) > 0.0
    assert intensity(reach) == 0.0
    assert intensity(reach + 50.0) == 0.0


# Parameters


def test_model_params_round_trip_through_json() -> None:
    for params in (DEFAULT_PARAMS, SIMPLE):
        data = json.loads(json.dumps(params.to_dict()))
        assert is_current(data)
        assert ModelParams.from_dict(data) == params
        assert ModelParams.from_dict(data).to_dict() == params.to_dict()
    assert not is_current({"schema": 1, "saturation": 1.0})


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d.update(surprise=1), "surprise: unknown key"),
        (lambda d: d.pop("reach_km"), "reach_km: missing key"),
        (lambda d: d.update(reach_km=0), "reach_km: must be positive"),
        (lambda d: d.update(lookback_days="a year"), "lookback_days"),
        (lambda d: d.update(schema=1), "schema"),
        (lambda d: d["location_factor"].update(vague=1.0), r"location_factor\.vague"),
        (lambda d: d["location_factor"].pop("near"), r"location_factor\.near: missing"),
        (lambda d: d.update(forecast_categories=["riot"]), r"forecast_categories\[0\]"),
        (lambda d: d["coefficients"]["attack"][0].__setitem__(0, -1.0), r"attack\[0\]\[0\]"),
        (lambda d: d["coefficients"]["attack"].pop(), r"coefficients\.attack: expected"),
        (lambda d: d["groups"].update(ied="no_such_group"), r"groups\.ied"),
        (lambda d: d["groups"].update(explicit_threat="attack"), r"groups\.explicit_threat"),
        (lambda d: d.update(calibration=[[0, 0.5], [1, 0.2]]), "calibration"),
        (lambda d: d.update(calibration=[[0, 0.5], [1, 1.0]]), r"calibration\[1\]\[1\]"),
        (lambda d: d.update(band_thresholds=[20, 40, 30, 80]), "band_thresholds"),
        (lambda d: d.update(taper_share=1.5), "taper_share"),
    ],
)
def test_model_params_from_dict_rejects_bad_input_naming_the_key(
    change: Callable[[dict[str, Any]], object], key: str
) -> None:
    data = json.loads(json.dumps(DEFAULT_PARAMS.to_dict()))
    change(data)
    with pytest.raises(ValueError, match=key):
        ModelParams.from_dict(data)


def test_incident_set_built_under_other_params_is_refused() -> None:
    other = replace(DEFAULT_PARAMS, escalation_gain=DEFAULT_PARAMS.escalation_gain + 0.25)
    incident_set = IncidentSet([incident()], other)
    with pytest.raises(ValueError, match="different ModelParams"):
        score_target(site(), incident_set, AS_OF, DEFAULT_PARAMS)
    with pytest.raises(ValueError, match="different ModelParams"):
        at_points(score_points, [MINE_SW_MALI], incident_set, DEFAULT_PARAMS)


# The explanation


def test_explanation_says_what_where_when_and_how_many_died() -> None:
    event = incident(title="Kenieba checkpoint", fatalities_best=4)
    why = score(site(), [event]).contributions[0].why
    assert (
        why
        == "Kenieba checkpoint: armed assault, 10 km away, 1 day ago, 4 killed (independent figure)"
    )


def test_explanation_notes_an_incident_inside_the_radius_and_doubts_about_the_report() -> None:
    event = incident(
        category=Category.IED,
        lat=MINE_SW_MALI[1],
        lifecycle=Lifecycle.DEVELOPING,
        location_precision=LocationPrecision.NEAR,
        occurred_precision=TimePrecision.WEEK,
    )
    why = score(site(), [event], params=SIMPLE).contributions[0].why
    assert why.startswith("IED, inside the site's radius (0 km from its centre), 1 day ago; ")
    assert "report still developing" in why
    assert "location approximate (+/-25 km)" in why
    assert "date known to the week" in why


def test_contribution_factors_multiply_to_the_incidents_weight() -> None:
    event = incident(fatalities_best=9, source_reliability=0.4, lifecycle=Lifecycle.DEVELOPING)
    result = score(site(), [aged(40, id=2), event], params=SIMPLE)
    assert {c.incident_id for c in result.contributions} == {1, 2}
    for contribution in result.contributions:
        f = contribution.factors
        assert set(f) == {
            "distance_km", "distance_basis", "effective_distance_km", "group", "fitted_weight",
            "kernel", "age_days", "decay", "severity", "fatalities_used", "fatalities_basis",
            "precision", "time_precision", "credibility", "profile_match", "mode_factor",
        }  # fmt: skip
        assert f["group"] == "attack"
        assert f["distance_basis"] == "site"
        assert f["profile_match"] == f["mode_factor"] == 1.0
        # With a single coefficient of 1, the fitted weight is kernel x decay.
        kernel, decay = number(f, "kernel"), number(f, "decay")
        assert f["fitted_weight"] == pytest.approx(kernel * decay)
        assert decay == pytest.approx(0.5 ** (number(f, "age_days") / 30.0), rel=1e-4)
    assert result.contributions[0].incident_id == 1
    assert result.contributions[0].factors["credibility"] == pytest.approx(
        (SIMPLE.credibility_floor + (1 - SIMPLE.credibility_floor) * 0.4) * SIMPLE.developing_factor
    )


def test_contributions_are_largest_first_and_cut_to_explain_top() -> None:
    incidents = synthetic_incidents(300) + nearby_incidents(40)
    full = score(site(), incidents, explain_top=10_000)
    points = [c.points for c in full.contributions]
    assert points == sorted(points, reverse=True)
    assert full.incident_count == sum(p >= DEFAULT_PARAMS.negligible_points for p in points)
    assert full.incident_count > 3
    cut = score(site(), incidents, explain_top=3)
    assert [c.incident_id for c in cut.contributions] == [
        c.incident_id for c in full.contributions[:3]
    ]
    assert cut.incident_count == full.incident_count
    assert sum(c.share for c in cut.contributions) < 1.0


# Corridors


def test_corridor_distance_is_to_the_line_and_hotspots_sit_near_the_incidents() -> None:
    road = road_to_sikasso(mode=None)
    ied = incident(id=1, category=Category.IED, lat=11.75, lon=-6.25, fatalities_best=4)
    ambush = incident(id=2, category=Category.ARMED_ASSAULT, lat=12.45, lon=-7.6)
    result = score(road, [ied, ambush])
    assert result.value > 0.0
    assert 1 <= len(result.hotspots) <= DEFAULT_PARAMS.hotspot_count
    assert [h.score for h in result.hotspots] == sorted(
        (h.score for h in result.hotspots), reverse=True
    )
    for hotspot in result.hotspots:
        assert hotspot.band is band_for(hotspot.score, DEFAULT_PARAMS)
    nearest = []
    for event in (ied, ambush):
        assert event.lat is not None
        assert event.lon is not None
        to_route, _ = point_to_polyline_km(
            np.array([event.lat]), np.array([event.lon]), road.coordinates
        )
        contribution = next(c for c in result.contributions if c.incident_id == event.id)
        assert contribution.factors["distance_km"] == pytest.approx(float(to_route[0]), abs=1e-3)
        assert contribution.factors["distance_basis"] == "route"
        assert "km from the route" in contribution.why

        def to_hotspot(h: Any, e: Incident = event) -> float:
            d, _ = point_to_polyline_km(np.array([e.lat]), np.array([e.lon]), h.coordinates)
            return float(d[0])

        near = min(result.hotspots, key=to_hotspot)
        assert to_hotspot(near) < 15.0
        nearest.append(near.index)
    assert result.hotspots[0].index in nearest


def test_site_gets_no_hotspots() -> None:
    assert score(site(), [incident()]).hotspots == ()
