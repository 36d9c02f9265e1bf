"""The formula's terms, each written once: per-target scoring, bulk scoring and the fit use these.

docs/scoring.md states the formula; every function here is one line of it.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from services.scoring.geo import FloatArray
from services.scoring.risk.params import ModelParams
from services.scoring.taxonomy import Band

DAY_S = 86_400.0
BoolArray = NDArray[np.bool_]


def taper(x: FloatArray, end: float, share: float) -> FloatArray:
    """1 up to (1 - share) x end, then a half cosine down to 0 at end, 0 beyond: no cliff."""
    start = end * (1.0 - share)
    if share <= 0.0:
        return np.asarray(np.where(x <= end, 1.0, 0.0))
    phase = np.clip((x - start) / (end - start), 0.0, 1.0)
    return np.asarray(0.5 * (1.0 + np.cos(math.pi * phase)))


def effective_distance(distance_km: FloatArray, sigma_km: FloatArray) -> FloatArray:
    """Distance blurred by the location's uncertainty: sqrt(d^2 + sigma^2)."""
    return np.asarray(np.hypot(distance_km, sigma_km))


def spatial_basis(
    d_eff_km: FloatArray, params: ModelParams, scales: FloatArray | None = None
) -> FloatArray:
    """exp(-d/s) for each spatial scale s (all of params', or those given), tapered to 0 at
    reach_km; shape (..., S)."""
    d = np.asarray(d_eff_km, dtype=np.float64)[..., None]
    scales = np.asarray(params.spatial_scales_km) if scales is None else scales
    return np.asarray(
        np.exp(-d / scales) * taper(d, params.reach_km, params.taper_share), dtype=np.float64
    )


def temporal_basis(
    age_days: FloatArray, params: ModelParams, half_lives: FloatArray | None = None
) -> FloatArray:
    """0.5^(age/h) for each half-life h (all of params', or those given), tapered to 0 at the
    lookback, 0 when not yet; shape (..., H)."""
    age = np.asarray(age_days, dtype=np.float64)[..., None]
    half_lives = np.asarray(params.half_lives_days) if half_lives is None else half_lives
    inside = (age >= 0.0) & (age <= params.lookback_days)
    weight = 0.5 ** (np.maximum(age, 0.0) / half_lives)
    return np.asarray(
        np.where(inside, weight * taper(age, params.lookback_days, params.taper_share), 0.0)
    )


def coefficient_tensor(params: ModelParams) -> tuple[FloatArray, tuple[str, ...]]:
    """The fitted coefficients as one (G, S, H) array, with the group names in order."""
    names = params.group_names
    tensor = np.array([params.coefficients[g] for g in names], dtype=np.float64)
    return tensor.reshape(
        len(names), len(params.spatial_scales_km), len(params.half_lives_days)
    ), names


def escalation_kernel(d_eff_km: FloatArray, params: ModelParams) -> FloatArray:
    """The fixed kernel tempo is measured with: exp(-d/escalation_scale_km), tapered at reach."""
    return np.asarray(
        np.exp(-d_eff_km / params.escalation_scale_km)
        * taper(d_eff_km, params.reach_km, params.taper_share)
    )


def windows(
    age_days: FloatArray, valid: BoolArray, params: ModelParams
) -> tuple[FloatArray, FloatArray]:
    """1.0 where an incident is in the recent window, and in the baseline window before it."""
    recent_days = params.escalation_recent_days
    recent = valid & (age_days >= 0.0) & (age_days <= recent_days)
    baseline = (
        valid
        & (age_days > recent_days)
        & (age_days <= recent_days + params.escalation_baseline_days)
    )
    return recent.astype(np.float64), baseline.astype(np.float64)


def escalation(
    local_recent: FloatArray,
    local_baseline: FloatArray,
    regional_recent: FloatArray,
    regional_baseline: FloatArray,
    params: ModelParams,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Local and regional tempo ratios and the amplification e = gain x esc they imply."""
    recent_days = params.escalation_recent_days
    baseline_days = params.escalation_baseline_days
    eps_l = params.escalation_local_epsilon
    eps_r = params.escalation_regional_epsilon
    local = (local_recent / recent_days + eps_l) / (local_baseline / baseline_days + eps_l)
    regional = (regional_recent / recent_days + eps_r) / (regional_baseline / baseline_days + eps_r)
    esc = np.clip(
        params.escalation_local_weight * np.log2(local)
        + params.escalation_regional_weight * np.log2(regional),
        0.0,
        params.escalation_cap,
    )
    return local, regional, params.escalation_gain * esc


def calibrate(total: FloatArray, params: ModelParams) -> FloatArray:
    """The probability of the forecast event at an intensity: the monotone calibration map."""
    xs = np.array([k[0] for k in params.calibration])
    ys = np.array([k[1] for k in params.calibration])
    return np.asarray(np.interp(total, xs, ys))


def adjust_odds(probability: FloatArray, factor: FloatArray) -> FloatArray:
    """Probabilities with their odds multiplied by factor (elementwise); 0 and 1 stay put."""
    unmoved = (factor == 1.0) | (probability <= 0.0) | (probability >= 1.0)
    p = np.where(unmoved, 0.0, probability)
    odds = p / (1.0 - p) * factor
    return np.asarray(np.where(unmoved, probability, odds / (1.0 + odds)))


def percent(probability: FloatArray) -> FloatArray:
    """The headline value: the probability in percent, one decimal (both paths round alike)."""
    return np.asarray(np.round(100.0 * np.asarray(probability), 1))


def band_for(value: float, params: ModelParams) -> Band:
    """The band a value (probability in percent) falls in."""
    bands = (Band.LOW, Band.MODERATE, Band.ELEVATED, Band.HIGH)
    for band, upper in zip(bands, params.band_thresholds, strict=True):
        if value < upper:
            return band
    return Band.CRITICAL


# primary_reach_km by parameter set (a few versions live at once; keyed by identity).
_REACH: dict[int, tuple[ModelParams, float]] = {}


def primary_reach_km(params: ModelParams) -> float:
    """The distance beyond which every group's kernel is below 2 % of its peak.

    The service rescores at once only targets within this reach of a new incident; the faint
    tail beyond reaches stored scores at the periodic re-evaluation. Computed once per
    parameter set.
    """
    known = _REACH.get(id(params))
    if known is not None and known[0] is params:
        return known[1]
    if len(_REACH) > 16:
        _REACH.clear()
    reach = _primary_reach(params, floor=0.02)
    _REACH[id(params)] = (params, reach)
    return reach


def _primary_reach(params: ModelParams, *, floor: float) -> float:
    tensor, _ = coefficient_tensor(params)
    grid = np.linspace(0.0, params.reach_km, 401)
    basis = spatial_basis(grid, params)  # (n, S)
    reach = 0.0
    for g in range(tensor.shape[0]):
        kernel = basis @ tensor[g].sum(axis=1)
        if kernel[0] <= 0.0:
            continue
        above = np.flatnonzero(kernel >= floor * kernel[0])
        reach = max(reach, float(grid[above[-1]]))
    return max(reach, params.forecast_distance_km)
