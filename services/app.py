"""The composition root: one API for scoring, alerts and feeds, with their workers in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from datetime import datetime

from fastapi import FastAPI

from services import dashboard
from services.alerts import jobs as alert_jobs
from services.alerts.api import router as alerts_router
from services.core import app as platform
from services.core.clock import utc_now
from services.feeds import poller as feed_poller
from services.feeds.api import router as feeds_router
from services.scoring import app as scoring_app
from services.settings import Settings


def _alerts_and_feeds(settings: Settings, clock: Callable[[], datetime]) -> platform.Part:
    @asynccontextmanager
    async def running(app: FastAPI) -> AsyncIterator[None]:
        with ExitStack() as stack:
            # One client for every feed request of this process: scheduled polls and polls
            # asked for over the API.
            app.state.feeds_client = (
                stack.enter_context(feed_poller.make_client(settings)) if settings.feeds else None
            )
            if not settings.inline_worker:
                yield
                return
            worker = alert_jobs.AlertsWorker(app.state.sessions, settings, clock)
            scheduler = alert_jobs.make_scheduler(app.state.sessions, settings, clock)
            feed_poller.add_jobs(
                scheduler, app.state.sessions, settings, clock, app.state.feeds_client
            )
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

    return platform.Part(routers=[alerts_router, feeds_router], running=running)


def create_app(settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> FastAPI:
    """Build the API for `settings`; with `inline_worker`, the rescoring, alert and feed
    workers run in it too."""
    app = platform.create_app(
        settings,
        [scoring_app.part(settings, clock), _alerts_and_feeds(settings, clock)],
        clock=clock,
    )
    dashboard.mount(app, settings)
    return app
