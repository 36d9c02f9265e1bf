"""Scoring: one target with its explanation (score_target), many bare points fast (score_points).

Both paths compute the fitted intensity with the same terms (services/scoring/risk/terms.py);
only score_target adds the firm-specific adjustments, which bare points never have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

import numpy as np

from services.scoring.geo import (
    FloatArray,
    bbox_spanning,
    haversine_km,
    point_to_polyline_km,
    split_polyline,
)
from services.scoring.risk import pairs as pairs_mod
from services.scoring.risk import terms
from services.scoring.risk.explain import Facts, contribution, threat_contribution
from services.scoring.risk.incidentset import (
    COMPONENT_INDEX,
    COMPONENTS,
    NONE,
    SECTOR_INDEX,
    TARGET_TYPE_INDEX,
    BoolArray,
    IncidentSet,
    IndexArray,
    IntArray,
    check_params,
    epoch_s,
)
from services.scoring.risk.pairs import Pairs
from services.scoring.risk.params import ModelParams
from services.scoring.risk.types import Adjustment, Hotspot, Score, Target
from services.scoring.taxonomy import Component, Mode, Sector, TargetKind, TargetType

# An adjustment whose factor is closer to 1 than this (its incidents are too far or too old to
# weigh) is not listed.
NOTABLE_FACTOR = 0.005
# Upper bound on the (pairs x incidents x half-lives) arrays score_points builds at once.
_MAX_MATRIX_CELLS = 1_000_000


@dataclass(frozen=True, slots=True)
class Profile:
    """Firm-specific factors of each (target, incident) pair (1 where none applies)."""

    factor: FloatArray
    mode_factor: FloatArray
    expat_kidnap: BoolArray
    victim_sector: BoolArray
    foreign_firm: BoolArray
    mining: BoolArray
    airfield: BoolArray


@dataclass(frozen=True, slots=True)
class _Profiles:
    """The targets' profiles as columns, one entry per target of the batch."""

    expat: BoolArray
    sector: IntArray
    foreign: BoolArray
    mining: BoolArray
    mode: IntArray
    # (lon, lat) of the first and the last vertex.
    first: FloatArray
    last: FloatArray

    @classmethod
    def of(cls, targets: Sequence[Target], coords: Sequence[FloatArray]) -> _Profiles:
        return cls(
            expat=np.array([t.expat_staff for t in targets], dtype=np.bool_),
            sector=np.array(
                [NONE if t.sector is None else SECTOR_INDEX[t.sector] for t in targets],
                dtype=np.int64,
            ),
            foreign=np.array([t.foreign_owned for t in targets], dtype=np.bool_),
            mining=np.array([t.sector is Sector.MINING for t in targets], dtype=np.bool_),
            mode=np.array(
                [
                    _MODE_INDEX[t.mode]
                    if t.kind is TargetKind.CORRIDOR and t.mode is not None
                    else NONE
                    for t in targets
                ],
                dtype=np.int64,
            ),
            first=np.array([c[0] for c in coords], dtype=np.float64).reshape(-1, 2),
            last=np.array([c[-1] for c in coords], dtype=np.float64).reshape(-1, 2),
        )


_MODES = tuple(Mode)
_MODE_INDEX = {m: i for i, m in enumerate(_MODES)}
_MINING = TARGET_TYPE_INDEX[TargetType.MINING]
_FOREIGN_FIRM = TARGET_TYPE_INDEX[TargetType.FOREIGN_FIRM]


def _profile(
    incidents: IncidentSet, pairs: Pairs, profiles: _Profiles, params: ModelParams
) -> Profile:
    """The adjustment factors of every pair: victim and target profile, corridor mode."""
    i, t = pairs.incident, pairs.target
    expat_kidnap = incidents.is_kidnapping[i] & incidents.victim_expatriate[i] & profiles.expat[t]
    sector = profiles.sector[t]
    victim_sector = (sector != NONE) & (incidents.victim_sector[i] == sector)
    mining = profiles.mining[t] & (incidents.target_type[i] == _MINING)
    foreign_firm = profiles.foreign[t] & (incidents.target_type[i] == _FOREIGN_FIRM)
    factor = (
        np.where(expat_kidnap, params.expat_kidnapping_factor, 1.0)
        * np.where(victim_sector, params.victim_sector_factor, 1.0)
        * np.where(foreign_firm, params.foreign_firm_target_factor, 1.0)
        * np.where(mining, params.mining_target_factor, 1.0)
    )
    n = i.shape[0]
    mode_factor = np.ones(n)
    airfield = np.zeros(n, dtype=np.bool_)
    modes = profiles.mode[t]
    for mode in _MODES:
        sel = np.flatnonzero(modes == _MODE_INDEX[mode])
        if sel.shape[0] == 0:
            continue
        si = i[sel]
        by_type = incidents.mode_target_type_factor[mode][si]
        if mode is not Mode.AIR:
            mode_factor[sel] = incidents.mode_category_factor[mode][si] * by_type
            continue
        # Near the airfields at either end the air factors apply; en route, ground violence
        # weighs less (except anti-aircraft fire, which threatens the whole leg).
        pt = sel[pairs.point[sel]]
        pi, ptt = i[pt], t[pt]
        lat, lon = incidents.lat[pi], incidents.lon[pi]
        d_field = np.minimum(
            haversine_km(profiles.first[ptt, 1], profiles.first[ptt, 0], lat, lon),
            haversine_km(profiles.last[ptt, 1], profiles.last[ptt, 0], lat, lon),
        )
        airfield[pt] = d_field <= params.airfield_km + incidents.sigma_km[pi]
        enroute = np.where(pairs.point[sel], incidents.air_enroute_factor[si], 1.0)
        mode_factor[sel] = (
            np.where(airfield[sel], incidents.mode_category_factor[mode][si], enroute) * by_type
        )
    return Profile(
        factor=np.asarray(factor),
        mode_factor=mode_factor,
        expat_kidnap=expat_kidnap,
        victim_sector=victim_sector,
        foreign_firm=foreign_firm,
        mining=mining,
        airfield=airfield,
    )


@dataclass(frozen=True, slots=True)
class _Threats:
    """Threats aimed at the targets: the pairs, their strength and factor on the odds."""

    aimed: IndexArray
    strength: FloatArray
    factor: FloatArray


def _threats(
    incidents: IncidentSet,
    pairs: Pairs,
    profiles: _Profiles,
    age: FloatArray,
    params: ModelParams,
) -> _Threats:
    """Which threat pairs name their target (its owner or its sector, and its profile admits
    it), and how strongly each weighs at the target's distance and the threat's age."""
    n = pairs.incident.shape[0]
    k = np.flatnonzero(incidents.is_threat[pairs.incident])
    i, t = pairs.incident[k], pairs.target[k]
    sector = profiles.sector[t]
    has_sector = sector != NONE
    sectors = incidents.target_sector_mask[i]
    named = has_sector & ((sectors >> np.where(has_sector, sector, 0)) & 1).astype(np.bool_)
    only_foreign = incidents.target_foreign_only[i]
    foreign = profiles.foreign[t]
    admits = ~(only_foreign & ~foreign) & ((sectors == 0) | named)
    kind = incidents.target_type[i]
    aimed = admits & (
        (only_foreign & foreign)
        | named
        | ((kind == _FOREIGN_FIRM) & foreign)
        | ((kind == _MINING) & profiles.mining[t])
    )
    k, named = k[aimed], named[aimed]
    strength = np.zeros(n)
    factor = np.ones(n)
    if k.shape[0]:
        d_eff = pairs.d_eff[k]
        k_space = np.where(
            pairs.point[k],
            np.exp(-d_eff / params.threat_scale_km)
            * terms.taper(d_eff, params.reach_km, params.taper_share),
            1.0,
        )
        k_time = 0.5 ** (age[k] / params.threat_half_life_days) * terms.taper(
            age[k], params.lookback_days, params.taper_share
        )
        strength[k] = incidents.credibility[pairs.incident[k]] * k_space * k_time
        factor[k] = params.threat_factor * np.where(named, params.threat_sector_named_factor, 1.0)
    return _Threats(k, strength, factor)


def _sums(pairs: Pairs, *columns: FloatArray) -> FloatArray:
    """Sums of pair weights by target, one column per weight: (targets, columns)."""
    n = pairs.starts.shape[0] - 1
    out = np.zeros((n, len(columns)))
    filled = pairs.starts[1:] > pairs.starts[:-1]
    if filled.any():
        at = pairs.starts[:-1][filled]
        for k, column in enumerate(columns):
            out[filled, k] = np.add.reduceat(column, at)
    return out


def _shares(total: FloatArray, weights: FloatArray, sums: FloatArray, pairs: Pairs) -> FloatArray:
    """Each target's total shared among its pairs in proportion to weights (whose sums by target
    are `sums`); 0 where they sum to 0."""
    s = sums[pairs.target]
    safe = np.where(s != 0.0, s, 1.0)
    return np.where(s != 0.0, total[pairs.target] * weights / safe, 0.0)


def score_target(
    target: Target,
    incidents: IncidentSet,
    as_of: datetime,
    params: ModelParams,
    *,
    explain_top: int = 20,
) -> Score:
    """Score one site or corridor as of a time, with components, explanation and hotspots."""
    return score_targets([target], incidents, as_of, params, explain_top=explain_top)[0]


def score_targets(
    targets: Sequence[Target],
    incidents: IncidentSet,
    as_of: datetime,
    params: ModelParams,
    *,
    explain_top: int = 20,
) -> list[Score]:
    """Score sites and corridors as of one time, each with components, explanation and hotspots.

    Every target is scored as it would be alone: the batch only shares the work."""
    check_params(incidents, params)
    t_s = epoch_s(as_of, "as_of")
    coords = [pairs_mod.coordinates(t) for t in targets]
    at = _AtTime.of(incidents, t_s, params)
    # Neighbours together, a few dozen at a time: the pair arrays of a chunk stay within a few
    # MB (a whole batch's reached hundreds), and neighbours share their candidate searches.
    order = sorted(range(len(targets)), key=lambda j: _cell_of(coords[j]))
    out: list[Score | None] = [None] * len(targets)
    for start in range(0, len(order), _CHUNK_TARGETS):
        chunk = order[start : start + _CHUNK_TARGETS]
        scored = _score_chunk(
            [targets[j] for j in chunk], [coords[j] for j in chunk], incidents, at, as_of,
            params, explain_top,
        )  # fmt: skip
        for j, score in zip(chunk, scored, strict=True):
            out[j] = score
    return [score for score in out if score is not None]


# Targets scored together (their pairs, a few thousand each, in arrays of at most a few MB).
_CHUNK_TARGETS = 64


def _cell_of(coords: FloatArray) -> tuple[float, float]:
    """The one-degree cell of a target's first vertex."""
    return (
        float(np.floor(coords[0, 1] / pairs_mod.CELL_DEGREES)),
        float(np.floor(coords[0, 0] / pairs_mod.CELL_DEGREES)),
    )


@dataclass(frozen=True, slots=True)
class _AtTime:
    """Everything about the incidents at one time that no target changes."""

    age: FloatArray
    usable: BoolArray
    # Each incident's weight per spatial scale at this time (static x decay x coefficients).
    per_scale: FloatArray
    recent: FloatArray
    baseline: FloatArray

    @classmethod
    def of(cls, incidents: IncidentSet, t_s: float, params: ModelParams) -> _AtTime:
        age = (t_s - incidents.occurred_s) / terms.DAY_S
        usable = (incidents.reported_s <= t_s) & (age >= 0.0) & (age <= params.lookback_days)
        # The decay depends on the incident and the time only: each incident's weight per
        # spatial scale is computed once, and a pair's weight is its kernel times those.
        decay = incidents.decay_basis(np.where(usable, age, -1.0))
        n_s = incidents.scales.shape[0]
        per_scale = incidents.static[:, None] * np.einsum(
            "nsh,nh->ns", incidents.coef.reshape(len(incidents), n_s, decay.shape[1]), decay
        )
        recent, baseline = terms.windows(age, usable, params)
        return cls(age, usable, per_scale, recent, baseline)


def _score_chunk(
    targets: Sequence[Target],
    coords: Sequence[FloatArray],
    incidents: IncidentSet,
    at: _AtTime,
    as_of: datetime,
    params: ModelParams,
    explain_top: int,
) -> list[Score]:
    """score_targets of a few targets."""
    pairs = pairs_mod.build(targets, coords, incidents, at.usable, params)
    i, tgt = pairs.incident, pairs.target
    age = at.age[i]
    d_eff = pairs.d_eff
    kernel_basis = incidents.kernel_basis(d_eff)
    c = np.einsum("ps,ps->p", kernel_basis, at.per_scale[i])

    local_w = incidents.static[i] * terms.escalation_kernel(d_eff, params) * incidents.fitted[i]
    regional_w = np.where(
        pairs.point,
        incidents.static[i] * (incidents.forecast[i] & (d_eff <= params.escalation_regional_km)),
        0.0,
    )
    recent, baseline = at.recent[i], at.baseline[i]
    sums = _sums(
        pairs, c, local_w * recent, local_w * baseline, regional_w * recent, regional_w * baseline
    )
    ratio_l, ratio_r, e_arr = terms.escalation(
        sums[:, 1], sums[:, 2], sums[:, 3], sums[:, 4], params
    )
    raw = sums[:, 0]
    has = raw > 0.0
    safe_raw = np.where(has, raw, 1.0)
    e = np.where(has, e_arr, 0.0)
    total = raw * (1.0 + e)
    p_background = float(terms.calibrate(np.asarray(0.0), params))
    p_generic = terms.calibrate(total, params)

    # Firm-specific adjustments on the odds: fitted incidents matching the profile or the mode
    # (their c-weighted mean factor), and threats aimed at the target.
    profiles = _Profiles.of(targets, coords)
    profile = _profile(incidents, pairs, profiles, params)
    f = profile.factor * profile.mode_factor
    threats = _threats(incidents, pairs, profiles, age, params)
    by_profile = c * (f - 1.0)
    by_threat = (threats.factor - 1.0) * threats.strength
    sums = _sums(pairs, c * f, by_profile, by_threat)
    m_incidents = np.where(has, sums[:, 0] / safe_raw, 1.0)
    m_threats = 1.0 + sums[:, 2]
    limit = params.max_odds_factor
    m_total = np.minimum(limit, np.maximum(1.0 / limit, m_incidents * m_threats))
    m_incidents_capped = np.minimum(limit, np.maximum(1.0 / limit, m_incidents))
    p_after_incidents = terms.adjust_odds(p_generic, m_incidents_capped)
    probability = terms.adjust_odds(p_generic, m_total)
    values = terms.percent(probability)

    # Points: background, the fitted part by incident and escalation, then the adjustments.
    generic_points = 100.0 * np.maximum(0.0, p_generic - p_background)
    incident_points = (
        np.where(has[tgt], generic_points[tgt] * c / safe_raw[tgt] / (1.0 + e[tgt]), 0.0)
        + _shares(100.0 * (p_after_incidents - p_generic), by_profile, sums[:, 1], pairs)
        + _shares(100.0 * (probability - p_after_incidents), by_threat, sums[:, 2], pairs)
    )
    component = incidents.component[i]
    sums = _sums(
        pairs,
        *(np.where(component == k, incident_points, 0.0) for k in range(len(COMPONENTS))),
        (np.abs(incident_points) >= params.negligible_points).astype(np.float64),
    )
    by_comp, counted = sums[:, : len(COMPONENTS)], sums[:, len(COMPONENTS)]
    top = _largest(pairs, np.abs(incident_points), explain_top)
    adjustments = _adjustments(incidents, pairs, profile, c, threats, m_threats, raw, params)
    facts = _facts(
        incidents, pairs, [k for ks in top for k in ks], c, kernel_basis, age, incident_points,
        profile, threats,
    )  # fmt: skip

    is_threat = incidents.columns.is_threat
    remaining = len(facts)
    out = []
    for j, target in enumerate(targets):
        value = float(values[j])
        comp_points = {comp: 0.0 for comp in Component}
        for comp, k in COMPONENT_INDEX.items():
            comp_points[comp] = round(float(by_comp[j, k]), 2)
        e_j = float(e[j])
        comp_points[Component.ESCALATION] = round(float(generic_points[j]) * e_j / (1.0 + e_j), 2)
        comp_points[Component.BACKGROUND] = round(100.0 * min(p_background, float(p_generic[j])), 2)
        contributions = tuple(
            threat_contribution(incidents, target, fact, value)
            if is_threat[fact.incident]
            else contribution(incidents, target, fact, value)
            for fact in facts[len(facts) - remaining : len(facts) - remaining + len(top[j])]
        )
        remaining -= len(top[j])
        hotspots: tuple[Hotspot, ...] = ()
        start, n_pt = int(pairs.starts[j]), int(pairs.n_point[j])
        if target.kind is TargetKind.CORRIDOR and float(raw[j]) > 0.0 and n_pt > 0:
            hotspots = _hotspots(
                coords[j],
                incidents,
                i[start : start + n_pt],
                c[start : start + n_pt],
                incident_points[start : int(pairs.starts[j + 1])],
                e_j,
                params,
            )
        out.append(
            Score(
                value=value,
                band=terms.band_for(value, params),
                components=MappingProxyType(comp_points),
                as_of=as_of,
                incident_count=int(counted[j]),
                contributions=contributions,
                hotspots=hotspots,
                escalation=MappingProxyType(
                    {
                        "local_ratio": float(ratio_l[j]),
                        "regional_ratio": float(ratio_r[j]),
                        "factor": e_j,
                    }
                ),
                probability=float(probability[j]),
                generic_probability=float(p_generic[j]),
                adjustments=adjustments[j],
                forecast_distance_km=params.forecast_distance_km,
                forecast_horizon_days=params.forecast_horizon_days,
            )
        )
    return out


def _facts(
    incidents: IncidentSet,
    pairs: Pairs,
    chosen: list[int],
    c: FloatArray,
    kernel_basis: FloatArray,
    age: FloatArray,
    points: FloatArray,
    profile: Profile,
    threats: _Threats,
) -> list[Facts]:
    """What explaining the chosen pairs reads, gathered as plain numbers in one pass."""
    if not chosen:
        return []
    k = np.asarray(chosen, dtype=np.intp)
    i = pairs.incident[k]
    # Each basis kernel is 1 at 0 km and each decay 1 at age 0: the weight at age 0 and this
    # distance, over the same at 0 km, is the kernel; what age leaves of it, the decay.
    coef = incidents.coef[i].reshape(i.shape[0], kernel_basis.shape[1], -1)
    here = np.einsum("ps,ps->p", kernel_basis[k], coef.sum(axis=2))
    peak = coef.sum(axis=(1, 2))
    static = incidents.static[i]
    weight = np.where(static > 0.0, c[k] / np.where(static > 0.0, static, 1.0), 0.0)
    columns = (
        i, pairs.point[k], pairs.distance[k], pairs.d_eff[k], age[k], weight,
        np.where(peak > 0.0, here / np.where(peak > 0.0, peak, 1.0), 0.0),
        np.where(here > 0.0, weight / np.where(here > 0.0, here, 1.0), 0.0),
        profile.factor[k], profile.mode_factor[k], profile.expat_kidnap[k],
        profile.victim_sector[k], profile.foreign_firm[k], profile.mining[k], profile.airfield[k],
        threats.strength[k], threats.factor[k], points[k],
    )  # fmt: skip
    return [Facts(*row) for row in zip(*(col.tolist() for col in columns), strict=True)]


def _adjustments(
    incidents: IncidentSet,
    pairs: Pairs,
    profile: Profile,
    c: FloatArray,
    threats: _Threats,
    m_threats: FloatArray,
    raw: FloatArray,
    params: ModelParams,
) -> list[tuple[Adjustment, ...]]:
    """Each target's adjustments on the odds, each with the incidents behind it, largest first."""
    n = raw.shape[0]
    found: list[list[Adjustment]] = [[] for _ in range(n)]
    safe_raw = np.where(raw > 0.0, raw, 1.0)
    kinds = (
        ("expatriate_kidnapping", profile.expat_kidnap, params.expat_kidnapping_factor,
         "kidnappings of expatriates nearby"),
        ("victim_sector", profile.victim_sector, params.victim_sector_factor,
         "victims in the target's sector"),
        ("foreign_firm_targeted", profile.foreign_firm, params.foreign_firm_target_factor,
         "attacks aimed at foreign firms"),
        ("mining_targeted", profile.mining, params.mining_target_factor,
         "attacks aimed at mining"),
    )  # fmt: skip
    moded = profile.mode_factor != 1.0
    aimed = np.zeros(pairs.incident.shape[0], dtype=np.bool_)
    aimed[threats.aimed] = True
    # The factor each match alone gives: the c-weighted mean of its own factor.
    sums = _sums(
        pairs,
        *(c * np.where(mask, factor, 1.0) for _, mask, factor, _ in kinds),
        c * profile.mode_factor,
        np.where(moded, c, 0.0),
        aimed.astype(np.float64),
    )
    for k, (kind, mask, _, why) in enumerate(kinds):
        solo = sums[:, k] / safe_raw
        _collect(found, kind, why, solo, mask & (c > 0.0), raw > 0.0, incidents, pairs)
    solo = sums[:, len(kinds)] / safe_raw
    weighs = (raw > 0.0) & (sums[:, len(kinds) + 1] > 0.0)
    _collect(found, "corridor_mode", "the corridor's mode", solo, moded & (c > 0.0), weighs,
             incidents, pairs)  # fmt: skip
    has_threat = sums[:, len(kinds) + 2] > 0.0
    for j in np.flatnonzero(has_threat & (m_threats != 1.0)):
        s, e = int(pairs.starts[j]), int(pairs.starts[j + 1])
        ids = incidents.ids[pairs.incident[s:e][aimed[s:e] & (threats.strength[s:e] > 0.0)]]
        found[j].append(
            Adjustment(
                "threats",
                round(float(m_threats[j]), 4),
                tuple(ids.tolist()),
                "threats aimed at the target",
            )
        )
    return [
        tuple(sorted(f, key=lambda a: -abs(math.log(a.factor)) if a.factor > 0 else 0.0))
        if f
        else ()
        for f in found
    ]


def _collect(
    found: list[list[Adjustment]],
    kind: str,
    why: str,
    solo: FloatArray,
    behind: BoolArray,
    eligible: BoolArray,
    incidents: IncidentSet,
    pairs: Pairs,
) -> None:
    """Add an adjustment to each eligible target with incidents behind it and a notable factor."""
    k = np.flatnonzero(behind)
    if k.shape[0] == 0:
        return
    bounds = np.searchsorted(pairs.target[k], np.arange(solo.shape[0] + 1))
    ids = incidents.ids[pairs.incident[k]]
    notable = eligible & (bounds[1:] > bounds[:-1]) & (np.abs(solo - 1.0) >= NOTABLE_FACTOR)
    for j in np.flatnonzero(notable):
        found[j].append(
            Adjustment(
                kind,
                round(float(solo[j]), 4),
                tuple(ids[bounds[j] : bounds[j + 1]].tolist()),
                why,
            )
        )


def _largest(pairs: Pairs, points: FloatArray, k: int) -> list[list[int]]:
    """Per target, its k pairs with the largest positive points, largest first (ties by
    position)."""
    out: list[list[int]] = []
    for j in range(pairs.starts.shape[0] - 1):
        s, e = int(pairs.starts[j]), int(pairs.starts[j + 1])
        if k <= 0 or e == s:
            out.append([])
            continue
        mine = points[s:e]
        # A partial selection first: a full sort of thousands of candidates per target is waste.
        head = np.argpartition(-mine, k - 1)[:k] if e - s > k else np.arange(e - s)
        head = head[np.lexsort((head, -mine[head]))]
        out.append([s + int(h) for h in head if mine[h] > 0.0])
    return out


def _hotspots(
    coords: FloatArray,
    incidents: IncidentSet,
    idx: IndexArray,
    c: FloatArray,
    points: FloatArray,
    e: float,
    params: ModelParams,
) -> tuple[Hotspot, ...]:
    """The worst pieces of a corridor, each scored from the point incidents nearest to it."""
    pieces = split_polyline([(a, b) for a, b in coords], params.hotspot_segment_km)
    joined: list[tuple[float, float]] = list(pieces[0])
    seg_piece: list[int] = [0] * (len(pieces[0]) - 1)
    for k, piece in enumerate(pieces[1:], start=1):
        joined.extend(piece[1:])
        seg_piece.extend([k] * (len(piece) - 1))
    if seg_piece:
        _, seg = point_to_polyline_km(incidents.lat[idx], incidents.lon[idx], joined)
        piece_of = np.asarray(seg_piece, dtype=np.intp)[seg]
    else:
        piece_of = np.zeros(idx.shape[0], dtype=np.intp)
    raw_piece = np.bincount(piece_of, weights=c, minlength=len(pieces))
    count_piece = np.bincount(
        piece_of,
        weights=(np.abs(points[: idx.shape[0]]) >= params.negligible_points).astype(np.float64),
        minlength=len(pieces),
    )
    piece_scores = terms.percent(
        terms.calibrate(np.asarray(raw_piece * (1.0 + e), dtype=np.float64), params)
    )
    piece_scores = np.where(raw_piece > 0.0, piece_scores, 0.0)
    order = np.argsort(-piece_scores, kind="stable")
    return tuple(
        Hotspot(
            index=int(k),
            coordinates=tuple(pieces[k]),
            score=float(piece_scores[k]),
            band=terms.band_for(float(piece_scores[k]), params),
            incident_count=int(count_piece[k]),
        )
        for k in order[: params.hotspot_count]
        if piece_scores[k] > 0.0
    )


def score_points(
    lats: FloatArray,
    lons: FloatArray,
    as_of: FloatArray,
    incidents: IncidentSet,
    params: ModelParams,
    *,
    radius_km: float = 0.0,
) -> FloatArray:
    """Values (probability in percent) of many bare (point, as_of epoch s) pairs, unexplained.

    `radius_km` does not change them: the forecast is measured from the point itself."""
    del radius_km
    return terms.percent(probabilities(lats, lons, as_of, incidents, params))


def probabilities(
    lats: FloatArray,
    lons: FloatArray,
    as_of: FloatArray,
    incidents: IncidentSet,
    params: ModelParams,
) -> FloatArray:
    """Calibrated probabilities of many bare (point, as_of epoch s) pairs, unrounded."""
    return terms.calibrate(intensities(lats, lons, as_of, incidents, params), params)


def intensities(
    lats: FloatArray,
    lons: FloatArray,
    as_of: FloatArray,
    incidents: IncidentSet,
    params: ModelParams,
) -> FloatArray:
    """The fitted intensity x (1 + escalation) of many bare (point, as_of epoch s) pairs."""
    check_params(incidents, params)
    lat_arr = np.asarray(lats, dtype=np.float64).reshape(-1)
    lon_arr = np.asarray(lons, dtype=np.float64).reshape(-1)
    t_arr = np.asarray(as_of, dtype=np.float64).reshape(-1)
    if not lat_arr.shape == lon_arr.shape == t_arr.shape:
        raise ValueError("lats, lons and as_of must have the same length")
    out = np.zeros(lat_arr.shape[0], dtype=np.float64)
    if out.shape[0] == 0 or len(incidents) == 0:
        return out

    lookback_s = params.lookback_days * terms.DAY_S
    reach_km = incidents.max_influence_km
    cell = np.floor(lat_arr / pairs_mod.CELL_DEGREES) * 1000.0 + np.floor(
        lon_arr / pairs_mod.CELL_DEGREES
    )
    order = np.argsort(cell, kind="stable")
    bounds = np.flatnonzero(np.diff(cell[order])) + 1
    n_h = incidents.half_lives.shape[0]
    # The decays depend on the incident and the time only: computed once for all cells (when
    # they fit the bound), each cell copies its incidents' instead of computing them again.
    shared = _SharedDecays.of(t_arr, incidents, params)
    for rows in np.split(order, bounds):
        glat, glon, gt = lat_arr[rows], lon_arr[rows], t_arr[rows]
        box = bbox_spanning(
            float(glat.min()), float(glat.max()), float(glon.min()), float(glon.max()), reach_km
        )
        idx = np.concatenate((incidents.point_candidates(box), incidents.bare_area))
        # Only fitted incidents that can count at some time in this group.
        keep = (
            incidents.fitted[idx]
            & (incidents.reported_s[idx] <= gt.max())
            & (incidents.occurred_s[idx] <= gt.max())
            & (incidents.occurred_s[idx] >= gt.min() - lookback_s)
        )
        idx = idx[keep]
        if idx.shape[0] == 0:
            continue
        n_pt = int(np.count_nonzero(idx < incidents.n_point))
        n_i = idx.shape[0]
        pts, at_point = np.unique(np.stack((glat, glon), axis=1), axis=0, return_inverse=True)
        times, at_time = np.unique(gt, return_inverse=True)
        at_point, at_time = at_point.reshape(-1), at_time.reshape(-1)
        pidx = idx[:n_pt]
        distance = haversine_km(
            pts[:, 0, None],
            pts[:, 1, None],
            incidents.lat[pidx][None, :],
            incidents.lon[pidx][None, :],
        )
        d_eff = np.concatenate(
            (
                terms.effective_distance(distance, incidents.sigma_km[pidx][None, :]),
                np.full((pts.shape[0], n_i - n_pt), params.area_distance_km),
            ),
            axis=1,
        )
        static = incidents.static[idx]
        # The weight factors into space (per point) and time (per time): the intensity of every
        # (point, time) of the group is one matrix product, then the pairs asked for are read.
        coef = incidents.coef[idx].reshape(n_i, -1, n_h)
        spatial = (
            np.einsum("pis,ish->pih", incidents.kernel_basis(d_eff), coef) * static[None, :, None]
        ).reshape(pts.shape[0], n_i * n_h)
        local_w = static * terms.escalation_kernel(d_eff, params)
        regional_w = np.concatenate(
            (
                static[:n_pt]
                * (incidents.forecast[pidx] & (d_eff[:, :n_pt] <= params.escalation_regional_km)),
                np.zeros((pts.shape[0], n_i - n_pt)),
            ),
            axis=1,
        )
        total = np.empty((pts.shape[0], times.shape[0]))
        chunk = max(1, _MAX_MATRIX_CELLS // (n_i * n_h))
        for start in range(0, times.shape[0], chunk):
            t = times[start : start + chunk]
            part = _decays(t, idx, incidents, params) if shared is None else shared.take(t, idx)
            raw = spatial @ part.decay.reshape(t.shape[0], n_i * n_h).T
            _, _, e = terms.escalation(
                local_w @ part.recent.T,
                local_w @ part.baseline.T,
                regional_w @ part.recent.T,
                regional_w @ part.baseline.T,
                params,
            )
            total[:, start : start + chunk] = raw * (1.0 + np.where(raw > 0.0, e, 0.0))
        out[rows] = total[at_point, at_time]
    return out


# Upper bound on the decays intensities computes once for all its cells: (times x incidents x
# (half-lives + 2 windows)) values, 64 MB; beyond it each cell computes its own.
_MAX_SHARED_CELLS = 8_000_000


@dataclass(frozen=True, slots=True)
class _Decays:
    """What depends on the incident and the time only: the decay, (times, incidents,
    half-lives), and the escalation windows, (times, incidents)."""

    decay: FloatArray
    recent: FloatArray
    baseline: FloatArray


def _decays(
    times: FloatArray, idx: IndexArray, incidents: IncidentSet, params: ModelParams
) -> _Decays:
    """The decays of incidents `idx` at `times`."""
    t = times[:, None]
    age = (t - incidents.occurred_s[idx]) / terms.DAY_S
    valid = (incidents.reported_s[idx] <= t) & (age >= 0.0) & (age <= params.lookback_days)
    recent, baseline = terms.windows(age, valid, params)
    return _Decays(incidents.decay_basis(np.where(valid, age, -1.0)), recent, baseline)


@dataclass(frozen=True, slots=True)
class _SharedDecays:
    """The decays of every incident that can count at some time asked for, at every such time."""

    times: FloatArray
    # Each incident's column in `decays`, -1 for those that cannot count.
    column: IndexArray
    decays: _Decays

    @classmethod
    def of(
        cls, as_of: FloatArray, incidents: IncidentSet, params: ModelParams
    ) -> _SharedDecays | None:
        """Those of the times `as_of`, or None when they would exceed the bound."""
        times = np.unique(as_of)
        idx = np.concatenate((np.arange(incidents.n_point, dtype=np.intp), incidents.bare_area))
        # The cells' filter at the earliest and the latest time: it keeps every cell's incidents.
        idx = idx[
            incidents.fitted[idx]
            & (incidents.reported_s[idx] <= times[-1])
            & (incidents.occurred_s[idx] <= times[-1])
            & (incidents.occurred_s[idx] >= times[0] - params.lookback_days * terms.DAY_S)
        ]
        if times.shape[0] * idx.shape[0] * (incidents.half_lives.shape[0] + 2) > _MAX_SHARED_CELLS:
            return None
        column = np.full(len(incidents), -1, dtype=np.intp)
        column[idx] = np.arange(idx.shape[0])
        return cls(times, column, _decays(times, idx, incidents, params))

    def take(self, times: FloatArray, idx: IndexArray) -> _Decays:
        """The decays of incidents `idx` (all kept by `of`) at `times` (distinct, sorted)."""
        at = np.searchsorted(self.times, times)
        columns = self.column[idx]
        decays = self.decays
        if at[-1] - at[0] + 1 == at.shape[0]:
            # A run of the times (in a backtest, all of them): a view, then copy the columns.
            run = slice(int(at[0]), int(at[-1]) + 1)
            return _Decays(
                np.take(decays.decay[run], columns, axis=1),
                np.take(decays.recent[run], columns, axis=1),
                np.take(decays.baseline[run], columns, axis=1),
            )
        picked = np.ix_(at, columns)
        return _Decays(decays.decay[picked], decays.recent[picked], decays.baseline[picked])
