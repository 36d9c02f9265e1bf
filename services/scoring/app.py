"""The scoring service's app factory."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from datetime import datetime

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError

from services.core import activity, metrics
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
)
from services.core.observe import Observe
from services.core.problems import (
    PROBLEM_MEDIA_TYPE,
    Problem,
    install_problem_handlers,
    problem_responses,
)
from services.core.ratelimit import Limiter
from services.scoring import jobs, scores
from services.scoring.api import router
from services.scoring.settings import ScoringSettings

API_VERSION = "1.0.0"
# File imports check their own, larger limit (max_import_bytes).
BODY_LIMIT_EXEMPT = ("/v1/imports/",)

log = logging.getLogger(__name__)


# Started inside the lifespan once the engine and sessions are on `app.state`, stopped before.
Background = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def _nothing(_app: FastAPI) -> AbstractAsyncContextManager[None]:
    return nullcontext()


def create_app(
    settings: ScoringSettings,
    *,
    clock: Callable[[], datetime] = utc_now,
    routers: Sequence[APIRouter] = (),
    background: Background = _nothing,
    title: str = "riskalert scoring API",
) -> FastAPI:
    """Build the API for `settings`; tests pass their own settings and clock.

    `routers` and `background` let a composition root add other services' routes and workers
    (the alerts service) without this package knowing them.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Migrates only when told to, and never a schema ahead of this release (a later
        # release's, after a rollback): that one is served as it is.
        schema = prepare_schema(settings.database_url, migrate=settings.auto_migrate)
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
            # Not on a schema behind this release (its tables may not exist yet): /readyz says
            # to migrate, and the first request after that creates the model version.
            if schema is not SchemaState.BEHIND:
                with app.state.sessions.begin() as session:
                    scores.ensure_model(session, clock())
        except OperationalError as exc:
            # Start anyway: requests answer 503 and /readyz fails until the database is back;
            # the first request then creates the model version (see deps.active_model).
            log.warning("database unavailable at start-up: %s", exc)
        app.state.worker = None
        scheduler = None
        if settings.inline_worker:
            app.state.worker = jobs.RescoreWorker(
                app.state.sessions, settings, pause=settings.inline_rescore_pause
            )
            app.state.worker.start()
            app.state.worker.wake()
            scheduler = jobs.make_scheduler(app.state.sessions, settings)
            scheduler.start()
        try:
            async with background(app):
                yield
        finally:
            if scheduler is not None:
                scheduler.shutdown(wait=True)
            if app.state.worker is not None:
                app.state.worker.stop()
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
    # Requests count as foreground work: a rescoring backlog in this process yields to them.
    app.add_middleware(activity.Touch)
    # Outermost: every request, answered by a route or not, gets an id, a log line, metrics.
    app.add_middleware(Observe, max_body_bytes=settings.max_body_bytes, exempt=BODY_LIMIT_EXEMPT)
    app.include_router(router)
    for extra in routers:
        app.include_router(extra)

    @app.get("/metrics", include_in_schema=False)
    def prometheus(request: Request) -> Response:
        """Prometheus metrics (docs/operations.md lists them)."""
        token = settings.metrics_token
        if token is not None:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {token.get_secret_value()}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                raise Problem(
                    401,
                    "unauthenticated",
                    "metrics need the metrics token (Authorization: Bearer)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        database = metrics.DatabaseCollector(request.app.state.read_sessions, clock)
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
