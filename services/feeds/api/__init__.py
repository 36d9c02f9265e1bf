"""Routes of the feeds: file imports, and the health of polled feeds."""

from fastapi import APIRouter

from services.core.problems import problem_responses
from services.feeds.api import feeds, imports

router = APIRouter(responses=problem_responses(401, 403, 422, 429, 503))
router.include_router(imports.router)
router.include_router(feeds.router)
