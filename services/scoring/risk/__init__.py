"""The risk model: the calibrated probability of violence near a site or corridor, explained.

A package of concepts (docs/scoring.md):
- `params`: a model version's parameters, parsing and the shipped (fitted) defaults;
- `types`: incidents and targets in, scores with their explanation out;
- `incidentset`: incidents as columns, built once and scored many times;
- `terms`: the formula's terms, each written once and shared by every path below;
- `scoring`: one target with its explanation, or many bare points fast;
- `explain`: the contributing incidents in words;
- `fit`: learning the parameters from the incident history, with a report.
"""

from threadpoolctl import threadpool_limits

from services.scoring.risk.incidentset import (
    IncidentSet,
    area_scope_matches,
    influence_radius_km,
    max_influence_km,
)
from services.scoring.risk.params import DEFAULT_PARAMS, VIOLENT, ModelParams, is_current
from services.scoring.risk.scoring import (
    intensities,
    probabilities,
    score_points,
    score_target,
    score_targets,
)
from services.scoring.risk.terms import band_for
from services.scoring.risk.types import (
    Adjustment,
    Contribution,
    Hotspot,
    Incident,
    Score,
    Target,
)

# One BLAS thread per process: the model's matrix products are small, and several threads
# fighting over two shared cores made them an order of magnitude slower (docs/scoring.md).
threadpool_limits(limits=1, user_api="blas")

__all__ = [
    "DEFAULT_PARAMS",
    "VIOLENT",
    "Adjustment",
    "Contribution",
    "Hotspot",
    "Incident",
    "IncidentSet",
    "ModelParams",
    "Score",
    "Target",
    "area_scope_matches",
    "band_for",
    "influence_radius_km",
    "intensities",
    "is_current",
    "max_influence_km",
    "probabilities",
    "score_points",
    "score_target",
    "score_targets",
]
