"""Feed routes: the health of each polled feed, and a poll on demand."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from services.core.api import Ingestor, Now, ReadSession
from services.core.problems import Problem, not_found, problem_responses
from services.feeds import poller
from services.feeds.settings import FeedConfig, FeedsSettings

# As for the other /v1 routes: every one may refuse the key or its roles, validate, and answer
# 503 when the database is down.
router = APIRouter(
    prefix="/v1/feeds", tags=["feeds"], responses=problem_responses(401, 403, 422, 429, 503)
)


class FeedHealth(BaseModel):
    """How a polled feed is doing: its state, its last attempts and how far behind it is."""

    name: str = Field(description="The feed's configured name.")
    kind: str = Field(description="acled, acled-deleted or ucdp.")
    url: str = Field(description="The endpoint polled, without its query string.")
    interval: timedelta = Field(description="Time between successful polls (ISO 8601).")
    state: poller.State = Field(
        description=(
            "ok; failing (the last poll failed, circuit closed); circuit_open (no request "
            "until circuit_open_until, then one trial poll); never_polled."
        )
    )
    polling: bool = Field(description="A process is polling the feed right now.")
    last_attempt_at: datetime | None = Field(description="When the last poll started.")
    last_success_at: datetime | None = Field(description="When the last successful poll ended.")
    last_error_at: datetime | None = Field(description="When the last failed poll ended.")
    last_error: str | None = Field(description="Why the last failed poll failed.")
    consecutive_failures: int = Field(description="Failed polls since the last success.")
    circuit_open_until: datetime | None = Field(
        description="While the circuit is open, when its trial poll may run; null when closed."
    )
    next_poll_at: datetime | None = Field(description="When the feed is next due.")
    watermark: datetime | None = Field(
        description="Newest source edit time seen (ACLED timestamp, UCDP date_start)."
    )
    lag_seconds: float | None = Field(
        description="Age of the watermark: how old the newest source edit seen is."
    )
    since_success_seconds: float | None = Field(description="Time since the last success.")
    last_summary: dict[str, Any] | None = Field(
        description="Counts of the last successful poll's import (read, inserted, rejected...)."
    )


class FeedList(BaseModel):
    """Every configured feed, in configuration order."""

    items: list[FeedHealth]


async def _settings(request: Request) -> FeedsSettings:
    settings = request.app.state.settings
    assert isinstance(settings, FeedsSettings)
    return settings


FeedsConfig = Annotated[FeedsSettings, Depends(_settings)]


async def _feed(
    principal: Ingestor,
    settings: FeedsConfig,
    name: Annotated[str, Path(max_length=64, description="The feed's configured name.")],
) -> FeedConfig:
    config = settings.feed(name)
    if config is None:
        raise not_found("feed")
    return config


Feed = Annotated[FeedConfig, Depends(_feed)]


def _out(health: poller.Health) -> FeedHealth:
    return FeedHealth.model_validate(health, from_attributes=True)


@router.get("", summary="Health of every polled feed")
def list_feeds(
    principal: Ingestor, settings: FeedsConfig, session: ReadSession, now: Now
) -> FeedList:
    """Each configured feed's state, last attempts, errors, watermark and lag."""
    return FeedList(items=[_out(h) for h in poller.health(session, settings, now)])


@router.get("/{name}", responses=problem_responses(404), summary="Health of one feed")
def get_feed(feed: Feed, session: ReadSession, now: Now) -> FeedHealth:
    """The feed's state, last attempts, errors, watermark and lag."""
    found = poller.states(session, [feed.name])
    return _out(poller.feed_health(feed, found.get(feed.name), now))


@router.post(
    "/{name}/poll",
    responses=problem_responses(404, 409),
    summary="Poll a feed now",
)
def poll_feed(request: Request, feed: Feed, settings: FeedsConfig) -> FeedHealth:
    """Poll the feed now, even when not due or while its circuit is open (as its trial poll),
    and answer its health once done; a failed poll is recorded and shown, not an error. 409
    while another process polls it."""
    factory: sessionmaker[Session] = request.app.state.sessions
    clock = request.app.state.clock
    # A job, not a request's unit of work: the poll commits its state and each import chunk.
    client: httpx.Client | None = getattr(request.app.state, "feeds_client", None)
    if client is None:
        with poller.make_client(settings) as own:
            outcome = poller.poll(factory, feed, settings, clock, own, force=True)
    else:
        outcome = poller.poll(factory, feed, settings, clock, client, force=True)
    if outcome.status in ("busy", "lost"):
        raise Problem(
            409,
            "feed-busy",
            "another process is polling this feed; its outcome will show here",
            headers={"Retry-After": "30"},
        )
    with factory() as session:
        found = poller.states(session, [feed.name])
        return _out(poller.feed_health(feed, found.get(feed.name), clock()))
