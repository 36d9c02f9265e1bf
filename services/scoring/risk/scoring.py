"""Scoring: one target with its explanation (score_target), many bare points fast (score_points).

Both paths compute the fitted intensity with the same terms (services/scoring/risk/terms.py);
only score_target adds the firm-specific adjustments, which bare points never have.
"""

from __future__ import annotations

import math
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
from services.scoring.risk import terms
from services.scoring.risk.explain import contribution, threat_contribution
from services.scoring.risk.incidentset import (
    COMPONENT_INDEX,
    COMPONENTS,
    SECTOR_INDEX,
    TARGET_TYPE_INDEX,
    BoolArray,
    IncidentSet,
    IndexArray,
    area_scope_covers,
    check_params,
    epoch_s,
    profile_admits,
)
from services.scoring.risk.params import ModelParams
from services.scoring.risk.types import Adjustment, Hotspot, Score, Target
from services.scoring.taxonomy import Category, Component, Mode, Sector, TargetKind, TargetType

# score_points groups its pairs into cells this many degrees wide, so one candidate search and
# one distance matrix serve every point in the cell.
_CELL_DEGREES = 1.0
# An adjustment whose factor is closer to 1 than this (its incidents are too far or too old to
# weigh) is not listed.
NOTABLE_FACTOR = 0.005
# Upper bound on the (pairs x incidents x half-lives) arrays score_points builds at once.
_MAX_MATRIX_CELLS = 1_000_000


def _target_lonlat(target: Target) -> FloatArray:
    """Target coordinates as an (n, 2) array, checked against the kind."""
    coords = np.asarray(target.coordinates, dtype=np.float64).reshape(-1, 2)
    if target.kind is TargetKind.SITE and coords.shape[0] != 1:
        raise ValueError("a site has exactly one (lon, lat) pair")
    if target.kind is TargetKind.CORRIDOR and coords.shape[0] < 2:
        raise ValueError("a corridor has at least two (lon, lat) pairs")
    if target.radius_km < 0.0:
        raise ValueError("radius_km must be non-negative")
    return coords


@dataclass(frozen=True, slots=True)
class Profile:
    """Firm-specific factors of candidate incidents for one target (1 where none applies)."""

    factor: FloatArray
    mode_factor: FloatArray
    expat_kidnap: BoolArray
    victim_sector: BoolArray
    foreign_firm: BoolArray
    mining: BoolArray
    airfield: BoolArray


def _profile(
    incidents: IncidentSet,
    idx: IndexArray,
    n_pt: int,
    target: Target,
    coords: FloatArray,
    params: ModelParams,
) -> Profile:
    """The adjustment factors of fitted candidates: victim and target profile, corridor mode."""
    n = idx.shape[0]
    none = np.zeros(n, dtype=np.bool_)
    expat_kidnap = (
        incidents.is_kidnapping[idx] & incidents.victim_expatriate[idx]
        if target.expat_staff
        else none
    )
    if target.sector is not None:
        victim_sector = incidents.victim_sector[idx] == SECTOR_INDEX[target.sector]
    else:
        victim_sector = none
    mining = (
        incidents.target_type[idx] == TARGET_TYPE_INDEX[TargetType.MINING]
        if target.sector is Sector.MINING
        else none
    )
    foreign_firm = (
        incidents.target_type[idx] == TARGET_TYPE_INDEX[TargetType.FOREIGN_FIRM]
        if target.foreign_owned
        else none
    )
    factor = (
        np.where(expat_kidnap, params.expat_kidnapping_factor, 1.0)
        * np.where(victim_sector, params.victim_sector_factor, 1.0)
        * np.where(foreign_firm, params.foreign_firm_target_factor, 1.0)
        * np.where(mining, params.mining_target_factor, 1.0)
    )
    mode = target.mode if target.kind is TargetKind.CORRIDOR else None
    airfield = np.zeros(n, dtype=np.bool_)
    if mode is None:
        mode_factor = np.ones(n)
    elif mode is Mode.AIR:
        # Near the airfields at either end the air factors apply; en route, ground violence
        # weighs less (except anti-aircraft fire, which threatens the whole leg).
        lat, lon = incidents.lat[idx[:n_pt]], incidents.lon[idx[:n_pt]]
        d_field = np.minimum(
            haversine_km(coords[0, 1], coords[0, 0], lat, lon),
            haversine_km(coords[-1, 1], coords[-1, 0], lat, lon),
        )
        airfield[:n_pt] = d_field <= params.airfield_km + incidents.sigma_km[idx[:n_pt]]
        enroute = np.concatenate((incidents.air_enroute_factor[idx[:n_pt]], np.ones(n - n_pt)))
        mode_factor = np.where(airfield, incidents.mode_category_factor[mode][idx], enroute)
        mode_factor = mode_factor * incidents.mode_target_type_factor[mode][idx]
    else:
        mode_factor = (
            incidents.mode_category_factor[mode][idx] * incidents.mode_target_type_factor[mode][idx]
        )
    return Profile(
        factor=np.asarray(factor),
        mode_factor=np.asarray(mode_factor),
        expat_kidnap=expat_kidnap,
        victim_sector=victim_sector,
        foreign_firm=foreign_firm,
        mining=mining,
        airfield=airfield,
    )


def _aimed_at(incidents: IncidentSet, i: int, target: Target) -> bool:
    """Whether a threat names the target: its owner or its sector, and its profile admits it."""
    inc = incidents.incidents[i]
    if not profile_admits(inc, target):
        return False
    if inc.target_foreign_owned_only and target.foreign_owned:
        return True
    if target.sector is not None and target.sector in inc.target_sectors:
        return True
    return (inc.target_type is TargetType.FOREIGN_FIRM and target.foreign_owned) or (
        inc.target_type is TargetType.MINING and target.sector is Sector.MINING
    )


def _distances(
    incidents: IncidentSet, idx: IndexArray, target: Target, coords: FloatArray
) -> FloatArray:
    """Distance (km) of point candidates from the target's geometry (point or line)."""
    lat, lon = incidents.lat[idx], incidents.lon[idx]
    if target.kind is TargetKind.SITE:
        return np.asarray(haversine_km(coords[0, 1], coords[0, 0], lat, lon))
    distance, _ = point_to_polyline_km(lat, lon, [(a, b) for a, b in coords])
    return np.asarray(distance)


def _split(total: float, weights: FloatArray) -> FloatArray:
    """total shared in proportion to weights (zeros when they sum to 0)."""
    s = float(np.sum(weights))
    return np.asarray(total * weights / s) if s != 0.0 else np.zeros_like(weights)


def score_target(
    target: Target,
    incidents: IncidentSet,
    as_of: datetime,
    params: ModelParams,
    *,
    explain_top: int = 20,
) -> Score:
    """Score one site or corridor as of a time, with components, explanation and hotspots."""
    check_params(incidents, params)
    t = epoch_s(as_of, "as_of")
    coords = _target_lonlat(target)
    box = bbox_spanning(
        float(coords[:, 1].min()),
        float(coords[:, 1].max()),
        float(coords[:, 0].min()),
        float(coords[:, 0].max()),
        incidents.max_influence_km,
    )
    # Area-scoped incidents where their area covers the target; a target profile scopes only
    # threats (the fitted part never hides an incident from anyone).
    area = [
        incidents.n_point + j
        for j, inc in enumerate(incidents.incidents[incidents.n_point :])
        if area_scope_covers(inc, target)
        and (inc.category is not Category.EXPLICIT_THREAT or profile_admits(inc, target))
    ]
    idx = np.concatenate((incidents.point_candidates(box), np.array(area, dtype=np.intp)))
    age = (t - incidents.occurred_s[idx]) / terms.DAY_S
    valid = (incidents.reported_s[idx] <= t) & (age >= 0.0) & (age <= params.lookback_days)
    idx, age = idx[valid], age[valid]
    n_pt = int(np.count_nonzero(idx < incidents.n_point))
    point_distance = _distances(incidents, idx[:n_pt], target, coords)
    point_d_eff = terms.effective_distance(point_distance, incidents.sigma_km[idx[:n_pt]])
    # Beyond the reach every term is 0 (the box around the target is wider than the circle).
    near = np.concatenate((point_d_eff < params.reach_km, np.ones(idx.shape[0] - n_pt, bool)))
    idx, age = idx[near], age[near]
    n_pt = int(np.count_nonzero(near[:n_pt]))
    n = idx.shape[0]
    kept = near[: point_distance.shape[0]]
    distance = np.concatenate((point_distance[kept], np.full(n - n_pt, np.nan)))
    d_eff = np.concatenate((point_d_eff[kept], np.full(n - n_pt, params.area_distance_km)))
    kernel_basis = incidents.kernel_basis(d_eff)
    decay_basis = incidents.decay_basis(age)
    coefficients = incidents.coef[idx]
    fitted = incidents.fitted[idx]
    c = incidents.static[idx] * terms.space_time_weight(kernel_basis, decay_basis, coefficients)

    local_w = incidents.static[idx] * terms.escalation_kernel(d_eff, params) * fitted
    regional_w = np.where(
        np.arange(n) < n_pt,
        incidents.static[idx]
        * (incidents.forecast[idx] & (d_eff <= params.escalation_regional_km)),
        0.0,
    )
    everything = np.ones(n, dtype=np.bool_)
    local_recent, local_base = terms.window_sums(local_w, age, everything, params)
    regional_recent, regional_base = terms.window_sums(regional_w, age, everything, params)
    ratio_l, ratio_r, e_arr = terms.escalation(
        local_recent, local_base, regional_recent, regional_base, params
    )
    raw = float(np.sum(c))
    e = float(e_arr) if raw > 0.0 else 0.0
    total = raw * (1.0 + e)
    p_background = float(terms.calibrate(np.asarray(0.0), params))
    p_generic = float(terms.calibrate(np.asarray(total), params))

    # Firm-specific adjustments on the odds: fitted incidents matching the profile or the mode
    # (their c-weighted mean factor), and threats aimed at the target.
    profile = _profile(incidents, idx, n_pt, target, coords, params)
    f = profile.factor * profile.mode_factor
    m_incidents = float(np.sum(c * f) / raw) if raw > 0.0 else 1.0
    threat_k = np.flatnonzero(incidents.is_threat[idx])
    threat_k = np.array(
        [k for k in threat_k if _aimed_at(incidents, int(idx[k]), target)], dtype=np.intp
    )
    strength = np.zeros(n)
    threat_factor = np.ones(n)
    if threat_k.shape[0]:
        ti = idx[threat_k]
        k_space = np.where(
            threat_k < n_pt,
            np.exp(-d_eff[threat_k] / params.threat_scale_km)
            * terms.taper(d_eff[threat_k], params.reach_km, params.taper_share),
            1.0,
        )
        k_time = 0.5 ** (age[threat_k] / params.threat_half_life_days) * terms.taper(
            age[threat_k], params.lookback_days, params.taper_share
        )
        strength[threat_k] = incidents.credibility[ti] * k_space * k_time
        named = np.array(
            [
                target.sector is not None and target.sector in incidents.incidents[i].target_sectors
                for i in ti
            ]
        )
        threat_factor[threat_k] = params.threat_factor * np.where(
            named, params.threat_sector_named_factor, 1.0
        )
    m_threats = 1.0 + float(np.sum((threat_factor - 1.0) * strength))
    limit = params.max_odds_factor
    m_total = min(limit, max(1.0 / limit, m_incidents * m_threats))
    m_incidents_capped = min(limit, max(1.0 / limit, m_incidents))
    p_after_incidents = terms.adjust_odds(p_generic, m_incidents_capped)
    probability = terms.adjust_odds(p_generic, m_total)
    value = float(terms.percent(np.asarray(probability)))

    # Points: background, the fitted part by incident and escalation, then the adjustments.
    generic_points = 100.0 * max(0.0, p_generic - p_background)
    incident_points = (generic_points * c / raw / (1.0 + e) if raw > 0.0 else np.zeros(n)) + _split(
        100.0 * (p_after_incidents - p_generic), c * (f - 1.0)
    )
    incident_points = incident_points + _split(
        100.0 * (probability - p_after_incidents), (threat_factor - 1.0) * strength
    )
    comp_points = {comp: 0.0 for comp in Component}
    by_comp = np.bincount(
        incidents.component[idx], weights=incident_points, minlength=len(COMPONENTS)
    )
    for comp, i in COMPONENT_INDEX.items():
        comp_points[comp] = round(float(by_comp[i]), 2)
    comp_points[Component.ESCALATION] = round(generic_points * e / (1.0 + e), 2)
    comp_points[Component.BACKGROUND] = round(100.0 * min(p_background, p_generic), 2)

    top = _largest(np.abs(incident_points), explain_top)
    contributions = tuple(
        threat_contribution(
            incidents, idx, k, target, distance, age, float(strength[k]),
            float(threat_factor[k]), float(incident_points[k]), value,
        )
        if incidents.is_threat[idx[k]]
        else contribution(
            incidents, idx, k, target, distance, d_eff, age, kernel_basis, c, profile,
            float(incident_points[k]), value,
        )
        for k in top
    )  # fmt: skip
    adjustments = _adjustments(incidents, idx, profile, c, threat_k, strength, m_threats, params)
    hotspots: tuple[Hotspot, ...] = ()
    if target.kind is TargetKind.CORRIDOR and raw > 0.0 and n_pt > 0:
        hotspots = _hotspots(coords, incidents, idx[:n_pt], c[:n_pt], incident_points, e, params)

    return Score(
        value=value,
        band=terms.band_for(value, params),
        components=MappingProxyType(comp_points),
        as_of=as_of,
        incident_count=int(np.count_nonzero(np.abs(incident_points) >= params.negligible_points)),
        contributions=contributions,
        hotspots=hotspots,
        escalation=MappingProxyType(
            {"local_ratio": float(ratio_l), "regional_ratio": float(ratio_r), "factor": e}
        ),
        probability=probability,
        generic_probability=p_generic,
        adjustments=adjustments,
        forecast_distance_km=params.forecast_distance_km,
        forecast_horizon_days=params.forecast_horizon_days,
    )


def _adjustments(
    incidents: IncidentSet,
    idx: IndexArray,
    profile: Profile,
    c: FloatArray,
    threat_k: IndexArray,
    strength: FloatArray,
    m_threats: float,
    params: ModelParams,
) -> tuple[Adjustment, ...]:
    """The adjustments on the odds, each with the incidents behind it, largest first."""
    out: list[Adjustment] = []
    raw = float(np.sum(c))
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
    if raw > 0.0:
        for kind, mask, factor, why in kinds:
            if not mask.any():
                continue
            # The factor this match alone gives: the c-weighted mean of its own factor.
            solo = float(np.sum(c * np.where(mask, factor, 1.0)) / raw)
            ids = tuple(incidents.incidents[int(i)].id for i in idx[mask & (c > 0.0)])
            if ids and abs(solo - 1.0) >= NOTABLE_FACTOR:
                out.append(Adjustment(kind, round(solo, 4), ids, why))
        moded = profile.mode_factor != 1.0
        if moded.any() and np.sum(c[moded]) > 0.0:
            solo = float(np.sum(c * profile.mode_factor) / raw)
            ids = tuple(incidents.incidents[int(i)].id for i in idx[moded & (c > 0.0)])
            if abs(solo - 1.0) >= NOTABLE_FACTOR:
                out.append(Adjustment("corridor_mode", round(solo, 4), ids, "the corridor's mode"))
    if threat_k.shape[0] and m_threats != 1.0:
        ids = tuple(incidents.incidents[int(idx[k])].id for k in threat_k if strength[k] > 0.0)
        out.append(Adjustment("threats", round(m_threats, 4), ids, "threats aimed at the target"))
    return tuple(sorted(out, key=lambda a: -abs(math.log(a.factor)) if a.factor > 0 else 0.0))


def _largest(points: FloatArray, k: int) -> list[int]:
    """Indices of the k largest positive points, largest first (ties by index)."""
    if k <= 0 or points.shape[0] == 0:
        return []
    # A partial selection first: a full sort of thousands of candidates per target is waste.
    head = (
        np.argpartition(-points, k - 1)[:k] if points.shape[0] > k else np.arange(points.shape[0])
    )
    head = head[np.lexsort((head, -points[head]))]
    return [int(i) for i in head if points[i] > 0.0]


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
    cell = np.floor(lat_arr / _CELL_DEGREES) * 1000.0 + np.floor(lon_arr / _CELL_DEGREES)
    order = np.argsort(cell, kind="stable")
    bounds = np.flatnonzero(np.diff(cell[order])) + 1
    n_h = incidents.half_lives.shape[0]
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
        occurred = incidents.occurred_s[idx]
        reported = incidents.reported_s[idx]
        total = np.empty((pts.shape[0], times.shape[0]))
        chunk = max(1, _MAX_MATRIX_CELLS // (n_i * n_h))
        for start in range(0, times.shape[0], chunk):
            t = times[start : start + chunk, None]
            age = (t - occurred) / terms.DAY_S
            valid = (reported <= t) & (age >= 0.0) & (age <= params.lookback_days)
            decay = incidents.decay_basis(np.where(valid, age, -1.0))
            raw = spatial @ decay.reshape(t.shape[0], n_i * n_h).T
            recent, baseline = terms.windows(age, valid, params)
            _, _, e = terms.escalation(
                local_w @ recent.T,
                local_w @ baseline.T,
                regional_w @ recent.T,
                regional_w @ baseline.T,
                params,
            )
            total[:, start : start + chunk] = raw * (1.0 + np.where(raw > 0.0, e, 0.0))
        out[rows] = total[at_point, at_time]
    return out
