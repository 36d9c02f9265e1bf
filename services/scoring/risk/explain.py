"""The explanation: each contributing incident with its points, its factors and a sentence."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

from services.scoring.risk.incidentset import IncidentSet
from services.scoring.risk.params import component_of
from services.scoring.risk.types import Contribution, Incident, Target
from services.scoring.taxonomy import (
    Category,
    Lifecycle,
    LocationPrecision,
    Mode,
    TargetKind,
    TargetType,
    TimePrecision,
)

_LABELS = {Category.IED: "IED", Category.VBIED: "VBIED"}
_MODE_PHRASE = {Mode.ROAD: "a road", Mode.AIR: "an air", Mode.RIVER: "a river"}


def days_phrase(age_days: float) -> str:
    """Age in plain words."""
    if age_days < 1.0:
        return "less than a day ago"
    days = int(age_days)
    return "1 day ago" if days == 1 else f"{days} days ago"


@dataclass(frozen=True, slots=True)
class Facts:
    """What explaining one (target, incident) pair reads, as plain numbers (gathered for a
    whole batch at once: reading numpy arrays one element at a time costs more)."""

    incident: int
    point: bool
    distance: float
    d_eff: float
    age: float
    weight: float
    kernel: float
    decay: float
    profile_match: float
    mode_factor: float
    expat_kidnap: bool
    victim_sector: bool
    foreign_firm: bool
    mining: bool
    airfield: bool
    strength: float
    odds_factor: float
    points: float


def _where(incidents: IncidentSet, facts: Facts, target: Target) -> str:
    inc = incidents.incidents[facts.incident]
    noun = "site" if target.kind is TargetKind.SITE else "route"
    if not facts.point:
        scope = ", ".join(sorted(inc.scope_countries | inc.scope_admin1)) or "no area limit"
        return f"area-wide ({scope})"
    distance = facts.distance
    if target.kind is TargetKind.SITE and distance <= target.radius_km:
        return f"inside the site's radius ({distance:.0f} km from its centre)"
    return f"{distance:.0f} km {'away' if noun == 'site' else 'from the route'}"


def _quality_notes(incidents: IncidentSet, i: int, k_point: bool) -> list[str]:
    inc = incidents.incidents[i]
    notes = []
    if inc.lifecycle is Lifecycle.DEVELOPING:
        notes.append("report still developing")
    if inc.location_precision is not LocationPrecision.EXACT and k_point:
        notes.append(f"location approximate (+/-{incidents.columns.sigma_km[i]:.0f} km)")
    if inc.occurred_precision is not TimePrecision.DAY:
        notes.append(f"date known to the {inc.occurred_precision.value}")
    return notes


def contribution(
    incidents: IncidentSet, target: Target, facts: Facts, score: float
) -> Contribution:
    """One fitted incident's contribution with its factors and a sentence saying why."""
    i = facts.incident
    inc = incidents.incidents[i]
    params = incidents.params
    columns = incidents.columns
    k_point = facts.point
    dist = facts.distance
    fatalities = columns.fatalities_used[i]
    basis = incidents.fatalities_basis[i]
    noun = "site" if target.kind is TargetKind.SITE else "route"

    parts = [_LABELS.get(inc.category, inc.category.value.replace("_", " "))]
    parts.append(_where(incidents, facts, target))
    parts.append(days_phrase(facts.age))
    if basis == "independent":
        parts.append(f"{fatalities:.0f} killed (independent figure)")
    elif basis == "claimed, discounted":
        parts.append(f"{inc.fatalities_claimed} killed claimed, counted as {fatalities:g}")
    notes = []
    if facts.expat_kidnap:
        notes.append(f"{noun} has expatriate staff")
    if facts.victim_sector and target.sector is not None:
        notes.append(f"victim in the {noun}'s sector ({target.sector.value})")
    if facts.foreign_firm:
        notes.append(f"aimed at foreign firms; {noun} is foreign-owned")
    if facts.mining:
        notes.append("aimed at mining; site is a mine")
    mode_factor = facts.mode_factor
    if mode_factor != 1.0 and target.mode is not None:
        where = " near an airfield" if facts.airfield else ""
        notes.append(f"x{mode_factor:.2g} on {_MODE_PHRASE[target.mode]} corridor{where}")
    notes += _quality_notes(incidents, i, k_point)
    why = ", ".join(parts) + ("; " + "; ".join(notes) if notes else "")
    if inc.title:
        why = f"{inc.title}: {why}"

    # The fitted space-time weight, and how much of it distance and age leave: kernel is the
    # weight at this distance over the weight at 0 km (both at age 0), decay the rest.
    factors: dict[str, float | str | None] = {
        "distance_km": None if not k_point else round(dist, 3),
        "distance_basis": "area" if not k_point else noun,
        "effective_distance_km": round(facts.d_eff, 3),
        "group": params.groups[inc.category],
        "fitted_weight": facts.weight,
        "kernel": facts.kernel,
        "age_days": round(facts.age, 3),
        "decay": facts.decay,
        "severity": columns.severity[i],
        "fatalities_used": None if math.isnan(fatalities) else fatalities,
        "fatalities_basis": basis,
        "precision": columns.precision[i],
        "time_precision": columns.time_precision[i],
        "credibility": columns.credibility[i],
        "profile_match": facts.profile_match,
        "mode_factor": mode_factor,
    }
    return _made(inc, facts.points, score, factors, why)


def threat_contribution(
    incidents: IncidentSet, target: Target, facts: Facts, score: float
) -> Contribution:
    """A threat aimed at the target: it adjusts the odds; its factors say by how much."""
    i = facts.incident
    inc = incidents.incidents[i]
    k_point = facts.point
    noun = "site" if target.kind is TargetKind.SITE else "route"
    aimed = []
    if target.foreign_owned and (
        inc.target_foreign_owned_only or inc.target_type is TargetType.FOREIGN_FIRM
    ):
        aimed.append(f"aimed at foreign firms; {noun} is foreign-owned")
    if target.sector is not None and target.sector in inc.target_sectors:
        aimed.append(f"names the {target.sector.value} sector")
    parts = [
        "explicit threat",
        _where(incidents, facts, target),
        days_phrase(facts.age),
    ]
    notes = aimed + _quality_notes(incidents, i, k_point)
    why = ", ".join(parts) + ("; " + "; ".join(notes) if notes else "")
    if inc.title:
        why = f"{inc.title}: {why}"
    factors: dict[str, float | str | None] = {
        "distance_km": None if not k_point else round(facts.distance, 3),
        "distance_basis": "area" if not k_point else noun,
        "age_days": round(facts.age, 3),
        "credibility": incidents.columns.credibility[i],
        "threat_strength": facts.strength,
        "odds_factor": facts.odds_factor,
        "adjustment": "threats",
    }
    return _made(inc, facts.points, score, factors, why)


def _made(
    inc: Incident, points: float, score: float, factors: dict[str, float | str | None], why: str
) -> Contribution:
    """A contribution: the incident's points, its share of the score, its factors and why."""
    return Contribution(
        incident_id=inc.id,
        category=inc.category,
        component=component_of(inc.category),
        points=points,
        share=points / score if score > 0.0 else 0.0,
        factors=MappingProxyType(factors),
        why=why,
    )
