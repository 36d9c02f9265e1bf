"""ASGI entry point for multi-worker uvicorn: `uvicorn services.asgi:app --factory`."""

from fastapi import FastAPI

from services.app import create_app
from services.settings import Settings


def app() -> FastAPI:
    """Build the app from the environment (RISKALERT_*)."""
    return create_app(Settings())
