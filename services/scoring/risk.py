"""The risk model: incidents in, a 0-100 score with components, explanation and hotspots out."""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from services.scoring.geo import (
    FloatArray,
    bbox_spanning,
    haversine_km,
    point_to_polyline_km,
    split_polyline,
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

DAY_S = 86_400.0
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]
IndexArray = NDArray[np.intp]

_CATEGORIES = tuple(Category)
_CATEGORY_INDEX = {c: i for i, c in enumerate(_CATEGORIES)}
_SCORED_COMPONENTS = (Component.VIOLENCE, Component.THREATS, Component.KIDNAPPING)
_COMPONENT_INDEX = {c: i for i, c in enumerate(_SCORED_COMPONENTS)}
_SECTORS = tuple(Sector)
_SECTOR_INDEX = {s: i for i, s in enumerate(_SECTORS)}
_TARGET_TYPES = tuple(TargetType)
_TARGET_TYPE_INDEX = {t: i for i, t in enumerate(_TARGET_TYPES)}
_NONE = -1

# score_points groups its pairs into cells this many degrees wide, so one candidate search and
# one distance matrix serve every point in the cell.
_CELL_DEGREES = 1.0
# Upper bound on the (pairs x incidents) matrices score_points builds at once (~8 MB each).
_MAX_MATRIX_CELLS = 1_000_000


# --------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True, slots=True)
class CategoryParams:
    """How one incident category weighs, decays and reaches."""

    component: Component
    weight: float
    half_life_days: float
    scale_km: float
    reach_km: float


def _default_categories() -> dict[Category, CategoryParams]:
    """The category table of docs/scoring.md."""
    v, t, k = Component.VIOLENCE, Component.THREATS, Component.KIDNAPPING
    table = {
        Category.ARMED_ASSAULT: (v, 1.0, 60, 30, 150),
        Category.ARMED_CLASH: (v, 0.7, 45, 30, 120),
        Category.IED: (v, 0.9, 60, 20, 100),
        Category.INDIRECT_FIRE: (v, 0.8, 45, 20, 80),
        Category.VBIED: (v, 1.2, 60, 25, 120),
        Category.SUICIDE_BOMBING: (v, 1.1, 60, 25, 120),
        Category.AIR_DRONE_STRIKE: (v, 0.5, 30, 20, 80),
        Category.ANTI_AIRCRAFT_FIRE: (v, 0.8, 120, 30, 150),
        Category.LOOTING: (v, 0.4, 30, 20, 80),
        Category.TERRITORY_SEIZURE: (v, 1.0, 90, 40, 200),
        Category.BASE_ESTABLISHED: (v, 0.6, 120, 40, 150),
        Category.OTHER_VIOLENCE: (v, 0.3, 30, 20, 60),
        Category.KIDNAPPING: (k, 1.0, 120, 40, 250),
        Category.EXPLICIT_THREAT: (t, 0.4, 180, 50, 300),
        Category.POLITICAL_STATEMENT: (t, 0.1, 180, 100, 400),
    }
    return {
        cat: CategoryParams(comp, float(w), float(hl), float(s), float(r))
        for cat, (comp, w, hl, s, r) in table.items()
    }


@dataclass(frozen=True)
class ModelParams:
    """Every number the model uses, named; serialisable with to_dict/from_dict."""

    categories: Mapping[Category, CategoryParams] = field(default_factory=_default_categories)
    lookback_days: float = 365.0
    persistence_share: float = 0.15
    persistence_half_life_days: float = 365.0
    claimed_fatalities_discount: float = 0.5
    severity_log_coefficient: float = 0.5
    credibility_floor: float = 0.5
    developing_factor: float = 0.8
    location_sigma_km: Mapping[LocationPrecision, float] = field(
        default_factory=lambda: {
            LocationPrecision.EXACT: 2.0,
            LocationPrecision.NEAR: 25.0,
            LocationPrecision.REGION: 75.0,
        }
    )
    location_factor: Mapping[LocationPrecision, float] = field(
        default_factory=lambda: {
            LocationPrecision.EXACT: 1.0,
            LocationPrecision.NEAR: 0.85,
            LocationPrecision.REGION: 0.6,
        }
    )
    time_precision_factor: Mapping[TimePrecision, float] = field(
        default_factory=lambda: {
            TimePrecision.DAY: 1.0,
            TimePrecision.WEEK: 0.9,
            TimePrecision.MONTH: 0.75,
        }
    )
    regional_weight: float = 0.05
    regional_scale_km: float = 150.0
    regional_reach_km: float = 400.0
    # Multipliers by corridor mode; a category or target type not listed counts 1.0. For AIR the
    # category multipliers apply near the airfields only.
    mode_category_factor: Mapping[Mode, Mapping[Category, float]] = field(
        default_factory=lambda: {
            Mode.ROAD: {
                Category.IED: 1.5,
                Category.ARMED_ASSAULT: 1.2,
                Category.KIDNAPPING: 1.2,
            },
            Mode.AIR: {
                Category.INDIRECT_FIRE: 2.5,
                Category.ANTI_AIRCRAFT_FIRE: 3.0,
                Category.ARMED_ASSAULT: 1.3,
                Category.VBIED: 1.3,
            },
            Mode.RIVER: {},
        }
    )
    mode_target_type_factor: Mapping[Mode, Mapping[TargetType, float]] = field(
        default_factory=lambda: {
            Mode.ROAD: {TargetType.LOGISTICS: 1.3},
            Mode.AIR: {TargetType.AVIATION: 1.5},
            Mode.RIVER: {},
        }
    )
    mode_reach_km: Mapping[Mode, Mapping[Category, float]] = field(
        default_factory=lambda: {
            Mode.ROAD: {},
            Mode.AIR: {Category.ANTI_AIRCRAFT_FIRE: 250.0},
            Mode.RIVER: {},
        }
    )
    air_enroute_factor: Mapping[Category, float] = field(
        default_factory=lambda: {Category.ANTI_AIRCRAFT_FIRE: 1.0}
    )
    air_enroute_default: float = 0.15
    expat_kidnapping_factor: float = 2.0
    expat_kidnapping_range_factor: float = 1.5
    victim_sector_factor: float = 1.5
    foreign_firm_target_factor: float = 1.5
    mining_target_factor: float = 1.3
    threat_sector_named_factor: float = 1.25
    escalation_recent_days: float = 14.0
    escalation_baseline_days: float = 90.0
    escalation_local_epsilon: float = 0.02
    escalation_regional_epsilon: float = 0.05
    escalation_local_weight: float = 0.6
    escalation_regional_weight: float = 0.4
    escalation_cap: float = 2.0
    escalation_gain: float = 0.25
    saturation: float = 1.0
    band_thresholds: tuple[float, float, float, float] = (20.0, 40.0, 60.0, 80.0)
    hotspot_segment_km: float = 25.0
    hotspot_count: int = 5
    negligible_points: float = 0.05

    def __post_init__(self) -> None:
        """Freeze the mappings and reject values the model cannot use, naming the key."""
        for name, value in _validated_fields(self).items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: enums as their values, durations as days."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelParams":
        """Parse to_dict output; every key is required; a bad one raises ValueError naming it."""
        if not isinstance(data, Mapping):
            raise ValueError("params: expected a mapping")
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                raise ValueError(f"{key}: unknown key")
        for name in names:
            if name not in data:
                raise ValueError(f"{name}: missing key")
        parsed = {name: _PARSERS[name](name, data[name]) for name in names}
        return cls(**parsed)


def _to_plain(value: Any) -> Any:
    """A parameter value as JSON-ready data."""
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, CategoryParams):
        return {f.name: _to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {_to_plain(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _number(path: str, value: Any) -> float:
    """A finite real number, or ValueError naming path."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{path}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{path}: expected a finite number, got {value!r}")
    return float(value)


E = TypeVar("E", bound=StrEnum)


def _enum(path: str, enum: type[E], value: Any) -> E:
    """An enum member from its value, or ValueError naming path."""
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{path}: unknown {enum.__name__} {value!r}") from None


def _mapping(path: str, value: Any) -> Mapping[Any, Any]:
    """A mapping, or ValueError naming path."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: expected a mapping")
    return value


def _parse_enum_floats(enum: type[E]) -> Callable[[str, Any], dict[E, float]]:
    """Parser of a {enum value: number} mapping."""

    def parse(path: str, value: Any) -> dict[E, float]:
        return {
            _enum(f"{path}.{k}", enum, k): _number(f"{path}.{k}", v)
            for k, v in _mapping(path, value).items()
        }

    return parse


def _parse_mode_map(enum: type[E]) -> Callable[[str, Any], dict[Mode, dict[E, float]]]:
    """Parser of a {mode: {enum value: number}} mapping."""
    inner = _parse_enum_floats(enum)

    def parse(path: str, value: Any) -> dict[Mode, dict[E, float]]:
        return {
            _enum(f"{path}.{m}", Mode, m): inner(f"{path}.{m}", v)
            for m, v in _mapping(path, value).items()
        }

    return parse


def _parse_categories(path: str, value: Any) -> dict[Category, CategoryParams]:
    """Parser of the category table."""
    out: dict[Category, CategoryParams] = {}
    keys = [f.name for f in fields(CategoryParams)]
    for raw_cat, raw in _mapping(path, value).items():
        cat = _enum(f"{path}.{raw_cat}", Category, raw_cat)
        entry = _mapping(f"{path}.{cat}", raw)
        for key in entry:
            if key not in keys:
                raise ValueError(f"{path}.{cat}.{key}: unknown key")
        for key in keys:
            if key not in entry:
                raise ValueError(f"{path}.{cat}.{key}: missing key")
        out[cat] = CategoryParams(
            component=_enum(f"{path}.{cat}.component", Component, entry["component"]),
            weight=_number(f"{path}.{cat}.weight", entry["weight"]),
            half_life_days=_number(f"{path}.{cat}.half_life_days", entry["half_life_days"]),
            scale_km=_number(f"{path}.{cat}.scale_km", entry["scale_km"]),
            reach_km=_number(f"{path}.{cat}.reach_km", entry["reach_km"]),
        )
    return out


def _parse_thresholds(path: str, value: Any) -> tuple[float, float, float, float]:
    """Parser of the four band thresholds."""
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise ValueError(f"{path}: expected four numbers")
    a, b, c, d = (_number(f"{path}[{i}]", v) for i, v in enumerate(value))
    return (a, b, c, d)


def _parse_count(path: str, value: Any) -> int:
    """Parser of a whole number."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}: expected an integer, got {value!r}")
    return value


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "categories": _parse_categories,
    "location_sigma_km": _parse_enum_floats(LocationPrecision),
    "location_factor": _parse_enum_floats(LocationPrecision),
    "time_precision_factor": _parse_enum_floats(TimePrecision),
    "mode_category_factor": _parse_mode_map(Category),
    "mode_target_type_factor": _parse_mode_map(TargetType),
    "mode_reach_km": _parse_mode_map(Category),
    "air_enroute_factor": _parse_enum_floats(Category),
    "band_thresholds": _parse_thresholds,
    "hotspot_count": _parse_count,
}
for _f in fields(ModelParams):
    _PARSERS.setdefault(_f.name, _number)

# Values that divide or set a time/distance scale must be strictly positive.
_POSITIVE = {
    "lookback_days",
    "persistence_half_life_days",
    "regional_scale_km",
    "escalation_recent_days",
    "escalation_baseline_days",
    "escalation_local_epsilon",
    "escalation_regional_epsilon",
    "saturation",
    "hotspot_segment_km",
}
_UNIT_INTERVAL = {
    "claimed_fatalities_discount",
    "credibility_floor",
    "developing_factor",
    "persistence_share",
}


def _check_value(path: str, value: float, *, positive: bool = False) -> float:
    """A non-negative (or positive) finite number, or ValueError naming path."""
    value = _number(path, value)
    if value < 0.0 or (positive and value == 0.0):
        raise ValueError(f"{path}: must be {'positive' if positive else 'non-negative'}")
    return value


def _validated_fields(params: ModelParams) -> dict[str, Any]:
    """The field values checked and frozen; ValueError names the first bad key."""
    out: dict[str, Any] = {}
    cats: dict[Category, CategoryParams] = {}
    for cat in _CATEGORIES:
        if cat not in params.categories:
            raise ValueError(f"categories.{cat}: missing key")
        cp = params.categories[cat]
        path = f"categories.{cat}"
        if cp.component not in _COMPONENT_INDEX:
            raise ValueError(f"{path}.component: must be violence, threats or kidnapping")
        _check_value(f"{path}.weight", cp.weight)
        _check_value(f"{path}.half_life_days", cp.half_life_days, positive=True)
        _check_value(f"{path}.scale_km", cp.scale_km, positive=True)
        _check_value(f"{path}.reach_km", cp.reach_km)
        cats[cat] = cp
    out["categories"] = MappingProxyType(cats)

    full: dict[str, tuple[type[StrEnum], bool]] = {
        "location_sigma_km": (LocationPrecision, False),
        "location_factor": (LocationPrecision, False),
        "time_precision_factor": (TimePrecision, False),
    }
    for name, (enum, positive) in full.items():
        mapping: Mapping[Any, float] = getattr(params, name)
        for member in enum:
            if member not in mapping:
                raise ValueError(f"{name}.{member}: missing key")
            _check_value(f"{name}.{member}", mapping[member], positive=positive)
        out[name] = MappingProxyType(dict(mapping))

    for name in ("mode_category_factor", "mode_target_type_factor", "mode_reach_km"):
        by_mode: Mapping[Mode, Mapping[Any, float]] = getattr(params, name)
        frozen = {}
        for mode, table in by_mode.items():
            for key, value in table.items():
                _check_value(f"{name}.{mode}.{key}", value)
            frozen[mode] = MappingProxyType(dict(table))
        out[name] = MappingProxyType(frozen)
    for key, value in params.air_enroute_factor.items():
        _check_value(f"air_enroute_factor.{key}", value)
    out["air_enroute_factor"] = MappingProxyType(dict(params.air_enroute_factor))

    for f in fields(params):
        value = getattr(params, f.name)
        if f.name in out:
            continue
        if f.name == "band_thresholds":
            thresholds = tuple(_number(f"band_thresholds[{i}]", v) for i, v in enumerate(value))
            if len(thresholds) != 4 or thresholds[0] <= 0.0:
                raise ValueError("band_thresholds: expected four numbers above 0")
            if list(thresholds) != sorted(set(thresholds)) or thresholds[-1] >= 100.0:
                raise ValueError("band_thresholds: must increase strictly and stay below 100")
            out[f.name] = thresholds
        elif f.name == "hotspot_count":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError("hotspot_count: must be a non-negative integer")
            out[f.name] = value
        else:
            checked = _check_value(f.name, value, positive=f.name in _POSITIVE)
            if f.name in _UNIT_INTERVAL and checked > 1.0:
                raise ValueError(f"{f.name}: must be between 0 and 1")
            out[f.name] = checked
    return out


DEFAULT_PARAMS = ModelParams()


# --------------------------------------------------------------------------------------------
# Inputs and outputs


@dataclass(frozen=True, slots=True)
class Incident:
    """One incident as the model sees it."""

    id: int
    category: Category
    occurred_at: datetime
    occurred_precision: TimePrecision
    reported_at: datetime
    lat: float | None
    lon: float | None
    location_precision: LocationPrecision
    scope_countries: frozenset[str]
    scope_admin1: frozenset[str]
    target_foreign_owned_only: bool
    target_sectors: frozenset[Sector]
    target_type: TargetType | None
    victim_expatriate: bool
    victim_sector: Sector | None
    fatalities_claimed: int | None
    fatalities_best: int | None
    source_reliability: float
    lifecycle: Lifecycle
    title: str = ""
    # Merged into another source's report of the same event, which counts in its place.
    merged: bool = False

    @property
    def counts(self) -> bool:
        """Whether the report counts: not retracted, and not merged into another."""
        return self.lifecycle is not Lifecycle.RETRACTED and not self.merged


@dataclass(frozen=True, slots=True)
class Target:
    """A site (one point) or a corridor (a polyline) with the profile the model matches against."""

    kind: TargetKind
    coordinates: tuple[tuple[float, float], ...]
    radius_km: float
    mode: Mode | None = None
    sector: Sector | None = None
    foreign_owned: bool = False
    expat_staff: bool = False
    countries: frozenset[str] = frozenset()
    admin1: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Contribution:
    """How much one incident adds to a score, and why."""

    incident_id: int
    category: Category
    component: Component
    points: float
    share: float
    factors: Mapping[str, float | str | None]
    why: str


@dataclass(frozen=True, slots=True)
class Hotspot:
    """One piece of a corridor with the score of the incidents nearest to it."""

    index: int
    coordinates: tuple[tuple[float, float], ...]
    score: float
    band: Band
    incident_count: int


@dataclass(frozen=True, slots=True)
class Score:
    """A target's score as of a time, with components, explanation and hotspots."""

    value: float
    band: Band
    components: Mapping[Component, float]
    as_of: datetime
    incident_count: int
    contributions: tuple[Contribution, ...]
    hotspots: tuple[Hotspot, ...]
    escalation: Mapping[str, float]


# --------------------------------------------------------------------------------------------
# Per-incident factors


def _epoch_s(moment: datetime, what: str) -> float:
    """Epoch seconds of an aware datetime; naive ones are refused rather than guessed."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC)")
    return moment.timestamp()


def _fatalities(incident: Incident, params: ModelParams) -> tuple[float | None, str]:
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


def _credibility(incident: Incident, params: ModelParams) -> float:
    """How far the report is believed, from source reliability and lifecycle."""
    reliability = min(1.0, max(0.0, incident.source_reliability))
    value = params.credibility_floor + (1.0 - params.credibility_floor) * reliability
    if incident.lifecycle is Lifecycle.DEVELOPING:
        value *= params.developing_factor
    return value


def _category_reach_km(cat: Category, params: ModelParams) -> float:
    """The longest primary reach a category can have over all modes and profiles."""
    cp = params.categories[cat]
    reach = cp.reach_km
    for table in params.mode_reach_km.values():
        reach = max(reach, table.get(cat, reach))
    if cat is Category.KIDNAPPING:
        reach = max(reach, cp.reach_km * params.expat_kidnapping_range_factor)
    return reach


def influence_radius_km(
    incident: Incident, params: ModelParams, *, regional: bool = True
) -> float | None:
    """How far beyond a target's radius an incident can change its score; None if area-scoped.

    With `regional=False`, only the primary kernel's reach: the faint regional tail beyond it
    is left to the periodic re-evaluation.
    """
    if incident.lat is None or incident.lon is None:
        return None
    reach = _category_reach_km(incident.category, params)
    if regional and params.regional_weight > 0.0:
        reach = max(reach, params.regional_reach_km)
    return params.location_sigma_km[incident.location_precision] + reach


def max_influence_km(params: ModelParams, *, regional: bool = True) -> float:
    """The largest influence radius any point incident can have, for prefiltering."""
    reach = max(_category_reach_km(cat, params) for cat in _CATEGORIES)
    if regional and params.regional_weight > 0.0:
        reach = max(reach, params.regional_reach_km)
    return max(params.location_sigma_km.values()) + reach


def area_scope_matches(incident: Incident, target: Target) -> bool:
    """Whether an incident's area scope and target profile cover the target."""
    if incident.scope_countries and not incident.scope_countries & target.countries:
        return False
    if incident.scope_admin1 and not incident.scope_admin1 & target.admin1:
        return False
    if incident.target_foreign_owned_only and not target.foreign_owned:
        return False
    return not (incident.target_sectors and target.sector not in incident.target_sectors)


def band_for(value: float, params: ModelParams) -> Band:
    """The band a 0-100 score falls in."""
    bands = (Band.LOW, Band.MODERATE, Band.ELEVATED, Band.HIGH)
    for band, upper in zip(bands, params.band_thresholds, strict=True):
        if value < upper:
            return band
    return Band.CRITICAL


# --------------------------------------------------------------------------------------------
# The incident set


class IncidentSet:
    """Incidents as column arrays, built once and scored against many targets and times."""

    def __init__(self, incidents: Sequence[Incident], params: ModelParams) -> None:
        """Drop retracted and merged reports and precompute every target-independent factor."""
        self.params = params
        kept = [i for i in incidents if i.counts]
        for inc in kept:
            _epoch_s(inc.occurred_at, f"incident {inc.id} occurred_at")
            _epoch_s(inc.reported_at, f"incident {inc.id} reported_at")
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

        rows = self.incidents
        cps = [params.categories[i.category] for i in rows]
        figures = [_fatalities(i, params) for i in rows]

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
        self.credibility = floats([_credibility(i, params) for i in rows])
        self.precision = floats([params.location_factor[i.location_precision] for i in rows])
        self.time_precision = floats(
            [params.time_precision_factor[i.occurred_precision] for i in rows]
        )
        self.weight = floats([cp.weight for cp in cps])
        self.weight_severity = self.weight * self.severity
        self.static = self.weight_severity * self.credibility * self.precision * self.time_precision
        self.sigma_km = floats([params.location_sigma_km[i.location_precision] for i in rows])
        self.scale_km = floats([cp.scale_km for cp in cps])
        self.reach_km = floats([cp.reach_km for cp in cps])
        self.half_life_days = floats([cp.half_life_days for cp in cps])
        self.occurred_s = floats([i.occurred_at.timestamp() for i in rows])
        self.reported_s = floats([i.reported_at.timestamp() for i in rows])
        self.category = ints([_CATEGORY_INDEX[i.category] for i in rows])
        self.component = ints([_COMPONENT_INDEX[cp.component] for cp in cps])
        self.is_violence = bools([cp.component is Component.VIOLENCE for cp in cps])
        self.is_kidnapping = bools([i.category is Category.KIDNAPPING for i in rows])
        self.victim_expatriate = bools([i.victim_expatriate for i in rows])
        self.victim_sector = ints(
            [_NONE if i.victim_sector is None else _SECTOR_INDEX[i.victim_sector] for i in rows]
        )
        self.target_type = ints(
            [_NONE if i.target_type is None else _TARGET_TYPE_INDEX[i.target_type] for i in rows]
        )
        self.foreign_only = bools([i.target_foreign_owned_only for i in rows])
        self.sector_mask = ints(
            [sum(1 << _SECTOR_INDEX[s] for s in i.target_sectors) for i in rows]
        )
        # A bare target (no sector, not foreign-owned) is outside any restricted target profile.
        self.bare_ok = (self.sector_mask == 0) & ~self.foreign_only
        self.bare_area: IndexArray = np.array(
            [
                self.n_point + j
                for j, i in enumerate(area)
                if not i.scope_countries and not i.scope_admin1 and self.bare_ok[self.n_point + j]
            ],
            dtype=np.intp,
        )

        cat_idx = self.category
        tt_idx = self.target_type
        self.mode_category_factor: dict[Mode, FloatArray] = {}
        self.mode_target_type_factor: dict[Mode, FloatArray] = {}
        self.mode_reach_km: dict[Mode, FloatArray] = {}
        for mode in Mode:
            cat_table = params.mode_category_factor.get(mode, {})
            tt_table = params.mode_target_type_factor.get(mode, {})
            reach_table = params.mode_reach_km.get(mode, {})
            by_cat = np.array([cat_table.get(c, 1.0) for c in _CATEGORIES])
            # The extra last entry serves incidents without a target type (index -1).
            by_tt = np.array([tt_table.get(t, 1.0) for t in _TARGET_TYPES] + [1.0])
            self.mode_category_factor[mode] = by_cat[cat_idx]
            self.mode_target_type_factor[mode] = by_tt[tt_idx]
            reach_by_cat = np.array(
                [reach_table.get(c, params.categories[c].reach_km) for c in _CATEGORIES]
            )
            self.mode_reach_km[mode] = reach_by_cat[cat_idx]
        enroute = np.array(
            [params.air_enroute_factor.get(c, params.air_enroute_default) for c in _CATEGORIES]
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


# --------------------------------------------------------------------------------------------
# The model


def _kernel(
    d_eff: FloatArray, scale_km: FloatArray, reach_km: FloatArray, params: ModelParams
) -> FloatArray:
    """Spatial weight: a category kernel plus a weak, wide regional background."""
    primary = np.where(d_eff <= reach_km, np.exp(-d_eff / scale_km), 0.0)
    regional = np.where(
        d_eff <= params.regional_reach_km,
        params.regional_weight * np.exp(-d_eff / params.regional_scale_km),
        0.0,
    )
    return np.asarray(primary + regional)


def _escalation(
    local_recent: FloatArray,
    local_baseline: FloatArray,
    regional_recent: FloatArray,
    regional_baseline: FloatArray,
    params: ModelParams,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Local and regional tempo ratios and the amplification factor e they imply."""
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


def _decay(age_days: FloatArray, half_life_days: FloatArray, params: ModelParams) -> FloatArray:
    """How much of an incident's weight is left at an age: a fast and a slow memory."""
    # Violence persists where it has been: a small share of every incident's weight fades
    # over a year, not weeks, so places with a long record keep ranking above quiet ones.
    fast = 0.5 ** (age_days / half_life_days)
    slow = 0.5 ** (age_days / params.persistence_half_life_days)
    return np.asarray((1.0 - params.persistence_share) * fast + params.persistence_share * slow)


def _saturate(total: FloatArray, params: ModelParams) -> FloatArray:
    """Map the amplified total onto 0-100."""
    # Hyperbolic, not exponential: it never flattens completely, so places in dense conflict
    # zones still rank against each other instead of all reading 100.
    x = total / params.saturation
    return np.asarray(100.0 * x / (1.0 + x))


def _round1(value: FloatArray) -> FloatArray:
    """Scores as shown: one decimal (one function, so both scoring paths round alike)."""
    return np.asarray(np.round(value, 1))


def _check_params(incidents: IncidentSet, params: ModelParams) -> None:
    """Refuse an IncidentSet precomputed under other parameters."""
    if incidents.params is not params and incidents.params != params:
        raise ValueError("the IncidentSet was built with different ModelParams")


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
class _Profile:
    """Target-dependent per-incident factors for a set of candidate incidents."""

    factor: FloatArray
    allowed: BoolArray
    scale_km: FloatArray
    expat_kidnap: BoolArray
    victim_sector: BoolArray
    foreign_firm: BoolArray
    mining: BoolArray
    sector_named: BoolArray


def _profile(
    incidents: IncidentSet, idx: IndexArray, target: Target, params: ModelParams
) -> _Profile:
    """Profile match of candidate incidents against the target."""
    n = idx.shape[0]
    none = np.zeros(n, dtype=np.bool_)
    expat_kidnap = (
        incidents.is_kidnapping[idx] & incidents.victim_expatriate[idx]
        if target.expat_staff
        else none
    )
    mask = incidents.sector_mask[idx]
    if target.sector is not None:
        sector_i = _SECTOR_INDEX[target.sector]
        victim_sector = incidents.victim_sector[idx] == sector_i
        sector_named = (mask & (1 << sector_i)) != 0
        sector_ok = (mask == 0) | sector_named
        mining = (
            incidents.target_type[idx] == _TARGET_TYPE_INDEX[TargetType.MINING]
            if target.sector is Sector.MINING
            else none
        )
    else:
        victim_sector = sector_named = mining = none
        sector_ok = mask == 0
    if target.foreign_owned:
        foreign_firm = incidents.target_type[idx] == _TARGET_TYPE_INDEX[TargetType.FOREIGN_FIRM]
        owner_ok = np.ones(n, dtype=np.bool_)
    else:
        foreign_firm = none
        owner_ok = ~incidents.foreign_only[idx]
    allowed = sector_ok & owner_ok
    factor = (
        np.where(expat_kidnap, params.expat_kidnapping_factor, 1.0)
        * np.where(victim_sector, params.victim_sector_factor, 1.0)
        * np.where(foreign_firm, params.foreign_firm_target_factor, 1.0)
        * np.where(mining, params.mining_target_factor, 1.0)
        * np.where(sector_named, params.threat_sector_named_factor, 1.0)
    )
    scale = incidents.scale_km[idx] * np.where(
        expat_kidnap, params.expat_kidnapping_range_factor, 1.0
    )
    return _Profile(
        factor=np.where(allowed, factor, 0.0),
        allowed=allowed,
        scale_km=scale,
        expat_kidnap=expat_kidnap,
        victim_sector=victim_sector,
        foreign_firm=foreign_firm,
        mining=mining,
        sector_named=sector_named,
    )


@dataclass(frozen=True, slots=True)
class _Spatial:
    """Distance-dependent terms for point candidates."""

    distance_km: FloatArray
    d_eff_km: FloatArray
    kernel: FloatArray
    mode_factor: FloatArray
    airfield: BoolArray


def _spatial(
    incidents: IncidentSet,
    idx: IndexArray,
    target: Target,
    coords: FloatArray,
    scale_km: FloatArray,
    expat_kidnap: BoolArray,
    params: ModelParams,
) -> _Spatial:
    """Distances, kernels and mode factors of point candidates for the target."""
    lat = incidents.lat[idx]
    lon = incidents.lon[idx]
    sigma = incidents.sigma_km[idx]
    mode = target.mode if target.kind is TargetKind.CORRIDOR else None
    reach = incidents.reach_km[idx] if mode is None else incidents.mode_reach_km[mode][idx]
    reach = reach * np.where(expat_kidnap, params.expat_kidnapping_range_factor, 1.0)
    airfield = np.zeros(idx.shape[0], dtype=np.bool_)

    if target.kind is TargetKind.SITE:
        distance = haversine_km(coords[0, 1], coords[0, 0], lat, lon)
    else:
        distance, _ = point_to_polyline_km(lat, lon, [(a, b) for a, b in coords])
    d_eff = np.maximum(0.0, distance - sigma - target.radius_km)
    kernel = _kernel(d_eff, scale_km, reach, params)

    if mode is None:
        mode_factor = np.ones(idx.shape[0])
    elif mode is Mode.AIR:
        # The airfields at either end matter far more than the ground under the flight path.
        d_field = np.minimum(
            haversine_km(coords[0, 1], coords[0, 0], lat, lon),
            haversine_km(coords[-1, 1], coords[-1, 0], lat, lon),
        )
        k_field = _kernel(
            np.maximum(0.0, d_field - sigma - target.radius_km), scale_km, reach, params
        )
        k_route = incidents.air_enroute_factor[idx] * kernel
        field_boost = incidents.mode_category_factor[mode][idx]
        airfield = field_boost * k_field >= k_route
        effective = np.maximum(field_boost * k_field, k_route)
        kernel = np.maximum(k_field, k_route)
        mode_factor = np.where(kernel > 0.0, effective / np.where(kernel > 0.0, kernel, 1.0), 1.0)
        mode_factor = mode_factor * incidents.mode_target_type_factor[mode][idx]
        distance = np.where(airfield, d_field, distance)
    else:
        mode_factor = (
            incidents.mode_category_factor[mode][idx] * incidents.mode_target_type_factor[mode][idx]
        )
    return _Spatial(distance, d_eff, kernel, mode_factor, airfield)


def _area_mode_factor(incidents: IncidentSet, idx: IndexArray, target: Target) -> FloatArray:
    """Mode factors for area-scoped candidates: AIR's category factors are airfield-only."""
    if target.kind is not TargetKind.CORRIDOR or target.mode is None:
        return np.ones(idx.shape[0])
    factor = incidents.mode_target_type_factor[target.mode][idx]
    if target.mode is not Mode.AIR:
        factor = factor * incidents.mode_category_factor[target.mode][idx]
    return factor


def _window_sums(
    weights: FloatArray, age_days: FloatArray, valid: BoolArray, params: ModelParams
) -> tuple[FloatArray, FloatArray]:
    """Sums of weights over the recent window and over the baseline window before it."""
    recent_days = params.escalation_recent_days
    recent = valid & (age_days <= recent_days)
    baseline = (
        valid
        & (age_days > recent_days)
        & (age_days <= recent_days + params.escalation_baseline_days)
    )
    return (
        np.asarray(np.sum(np.where(recent, weights, 0.0), axis=-1)),
        np.asarray(np.sum(np.where(baseline, weights, 0.0), axis=-1)),
    )


def score_target(
    target: Target,
    incidents: IncidentSet,
    as_of: datetime,
    params: ModelParams,
    *,
    explain_top: int = 20,
) -> Score:
    """Score one site or corridor as of a time, with components, explanation and hotspots."""
    _check_params(incidents, params)
    t = _epoch_s(as_of, "as_of")
    coords = _target_lonlat(target)
    box = bbox_spanning(
        float(coords[:, 1].min()),
        float(coords[:, 1].max()),
        float(coords[:, 0].min()),
        float(coords[:, 0].max()),
        target.radius_km + incidents.max_influence_km,
    )
    area = [
        incidents.n_point + j
        for j, inc in enumerate(incidents.incidents[incidents.n_point :])
        if area_scope_matches(inc, target)
    ]
    idx = np.concatenate((incidents.point_candidates(box), np.array(area, dtype=np.intp)))
    age = (t - incidents.occurred_s[idx]) / DAY_S
    valid = (incidents.reported_s[idx] <= t) & (age >= 0.0) & (age <= params.lookback_days)
    idx = idx[valid]
    age = age[valid]
    n_pt = int(np.count_nonzero(idx < incidents.n_point))

    profile = _profile(incidents, idx, target, params)
    spatial = _spatial(
        incidents,
        idx[:n_pt],
        target,
        coords,
        profile.scale_km[:n_pt],
        profile.expat_kidnap[:n_pt],
        params,
    )
    n_area = idx.shape[0] - n_pt
    kernel = np.concatenate((spatial.kernel, np.ones(n_area)))
    mode_factor = np.concatenate(
        (spatial.mode_factor, _area_mode_factor(incidents, idx[n_pt:], target))
    )
    decay = _decay(age, incidents.half_life_days[idx], params)
    c = incidents.static[idx] * decay * kernel * profile.factor * mode_factor

    local_w = incidents.weight_severity[idx] * kernel * profile.allowed
    regional_w = np.concatenate(
        (
            incidents.weight_severity[idx[:n_pt]]
            * (incidents.is_violence[idx[:n_pt]] & (spatial.d_eff_km <= params.regional_reach_km))
            * profile.allowed[:n_pt],
            np.zeros(n_area),
        )
    )
    all_valid = np.ones(idx.shape[0], dtype=np.bool_)
    local_recent, local_base = _window_sums(local_w, age, all_valid, params)
    regional_recent, regional_base = _window_sums(regional_w, age, all_valid, params)
    ratio_l, ratio_r, e_arr = _escalation(
        local_recent, local_base, regional_recent, regional_base, params
    )
    raw = float(np.sum(c))
    e = float(e_arr) if raw > 0.0 else 0.0
    total = raw * (1.0 + e)
    score = float(_saturate(np.asarray(total), params))
    value = float(_round1(np.asarray(score)))

    points = score * c / total if total > 0.0 else np.zeros_like(c)
    comp_points = {comp: 0.0 for comp in Component}
    if raw > 0.0:
        by_comp = np.bincount(
            incidents.component[idx], weights=c, minlength=len(_SCORED_COMPONENTS)
        )
        for comp, i in _COMPONENT_INDEX.items():
            comp_points[comp] = round(score * float(by_comp[i]) / raw / (1.0 + e), 2)
        comp_points[Component.ESCALATION] = round(score * e / (1.0 + e), 2)

    top = _largest(points, explain_top)
    contributions = tuple(
        _contribution(
            incidents,
            idx,
            k,
            n_pt,
            target,
            spatial,
            profile,
            age,
            decay,
            kernel,
            mode_factor,
            float(points[k]),
            score,
        )
        for k in top
    )
    hotspots: tuple[Hotspot, ...] = ()
    if target.kind is TargetKind.CORRIDOR and raw > 0.0 and n_pt > 0:
        hotspots = _hotspots(coords, incidents, idx[:n_pt], c[:n_pt], points[:n_pt], e, params)

    return Score(
        value=value,
        band=band_for(value, params),
        components=MappingProxyType(comp_points),
        as_of=as_of,
        incident_count=int(np.count_nonzero(points >= params.negligible_points)),
        contributions=contributions,
        hotspots=hotspots,
        escalation=MappingProxyType(
            {"local_ratio": float(ratio_l), "regional_ratio": float(ratio_r), "factor": e}
        ),
    )


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
        weights=(points >= params.negligible_points).astype(np.float64),
        minlength=len(pieces),
    )
    piece_scores = _round1(_saturate(np.asarray(raw_piece * (1.0 + e), dtype=np.float64), params))
    order = np.argsort(-piece_scores, kind="stable")
    return tuple(
        Hotspot(
            index=int(k),
            coordinates=tuple(pieces[k]),
            score=float(piece_scores[k]),
            band=band_for(float(piece_scores[k]), params),
            incident_count=int(count_piece[k]),
        )
        for k in order[: params.hotspot_count]
        if piece_scores[k] > 0.0
    )


_LABELS = {Category.IED: "IED", Category.VBIED: "VBIED"}
_MODE_PHRASE = {Mode.ROAD: "a road", Mode.AIR: "an air", Mode.RIVER: "a river"}


def _days_phrase(age_days: float) -> str:
    """Age in plain words."""
    if age_days < 1.0:
        return "less than a day ago"
    days = int(age_days)
    return "1 day ago" if days == 1 else f"{days} days ago"


def _contribution(
    incidents: IncidentSet,
    idx: IndexArray,
    k: int,
    n_pt: int,
    target: Target,
    spatial: _Spatial,
    profile: _Profile,
    age: FloatArray,
    decay: FloatArray,
    kernel: FloatArray,
    mode_factor: FloatArray,
    points: float,
    score: float,
) -> Contribution:
    """One candidate's contribution with its factors and a sentence saying why."""
    i = int(idx[k])
    inc = incidents.incidents[i]
    cp = incidents.params.categories[inc.category]
    is_point = k < n_pt
    distance = float(spatial.distance_km[k]) if is_point else None
    fatalities = float(incidents.fatalities_used[i])
    basis = incidents.fatalities_basis[i]
    noun = "site" if target.kind is TargetKind.SITE else "route"

    parts = [_LABELS.get(inc.category, inc.category.value.replace("_", " "))]
    if distance is None:
        scope = ", ".join(sorted(inc.scope_countries | inc.scope_admin1)) or "no area limit"
        parts.append(f"area-wide ({scope})")
    elif target.kind is TargetKind.SITE and distance <= target.radius_km:
        parts.append(f"inside the site's radius ({distance:.0f} km from its centre)")
    elif bool(spatial.airfield[k]):
        parts.append(f"{distance:.0f} km from an airfield at the end of the route")
    else:
        parts.append(f"{distance:.0f} km {'away' if noun == 'site' else 'from the route'}")
    parts.append(_days_phrase(float(age[k])))
    if basis == "independent":
        parts.append(f"{fatalities:.0f} killed (independent figure)")
    elif basis == "claimed, discounted":
        parts.append(f"{inc.fatalities_claimed} killed claimed, counted as {fatalities:g}")
    sentence = ", ".join(parts)

    notes = []
    if profile.expat_kidnap[k]:
        notes.append(f"{noun} has expatriate staff")
    if profile.victim_sector[k] and target.sector is not None:
        notes.append(f"victim in the {noun}'s sector ({target.sector.value})")
    if profile.foreign_firm[k]:
        notes.append(f"aimed at foreign firms; {noun} is foreign-owned")
    if profile.mining[k]:
        notes.append("aimed at mining; site is a mine")
    if profile.sector_named[k] and target.sector is not None:
        notes.append(f"names the {target.sector.value} sector")
    if float(mode_factor[k]) != 1.0 and target.mode is not None:
        notes.append(f"x{float(mode_factor[k]):.2g} on {_MODE_PHRASE[target.mode]} corridor")
    if inc.lifecycle is Lifecycle.DEVELOPING:
        notes.append("report still developing")
    if inc.location_precision is not LocationPrecision.EXACT and is_point:
        notes.append(f"location approximate (+/-{float(incidents.sigma_km[i]):.0f} km)")
    if inc.occurred_precision is not TimePrecision.DAY:
        notes.append(f"date known to the {inc.occurred_precision.value}")
    why = sentence + ("; " + "; ".join(notes) if notes else "")
    if inc.title:
        why = f"{inc.title}: {why}"

    factors: dict[str, float | str | None] = {
        "distance_km": None if distance is None else round(distance, 3),
        "distance_basis": "area" if not is_point else ("airfield" if spatial.airfield[k] else noun),
        "kernel": float(kernel[k]),
        "age_days": round(float(age[k]), 3),
        "decay": float(decay[k]),
        "category_weight": cp.weight,
        "severity": float(incidents.severity[i]),
        "fatalities_used": None if math.isnan(fatalities) else fatalities,
        "fatalities_basis": basis,
        "precision": float(incidents.precision[i]),
        "time_precision": float(incidents.time_precision[i]),
        "credibility": float(incidents.credibility[i]),
        "profile_match": float(profile.factor[k]),
        "mode_factor": float(mode_factor[k]),
    }
    return Contribution(
        incident_id=inc.id,
        category=inc.category,
        component=cp.component,
        points=points,
        share=points / score if score > 0.0 else 0.0,
        factors=MappingProxyType(factors),
        why=why,
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
    """Scores (0-100) of many bare (point, as_of epoch seconds) pairs, without explanation."""
    _check_params(incidents, params)
    lat_arr = np.asarray(lats, dtype=np.float64).reshape(-1)
    lon_arr = np.asarray(lons, dtype=np.float64).reshape(-1)
    t_arr = np.asarray(as_of, dtype=np.float64).reshape(-1)
    if not lat_arr.shape == lon_arr.shape == t_arr.shape:
        raise ValueError("lats, lons and as_of must have the same length")
    out = np.zeros(lat_arr.shape[0], dtype=np.float64)
    if out.shape[0] == 0 or len(incidents) == 0:
        return out

    lookback_s = params.lookback_days * DAY_S
    reach_km = radius_km + max_influence_km(params)
    cell = np.floor(lat_arr / _CELL_DEGREES) * 1000.0 + np.floor(lon_arr / _CELL_DEGREES)
    order = np.argsort(cell, kind="stable")
    bounds = np.flatnonzero(np.diff(cell[order])) + 1
    for rows in np.split(order, bounds):
        glat, glon, gt = lat_arr[rows], lon_arr[rows], t_arr[rows]
        box = bbox_spanning(
            float(glat.min()), float(glat.max()), float(glon.min()), float(glon.max()), reach_km
        )
        idx = np.concatenate((incidents.point_candidates(box), incidents.bare_area))
        # Only incidents that can count at some time in this group; the rest cost nothing.
        keep = (
            incidents.bare_ok[idx]
            & (incidents.reported_s[idx] <= gt.max())
            & (incidents.occurred_s[idx] <= gt.max())
            & (incidents.occurred_s[idx] >= gt.min() - lookback_s)
        )
        idx = idx[keep]
        if idx.shape[0] == 0:
            continue
        n_pt = int(np.count_nonzero(idx < incidents.n_point))
        pts, inverse = np.unique(np.stack((glat, glon), axis=1), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        pidx = idx[:n_pt]
        distance = haversine_km(
            pts[:, 0, None],
            pts[:, 1, None],
            incidents.lat[pidx][None, :],
            incidents.lon[pidx][None, :],
        )
        d_eff = np.maximum(0.0, distance - incidents.sigma_km[pidx] - radius_km)
        kernel = np.concatenate(
            (
                _kernel(d_eff, incidents.scale_km[pidx], incidents.reach_km[pidx], params),
                np.ones((pts.shape[0], idx.shape[0] - n_pt)),
            ),
            axis=1,
        )
        base = incidents.static[idx] * kernel
        local_w = incidents.weight_severity[idx] * kernel
        regional_w = np.concatenate(
            (
                incidents.weight_severity[pidx]
                * (incidents.is_violence[pidx] & (d_eff <= params.regional_reach_km)),
                np.zeros((pts.shape[0], idx.shape[0] - n_pt)),
            ),
            axis=1,
        )
        occurred = incidents.occurred_s[idx]
        reported = incidents.reported_s[idx]
        half_life = incidents.half_life_days[idx]
        chunk = max(1, _MAX_MATRIX_CELLS // idx.shape[0])
        for start in range(0, rows.shape[0], chunk):
            sel = slice(start, start + chunk)
            t = gt[sel, None]
            which = inverse[sel]
            age = (t - occurred) / DAY_S
            valid = (reported <= t) & (age >= 0.0) & (age <= params.lookback_days)
            decay = np.where(valid, _decay(age, half_life, params), 0.0)
            raw = np.sum(base[which] * decay, axis=1)
            local_recent, local_base = _window_sums(local_w[which], age, valid, params)
            regional_recent, regional_base = _window_sums(regional_w[which], age, valid, params)
            _, _, e = _escalation(local_recent, local_base, regional_recent, regional_base, params)
            e = np.where(raw > 0.0, e, 0.0)
            out[rows[sel]] = _saturate(raw * (1.0 + e), params)
    return _round1(out)
