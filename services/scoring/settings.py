"""Settings of the scoring service, read once from RISKALERT_* environment variables."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.core.duration import Duration
from services.core.settings import PlatformSettings, renamed


class ScoringSettings(PlatformSettings):
    """Everything the scoring service can be told; the app factory takes one of these."""

    model_config = SettingsConfigDict(env_prefix="RISKALERT_", env_file=".env", extra="ignore")

    max_batch_items: int = Field(1000, ge=1, le=10_000, description="Incidents per batch POST.")
    max_backtest_pairs: int = Field(100_000, ge=1, description="(point, time) pairs per backtest.")
    rescore_interval: Duration = Field(
        timedelta(minutes=10), description="How often every score is re-evaluated for decay."
    )
    worker_poll_interval: Duration = Field(
        timedelta(seconds=1),
        description="Fallback polling of the rescoring queue.",
        validation_alias=renamed("SCORING_POLL_INTERVAL", "WORKER_POLL_INTERVAL"),
    )
    rescore_batch_size: int = Field(500, ge=1, description="Targets rescored per batch.")
    read_cache_ttl: Duration = Field(
        timedelta(seconds=60),
        le=timedelta(hours=1),
        description=(
            "The longest a process serves a current score document it read without reading it "
            "again (0: always read). Storing scores empties every process's cache when it "
            "commits (NOTIFY on PostgreSQL); this bounds what a missed notice could cost."
        ),
        validation_alias=renamed("SCORING_READ_CACHE_TTL"),
    )
    inline_rescore_pause: float = Field(
        3.0,
        ge=0,
        le=10,
        description=(
            "With the in-process worker: after a rescoring batch during which the process "
            "also served requests or sent alerts, rest this multiple of the time the batch "
            "took, so a backlog leaves the process to them; alone, rescoring never rests."
        ),
    )
    feed_batch_size: int = Field(
        1000,
        ge=1,
        description="Incident feed entries read per pass to queue their targets.",
        validation_alias=renamed("SCORING_FEED_BATCH_SIZE", "FEED_BATCH_SIZE"),
    )
    rescore_lease: Duration = Field(
        timedelta(seconds=60),
        description="How long a worker holds queued targets before another may take them.",
    )
    change_min_delta: float = Field(
        1.0,
        ge=0,
        description="Smallest score move written to the change feed; band changes always are.",
        validation_alias=renamed("SCORING_CHANGE_MIN_DELTA", "CHANGE_MIN_DELTA"),
    )
    fit_poll_interval: Duration = Field(
        timedelta(seconds=30), description="How often workers look for model fits to run."
    )
    fit_lease: Duration = Field(
        timedelta(minutes=30),
        description="How long a worker holds a model fit before another may take it over.",
    )
    refit_after_incidents: int = Field(
        0,
        ge=0,
        description=(
            "Queue a model fit once this many incidents were received since the version in "
            "force was published (0: never on a schedule)."
        ),
    )
