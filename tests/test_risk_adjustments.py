"""Firm-specific adjustments on the odds: victim and target profiles, corridor modes, threats."""

import math
from dataclasses import replace

import pytest

from services.scoring.geo import haversine_km
from services.scoring.risk import (
    DEFAULT_PARAMS,
    IncidentSet,
    Score,
    Target,
    area_scope_matches,
    intensities,
    probabilities,
)
from services.scoring.taxonomy import (
    Category,
    Component,
    LocationPrecision,
    Mode,
    Sector,
    TargetType,
)
from tests.test_risk import (
    BKO,
    MINE_SW_MALI,
    SIMPLE,
    SITE_SENEGAL,
    TOM,
    aged,
    air_leg,
    at_points,
    background,
    bare_site,
    incident,
    nearby_incidents,
    number,
    road_to_sikasso,
    score,
    site,
)

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
# An armed assault at the mine, so that there are odds to adjust.
ATTACK = incident(id=1, lat=MINE_SW_MALI[1] + 0.05, fatalities_best=3)
MID_ROUTE = ((BKO[1] + TOM[1]) / 2, (BKO[0] + TOM[0]) / 2)  # (lat, lon)


def odds(p: float) -> float:
    """The odds of a probability."""
    return p / (1.0 - p)


def odds_factor(result: Score) -> float:
    """By how much the adjustments multiplied the odds of the fitted (generic) probability."""
    return odds(result.probability) / odds(result.generic_probability)


def kinds(result: Score) -> dict[str, float]:
    """The adjustments by kind, with their factors."""
    return {a.kind: a.factor for a in result.adjustments}


def unadjusted(result: Score) -> bool:
    """Whether the result is exactly its fitted probability, with no adjustment shown."""
    return result.probability == result.generic_probability and result.adjustments == ()


def weight(result: Score, incident_id: int) -> float:
    """An incident's fitted weight c_i, rebuilt from its contribution's factors."""
    f = next(c for c in result.contributions if c.incident_id == incident_id).factors
    names = ("severity", "credibility", "precision", "time_precision", "fitted_weight")
    return math.prod(number(f, name) for name in names)


def contribution_factor(result: Score) -> float:
    """The profile factor of the first contribution."""
    return number(result.contributions[0].factors, "profile_match")


# Targets without a profile


def test_target_without_any_profile_gets_exactly_the_calibrated_probability() -> None:
    kidnap = incident(
        id=20,
        category=Category.KIDNAPPING,
        victim_expatriate=True,
        victim_sector=Sector.MINING,
        target_type=TargetType.FOREIGN_FIRM,
    )
    named = replace(
        FOREIGN_FIRM_THREAT,
        id=21,
        lat=MINE_SW_MALI[1],
        lon=MINE_SW_MALI[0],
        target_foreign_owned_only=False,
        target_sectors=frozenset({Sector.MINING}),
        target_type=TargetType.MINING,
    )
    incidents = [*nearby_incidents(60), kidnap, named, FOREIGN_FIRM_THREAT]
    incident_set = IncidentSet(incidents, DEFAULT_PARAMS)
    fitted = at_points(probabilities, [MINE_SW_MALI], incident_set, DEFAULT_PARAMS)[0]
    no_profile: list[Target] = [
        bare_site(),
        site(),
        site(mode=Mode.ROAD),  # a mode means nothing for a site
        road_to_sikasso(mode=None),
    ]
    for target in no_profile:
        result = score(target, incidents)
        assert result.probability > background(DEFAULT_PARAMS)
        assert unadjusted(result)
        assert all(c.category is not Category.EXPLICIT_THREAT for c in result.contributions)
    assert score(bare_site(), incidents).probability == pytest.approx(fitted, rel=1e-9)
    assert score(site(), incidents).probability == pytest.approx(fitted, rel=1e-9)


def test_explicit_threats_are_never_in_the_fitted_part() -> None:
    threats = [FOREIGN_FIRM_THREAT, replace(FOREIGN_FIRM_THREAT, id=11, lat=12.6, lon=-11.0)]
    mine = site(sector=Sector.MINING, foreign_owned=True)
    for params in (DEFAULT_PARAMS, SIMPLE):
        incident_set = IncidentSet(threats, params)
        assert at_points(intensities, [MINE_SW_MALI], incident_set, params)[0] == 0.0
        assert score(mine, threats, params=params).generic_probability == background(params)
        with_attack = score(mine, [ATTACK, *threats], params=params)
        alone = score(site(), [ATTACK], params=params).probability
        assert with_attack.generic_probability == pytest.approx(alone, rel=1e-12)
    # A threat alone still raises the odds of a matching target's background.
    assert score(mine, threats, params=SIMPLE).probability > background(SIMPLE)


def test_sector_in_an_incidents_profile_never_hides_it_from_other_targets() -> None:
    mining_kidnap = incident(
        category=Category.KIDNAPPING,
        victim_sector=Sector.MINING,
        target_sectors=frozenset({Sector.MINING}),
        target_foreign_owned_only=True,
        target_type=TargetType.MINING,
    )
    targets = [
        bare_site(),
        site(sector=Sector.ENERGY),
        site(sector=Sector.MINING),
        site(sector=Sector.MINING, foreign_owned=True, expat_staff=True),
    ]
    for params in (DEFAULT_PARAMS, SIMPLE):
        generic = {score(t, [mining_kidnap], params=params).generic_probability for t in targets}
        assert len(generic) == 1
        assert generic.pop() > background(params)


def test_an_area_scoped_incident_with_a_target_profile_still_counts_in_the_fitted_part() -> None:
    area_attack = incident(
        lat=None,
        lon=None,
        location_precision=LocationPrecision.REGION,
        target_foreign_owned_only=True,
        target_sectors=frozenset({Sector.MINING}),
    )
    incident_set = IncidentSet([area_attack], SIMPLE)
    bulk = at_points(probabilities, [MINE_SW_MALI], incident_set, SIMPLE)[0]
    assert bulk > background(SIMPLE)
    foreign_mine = score(
        site(sector=Sector.MINING, foreign_owned=True), [area_attack], params=SIMPLE
    )
    assert foreign_mine.generic_probability == pytest.approx(bulk, rel=1e-12)
    for other in (bare_site(), site(), site(sector=Sector.ENERGY, foreign_owned=True)):
        assert score(other, [area_attack], params=SIMPLE).generic_probability == pytest.approx(
            bulk, rel=1e-12
        )


# Victim and target profiles


def test_expatriate_kidnapping_raises_the_odds_of_a_site_with_expatriate_staff_only() -> None:
    kidnap = incident(category=Category.KIDNAPPING, victim_expatriate=True)
    without = score(site(), [kidnap], params=SIMPLE)
    with_expats = score(site(expat_staff=True), [kidnap], params=SIMPLE)
    assert unadjusted(without)
    assert with_expats.generic_probability == without.generic_probability
    assert odds_factor(with_expats) == pytest.approx(SIMPLE.expat_kidnapping_factor)
    assert with_expats.components[Component.KIDNAPPING] > without.components[Component.KIDNAPPING]
    assert with_expats.adjustments[0].kind == "expatriate_kidnapping"
    assert with_expats.adjustments[0].incident_ids == (1,)
    assert with_expats.adjustments[0].factor == pytest.approx(SIMPLE.expat_kidnapping_factor)
    contribution = with_expats.contributions[0]
    assert "site has expatriate staff" in contribution.why
    assert contribution.factors["profile_match"] == SIMPLE.expat_kidnapping_factor
    local_victim = score(site(expat_staff=True), [replace(kidnap, victim_expatriate=False)])
    assert unadjusted(local_victim)


def test_victim_in_the_sites_sector_raises_the_odds_of_that_sector_only() -> None:
    robbed = incident(victim_sector=Sector.MINING)
    mining = score(site(sector=Sector.MINING), [robbed], params=SIMPLE)
    energy = score(site(sector=Sector.ENERGY), [robbed], params=SIMPLE)
    assert unadjusted(energy)
    assert mining.generic_probability == energy.generic_probability
    assert mining.value > energy.value
    assert odds_factor(mining) == pytest.approx(SIMPLE.victim_sector_factor)
    assert kinds(mining) == {"victim_sector": pytest.approx(SIMPLE.victim_sector_factor)}
    assert "victim in the site's sector (mining)" in mining.contributions[0].why


def test_attacks_aimed_at_foreign_firms_or_mines_raise_the_odds_of_such_targets_only() -> None:
    at_firms = incident(target_type=TargetType.FOREIGN_FIRM)
    at_mines = incident(target_type=TargetType.MINING)
    foreign = score(site(foreign_owned=True), [at_firms], params=SIMPLE)
    assert odds_factor(foreign) == pytest.approx(SIMPLE.foreign_firm_target_factor)
    assert kinds(foreign) == {"foreign_firm_targeted": pytest.approx(1.5)}
    assert "aimed at foreign firms; site is foreign-owned" in foreign.contributions[0].why
    mine = score(site(sector=Sector.MINING), [at_mines], params=SIMPLE)
    assert odds_factor(mine) == pytest.approx(SIMPLE.mining_target_factor)
    assert "aimed at mining; site is a mine" in mine.contributions[0].why
    assert unadjusted(score(site(), [at_firms], params=SIMPLE))
    assert unadjusted(score(site(sector=Sector.ENERGY), [at_mines], params=SIMPLE))


def several_profiles() -> tuple[Score, float]:
    """An expatriate mining employee kidnapped by a group that targets mines, near a mine."""
    kidnap = incident(
        category=Category.KIDNAPPING,
        victim_expatriate=True,
        victim_sector=Sector.MINING,
        target_type=TargetType.MINING,
    )
    mine = site(sector=Sector.MINING, expat_staff=True)
    product = (
        SIMPLE.expat_kidnapping_factor * SIMPLE.victim_sector_factor * SIMPLE.mining_target_factor
    )
    return score(mine, [kidnap], params=SIMPLE), product


def test_factors_of_one_incident_matching_several_profiles_multiply() -> None:
    result, product = several_profiles()
    assert product < SIMPLE.max_odds_factor
    assert contribution_factor(result) == pytest.approx(product)
    assert odds_factor(result) == pytest.approx(product)
    assert set(kinds(result)) == {"expatriate_kidnapping", "victim_sector", "mining_targeted"}
    assert all(a.incident_ids == (1,) for a in result.adjustments)


def test_each_profile_adjustment_reports_its_own_factor_not_the_product_of_all() -> None:
    result, _ = several_profiles()
    assert kinds(result) == {
        "expatriate_kidnapping": pytest.approx(SIMPLE.expat_kidnapping_factor),
        "victim_sector": pytest.approx(SIMPLE.victim_sector_factor),
        "mining_targeted": pytest.approx(SIMPLE.mining_target_factor),
    }


def test_profile_adjustment_is_the_weighted_mean_of_the_incidents_factors() -> None:
    kidnap = incident(id=1, category=Category.KIDNAPPING, victim_expatriate=True)
    clash = aged(20, id=2, category=Category.ARMED_CLASH, lat=MINE_SW_MALI[1] - 0.2)
    result = score(site(expat_staff=True), [kidnap, clash], params=SIMPLE)
    c1, c2 = weight(result, 1), weight(result, 2)
    mean = (SIMPLE.expat_kidnapping_factor * c1 + c2) / (c1 + c2)
    assert 1.0 < mean < SIMPLE.expat_kidnapping_factor
    assert odds_factor(result) == pytest.approx(mean, rel=1e-9)
    assert result.adjustments[0].factor == pytest.approx(mean, abs=1e-4)
    assert result.adjustments[0].incident_ids == (1,)


def test_profile_adjustments_are_capped_at_max_odds_factor() -> None:
    kidnap = incident(
        category=Category.KIDNAPPING,
        victim_expatriate=True,
        victim_sector=Sector.MINING,
        target_type=TargetType.FOREIGN_FIRM,
    )
    target = site(sector=Sector.MINING, foreign_owned=True, expat_staff=True)
    result = score(target, [kidnap], params=SIMPLE)
    assert contribution_factor(result) > SIMPLE.max_odds_factor
    assert odds_factor(result) == pytest.approx(SIMPLE.max_odds_factor)
    lower_cap = replace(SIMPLE, max_odds_factor=1.2)
    assert odds_factor(score(target, [kidnap], params=lower_cap)) == pytest.approx(1.2)


def test_components_and_contributions_carry_the_adjustments() -> None:
    kidnap = incident(id=1, category=Category.KIDNAPPING, victim_expatriate=True)
    clash = aged(3, id=2, category=Category.ARMED_CLASH)
    for params in (DEFAULT_PARAMS, SIMPLE):
        bare = score(site(), [kidnap, clash, FOREIGN_FIRM_THREAT], params=params)
        target = site(sector=Sector.MINING, foreign_owned=True, expat_staff=True)
        adjusted = score(target, [kidnap, clash, FOREIGN_FIRM_THREAT], params=params)
        assert adjusted.value > bare.value
        for result in (bare, adjusted):
            assert sum(result.components.values()) == pytest.approx(result.value, abs=0.08)
            fixed = sum(result.components[c] for c in (Component.ESCALATION, Component.BACKGROUND))
            assert sum(c.points for c in result.contributions) + fixed == pytest.approx(
                result.value, abs=0.08
            )
        gained = adjusted.components[Component.KIDNAPPING] - bare.components[Component.KIDNAPPING]
        assert gained > 0.0
        assert adjusted.components[Component.THREATS] > bare.components[Component.THREATS] == 0.0


# Threats aimed at the target


def test_threat_to_foreign_firms_raises_the_odds_of_a_foreign_owned_mine_within_the_cap() -> None:
    mine = site(sector=Sector.MINING, foreign_owned=True)
    result = score(mine, [ATTACK, FOREIGN_FIRM_THREAT])
    same_site_bare = score(site(), [ATTACK, FOREIGN_FIRM_THREAT])
    assert unadjusted(same_site_bare)
    assert result.generic_probability == same_site_bare.probability
    assert 1.0 < odds_factor(result) <= DEFAULT_PARAMS.max_odds_factor + 1e-9
    assert result.value > same_site_bare.value
    assert [(a.kind, a.incident_ids) for a in result.adjustments] == [("threats", (10,))]
    threat = next(c for c in result.contributions if c.incident_id == 10)
    assert threat.category is Category.EXPLICIT_THREAT
    assert threat.component is Component.THREATS
    assert threat.points > 0.0
    assert threat.factors["adjustment"] == "threats"
    assert threat.factors["distance_km"] is None
    assert threat.factors["odds_factor"] == DEFAULT_PARAMS.threat_factor
    assert "area-wide (BFA, MLI, NER)" in threat.why
    assert "aimed at foreign firms; site is foreign-owned" in threat.why
    assert result.components[Component.THREATS] > 0.0


def test_threat_multiplies_the_odds_by_one_plus_its_factor_times_its_strength() -> None:
    mine = site(sector=Sector.MINING, foreign_owned=True)
    area = score(mine, [ATTACK, FOREIGN_FIRM_THREAT], params=SIMPLE)
    credibility = SIMPLE.credibility_floor + (1 - SIMPLE.credibility_floor) * 0.9
    strength = credibility * 0.5 ** (1.0 / SIMPLE.threat_half_life_days)
    expected = 1.0 + (SIMPLE.threat_factor - 1.0) * strength
    assert odds_factor(area) == pytest.approx(expected, rel=1e-9)
    assert kinds(area) == {"threats": pytest.approx(expected, abs=1e-4)}

    # A point-located threat weakens with distance.
    lat = MINE_SW_MALI[1] + 0.5
    point = replace(FOREIGN_FIRM_THREAT, lat=lat, lon=MINE_SW_MALI[0])
    d = float(haversine_km(MINE_SW_MALI[1], MINE_SW_MALI[0], lat, MINE_SW_MALI[0]))
    d_eff = math.hypot(d, SIMPLE.location_sigma_km[LocationPrecision.REGION])
    near = 1.0 + (SIMPLE.threat_factor - 1.0) * strength * math.exp(-d_eff / SIMPLE.threat_scale_km)
    assert odds_factor(score(mine, [ATTACK, point], params=SIMPLE)) == pytest.approx(near, rel=1e-9)


def test_profile_and_threat_factors_multiply_on_the_odds() -> None:
    kidnap = incident(category=Category.KIDNAPPING, victim_expatriate=True)
    both = site(foreign_owned=True, expat_staff=True)
    expats_only = score(site(expat_staff=True), [kidnap, FOREIGN_FIRM_THREAT], params=SIMPLE)
    threat_only = score(site(foreign_owned=True), [kidnap, FOREIGN_FIRM_THREAT], params=SIMPLE)
    result = score(both, [kidnap, FOREIGN_FIRM_THREAT], params=SIMPLE)
    product = odds_factor(expats_only) * odds_factor(threat_only)
    assert product < SIMPLE.max_odds_factor
    assert odds_factor(result) == pytest.approx(product, rel=1e-9)
    assert set(kinds(result)) == {"expatriate_kidnapping", "threats"}


def test_many_threats_cannot_push_the_odds_beyond_max_odds_factor() -> None:
    threats = [replace(FOREIGN_FIRM_THREAT, id=100 + k) for k in range(30)]
    mine = site(sector=Sector.MINING, foreign_owned=True)
    for params in (DEFAULT_PARAMS, SIMPLE):
        result = score(mine, [ATTACK, *threats], params=params)
        assert odds_factor(result) == pytest.approx(params.max_odds_factor, rel=1e-9)
        assert sum(result.components.values()) == pytest.approx(result.value, abs=0.08)


def test_threat_to_foreign_firms_leaves_a_locally_owned_site_and_a_site_in_senegal_alone() -> None:
    local = site(sector=Sector.MINING, foreign_owned=False)
    senegal = site(SITE_SENEGAL, sector=Sector.MINING, foreign_owned=True, countries={"SEN"})
    senegal_attack = replace(ATTACK, lat=SITE_SENEGAL[1], lon=SITE_SENEGAL[0])
    assert not area_scope_matches(FOREIGN_FIRM_THREAT, senegal)
    for params in (DEFAULT_PARAMS, SIMPLE):
        assert unadjusted(score(local, [ATTACK, FOREIGN_FIRM_THREAT], params=params))
        assert unadjusted(score(senegal, [senegal_attack, FOREIGN_FIRM_THREAT], params=params))


def test_point_located_threat_to_foreign_firms_leaves_a_locally_owned_site_alone() -> None:
    threat = replace(FOREIGN_FIRM_THREAT, lat=MINE_SW_MALI[1], lon=MINE_SW_MALI[0])
    assert unadjusted(score(site(foreign_owned=False), [ATTACK, threat]))
    assert odds_factor(score(site(foreign_owned=True), [ATTACK, threat])) > 1.0


def test_threat_naming_the_sites_sector_weighs_more_and_one_naming_another_sector_not_at_all() -> (
    None
):
    mine = site(sector=Sector.MINING, foreign_owned=True)
    general = score(mine, [ATTACK, FOREIGN_FIRM_THREAT], params=SIMPLE)
    named_mining = replace(FOREIGN_FIRM_THREAT, target_sectors=frozenset({Sector.MINING}))
    named_energy = replace(FOREIGN_FIRM_THREAT, target_sectors=frozenset({Sector.ENERGY}))
    named = score(mine, [ATTACK, named_mining], params=SIMPLE)
    other = score(mine, [ATTACK, named_energy], params=SIMPLE)
    assert odds_factor(named) > odds_factor(general) > 1.0
    assert named.contributions[-1].factors["odds_factor"] == pytest.approx(
        SIMPLE.threat_factor * SIMPLE.threat_sector_named_factor
    )
    assert "names the mining sector" in named.contributions[-1].why
    assert unadjusted(other)
    # Naming the sector aims a threat that is not limited to foreign firms at local mines too.
    any_owner = replace(named_mining, target_foreign_owned_only=False, target_type=None)
    assert odds_factor(score(site(sector=Sector.MINING), [ATTACK, any_owner], params=SIMPLE)) > 1.0


def test_a_threat_naming_a_sector_never_calls_a_locally_owned_site_foreign_owned() -> None:
    threat = replace(
        FOREIGN_FIRM_THREAT,
        target_foreign_owned_only=False,
        target_sectors=frozenset({Sector.MINING}),
    )
    result = score(site(sector=Sector.MINING, foreign_owned=False), [ATTACK, threat])
    why = next(c.why for c in result.contributions if c.incident_id == threat.id)
    assert "names the mining sector" in why
    assert "foreign-owned" not in why


# Corridor modes


def mode_factors(result: Score) -> dict[int, float | str | None]:
    """Each contribution's mode factor by incident id."""
    return {c.incident_id: c.factors["mode_factor"] for c in result.contributions}


def test_road_mode_raises_ieds_ambushes_and_kidnappings_on_a_road_only() -> None:
    ied = incident(id=1, category=Category.IED, lat=11.75, lon=-6.25, fatalities_best=4)
    ambush = incident(id=2, category=Category.ARMED_ASSAULT, lat=12.45, lon=-7.6)
    convoy = incident(id=3, category=Category.ARMED_CLASH, lat=12.0, lon=-6.7)
    supplies = replace(convoy, id=4, lat=12.1, target_type=TargetType.LOGISTICS)
    events = [ied, ambush, convoy, supplies]
    road = score(road_to_sikasso(), events, params=SIMPLE)
    unmoded = score(road_to_sikasso(mode=None), events, params=SIMPLE)
    river = score(road_to_sikasso(mode=Mode.RIVER), events, params=SIMPLE)
    assert unadjusted(unmoded)
    assert unadjusted(river)
    assert road.generic_probability == unmoded.probability
    assert road.value > unmoded.value
    road_table = SIMPLE.mode_category_factor[Mode.ROAD]
    assert mode_factors(road) == {
        1: road_table[Category.IED],
        2: road_table[Category.ARMED_ASSAULT],
        3: 1.0,
        4: SIMPLE.mode_target_type_factor[Mode.ROAD][TargetType.LOGISTICS],
    }
    assert [(a.kind, set(a.incident_ids)) for a in road.adjustments] == [
        ("corridor_mode", {1, 2, 4})
    ]
    c = {i: weight(road, i) for i in (1, 2, 3, 4)}
    mean = sum(c[i] * float(mode_factors(road)[i] or 0.0) for i in c) / sum(c.values())
    assert odds_factor(road) == pytest.approx(mean, rel=1e-9)
    assert "x1.5 on a road corridor" in next(
        x.why for x in road.contributions if x.incident_id == 1
    )


def test_air_leg_weighs_fire_at_an_airfield_up_and_ground_violence_en_route_down() -> None:
    at_airport = incident(id=1, category=Category.INDIRECT_FIRE, lat=16.73, lon=-3.01)
    assault = incident(id=2, category=Category.ARMED_ASSAULT, lat=MID_ROUTE[0], lon=MID_ROUTE[1])
    aaa = replace(assault, id=3, category=Category.ANTI_AIRCRAFT_FIRE)

    airport = score(air_leg(), [at_airport], params=SIMPLE)
    air_table = SIMPLE.mode_category_factor[Mode.AIR]
    assert odds_factor(airport) == pytest.approx(air_table[Category.INDIRECT_FIRE])
    assert mode_factors(airport) == {1: air_table[Category.INDIRECT_FIRE]}
    assert "near an airfield" in airport.contributions[0].why
    assert unadjusted(score(air_leg(mode=None), [at_airport], params=SIMPLE))

    en_route = score(air_leg(), [assault], params=SIMPLE)
    assert en_route.probability < en_route.generic_probability
    assert odds_factor(en_route) == pytest.approx(SIMPLE.air_enroute_default)
    assert score(air_leg(mode=Mode.ROAD), [assault], params=SIMPLE).value > en_route.value
    # Anti-aircraft fire threatens the whole leg: it counts fully under the flight path.
    assert SIMPLE.air_enroute_factor[Category.ANTI_AIRCRAFT_FIRE] == 1.0
    assert unadjusted(score(air_leg(), [aaa], params=SIMPLE))


def test_profile_adjustments_change_nothing_when_no_incident_counts() -> None:
    target = site(sector=Sector.MINING, foreign_owned=True, expat_staff=True)
    for params in (DEFAULT_PARAMS, SIMPLE):
        expired = aged(
            params.lookback_days + 5,
            category=Category.KIDNAPPING,
            victim_expatriate=True,
            victim_sector=Sector.MINING,
        )
        assert unadjusted(score(target, [], params=params))
        assert unadjusted(score(target, [expired], params=params))
