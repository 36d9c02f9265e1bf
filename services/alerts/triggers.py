"""Event triggers: which incidents alert a target at once, whatever its score (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.alerts.schemas import EventRuleIn, Trigger
from services.scoring import geo, risk
from services.scoring.taxonomy import Category, TargetKind


@dataclass(frozen=True)
class Match:
    """Why an incident triggers a rule for a target."""

    distance_km: float | None
    why: str


def distance_km(incident: risk.Incident, target: risk.Target) -> float | None:
    """Distance from a located incident to the target's point or line; None when unlocated."""
    if incident.lat is None or incident.lon is None:
        return None
    if target.kind is TargetKind.SITE or len(target.coordinates) == 1:
        lon, lat = target.coordinates[0]
        return float(geo.haversine_km(incident.lat, incident.lon, lat, lon))
    dist, _ = geo.point_to_polyline_km(incident.lat, incident.lon, target.coordinates)
    return float(dist[0])


def match(
    rule: EventRuleIn, incident: risk.Incident, target: risk.Target, now: datetime
) -> Match | None:
    """The match of `incident` against an event rule for `target`, or None."""
    if not incident.counts:
        return None  # retracted, or merged into another report of its event
    if now - incident.occurred_at > rule.max_age:
        return None
    place = "the corridor" if target.kind is TargetKind.CORRIDOR else "the site"
    dist = distance_km(incident, target)
    if rule.trigger is Trigger.THREAT_MATCHING:
        if incident.category is not Category.EXPLICIT_THREAT:
            return None
        if not risk.area_scope_matches(incident, target):
            return None
        scoped = bool(incident.scope_countries or incident.scope_admin1)
        if not scoped and (dist is None or dist > rule.radius_km):
            # A threat with no area scope counts where it was made, within the radius.
            return None
        return Match(dist, f"explicit threat whose scope and target profile match {place}")
    wanted = (
        {Category.KIDNAPPING} if rule.trigger is Trigger.KIDNAPPING_NEARBY else set(rule.categories)
    )
    if incident.category not in wanted or dist is None or dist > rule.radius_km:
        return None
    what = incident.category.value.replace("_", " ")
    return Match(dist, f"{what} {dist:.0f} km from {place} (rule radius {rule.radius_km:g} km)")
