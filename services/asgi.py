"""ASGI entry point for multi-worker uvicorn: `uvicorn services.asgi:app --factory`."""

from fastapi import FastAPI

from services.app import create_app
from services.core import logs
from services.settings import Settings


def app() -> FastAPI:
    """Build the app from the environment (RISKALERT_*), logging as it says."""
    settings = Settings()
    logs.configure(settings.log_format, settings.log_level)
    return create_app(settings)
