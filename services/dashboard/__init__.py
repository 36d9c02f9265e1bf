"""The ops dashboard: a static page the service serves itself at /dashboard/ (docs/dashboard.md).

It holds no data and no secret: the page asks for an API key and calls the versioned API with
it, so the key's tenant and roles bound what it shows, as for any integrator. Everything it
loads comes from this service (vendored files, `static/vendor/LICENSES.md`), so it works
offline; the security headers below keep it that way. Its one setting, where the map opens
(the demo's story time under `serve --demo`), it reads from `config.json`.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field
from starlette.staticfiles import StaticFiles

from services.core.activity import App, Receive, Scope, Send
from services.dashboard.settings import DashboardSettings

STATIC = Path(__file__).with_name("static")
PREFIX = "/dashboard"
HEADERS = [
    (
        b"content-security-policy",
        # Everything from here only, and no inline script or style: the page sets styles
        # through the DOM, which the policy does not restrict.
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-cache"),
]


class _Secured:
    """Add the dashboard's security headers to every response of `app`."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class PageConfig(BaseModel):
    """What the page reads when it starts."""

    demo_as_of: datetime | None = Field(
        description="The map opens as of this time, as the demo's, instead of now (null: now)."
    )


def mount(app: FastAPI, settings: DashboardSettings) -> None:
    """Serve the dashboard at /dashboard/ with its configuration, and send / there."""
    config = PageConfig(demo_as_of=settings.demo_as_of)

    # Before the mount, which would otherwise answer for every path under the prefix.
    @app.get(f"{PREFIX}/config.json", include_in_schema=False)
    async def _config(response: Response) -> PageConfig:
        for name, value in HEADERS:
            response.headers[name.decode()] = value.decode()
        return config

    app.mount(PREFIX, _Secured(StaticFiles(directory=STATIC, html=True)), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def _home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/")
