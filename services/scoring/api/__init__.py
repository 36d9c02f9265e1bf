"""The scoring service's HTTP routes, versioned under /v1."""

from fastapi import APIRouter

from services.core.problems import problem_responses
from services.scoring.api import incidents, platform, scores, targets

# Every /v1 route authenticates (and counts the key against its rate limit), may refuse the
# key's roles, validates and uses the database.
router = APIRouter(responses=problem_responses(401, 403, 409, 422, 429, 503))
router.include_router(incidents.router)
router.include_router(targets.router)
router.include_router(scores.router)
router.include_router(platform.router)
