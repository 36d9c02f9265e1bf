"""What the scoring service adds to the platform's app: its routes, the model version in force,
and (with `inline_worker`) the rescoring worker and its scheduler."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI
from sqlalchemy.exc import OperationalError

from services.core.app import Part
from services.core.db import SchemaState
from services.scoring import jobs, scores
from services.scoring.api import router
from services.scoring.readcache import ScoreDocuments
from services.scoring.settings import ScoringSettings

log = logging.getLogger(__name__)


def part(settings: ScoringSettings, clock: Callable[[], datetime]) -> Part:
    """The scoring service's part of an app for `settings`."""

    @asynccontextmanager
    async def running(app: FastAPI) -> AsyncIterator[None]:
        app.state.score_documents = ScoreDocuments(settings.read_cache_ttl.total_seconds())
        try:
            # Not on a schema behind this release (its tables may not exist yet): /readyz says
            # to migrate, and the first request after that creates the model version.
            if app.state.schema_at_start is not SchemaState.BEHIND:
                with app.state.sessions.begin() as session:
                    scores.ensure_model(session, clock())
        except OperationalError as exc:
            # Start anyway: requests answer 503 and /readyz fails until the database is back;
            # the first request then creates the model version (see scores.model_in_force).
            log.warning("database unavailable at start-up: %s", exc)
        if not settings.inline_worker:
            yield
            return
        worker = jobs.RescoreWorker(
            app.state.sessions, settings, pause=settings.inline_rescore_pause
        )
        worker.start()
        worker.wake()
        try:
            scheduler = jobs.make_scheduler(app.state.sessions, settings)
            scheduler.start()
            try:
                yield
            finally:
                scheduler.shutdown(wait=True)
        finally:
            worker.stop()

    return Part(routers=[router], running=running)
