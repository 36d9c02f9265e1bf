"""The scoring service's HTTP routes, versioned under /v1."""

from fastapi import APIRouter

from services.scoring.api import incidents, platform, scores, targets

router = APIRouter()
router.include_router(incidents.router)
router.include_router(targets.router)
router.include_router(scores.router)
router.include_router(platform.router)
