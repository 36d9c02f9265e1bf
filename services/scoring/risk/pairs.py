"""Which incidents can move which targets: (target, incident) pairs for many targets at once.

Scoring a batch of targets works on these pairs as flat arrays, so the cost is numpy's per
element, not Python's per target. Sites are grouped by one-degree cell: one candidate search
and one distance matrix serve every site of a cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.scoring.geo import FloatArray, bbox_spanning, haversine_km, point_to_polyline_km
from services.scoring.risk import terms
from services.scoring.risk.incidentset import (
    BoolArray,
    IncidentSet,
    IndexArray,
    area_scope_covers,
    profile_admits,
)
from services.scoring.risk.params import ModelParams
from services.scoring.risk.types import Target
from services.scoring.taxonomy import Category, TargetKind

# Sites (and score_points' bare points) are grouped into cells this many degrees wide: one
# candidate search and one distance matrix serve every point of a cell.
CELL_DEGREES = 1.0
# Upper bound on a (sites x candidates) distance matrix built at once.
MAX_MATRIX_CELLS = 1_000_000


@dataclass(frozen=True, slots=True)
class Pairs:
    """Every (target, incident) pair that can count, sorted by target.

    Within a target, point incidents come first (ascending index), then area-scoped ones; the
    pairs of target j are `starts[j]:starts[j + 1]`, its point pairs the first `n_point[j]`."""

    target: IndexArray
    incident: IndexArray
    # km from the target's geometry (NaN for area-scoped incidents), and blurred by the
    # location's uncertainty (the model's area distance for area-scoped ones).
    distance: FloatArray
    d_eff: FloatArray
    point: BoolArray
    starts: IndexArray
    n_point: IndexArray


def coordinates(target: Target) -> FloatArray:
    """Target coordinates as an (n, 2) (lon, lat) array, checked against the kind."""
    coords = np.asarray(target.coordinates, dtype=np.float64).reshape(-1, 2)
    if target.kind is TargetKind.SITE and coords.shape[0] != 1:
        raise ValueError("a site has exactly one (lon, lat) pair")
    if target.kind is TargetKind.CORRIDOR and coords.shape[0] < 2:
        raise ValueError("a corridor has at least two (lon, lat) pairs")
    if target.radius_km < 0.0:
        raise ValueError("radius_km must be non-negative")
    return coords


@dataclass
class _Parts:
    target: list[IndexArray]
    incident: list[IndexArray]
    distance: list[FloatArray]

    def add(self, target: IndexArray, incident: IndexArray, distance: FloatArray) -> None:
        self.target.append(target)
        self.incident.append(incident)
        self.distance.append(distance)


def build(
    targets: Sequence[Target],
    coords: Sequence[FloatArray],
    incidents: IncidentSet,
    usable: BoolArray,
    params: ModelParams,
) -> Pairs:
    """The pairs of `targets` (with their `coords`) and the `usable` incidents (those reported
    and recent enough at the time scored) within reach, or area-scoped over the target."""
    parts = _Parts([], [], [])
    sites = np.array([j for j, t in enumerate(targets) if t.kind is TargetKind.SITE], dtype=np.intp)
    if sites.shape[0]:
        first = np.array([coords[j][0] for j in sites])
        _site_pairs(sites, first, incidents, usable, params, parts)
    for j, each in enumerate(targets):
        if each.kind is TargetKind.CORRIDOR:
            _corridor_pairs(j, coords[j], incidents, usable, params, parts)
    _area_pairs(targets, incidents, usable, parts)
    if not parts.target:
        empty = np.zeros(0, dtype=np.intp)
        return Pairs(
            empty,
            empty,
            np.zeros(0),
            np.zeros(0),
            np.zeros(0, dtype=np.bool_),
            np.zeros(len(targets) + 1, dtype=np.intp),
            np.zeros(len(targets), dtype=np.intp),
        )
    target = np.concatenate(parts.target)
    # Stable: each target keeps its point pairs (added first, ascending) before its area pairs.
    order = np.argsort(target, kind="stable")
    target = target[order]
    incident = np.concatenate(parts.incident)[order]
    distance = np.concatenate(parts.distance)[order]
    point = incident < incidents.n_point
    d_eff = np.where(
        point,
        terms.effective_distance(np.where(point, distance, 0.0), incidents.sigma_km[incident]),
        params.area_distance_km,
    )
    starts = np.searchsorted(target, np.arange(len(targets) + 1), side="left").astype(np.intp)
    n_point = np.bincount(target[point], minlength=len(targets)).astype(np.intp)
    return Pairs(target, incident, distance, d_eff, point, starts, n_point)


def _site_pairs(
    sites: IndexArray,
    lonlat: FloatArray,
    incidents: IncidentSet,
    usable: BoolArray,
    params: ModelParams,
    parts: _Parts,
) -> None:
    """Point pairs of sites, a distance matrix per cell of sites."""
    lat, lon = lonlat[:, 1], lonlat[:, 0]
    cell = np.floor(lat / CELL_DEGREES) * 1000.0 + np.floor(lon / CELL_DEGREES)
    order = np.argsort(cell, kind="stable")
    bounds = np.flatnonzero(np.diff(cell[order])) + 1
    for rows in np.split(order, bounds):
        glat, glon = lat[rows], lon[rows]
        box = bbox_spanning(
            float(glat.min()), float(glat.max()), float(glon.min()), float(glon.max()),
            incidents.max_influence_km,
        )  # fmt: skip
        candidates = incidents.point_candidates(box)
        candidates = candidates[usable[candidates]]
        if candidates.shape[0] == 0:
            continue
        c_lat, c_lon = incidents.lat[candidates][None, :], incidents.lon[candidates][None, :]
        sigma = incidents.sigma_km[candidates][None, :]
        step = max(1, MAX_MATRIX_CELLS // candidates.shape[0])
        for start in range(0, rows.shape[0], step):
            chunk = rows[start : start + step]
            distance = haversine_km(lat[chunk][:, None], lon[chunk][:, None], c_lat, c_lon)
            near = terms.effective_distance(distance, sigma) < params.reach_km
            r, k = np.nonzero(near)
            parts.add(sites[chunk][r], candidates[k], distance[r, k])


def _corridor_pairs(
    j: int,
    coords: FloatArray,
    incidents: IncidentSet,
    usable: BoolArray,
    params: ModelParams,
    parts: _Parts,
) -> None:
    """Point pairs of one corridor."""
    box = bbox_spanning(
        float(coords[:, 1].min()), float(coords[:, 1].max()),
        float(coords[:, 0].min()), float(coords[:, 0].max()),
        incidents.max_influence_km,
    )  # fmt: skip
    candidates = incidents.point_candidates(box)
    candidates = candidates[usable[candidates]]
    if candidates.shape[0] == 0:
        return
    distance, _ = point_to_polyline_km(
        incidents.lat[candidates], incidents.lon[candidates], [(a, b) for a, b in coords]
    )
    near = terms.effective_distance(distance, incidents.sigma_km[candidates]) < params.reach_km
    count = int(np.count_nonzero(near))
    parts.add(np.full(count, j, dtype=np.intp), candidates[near], distance[near])


def _area_pairs(
    targets: Sequence[Target], incidents: IncidentSet, usable: BoolArray, parts: _Parts
) -> None:
    """Area-scoped incidents whose area covers the target; a target profile scopes only threats
    (the fitted part never hides an incident from anyone)."""
    area = [
        incidents.n_point + j
        for j, inc in enumerate(incidents.incidents[incidents.n_point :])
        if usable[incidents.n_point + j]
    ]
    if not area:
        return
    # Targets with the same countries, regions and profile see the same area incidents.
    seen: dict[tuple[object, ...], IndexArray] = {}
    for j, target in enumerate(targets):
        key = (
            frozenset(target.countries),
            frozenset(target.admin1),
            target.foreign_owned,
            target.sector,
        )
        found = seen.get(key)
        if found is None:
            found = np.array(
                [
                    i
                    for i in area
                    if area_scope_covers(incidents.incidents[i], target)
                    and (
                        incidents.incidents[i].category is not Category.EXPLICIT_THREAT
                        or profile_admits(incidents.incidents[i], target)
                    )
                ],
                dtype=np.intp,
            )
            seen[key] = found
        if found.shape[0]:
            count = found.shape[0]
            parts.add(np.full(count, j, dtype=np.intp), found, np.full(count, np.nan))
