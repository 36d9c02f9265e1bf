"""The platform's app factory: the database, keys, limits, problems, health and metrics.

Each service hands it a `Part` (its routes, and what runs beside the API while it serves);
`services/app.py` composes them. Nothing here knows a service.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from services.core import activity, metrics
from services.core.api import deployment_bounds, iso_durations
from services.core.auth import KeyCache, hash_key
from services.core.clock import utc_now
from services.core.db import (
    SchemaState,
    is_sqlite,
    make_engine,
    make_sessionmaker,
    prepare_schema,
    schema_note,
    schema_revision,
    schema_state,
    sqlite_free_bytes,
)
from services.core.observe import Observe
from services.core.problems import (
    PROBLEM_MEDIA_TYPE,
    install_problem_handlers,
    problem_responses,
    unreadable_bodies,
)
from services.core.ratelimit import Limiter
from services.core.settings import PlatformSettings

API_VERSION = "1.0.0"
# File imports check their own, larger limit (max_import_bytes).
BODY_LIMIT_EXEMPT = ("/v1/imports/",)

log = logging.getLogger(__name__)


# Started inside the lifespan once the engine and sessions are on `app.state`, stopped before.
Running = Callable[[FastAPI], AbstractAsyncContextManager[None]]


@dataclass(frozen=True, slots=True)
class Part:
    """What one service adds to the platform's app.

    `running` is entered in the lifespan, in the order the parts are given, once the database
    is set up, and left in reverse order before the engine is disposed.
    """

    routers: Sequence[APIRouter] = ()
    running: Running | None = None
    # ASGI middleware around the routes, inside the platform's own (so what it answers is
    # counted, timed and logged like any request): a shortcut for a hot read, say.
    middleware: Sequence[Callable[[ASGIApp], ASGIApp]] = ()


# After a write failed for lack of space, /readyz reports it this long (the failure is the
# only sign on PostgreSQL, whose disk this process cannot see).
STORAGE_FULL_REPORTED_S = 60.0


def _storage_full(request: Request, settings: PlatformSettings) -> str | None:
    """Why the database has no room for writes, or None when it seems to have."""
    free = sqlite_free_bytes(settings.database_url)
    if free is not None and free < settings.sqlite_min_free_bytes:
        return (
            f"{free // 2**20} MiB free beside the SQLite database, under the "
            f"{settings.sqlite_min_free_bytes // 2**20} MiB its write-ahead log needs"
        )
    failed_at: float | None = getattr(request.app.state, "storage_full_at", None)
    ago = None if failed_at is None else time.monotonic() - failed_at
    if ago is not None and ago < STORAGE_FULL_REPORTED_S:
        return f"a write failed {ago:.0f} s ago: the database's storage is full"
    return None


def create_app(
    settings: PlatformSettings,
    parts: Sequence[Part],
    *,
    clock: Callable[[], datetime] = utc_now,
    title: str = "riskalert API",
) -> FastAPI:
    """Build the API for `settings` from the services' `parts`; tests pass their own clock."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Migrates only when told to, and never a schema ahead of this release (a later
        # release's, after a rollback): that one is served as it is.
        app.state.schema_at_start = prepare_schema(
            settings.database_url, migrate=settings.auto_migrate
        )
        engine = make_engine(
            settings.database_url,
            busy_timeout_ms=int(settings.sqlite_busy_timeout.total_seconds() * 1000),
            pool_size=settings.db_pool_size,
        )
        app.state.settings = settings
        app.state.clock = clock
        app.state.engine = engine
        app.state.sessions = make_sessionmaker(engine)
        app.state.read_sessions = make_sessionmaker(engine, read_only=True)
        app.state.key_cache = KeyCache(settings.key_cache_ttl.total_seconds())
        app.state.key_limits = Limiter(settings.rate_limit, "requests a key may make")
        app.state.anonymous_limits = Limiter(
            settings.rate_limit_unauthenticated, "requests without a valid key"
        )
        admin = settings.admin_api_key
        app.state.admin_key_hash = hash_key(admin.get_secret_value()) if admin else None
        try:
            async with AsyncExitStack() as stack:
                for part in parts:
                    if part.running is not None:
                        await stack.enter_async_context(part.running(app))
                yield
        finally:
            engine.dispose()

    app = FastAPI(
        title=title,
        version=API_VERSION,
        description=(
            "Security-risk scores for sites and corridors in the Sahel, explained and computable "
            "as of any past time. Authenticate with `Authorization: Bearer <key>`. Errors are "
            "RFC 9457 problem documents."
        ),
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    documented = app.openapi

    def openapi() -> dict[str, Any]:
        # The schema states this deployment's bounds (page size, batch size), not the largest
        # any deployment may set, and durations as the API writes them.
        document = documented()
        deployment_bounds(document, settings)
        iso_durations(document)
        unreadable_bodies(document)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    for part in parts:
        for middleware in part.middleware:
            app.add_middleware(middleware)
    # Requests count as foreground work: a rescoring backlog in this process yields to them.
    app.add_middleware(activity.Touch)
    # Outermost: every request, answered by a route or not, gets an id, a log line, metrics.
    app.add_middleware(Observe, max_body_bytes=settings.max_body_bytes, exempt=BODY_LIMIT_EXEMPT)
    if settings.trusted_proxies:
        # Outside Observe, so logs and limits see the client a trusted proxy names. Only these
        # peers are believed: anyone else's X-Forwarded-For is ignored.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    for part in parts:
        for router in part.routers:
            app.include_router(router)

    gauges = metrics.DatabaseGauges(clock, settings.metrics_cache_ttl.total_seconds())

    @app.get("/metrics", include_in_schema=False)
    def prometheus(request: Request) -> Response:
        """Prometheus metrics (docs/operations.md lists them)."""
        state = request.app.state
        address = request.client.host if request.client else "unknown"
        authorization = request.headers.get("authorization")
        metrics.admit(settings.metrics_token, authorization, state.anonymous_limits, address)
        database = gauges.read(state.read_sessions)
        return Response(metrics.exposition(database), media_type=metrics.CONTENT_TYPE)

    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        """Liveness: answers while the process runs."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="The database answers",
        responses=problem_responses(503),
    )
    def readyz(request: Request) -> JSONResponse:
        """Readiness: the database answers at this release's schema or a later release's."""
        try:
            with request.app.state.read_sessions() as session:
                at = schema_revision(session.connection())
        except Exception:
            return JSONResponse(
                {
                    "type": "https://riskalert.dev/problems/database-unavailable",
                    "title": "Service unavailable",
                    "status": 503,
                    "detail": "the database does not answer",
                },
                status_code=503,
                media_type=PROBLEM_MEDIA_TYPE,
            )
        full = _storage_full(request, settings)
        if full is not None:
            return JSONResponse(
                {
                    "type": "https://riskalert.dev/problems/storage-full",
                    "title": "Service unavailable",
                    "status": 503,
                    "detail": full,
                },
                status_code=503,
                media_type=PROBLEM_MEDIA_TYPE,
            )
        state = schema_state(at)
        if state is SchemaState.BEHIND:
            # Serving on an older schema would fail on whatever changed: not ready until
            # `riskalert migrate` has run.
            return JSONResponse(
                {
                    "type": "https://riskalert.dev/problems/schema-not-at-head",
                    "title": "Service unavailable",
                    "status": 503,
                    "detail": schema_note(at),
                },
                status_code=503,
                media_type=PROBLEM_MEDIA_TYPE,
            )
        body: dict[str, str | None] = {
            "status": "ready",
            "database": "sqlite" if is_sqlite(settings.database_url) else "postgresql",
            "schema": at,
            "schema_state": state.value,
        }
        if state is SchemaState.AHEAD:
            # Ready all the same (a later release's schema still serves this one), but say so:
            # it is what an operator looks for after a rollback.
            body["note"] = schema_note(at)
        return JSONResponse(body)

    return app
