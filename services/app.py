"""The composition root: one API serving scoring and alerts, with their workers in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI

from services.alerts import jobs as alert_jobs
from services.alerts.api import router as alerts_router
from services.scoring import app as scoring_app
from services.scoring import jobs as scoring_jobs
from services.settings import Settings


def create_app(
    settings: Settings, *, clock: Callable[[], datetime] = scoring_jobs.utc_now
) -> FastAPI:
    """Build the API for `settings`; with `inline_worker`, the alert workers run in it too."""

    @asynccontextmanager
    async def background(app: FastAPI) -> AsyncIterator[None]:
        if not settings.inline_worker:
            yield
            return
        worker = alert_jobs.AlertsWorker(app.state.sessions, settings, clock)
        scheduler = alert_jobs.make_scheduler(app.state.sessions, settings, clock)
        app.state.alerts_worker = worker
        worker.start()
        try:
            scheduler.start()
            try:
                yield
            finally:
                scheduler.shutdown(wait=True)
        finally:
            worker.stop()

    return scoring_app.create_app(
        settings,
        clock=clock,
        routers=[alerts_router],
        background=background,
        title="riskalert API",
    )
