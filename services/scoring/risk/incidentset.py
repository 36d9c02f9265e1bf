"""Incidents as column arrays, built once and scored against many targets and times."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from services.scoring.geo import FloatArray
from services.scoring.risk import terms
from services.scoring.risk.params import ModelParams, component_of
from services.scoring.risk.types import Incident, Target
from services.scoring.taxonomy import Category, Component, Lifecycle, Mode, Sector, TargetType

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]
IndexArray = NDArray[np.intp]

CATEGORIES = tuple(Category)
CATEGORY_INDEX = {c: i for i, c in enumerate(CATEGORIES)}
COMPONENTS = (Component.VIOLENCE, Component.THREATS, Component.KIDNAPPING)
COMPONENT_INDEX = {c: i for i, c in enumerate(COMPONENTS)}
SECTORS = tuple(Sector)
SECTOR_INDEX = {s: i for i, s in enumerate(SECTORS)}
TARGET_TYPES = tuple(TargetType)
TARGET_TYPE_INDEX = {t: i for i, t in enumerate(TARGET_TYPES)}
NONE = -1


def epoch_s(moment: datetime, what: str) -> float:
    """Epoch seconds of an aware datetime; naive ones are refused rather than guessed."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC)")
    return moment.timestamp()


def fatalities(incident: Incident, params: ModelParams) -> tuple[float | None, str]:
    """The credible fatality figure and where it came from."""
    if incident.fatalities_best is not None:
        return float(incident.fatalities_best), "independent"
    if incident.fatalities_claimed is not None:
        # Perpetrators inflate: the Boulkessi claim was over 100 against about 30 reported.
        return (
            incident.fatalities_claimed * params.claimed_fatalities_discount,
            "claimed, discounted",
        )
    return None, "none"


def credibility(incident: Incident, params: ModelParams) -> float:
    """How far the report is believed, from source reliability and lifecycle."""
    reliability = min(1.0, max(0.0, incident.source_reliability))
    value = params.credibility_floor + (1.0 - params.credibility_floor) * reliability
    if incident.lifecycle is Lifecycle.DEVELOPING:
        value *= params.developing_factor
    return value


def influence_radius_km(
    incident: Incident, params: ModelParams, *, regional: bool = True
) -> float | None:
    """How far from a target's geometry an incident can change its score; None if area-scoped.

    With `regional=False`, only where the fitted kernel is above 2 % of its peak: the faint tail
    beyond is left to the periodic re-evaluation.
    """
    if incident.lat is None or incident.lon is None:
        return None
    reach = params.reach_km if regional else terms.primary_reach_km(params)
    return params.location_sigma_km[incident.location_precision] + reach


def max_influence_km(params: ModelParams, *, regional: bool = True) -> float:
    """The largest influence radius any point incident can have, for prefiltering."""
    reach = params.reach_km if regional else terms.primary_reach_km(params)
    return max(params.location_sigma_km.values()) + reach


def area_scope_covers(incident: Incident, target: Target) -> bool:
    """Whether an area-scoped incident's countries and regions cover the target."""
    if incident.scope_countries and not incident.scope_countries & target.countries:
        return False
    return not (incident.scope_admin1 and not incident.scope_admin1 & target.admin1)


def area_scope_matches(incident: Incident, target: Target) -> bool:
    """Whether an incident's area scope and target profile cover the target (threats, alerts)."""
    return area_scope_covers(incident, target) and profile_admits(incident, target)


def profile_admits(incident: Incident, target: Target) -> bool:
    """Whether a threat's target profile (foreign-owned only, named sectors) admits the target."""
    if incident.target_foreign_owned_only and not target.foreign_owned:
        return False
    return not (incident.target_sectors and target.sector not in incident.target_sectors)


@dataclass(frozen=True, slots=True)
class Columns:
    """Per-incident figures as Python lists, for code that reads them one at a time (a
    numpy array read element by element costs more)."""

    sigma_km: list[float]
    fatalities_used: list[float]
    severity: list[float]
    precision: list[float]
    time_precision: list[float]
    credibility: list[float]
    is_threat: list[bool]


class IncidentSet:
    """Incidents as column arrays, built once and scored against many targets and times."""

    def __init__(self, incidents: Sequence[Incident], params: ModelParams) -> None:
        """Drop retracted and merged reports and precompute every target-independent factor."""
        self.params = params
        kept = [i for i in incidents if i.counts]
        for inc in kept:
            epoch_s(inc.occurred_at, f"incident {inc.id} occurred_at")
            epoch_s(inc.reported_at, f"incident {inc.id} reported_at")
            if (inc.lat is None) != (inc.lon is None):
                raise ValueError(f"incident {inc.id}: lat and lon must both be set or both None")
        point = sorted((i for i in kept if i.lat is not None), key=lambda i: float(i.lat or 0.0))
        area = [i for i in kept if i.lat is None]
        # Point incidents first, sorted by latitude so a box search is two binary searches.
        self.incidents: tuple[Incident, ...] = tuple(point + area)
        self.n_point = len(point)
        self.max_influence_km = max_influence_km(params)
        self.lat: FloatArray = np.array([i.lat for i in point], dtype=np.float64)
        self.lon: FloatArray = np.array([i.lon for i in point], dtype=np.float64)
        tensor, names = terms.coefficient_tensor(params)
        group_index = {g: k for k, g in enumerate(names)}
        # Only the scales and half-lives some group weighs are computed when scoring (a fit
        # leaves most at 0).
        active_s = np.flatnonzero(tensor.sum(axis=(0, 2)) > 0.0)
        active_h = np.flatnonzero(tensor.sum(axis=(0, 1)) > 0.0)
        active_s = active_s if active_s.size else np.arange(1)
        active_h = active_h if active_h.size else np.arange(1)
        self.scales: FloatArray = np.asarray(params.spatial_scales_km)[active_s]
        self.half_lives: FloatArray = np.asarray(params.half_lives_days)[active_h]
        # (G, S', H'): the fitted coefficients of the scales and half-lives in use.
        self.coefficients: FloatArray = tensor[:, active_s][:, :, active_h]

        rows = self.incidents
        figures = [fatalities(i, params) for i in rows]

        def floats(values: Sequence[float]) -> FloatArray:
            return np.array(values, dtype=np.float64).reshape(-1)

        def ints(values: Sequence[int]) -> IntArray:
            return np.array(values, dtype=np.int64).reshape(-1)

        def bools(values: Sequence[bool]) -> BoolArray:
            return np.array(values, dtype=np.bool_).reshape(-1)

        self.fatalities_basis = tuple(basis for _, basis in figures)
        self.fatalities_used = floats([math.nan if f is None else f for f, _ in figures])
        self.severity = 1.0 + params.severity_log_coefficient * np.log10(
            1.0 + np.nan_to_num(self.fatalities_used, nan=0.0)
        )
        self.credibility = floats([credibility(i, params) for i in rows])
        self.precision = floats([params.location_factor[i.location_precision] for i in rows])
        self.time_precision = floats(
            [params.time_precision_factor[i.occurred_precision] for i in rows]
        )
        self.static = self.severity * self.credibility * self.precision * self.time_precision
        self.sigma_km = floats([params.location_sigma_km[i.location_precision] for i in rows])
        self.occurred_s = floats([i.occurred_at.timestamp() for i in rows])
        self.reported_s = floats([i.reported_at.timestamp() for i in rows])
        self.category = ints([CATEGORY_INDEX[i.category] for i in rows])
        self.component = ints([COMPONENT_INDEX[component_of(i.category)] for i in rows])
        # The fitted group of each incident; NONE for explicit threats (an adjustment only).
        self.group = ints(
            [
                group_index[params.groups[i.category]] if i.category in params.groups else NONE
                for i in rows
            ]
        )
        self.fitted = self.group != NONE
        # Each incident's coefficients, flattened (N, S'*H'); zeros for threats.
        by_group = self.coefficients.reshape(len(names), -1)
        self.coef: FloatArray = np.where(
            self.fitted[:, None], by_group[np.maximum(self.group, 0)], 0.0
        ).reshape(len(rows), by_group.shape[1])
        self.ids = ints([i.id for i in rows])
        # A threat's target profile: foreign-owned firms only, and the sectors it names (bits).
        self.target_foreign_only = bools([i.target_foreign_owned_only for i in rows])
        self.target_sector_mask = ints(
            [sum(1 << SECTOR_INDEX[s] for s in i.target_sectors) for i in rows]
        )
        self.is_threat = bools([i.category is Category.EXPLICIT_THREAT for i in rows])
        self.forecast = bools([i.category in params.forecast_categories for i in rows])
        self.is_kidnapping = bools([i.category is Category.KIDNAPPING for i in rows])
        self.victim_expatriate = bools([i.victim_expatriate for i in rows])
        self.victim_sector = ints(
            [NONE if i.victim_sector is None else SECTOR_INDEX[i.victim_sector] for i in rows]
        )
        self.target_type = ints(
            [NONE if i.target_type is None else TARGET_TYPE_INDEX[i.target_type] for i in rows]
        )
        # Bare points get the fitted part only: every fitted incident without an area limit.
        self.bare_area: IndexArray = np.array(
            [
                self.n_point + j
                for j, i in enumerate(area)
                if not i.scope_countries and not i.scope_admin1 and self.fitted[self.n_point + j]
            ],
            dtype=np.intp,
        )

        self.columns = Columns(
            sigma_km=self.sigma_km.tolist(),
            fatalities_used=self.fatalities_used.tolist(),
            severity=self.severity.tolist(),
            precision=self.precision.tolist(),
            time_precision=self.time_precision.tolist(),
            credibility=self.credibility.tolist(),
            is_threat=self.is_threat.tolist(),
        )

        cat_idx = self.category
        tt_idx = self.target_type
        self.mode_category_factor: dict[Mode, FloatArray] = {}
        self.mode_target_type_factor: dict[Mode, FloatArray] = {}
        for mode in Mode:
            cat_table = params.mode_category_factor.get(mode, {})
            tt_table = params.mode_target_type_factor.get(mode, {})
            by_cat = np.array([cat_table.get(c, 1.0) for c in CATEGORIES])
            # The extra last entry serves incidents without a target type (index -1).
            by_tt = np.array([tt_table.get(t, 1.0) for t in TARGET_TYPES] + [1.0])
            self.mode_category_factor[mode] = by_cat[cat_idx]
            self.mode_target_type_factor[mode] = by_tt[tt_idx]
        enroute = np.array(
            [params.air_enroute_factor.get(c, params.air_enroute_default) for c in CATEGORIES]
        )
        self.air_enroute_factor: FloatArray = enroute[cat_idx]

    def __len__(self) -> int:
        """Number of incidents kept (retracted ones are dropped)."""
        return len(self.incidents)

    def point_candidates(self, box: tuple[float, float, float, float]) -> IndexArray:
        """Indices of point incidents inside a (min_lon, min_lat, max_lon, max_lat) box."""
        min_lon, min_lat, max_lon, max_lat = box
        lo = int(np.searchsorted(self.lat, min_lat, side="left"))
        hi = int(np.searchsorted(self.lat, max_lat, side="right"))
        if min_lon <= -180.0 and max_lon >= 180.0:
            return np.arange(lo, hi, dtype=np.intp)
        lon = self.lon[lo:hi]
        return lo + np.flatnonzero((lon >= min_lon) & (lon <= max_lon))

    def kernel_basis(self, d_eff_km: FloatArray) -> FloatArray:
        """The spatial basis at the scales in use; shape (..., S')."""
        return terms.spatial_basis(d_eff_km, self.params, self.scales)

    def decay_basis(self, age_days: FloatArray) -> FloatArray:
        """The temporal basis at the half-lives in use; shape (..., H')."""
        return terms.temporal_basis(age_days, self.params, self.half_lives)


def check_params(incidents: IncidentSet, params: ModelParams) -> None:
    """Refuse an IncidentSet precomputed under other parameters."""
    if incidents.params is not params and incidents.params != params:
        raise ValueError("the IncidentSet was built with different ModelParams")
