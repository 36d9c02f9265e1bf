"""A model version's parameters: what the forecast asks, the fitted terms, the adjustments.

Every number the model uses is a field of `ModelParams`. A version is stored as
`ModelParams.to_dict()` and read back with `from_dict`, which needs every key and raises
`ValueError` naming the first bad one. The shipped defaults (`DEFAULT_PARAMS`) are the result of
a fit (`default_model.json`, written by `riskalert model fit --write-defaults`), not hand-set.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from services.scoring.taxonomy import (
    Category,
    Component,
    LocationPrecision,
    Mode,
    TargetType,
    TimePrecision,
)

SCHEMA = 2
DEFAULTS_FILE = Path(__file__).with_name("default_model.json")

# What the forecast counts as violence (docs/scoring.md): an event of one of these categories
# within forecast_distance_km of the target in the next forecast_horizon_days.
VIOLENT: frozenset[Category] = frozenset(
    {
        Category.ARMED_ASSAULT,
        Category.ARMED_CLASH,
        Category.IED,
        Category.INDIRECT_FIRE,
        Category.VBIED,
        Category.SUICIDE_BOMBING,
        Category.AIR_DRONE_STRIKE,
        Category.ANTI_AIRCRAFT_FIRE,
        Category.KIDNAPPING,
        Category.LOOTING,
        Category.TERRITORY_SEIZURE,
        Category.OTHER_VIOLENCE,
    }
)

# Categories sharing fitted coefficients. Explicit threats are in no group: generic event data
# hardly has them, so they act as a documented adjustment on the odds, not a fitted term.
DEFAULT_GROUPS: Mapping[Category, str] = MappingProxyType(
    {
        Category.ARMED_ASSAULT: "attack",
        Category.IED: "attack",
        Category.INDIRECT_FIRE: "attack",
        Category.VBIED: "attack",
        Category.SUICIDE_BOMBING: "attack",
        Category.ANTI_AIRCRAFT_FIRE: "attack",
        Category.ARMED_CLASH: "clash",
        Category.TERRITORY_SEIZURE: "clash",
        Category.BASE_ESTABLISHED: "clash",
        Category.AIR_DRONE_STRIKE: "air_strike",
        Category.LOOTING: "disorder",
        Category.OTHER_VIOLENCE: "disorder",
        Category.KIDNAPPING: "kidnapping",
        Category.POLITICAL_STATEMENT: "statement",
    }
)


def component_of(category: Category) -> Component:
    """The component a category's points are shown under."""
    if category is Category.KIDNAPPING:
        return Component.KIDNAPPING
    if category in (Category.EXPLICIT_THREAT, Category.POLITICAL_STATEMENT):
        return Component.THREATS
    return Component.VIOLENCE


@dataclass(frozen=True)
class ModelParams:
    """Every number the model uses, named; serialisable with to_dict/from_dict."""

    schema: int = SCHEMA
    # The question the probability answers.
    forecast_distance_km: float = 50.0
    forecast_horizon_days: float = 30.0
    forecast_categories: frozenset[Category] = VIOLENT
    # The fitted intensity: per group, a non-negative matrix over (spatial scale, half-life).
    groups: Mapping[Category, str] = field(default_factory=lambda: dict(DEFAULT_GROUPS))
    spatial_scales_km: tuple[float, ...] = (5.0, 15.0, 40.0, 100.0, 200.0)
    half_lives_days: tuple[float, ...] = (3.0, 21.0, 90.0, 365.0)
    coefficients: Mapping[str, tuple[tuple[float, ...], ...]] = field(
        default_factory=lambda: {
            g: tuple(tuple(0.0 for _ in range(4)) for _ in range(5))
            for g in sorted(set(DEFAULT_GROUPS.values()))
        }
    )
    reach_km: float = 400.0
    lookback_days: float = 365.0
    # The last share of the lookback (and of the reach) over which weights fall smoothly to 0.
    taper_share: float = 0.25
    area_distance_km: float = 100.0
    # Per-incident factors (fixed, documented).
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
    # Escalation: tempo against the place's own baseline and across its region.
    escalation_scale_km: float = 25.0
    escalation_recent_days: float = 14.0
    escalation_baseline_days: float = 90.0
    escalation_local_epsilon: float = 0.02
    escalation_regional_epsilon: float = 0.05
    escalation_local_weight: float = 0.6
    escalation_regional_weight: float = 0.4
    escalation_regional_km: float = 400.0
    escalation_cap: float = 2.0
    escalation_gain: float = 0.0
    # Monotone map from the intensity to the probability: (intensity, probability) knots.
    calibration: tuple[tuple[float, float], ...] = ((0.0, 0.05), (10.0, 0.95))
    # Bands over the probability in percent: low < 5 <= moderate < 15 <= elevated < 30 <=
    # high < 50 <= critical ("more likely than not").
    band_thresholds: tuple[float, float, float, float] = (5.0, 15.0, 30.0, 50.0)
    # Firm-specific adjustments on the odds (not fittable from generic event data).
    expat_kidnapping_factor: float = 2.0
    victim_sector_factor: float = 1.5
    foreign_firm_target_factor: float = 1.5
    mining_target_factor: float = 1.3
    threat_factor: float = 2.0
    threat_sector_named_factor: float = 1.25
    threat_half_life_days: float = 180.0
    threat_scale_km: float = 100.0
    max_odds_factor: float = 4.0
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
    airfield_km: float = 30.0
    air_enroute_factor: Mapping[Category, float] = field(
        default_factory=lambda: {Category.ANTI_AIRCRAFT_FIRE: 1.0}
    )
    air_enroute_default: float = 0.5
    hotspot_segment_km: float = 25.0
    hotspot_count: int = 5
    negligible_points: float = 0.05

    def __post_init__(self) -> None:
        """Freeze the mappings and reject values the model cannot use, naming the key."""
        for name, value in _validated(self).items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: enums as their values."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelParams:
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
        return cls(**{name: _PARSERS[name](name, data[name]) for name in names})

    @property
    def group_names(self) -> tuple[str, ...]:
        """The fitted groups, sorted."""
        return tuple(sorted(self.coefficients))


def is_current(data: Mapping[str, Any]) -> bool:
    """Whether a stored parameter document is of this model (schema 2), not a legacy one."""
    return isinstance(data, Mapping) and data.get("schema") == SCHEMA


# --------------------------------------------------------------------------------------------
# Parsing and validation


def _to_plain(value: Any) -> Any:
    """A parameter value as JSON-ready data."""
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, Mapping):
        return {_to_plain(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, frozenset):
        return sorted(_to_plain(v) for v in value)
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    return value


def _number(path: str, value: Any) -> float:
    """A finite real number, or ValueError naming path."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{path}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{path}: expected a finite number, got {value!r}")
    return float(value)


def _count(path: str, value: Any) -> int:
    """A whole number, or ValueError naming path."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}: expected an integer, got {value!r}")
    return value


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


def _sequence(path: str, value: Any) -> list[Any]:
    """A list, or ValueError naming path."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"{path}: expected a list")
    return list(value)


def _numbers(path: str, value: Any) -> tuple[float, ...]:
    return tuple(_number(f"{path}[{i}]", v) for i, v in enumerate(_sequence(path, value)))


def _enum_floats(enum: type[E]) -> Callable[[str, Any], dict[E, float]]:
    def parse(path: str, value: Any) -> dict[E, float]:
        return {
            _enum(f"{path}.{k}", enum, k): _number(f"{path}.{k}", v)
            for k, v in _mapping(path, value).items()
        }

    return parse


def _mode_map(enum: type[E]) -> Callable[[str, Any], dict[Mode, dict[E, float]]]:
    inner = _enum_floats(enum)

    def parse(path: str, value: Any) -> dict[Mode, dict[E, float]]:
        return {
            _enum(f"{path}.{m}", Mode, m): inner(f"{path}.{m}", v)
            for m, v in _mapping(path, value).items()
        }

    return parse


def _categories(path: str, value: Any) -> frozenset[Category]:
    return frozenset(
        _enum(f"{path}[{i}]", Category, v) for i, v in enumerate(_sequence(path, value))
    )


def _groups(path: str, value: Any) -> dict[Category, str]:
    out: dict[Category, str] = {}
    for k, v in _mapping(path, value).items():
        if not isinstance(v, str) or not v:
            raise ValueError(f"{path}.{k}: expected a group name")
        out[_enum(f"{path}.{k}", Category, k)] = v
    return out


def _coefficients(path: str, value: Any) -> dict[str, tuple[tuple[float, ...], ...]]:
    return {
        str(g): tuple(_numbers(f"{path}.{g}[{i}]", row) for i, row in enumerate(_sequence(path, m)))
        for g, m in _mapping(path, value).items()
    }


def _knots(path: str, value: Any) -> tuple[tuple[float, float], ...]:
    out = []
    for i, knot in enumerate(_sequence(path, value)):
        pair = _numbers(f"{path}[{i}]", knot)
        if len(pair) != 2:
            raise ValueError(f"{path}[{i}]: expected [intensity, probability]")
        out.append((pair[0], pair[1]))
    return tuple(out)


def _thresholds(path: str, value: Any) -> tuple[float, float, float, float]:
    numbers = _numbers(path, value)
    if len(numbers) != 4:
        raise ValueError(f"{path}: expected four numbers")
    return (numbers[0], numbers[1], numbers[2], numbers[3])


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "schema": _count,
    "forecast_categories": _categories,
    "groups": _groups,
    "spatial_scales_km": _numbers,
    "half_lives_days": _numbers,
    "coefficients": _coefficients,
    "location_sigma_km": _enum_floats(LocationPrecision),
    "location_factor": _enum_floats(LocationPrecision),
    "time_precision_factor": _enum_floats(TimePrecision),
    "calibration": _knots,
    "band_thresholds": _thresholds,
    "mode_category_factor": _mode_map(Category),
    "mode_target_type_factor": _mode_map(TargetType),
    "air_enroute_factor": _enum_floats(Category),
    "hotspot_count": _count,
}
for _f in fields(ModelParams):
    _PARSERS.setdefault(_f.name, _number)

# Values that divide or set a time/distance scale must be strictly positive.
_POSITIVE = {
    "forecast_distance_km",
    "forecast_horizon_days",
    "reach_km",
    "lookback_days",
    "escalation_scale_km",
    "escalation_recent_days",
    "escalation_baseline_days",
    "escalation_local_epsilon",
    "escalation_regional_epsilon",
    "threat_half_life_days",
    "threat_scale_km",
    "max_odds_factor",
    "hotspot_segment_km",
}
_UNIT_INTERVAL = {
    "taper_share",
    "claimed_fatalities_discount",
    "credibility_floor",
    "developing_factor",
}


def _check(path: str, value: Any, *, positive: bool = False) -> float:
    """A non-negative (or positive) finite number, or ValueError naming path."""
    number = _number(path, value)
    if number < 0.0 or (positive and number == 0.0):
        raise ValueError(f"{path}: must be {'positive' if positive else 'non-negative'}")
    return number


def _validated(p: ModelParams) -> dict[str, Any]:
    """The field values checked and frozen; ValueError names the first bad key."""
    out: dict[str, Any] = {}
    if p.schema != SCHEMA:
        raise ValueError(f"schema: this model reads schema {SCHEMA}, got {p.schema!r}")
    out["forecast_categories"] = frozenset(p.forecast_categories)
    if not out["forecast_categories"]:
        raise ValueError("forecast_categories: name at least one category")
    for name in ("spatial_scales_km", "half_lives_days"):
        values = tuple(
            _check(f"{name}[{i}]", v, positive=True) for i, v in enumerate(getattr(p, name))
        )
        if not values:
            raise ValueError(f"{name}: name at least one")
        out[name] = values
    n_s, n_h = len(out["spatial_scales_km"]), len(out["half_lives_days"])
    groups = dict(p.groups)
    if Category.EXPLICIT_THREAT in groups:
        raise ValueError("groups.explicit_threat: threats are an adjustment, not a fitted group")
    coefficients: dict[str, tuple[tuple[float, ...], ...]] = {}
    for group, matrix in p.coefficients.items():
        rows = tuple(tuple(row) for row in matrix)
        if len(rows) != n_s or any(len(r) != n_h for r in rows):
            raise ValueError(
                f"coefficients.{group}: expected {n_s} rows (spatial scales) of {n_h} numbers"
                " (half-lives)"
            )
        coefficients[group] = tuple(
            tuple(_check(f"coefficients.{group}[{i}][{j}]", v) for j, v in enumerate(r))
            for i, r in enumerate(rows)
        )
    for cat, group in groups.items():
        if group not in coefficients:
            raise ValueError(f"groups.{cat}: no coefficients for group {group!r}")
    out["groups"] = MappingProxyType(groups)
    out["coefficients"] = MappingProxyType(coefficients)

    for name, enum in (
        ("location_sigma_km", LocationPrecision),
        ("location_factor", LocationPrecision),
        ("time_precision_factor", TimePrecision),
    ):
        mapping: Mapping[Any, float] = getattr(p, name)
        for member in enum:
            if member not in mapping:
                raise ValueError(f"{name}.{member}: missing key")
            _check(f"{name}.{member}", mapping[member])
        out[name] = MappingProxyType(dict(mapping))
    for name in ("mode_category_factor", "mode_target_type_factor"):
        by_mode: Mapping[Mode, Mapping[Any, float]] = getattr(p, name)
        frozen = {}
        for mode, table in by_mode.items():
            for key, value in table.items():
                _check(f"{name}.{mode}.{key}", value)
            frozen[mode] = MappingProxyType(dict(table))
        out[name] = MappingProxyType(frozen)
    for key, value in p.air_enroute_factor.items():
        _check(f"air_enroute_factor.{key}", value)
    out["air_enroute_factor"] = MappingProxyType(dict(p.air_enroute_factor))

    knots = tuple((float(x), float(y)) for x, y in p.calibration)
    if len(knots) < 2:
        raise ValueError("calibration: expected at least two knots")
    for i, (x, y) in enumerate(knots):
        _check(f"calibration[{i}][0]", x)
        if not 0.0 <= _number(f"calibration[{i}][1]", y) < 1.0:
            raise ValueError(f"calibration[{i}][1]: a probability in [0, 1)")
    if any(b[0] <= a[0] or b[1] < a[1] for a, b in itertools.pairwise(knots)):
        raise ValueError("calibration: intensities must increase and probabilities not fall")
    out["calibration"] = knots

    thresholds = tuple(_number(f"band_thresholds[{i}]", v) for i, v in enumerate(p.band_thresholds))
    if len(thresholds) != 4 or thresholds[0] <= 0.0:
        raise ValueError("band_thresholds: expected four numbers above 0")
    if list(thresholds) != sorted(set(thresholds)) or thresholds[-1] >= 100.0:
        raise ValueError("band_thresholds: must increase strictly and stay below 100")
    out["band_thresholds"] = thresholds
    if isinstance(p.hotspot_count, bool) or not isinstance(p.hotspot_count, int):
        raise ValueError("hotspot_count: must be a non-negative integer")
    if p.hotspot_count < 0:
        raise ValueError("hotspot_count: must be a non-negative integer")

    for f in fields(p):
        if f.name in out or f.name in ("schema", "hotspot_count"):
            continue
        checked = _check(f.name, getattr(p, f.name), positive=f.name in _POSITIVE)
        if f.name in _UNIT_INTERVAL and checked > 1.0:
            raise ValueError(f"{f.name}: must be between 0 and 1")
        out[f.name] = checked
    return out


def _load_defaults() -> ModelParams:
    """The shipped, fitted defaults; the structural defaults if the file is absent."""
    if not DEFAULTS_FILE.exists():
        return ModelParams()
    return ModelParams.from_dict(json.loads(DEFAULTS_FILE.read_text(encoding="utf-8"))["params"])


DEFAULT_PARAMS = _load_defaults()
