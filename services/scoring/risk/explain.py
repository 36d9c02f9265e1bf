"""The explanation: each contributing incident with its points, its factors and a sentence."""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING

from services.scoring.geo import FloatArray
from services.scoring.risk.incidentset import IncidentSet, IndexArray
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

if TYPE_CHECKING:
    from services.scoring.risk.scoring import Profile

_LABELS = {Category.IED: "IED", Category.VBIED: "VBIED"}
_MODE_PHRASE = {Mode.ROAD: "a road", Mode.AIR: "an air", Mode.RIVER: "a river"}


def days_phrase(age_days: float) -> str:
    """Age in plain words."""
    if age_days < 1.0:
        return "less than a day ago"
    days = int(age_days)
    return "1 day ago" if days == 1 else f"{days} days ago"


def _where(incidents: IncidentSet, i: int, k_point: bool, distance: float, target: Target) -> str:
    inc = incidents.incidents[i]
    noun = "site" if target.kind is TargetKind.SITE else "route"
    if not k_point:
        scope = ", ".join(sorted(inc.scope_countries | inc.scope_admin1)) or "no area limit"
        return f"area-wide ({scope})"
    if target.kind is TargetKind.SITE and distance <= target.radius_km:
        return f"inside the site's radius ({distance:.0f} km from its centre)"
    return f"{distance:.0f} km {'away' if noun == 'site' else 'from the route'}"


def _quality_notes(incidents: IncidentSet, i: int, k_point: bool) -> list[str]:
    inc = incidents.incidents[i]
    notes = []
    if inc.lifecycle is Lifecycle.DEVELOPING:
        notes.append("report still developing")
    if inc.location_precision is not LocationPrecision.EXACT and k_point:
        notes.append(f"location approximate (+/-{float(incidents.sigma_km[i]):.0f} km)")
    if inc.occurred_precision is not TimePrecision.DAY:
        notes.append(f"date known to the {inc.occurred_precision.value}")
    return notes


def contribution(
    incidents: IncidentSet,
    idx: IndexArray,
    k: int,
    target: Target,
    distance: FloatArray,
    d_eff: FloatArray,
    age: FloatArray,
    kernel_basis: FloatArray,
    c: FloatArray,
    profile: Profile,
    points: float,
    score: float,
) -> Contribution:
    """One fitted incident's contribution with its factors and a sentence saying why."""
    i = int(idx[k])
    inc = incidents.incidents[i]
    params = incidents.params
    k_point = i < incidents.n_point
    dist = float(distance[k]) if k_point else math.nan
    fatalities = float(incidents.fatalities_used[i])
    basis = incidents.fatalities_basis[i]
    noun = "site" if target.kind is TargetKind.SITE else "route"

    parts = [_LABELS.get(inc.category, inc.category.value.replace("_", " "))]
    parts.append(_where(incidents, i, k_point, dist, target))
    parts.append(days_phrase(float(age[k])))
    if basis == "independent":
        parts.append(f"{fatalities:.0f} killed (independent figure)")
    elif basis == "claimed, discounted":
        parts.append(f"{inc.fatalities_claimed} killed claimed, counted as {fatalities:g}")
    notes = []
    if profile.expat_kidnap[k]:
        notes.append(f"{noun} has expatriate staff")
    if profile.victim_sector[k] and target.sector is not None:
        notes.append(f"victim in the {noun}'s sector ({target.sector.value})")
    if profile.foreign_firm[k]:
        notes.append(f"aimed at foreign firms; {noun} is foreign-owned")
    if profile.mining[k]:
        notes.append("aimed at mining; site is a mine")
    mode_factor = float(profile.mode_factor[k])
    if mode_factor != 1.0 and target.mode is not None:
        where = " near an airfield" if bool(profile.airfield[k]) else ""
        notes.append(f"x{mode_factor:.2g} on {_MODE_PHRASE[target.mode]} corridor{where}")
    notes += _quality_notes(incidents, i, k_point)
    why = ", ".join(parts) + ("; " + "; ".join(notes) if notes else "")
    if inc.title:
        why = f"{inc.title}: {why}"

    # The fitted space-time weight, and how much of it distance and age leave: kernel is the
    # weight at this distance over the weight at 0 km (both at age 0), decay the rest.
    B = incidents.coef[i].reshape(kernel_basis.shape[1], -1)
    weight = float(c[k] / incidents.static[i]) if incidents.static[i] > 0.0 else 0.0
    peak = float(B.sum())  # every basis kernel is 1 at 0 km, every decay 1 at age 0
    here = float(kernel_basis[k] @ B.sum(axis=1))
    factors: dict[str, float | str | None] = {
        "distance_km": None if not k_point else round(dist, 3),
        "distance_basis": "area" if not k_point else noun,
        "effective_distance_km": round(float(d_eff[k]), 3),
        "group": params.groups[inc.category],
        "fitted_weight": weight,
        "kernel": here / peak if peak > 0.0 else 0.0,
        "age_days": round(float(age[k]), 3),
        "decay": weight / here if here > 0.0 else 0.0,
        "severity": float(incidents.severity[i]),
        "fatalities_used": None if math.isnan(fatalities) else fatalities,
        "fatalities_basis": basis,
        "precision": float(incidents.precision[i]),
        "time_precision": float(incidents.time_precision[i]),
        "credibility": float(incidents.credibility[i]),
        "profile_match": float(profile.factor[k]),
        "mode_factor": mode_factor,
    }
    return _made(inc, points, score, factors, why)


def threat_contribution(
    incidents: IncidentSet,
    idx: IndexArray,
    k: int,
    target: Target,
    distance: FloatArray,
    age: FloatArray,
    strength: float,
    factor: float,
    points: float,
    score: float,
) -> Contribution:
    """A threat aimed at the target: it adjusts the odds; its factors say by how much."""
    i = int(idx[k])
    inc = incidents.incidents[i]
    k_point = i < incidents.n_point
    dist = float(distance[k]) if k_point else math.nan
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
        _where(incidents, i, k_point, dist, target),
        days_phrase(float(age[k])),
    ]
    notes = aimed + _quality_notes(incidents, i, k_point)
    why = ", ".join(parts) + ("; " + "; ".join(notes) if notes else "")
    if inc.title:
        why = f"{inc.title}: {why}"
    factors: dict[str, float | str | None] = {
        "distance_km": None if not k_point else round(dist, 3),
        "distance_basis": "area" if not k_point else noun,
        "age_days": round(float(age[k]), 3),
        "credibility": float(incidents.credibility[i]),
        "threat_strength": strength,
        "odds_factor": factor,
        "adjustment": "threats",
    }
    return _made(inc, points, score, factors, why)


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
