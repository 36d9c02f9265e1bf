"""What the scoring service adds to the platform's app: its routes, the model version in force,
and (with `inline_worker`) the rescoring worker and its scheduler."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI
from sqlalchemy.exc import OperationalError

from services.core import wake
from services.core.app import Part
from services.core.db import SchemaState, is_sqlite
from services.scoring import jobs, scores
from services.scoring.api import router
from services.scoring.api.cached import CachedScoreReads
from services.scoring.readcache import CHANNEL, ScoreDocuments, always, never
from services.scoring.settings import ScoringSettings

log = logging.getLogger(__name__)


def part(settings: ScoringSettings, clock: Callable[[], datetime]) -> Part:
    """The scoring service's part of an app for `settings`."""

    @asynccontextmanager
    async def running(app: FastAPI) -> AsyncIterator[None]:
        async with _score_documents(app, settings), _scoring(app):
            yield

    @asynccontextmanager
    async def _scoring(app: FastAPI) -> AsyncIterator[None]:
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

    return Part(routers=[router], running=running, middleware=[CachedScoreReads])


@asynccontextmanager
async def _score_documents(app: FastAPI, settings: ScoringSettings) -> AsyncIterator[None]:
    """The cache of current score documents (readcache), emptied whenever scores are stored:
    by this process, or by any other one that a listener hears about (PostgreSQL)."""
    listener: wake.Listener | None = None
    epoch: Callable[[], int | None] = always
    if is_sqlite(settings.database_url) and not settings.inline_worker:
        # SQLite has no NOTIFY: scores stored by a separate worker would go unheard.
        epoch = never
    elif not is_sqlite(settings.database_url):
        listener = wake.Listener(settings.database_url, [CHANNEL])
        listening = listener

        def epoch() -> int | None:
            return listening.connections if listening.listening.is_set() else None

    cache = ScoreDocuments(settings.read_cache_ttl.total_seconds(), epoch=epoch)
    app.state.score_documents = cache
    app.state.score_listener = listener
    wake.subscribe(CHANNEL, cache)
    if listener is not None:
        listener.start()
    try:
        yield
    finally:
        if listener is not None:
            listener.stop()
        wake.unsubscribe(CHANNEL, cache)
