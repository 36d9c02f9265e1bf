"""The model's value types: incidents and targets in, scores with their explanation out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

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
class Adjustment:
    """A firm-specific factor on the odds, with the incidents behind it."""

    kind: str
    factor: float
    incident_ids: tuple[int, ...]
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
    # The calibrated probability of the forecast event (value is this in percent, rounded),
    # the fitted part before firm-specific adjustments, and the adjustments on the odds.
    probability: float = 0.0
    generic_probability: float = 0.0
    adjustments: tuple[Adjustment, ...] = ()
    forecast_distance_km: float = 50.0
    forecast_horizon_days: float = 30.0
