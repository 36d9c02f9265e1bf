"""ASGI entry point for multi-worker uvicorn: `uvicorn services.asgi:app --factory`.

Each worker follows RISKALERT_AUTO_MIGRATE. `riskalert serve --workers N` migrates once in its
parent and turns it off for the workers; started otherwise, turn it off and migrate first, or
every worker would migrate at once. Pass `--no-proxy-headers` as well: the app believes
X-Forwarded-For only from RISKALERT_TRUSTED_PROXIES, and uvicorn's default trusts loopback.
"""

from fastapi import FastAPI

from services.app import create_app
from services.core import logs
from services.settings import Settings


def app() -> FastAPI:
    """Build the app from the environment (RISKALERT_*), logging as it says."""
    settings = Settings()
    logs.configure(settings.log_format, settings.log_level)
    return create_app(settings)
