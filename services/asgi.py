"""ASGI entry point for multi-worker uvicorn: `uvicorn services.asgi:app --factory`."""

from fastapi import FastAPI

from services.scoring.app import create_app
from services.scoring.settings import ScoringSettings


def app() -> FastAPI:
    """Build the app from the environment (RISKALERT_*)."""
    return create_app(ScoringSettings())
