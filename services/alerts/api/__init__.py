"""Routes of the alerts service, under /v1."""

from fastapi import APIRouter

from services.alerts.api import alerts, deliveries, endpoints, preview, subscriptions, unsubscribe
from services.core.problems import problem_responses

# As for scoring: every /v1 route may refuse the key or its roles, rate-limit it, validate,
# conflict, and answer 503 when the database is down.
router = APIRouter(responses=problem_responses(401, 403, 409, 422, 429, 503))
router.include_router(endpoints.router)
router.include_router(subscriptions.router)
router.include_router(alerts.router)
router.include_router(deliveries.router)
router.include_router(unsubscribe.router)
router.include_router(preview.router)
