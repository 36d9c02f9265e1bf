"""Request and response bodies of the alerts API, and the rule bodies stored with each rule."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.alerts import rules
from services.scoring.taxonomy import Band, Category

BAND_RANK = {band: rank for rank, band in enumerate(Band)}

Duration = Annotated[
    timedelta,
    Field(ge=timedelta(0), le=timedelta(days=30), description="ISO 8601 duration or seconds."),
]


class Strict(BaseModel):
    """A body that refuses unknown fields, so a misspelt option is an error, not a no-op."""

    model_config = ConfigDict(extra="forbid")


class Metric(StrEnum):
    """What a threshold rule watches: the 0-100 score or the band."""

    SCORE = "score"
    BAND = "band"


class ThresholdRuleIn(Strict):
    """Raise when the score (or band) reaches `raise_at`, clear when it falls below `clear_at`."""

    kind: Literal["threshold"] = "threshold"
    metric: Metric = Metric.SCORE
    raise_at: Annotated[float, Field(ge=0, le=100)] | Band = Field(
        description="Score (0-100) or band at which the alert raises."
    )
    clear_at: Annotated[float, Field(ge=0, le=100)] | Band | None = Field(
        None,
        description=(
            "Score or band below which it clears (hysteresis); defaults to 10 points below "
            "raise_at for scores, to raise_at for bands."
        ),
    )
    pending: Duration = Field(timedelta(0), description="How long the condition must hold.")
    keep_firing: Duration = Field(
        timedelta(0), description="How long it stays firing after the condition clears."
    )
    cooldown: Duration = Field(
        timedelta(minutes=30), description="Least time between two firings (a band rise bypasses)."
    )
    repeat_every: Duration | None = Field(None, description="Re-notify while firing, this often.")
    flap_changes: int = Field(2, ge=1, le=100, description="Changes tolerated per flap_window.")
    flap_window: Duration = Field(timedelta(minutes=30))

    @model_validator(mode="after")
    def _levels_match_metric(self) -> ThresholdRuleIn:
        if self.metric is Metric.SCORE:
            if isinstance(self.raise_at, Band):
                raise ValueError("raise_at must be a number (0-100) when metric is score")
            if self.clear_at is None:
                self.clear_at = max(0.0, self.raise_at - 10.0)
            if isinstance(self.clear_at, Band):
                raise ValueError("clear_at must be a number (0-100) when metric is score")
            if self.clear_at > self.raise_at:
                raise ValueError("clear_at must not be above raise_at")
        else:
            if not isinstance(self.raise_at, Band):
                raise ValueError("raise_at must be a band name when metric is band")
            if self.clear_at is None:
                self.clear_at = self.raise_at
            if not isinstance(self.clear_at, Band):
                raise ValueError("clear_at must be a band name when metric is band")
            if BAND_RANK[self.clear_at] > BAND_RANK[self.raise_at]:
                raise ValueError("clear_at must not be a higher band than raise_at")
        if self.repeat_every is not None and self.repeat_every <= timedelta(0):
            raise ValueError("repeat_every must be positive")
        if self.flap_window <= timedelta(0):
            raise ValueError("flap_window must be positive")
        return self

    def threshold(self) -> rules.ThresholdRule:
        """The pure rule evaluated by `rules.evaluate` (bands become ranks 0-4)."""
        if isinstance(self.raise_at, Band):
            assert isinstance(self.clear_at, Band)
            raise_at, clear_at = float(BAND_RANK[self.raise_at]), float(BAND_RANK[self.clear_at])
        else:
            assert isinstance(self.clear_at, float | int)
            raise_at, clear_at = float(self.raise_at), float(self.clear_at)
        return rules.ThresholdRule(
            raise_at=raise_at,
            clear_at=clear_at,
            pending=self.pending,
            keep_firing=self.keep_firing,
            repeat_every=self.repeat_every,
            cooldown=self.cooldown,
            flap_changes=self.flap_changes,
            flap_window=self.flap_window,
        )

    def measure(self, score: float, band: Band) -> float:
        """The value the rule compares: the score, or the band's rank."""
        return float(BAND_RANK[band]) if self.metric is Metric.BAND else score


class Trigger(StrEnum):
    """Events that alert at once, whatever the score."""

    KIDNAPPING_NEARBY = "kidnapping_nearby"
    THREAT_MATCHING = "threat_matching"
    INCIDENT_NEARBY = "incident_nearby"


class EventRuleIn(Strict):
    """Alert at once on a matching incident near (or explicitly threatening) the target."""

    kind: Literal["event"] = "event"
    trigger: Trigger
    radius_km: float = Field(
        50.0, gt=0, le=500, description="Distance from the site or corridor (nearby triggers)."
    )
    categories: list[Category] = Field(
        default_factory=list,
        max_length=len(Category),
        description="Categories that trigger (incident_nearby); required there.",
    )
    severity: Band = Field(Band.CRITICAL, description="Severity, for digest routing.")
    max_age: Duration = Field(
        timedelta(days=3),
        description="Incidents that occurred longer ago than this (a backfill) do not trigger.",
    )

    @model_validator(mode="after")
    def _categories_for_incident_nearby(self) -> EventRuleIn:
        if self.trigger is Trigger.INCIDENT_NEARBY and not self.categories:
            raise ValueError("categories is required for incident_nearby")
        if self.trigger is not Trigger.INCIDENT_NEARBY and self.categories:
            raise ValueError(f"categories applies to incident_nearby only, not {self.trigger}")
        self.categories = sorted(set(self.categories))
        return self


RuleIn = Annotated[ThresholdRuleIn | EventRuleIn, Field(discriminator="kind")]


def parse_rule(kind: str, params: dict[str, object]) -> ThresholdRuleIn | EventRuleIn:
    """The validated rule body stored with a rule row."""
    if kind == "threshold":
        return ThresholdRuleIn.model_validate(params)
    return EventRuleIn.model_validate(params)
