"""The risk model: what counts, how much, and how it is explained."""

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from services.scoring.geo import haversine_km, point_to_polyline_km
from services.scoring.risk import (
    DEFAULT_PARAMS,
    Incident,
    IncidentSet,
    ModelParams,
    Target,
    area_scope_matches,
    band_for,
    influence_radius_km,
    max_influence_km,
    score_points,
    score_target,
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


def score(
    target: Target,
    incidents: list[Incident],
    as_of: datetime = AS_OF,
    params: ModelParams = DEFAULT_PARAMS,
    **kw: Any,
) -> Any:
    """Score a target against a fresh IncidentSet (default parameters unless given)."""
    return score_target(target, IncidentSet(incidents, params), as_of, params, **kw)


def synthetic_incidents(n: int, seed: int = 7) -> list[Incident]:
    """Seeded incidents spread over the Sahel and the year before AS_OF, of every kind."""
    rng = np.random.default_rng(seed)
    categories = list(Category)
    out = []
    for i in range(n):
        area = rng.random() < 0.02
        occurred = AS_OF - timedelta(days=float(rng.uniform(0, 400)))
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
                target_foreign_owned_only=bool(rng.random() < 0.05),
                target_type=list(TargetType)[int(rng.integers(len(TargetType)))],
                fatalities_best=int(rng.integers(0, 50)) if rng.random() < 0.5 else None,
                fatalities_claimed=int(rng.integers(0, 100)) if rng.random() < 0.5 else None,
                source_reliability=float(rng.uniform(0, 1)),
                lifecycle=Lifecycle.DEVELOPING if rng.random() < 0.2 else Lifecycle.CONFIRMED,
            )
        )
    return out


def test_empty_incident_set_scores_zero_and_low() -> None:
    result = score(site(), [])
    assert result.value == 0.0
    assert result.band is Band.LOW
    assert result.contributions == ()
    assert result.incident_count == 0
    assert all(v == 0.0 for v in result.components.values())
    assert result.escalation["factor"] == 0.0


def test_incident_is_ignored_as_of_before_it_was_reported() -> None:
    late = incident(reported_at=AS_OF + timedelta(days=2))
    assert score(site(), [late]).value == 0.0
    assert score(site(), [late], AS_OF + timedelta(days=3)).value > 0.0


def test_incident_occurring_after_as_of_is_ignored() -> None:
    assert score(site(), [incident(occurred_at=AS_OF + timedelta(hours=1))]).value == 0.0


def test_retracted_incident_is_ignored_and_dropped_from_the_set() -> None:
    retracted = incident(lifecycle=Lifecycle.RETRACTED)
    assert score(site(), [retracted]).value == 0.0
    assert len(IncidentSet([retracted, incident(id=2)], DEFAULT_PARAMS)) == 1


def test_incident_older_than_the_lookback_is_ignored() -> None:
    old = incident(occurred_at=AS_OF - timedelta(days=366), reported_at=AS_OF - timedelta(days=366))
    assert score(site(), [old]).value == 0.0


def test_decay_halves_at_the_category_half_life_without_persistence() -> None:
    params = replace(DEFAULT_PARAMS, persistence_share=0.0)
    half_life = params.categories[Category.ARMED_ASSAULT].half_life_days
    at = [
        score(
            site(), [incident(occurred_at=AS_OF - timedelta(days=days))], params=params
        ).contributions[0]
        for days in (0, half_life, 2 * half_life)
    ]
    assert [c.factors["decay"] for c in at] == pytest.approx([1.0, 0.5, 0.25])


def test_a_share_of_the_weight_persists_for_a_year() -> None:
    p = DEFAULT_PARAMS
    half_life = p.categories[Category.ARMED_ASSAULT].half_life_days
    contribution = score(
        site(), [incident(occurred_at=AS_OF - timedelta(days=4 * half_life))]
    ).contributions[0]
    fast = (1 - p.persistence_share) * 0.5**4
    slow = p.persistence_share * 0.5 ** (4 * half_life / p.persistence_half_life_days)
    assert contribution.factors["decay"] == pytest.approx(fast + slow)
    # Four half-lives on, the slow memory holds most of what is left.
    assert slow > fast


def test_independent_fatality_figure_is_preferred_over_the_claimed_one() -> None:
    both = score(site(), [incident(fatalities_claimed=100, fatalities_best=30)]).contributions[0]
    assert both.factors["fatalities_used"] == 30.0
    assert both.factors["fatalities_basis"] == "independent"
    assert both.factors["severity"] == pytest.approx(1 + 0.5 * math.log10(31))
    assert "30 killed (independent figure)" in both.why


def test_claimed_fatalities_alone_are_discounted() -> None:
    claimed = score(site(), [incident(fatalities_claimed=100)]).contributions[0]
    assert claimed.factors["fatalities_used"] == 50.0
    assert claimed.factors["fatalities_basis"] == "claimed, discounted"
    none = score(site(), [incident()]).contributions[0]
    assert none.factors["fatalities_basis"] == "none"
    assert none.factors["severity"] == 1.0


def test_more_fatalities_and_more_reliable_sources_score_higher() -> None:
    base = score(site(), [incident(fatalities_best=1)]).value
    assert score(site(), [incident(fatalities_best=100)]).value > base
    assert score(site(), [incident(fatalities_best=1, source_reliability=0.1)]).value < base
    assert score(site(), [incident(fatalities_best=1, lifecycle=Lifecycle.DEVELOPING)]).value < base


def test_nearer_incident_scores_higher_and_one_beyond_every_reach_counts_nothing() -> None:
    near = score(site(), [incident(lat=MINE_SW_MALI[1] + 0.1)]).value
    far = score(site(), [incident(lat=MINE_SW_MALI[1] + 1.0)]).value
    very_far = score(site(), [incident(lat=MINE_SW_MALI[1] + 5.0)]).value
    assert near > far > very_far == 0.0


def test_one_assault_with_30_dead_at_the_site_a_day_ago_rates_high_before_escalation() -> None:
    event = incident(lat=MINE_SW_MALI[1], fatalities_best=30)
    calm = replace(DEFAULT_PARAMS, escalation_gain=0.0)
    value = score_target(site(), IncidentSet([event], calm), AS_OF, calm).value
    assert band_for(value, calm) is Band.HIGH
    # A first attack in a quiet place is itself an escalation, which lifts it further.
    escalated = score(site(), [event])
    assert escalated.escalation["factor"] == pytest.approx(DEFAULT_PARAMS.escalation_gain * 2.0)
    assert escalated.value > value


FOREIGN_FIRM_THREAT = incident(
    id=10,
    category=Category.EXPLICIT_THREAT,
    lat=None,
    lon=None,
    location_precision=LocationPrecision.REGION,
    scope_countries=frozenset({"MLI", "BFA", "NER"}),
    target_foreign_owned_only=True,
    target_type=TargetType.FOREIGN_FIRM,
)


def test_threat_to_foreign_firms_raises_a_foreign_owned_mine_in_mali() -> None:
    mine = site(sector=Sector.MINING, foreign_owned=True)
    result = score(mine, [FOREIGN_FIRM_THREAT])
    assert result.value > 0.0
    assert result.components[Component.THREATS] > 0.0
    assert result.contributions[0].factors["distance_km"] is None
    assert "area-wide" in result.contributions[0].why


def test_threat_to_foreign_firms_leaves_a_locally_owned_site_and_a_site_in_senegal_alone() -> None:
    local = site(sector=Sector.MINING, foreign_owned=False)
    senegal = site(SITE_SENEGAL, sector=Sector.MINING, foreign_owned=True, countries={"SEN"})
    assert score(local, [FOREIGN_FIRM_THREAT]).value == 0.0
    assert score(senegal, [FOREIGN_FIRM_THREAT]).value == 0.0
    assert not area_scope_matches(FOREIGN_FIRM_THREAT, senegal)


def test_threat_naming_the_sites_sector_weighs_more_and_one_naming_another_sector_not_at_all() -> (
    None
):
    mine = site(sector=Sector.MINING, foreign_owned=True)
    general = score(mine, [FOREIGN_FIRM_THREAT]).value
    named = score(mine, [replace(FOREIGN_FIRM_THREAT, target_sectors=frozenset({Sector.MINING}))])
    other = score(mine, [replace(FOREIGN_FIRM_THREAT, target_sectors=frozenset({Sector.ENERGY}))])
    assert named.value > general
    assert other.value == 0.0


def test_point_located_threat_to_foreign_firms_leaves_a_locally_owned_site_alone() -> None:
    threat = replace(FOREIGN_FIRM_THREAT, lat=MINE_SW_MALI[1], lon=MINE_SW_MALI[0])
    assert score(site(foreign_owned=False), [threat]).value == 0.0
    assert score(site(foreign_owned=True), [threat]).value > 0.0


def test_admin1_scope_must_match_when_given() -> None:
    threat = replace(FOREIGN_FIRM_THREAT, scope_admin1=frozenset({"ML-3"}))
    assert area_scope_matches(threat, site(foreign_owned=True, admin1=frozenset({"ML-3"})))
    assert not area_scope_matches(threat, site(foreign_owned=True, admin1=frozenset({"ML-4"})))


def test_kidnapping_of_an_expatriate_weighs_more_for_a_site_with_expatriate_staff() -> None:
    kidnap = incident(
        category=Category.KIDNAPPING,
        lat=MINE_SW_MALI[1] + 0.5,
        victim_expatriate=True,
        victim_sector=Sector.MINING,
        target_type=TargetType.MINING,
    )
    without = score(site(sector=Sector.MINING), [kidnap])
    with_expats = score(site(sector=Sector.MINING, expat_staff=True), [kidnap])
    assert with_expats.value > without.value
    assert with_expats.components[Component.KIDNAPPING] > without.components[Component.KIDNAPPING]
    assert "has expatriate staff" in with_expats.contributions[0].why
    assert with_expats.contributions[0].factors["profile_match"] == pytest.approx(2.0 * 1.5 * 1.3)


def test_kidnapping_of_an_expatriate_reaches_farther_for_a_site_with_expatriate_staff() -> None:
    # 300 km away: beyond the kidnapping reach of 250 km, within 1.5 x 250.
    kidnap = incident(
        category=Category.KIDNAPPING, lat=MINE_SW_MALI[1] + 2.8, victim_expatriate=True
    )
    without = score(site(), [kidnap]).contributions[0].factors["kernel"]
    with_expats = score(site(expat_staff=True), [kidnap]).contributions[0].factors["kernel"]
    assert isinstance(without, float)
    assert isinstance(with_expats, float)
    # Without expatriates only the regional background reaches this far.
    assert without == pytest.approx(
        0.05 * math.exp(-(float(haversine_km(12.6, -11.0, 15.4, -11.0)) - 7) / 150)
    )
    assert with_expats > 1.5 * without


def air_leg() -> Target:
    return Target(
        kind=TargetKind.CORRIDOR,
        coordinates=(BKO, TOM),
        radius_km=5.0,
        mode=Mode.AIR,
        countries=frozenset({"MLI"}),
    )


def test_indirect_fire_at_timbuktu_airport_raises_the_air_leg_far_more_than_off_route() -> None:
    at_airport = incident(category=Category.INDIRECT_FIRE, lat=16.73, lon=-3.01)
    mid_lat, mid_lon = (BKO[1] + TOM[1]) / 2, (BKO[0] + TOM[0]) / 2
    # 200 km off the route's midpoint, perpendicular to the route (which runs NE).
    bearing = math.atan2(TOM[1] - BKO[1], (TOM[0] - BKO[0]) * math.cos(math.radians(mid_lat)))
    dlat = 200 / 111.195 * math.cos(bearing)
    dlon = -200 / 111.195 * math.sin(bearing) / math.cos(math.radians(mid_lat))
    off_route = incident(category=Category.INDIRECT_FIRE, lat=mid_lat + dlat, lon=mid_lon + dlon)
    distance, _ = point_to_polyline_km(
        np.array([mid_lat + dlat]), np.array([mid_lon + dlon]), [BKO, TOM]
    )
    assert distance[0] == pytest.approx(200, abs=5)

    airport = score(air_leg(), [at_airport])
    away = score(air_leg(), [off_route])
    assert airport.value > 10 * away.value
    assert airport.contributions[0].factors["distance_basis"] == "airfield"
    assert airport.contributions[0].factors["mode_factor"] == pytest.approx(2.5)
    assert "airfield" in airport.contributions[0].why


def test_anti_aircraft_fire_under_the_flight_path_counts_fully_for_an_air_leg() -> None:
    mid_lat, mid_lon = (BKO[1] + TOM[1]) / 2, (BKO[0] + TOM[0]) / 2
    aaa = incident(category=Category.ANTI_AIRCRAFT_FIRE, lat=mid_lat, lon=mid_lon)
    assault = incident(category=Category.ARMED_ASSAULT, lat=mid_lat, lon=mid_lon)
    road = replace(air_leg(), mode=Mode.ROAD)
    assert score(air_leg(), [aaa]).value > 3 * score(air_leg(), [assault]).value
    assert score(road, [assault]).value > score(air_leg(), [assault]).value


def road_to_sikasso() -> Target:
    return Target(
        kind=TargetKind.CORRIDOR,
        coordinates=(BKO, (-6.6, 12.0), (-5.67, 11.32)),
        radius_km=2.0,
        mode=Mode.ROAD,
        countries=frozenset({"MLI"}),
    )


def test_road_corridor_gets_hotspots_near_the_incidents() -> None:
    road = road_to_sikasso()
    ied = incident(id=1, category=Category.IED, lat=11.75, lon=-6.25, fatalities_best=4)
    ambush = incident(id=2, category=Category.ARMED_ASSAULT, lat=12.45, lon=-7.6)
    result = score(road, [ied, ambush])
    assert result.value > 0.0
    assert 1 <= len(result.hotspots) <= 5
    assert [h.score for h in result.hotspots] == sorted(
        (h.score for h in result.hotspots), reverse=True
    )
    nearest = []
    for event in (ied, ambush):
        assert event.lat is not None
        assert event.lon is not None
        near = min(
            result.hotspots,
            key=lambda h: float(
                point_to_polyline_km(np.array([event.lat]), np.array([event.lon]), h.coordinates)[
                    0
                ][0]
            ),
        )
        d, _ = point_to_polyline_km(np.array([event.lat]), np.array([event.lon]), near.coordinates)
        assert d[0] < 15.0
        nearest.append(near.index)
    assert result.hotspots[0].index in nearest
    assert {c.incident_id: c.factors["mode_factor"] for c in result.contributions} == {
        1: 1.5,
        2: 1.2,
    }


def test_components_and_contributions_sum_to_the_score() -> None:
    incidents = synthetic_incidents(400, seed=3)
    mine = site(sector=Sector.MINING, foreign_owned=True, expat_staff=True)
    for target in (mine, road_to_sikasso(), air_leg()):
        result = score(target, incidents, explain_top=10_000)
        assert result.value > 0.0
        assert sum(result.components.values()) == pytest.approx(result.value, abs=0.06)
        escalation = result.components[Component.ESCALATION]
        assert sum(c.points for c in result.contributions) + escalation == pytest.approx(
            result.value, abs=0.06
        )
        points = [c.points for c in result.contributions]
        assert points == sorted(points, reverse=True)
        assert result.incident_count == sum(p >= DEFAULT_PARAMS.negligible_points for p in points)


def test_explanation_is_cut_to_explain_top() -> None:
    result = score(site(), synthetic_incidents(300), explain_top=3)
    assert len(result.contributions) == 3
    assert result.incident_count > 3


def test_recent_burst_against_a_quiet_baseline_escalates_and_a_steady_tempo_does_not() -> None:
    steady = [
        incident(
            id=k,
            occurred_at=AS_OF - timedelta(days=3 + 7 * k),
            reported_at=AS_OF - timedelta(days=3 + 7 * k),
        )
        for k in range(15)
    ]
    burst = [incident(id=100 + k, occurred_at=AS_OF - timedelta(days=k + 1)) for k in range(5)]
    steady_result = score(site(), steady)
    burst_result = score(site(), steady + burst)
    assert steady_result.escalation["factor"] < 0.05
    assert burst_result.escalation["local_ratio"] > 2.0
    assert burst_result.escalation["factor"] > 0.1
    assert burst_result.components[Component.ESCALATION] > 0.0


def test_score_points_agrees_with_score_target_on_bare_sites() -> None:
    incidents = synthetic_incidents(1500, seed=11)
    incident_set = IncidentSet(incidents, DEFAULT_PARAMS)
    rng = np.random.default_rng(5)
    lats = np.repeat(rng.uniform(11, 20, 8), 6)
    lons = np.repeat(rng.uniform(-10, 10, 8), 6)
    times = [AS_OF - timedelta(days=float(d)) for d in rng.uniform(0, 200, lats.shape[0])]
    stamps = np.array([t.timestamp() for t in times])
    fast = score_points(lats, lons, stamps, incident_set, DEFAULT_PARAMS, radius_km=7.5)
    slow = [
        score_target(
            Target(kind=TargetKind.SITE, coordinates=((float(lon), float(lat)),), radius_km=7.5),
            incident_set,
            t,
            DEFAULT_PARAMS,
            explain_top=0,
        ).value
        for lat, lon, t in zip(lats, lons, times, strict=True)
    ]
    assert np.count_nonzero(fast) > len(slow) // 2
    np.testing.assert_allclose(fast, slow, atol=1e-6)


def test_score_points_counts_unscoped_area_incidents_like_score_target() -> None:
    statement = incident(category=Category.POLITICAL_STATEMENT, lat=None, lon=None)
    incident_set = IncidentSet([statement], DEFAULT_PARAMS)
    fast = score_points(
        np.array([14.0]),
        np.array([-2.0]),
        np.array([AS_OF.timestamp()]),
        incident_set,
        DEFAULT_PARAMS,
    )
    bare = Target(kind=TargetKind.SITE, coordinates=((-2.0, 14.0),), radius_km=0.0)
    assert fast[0] > 0.0
    assert fast[0] == score_target(bare, incident_set, AS_OF, DEFAULT_PARAMS).value


def test_model_params_round_trip_through_json() -> None:
    data = json.loads(json.dumps(DEFAULT_PARAMS.to_dict()))
    assert data["categories"]["ied"]["component"] == "violence"
    assert ModelParams.from_dict(data) == DEFAULT_PARAMS
    assert ModelParams.from_dict(data).to_dict() == DEFAULT_PARAMS.to_dict()


def test_model_params_from_dict_rejects_a_negative_weight_naming_the_key() -> None:
    data = DEFAULT_PARAMS.to_dict()
    data["categories"]["ied"]["weight"] = -1.0
    with pytest.raises(ValueError, match=r"categories\.ied\.weight"):
        ModelParams.from_dict(data)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d.pop("saturation"), "saturation"),
        (lambda d: d.update(saturation=0), "saturation"),
        (lambda d: d.update(lookback_days="a year"), "lookback_days"),
        (lambda d: d["location_factor"].update(vague=1.0), r"location_factor\.vague"),
        (lambda d: d["categories"].pop("vbied"), r"categories\.vbied"),
        (lambda d: d.update(band_thresholds=[20, 40, 30, 80]), "band_thresholds"),
    ],
)
def test_model_params_from_dict_rejects_bad_input_naming_the_key(change: Any, key: str) -> None:
    data = DEFAULT_PARAMS.to_dict()
    change(data)
    with pytest.raises(ValueError, match=key):
        ModelParams.from_dict(data)


def test_incident_set_built_under_other_params_is_refused() -> None:
    other = replace(DEFAULT_PARAMS, saturation=2.0)
    with pytest.raises(ValueError, match="different ModelParams"):
        score_target(site(), IncidentSet([incident()], other), AS_OF, DEFAULT_PARAMS)


def test_naive_as_of_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        score(site(), [incident()], AS_OF.replace(tzinfo=None))


def test_bands_follow_the_thresholds() -> None:
    values = [0.0, 19.9, 20.0, 39.9, 40.0, 60.0, 79.9, 80.0, 100.0]
    assert [band_for(v, DEFAULT_PARAMS) for v in values] == [
        Band.LOW, Band.LOW, Band.MODERATE, Band.MODERATE, Band.ELEVATED,
        Band.HIGH, Band.HIGH, Band.CRITICAL, Band.CRITICAL,
    ]  # fmt: skip


def test_influence_radius_covers_sigma_and_reach_and_is_none_for_area_scoped() -> None:
    assert influence_radius_km(FOREIGN_FIRM_THREAT, DEFAULT_PARAMS) is None
    exact = influence_radius_km(incident(), DEFAULT_PARAMS)
    region = influence_radius_km(
        incident(location_precision=LocationPrecision.REGION), DEFAULT_PARAMS
    )
    assert exact == pytest.approx(2.0 + 400.0)
    assert region == pytest.approx(75.0 + 400.0)
    assert max_influence_km(DEFAULT_PARAMS) >= region


def test_incident_just_inside_the_influence_radius_still_counts() -> None:
    reach = influence_radius_km(incident(), DEFAULT_PARAMS)
    assert reach is not None
    lat = MINE_SW_MALI[1] + (reach + 5.0 - 1.0) / 111.195  # site radius is 5 km
    assert float(haversine_km(MINE_SW_MALI[1], MINE_SW_MALI[0], lat, MINE_SW_MALI[0])) < reach + 5.0
    assert score(site(), [incident(lat=lat, fatalities_best=1000)], explain_top=1).contributions
