"""Settings of the scoring service, read once from RISKALERT_* environment variables."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.core.duration import Duration
from services.core.settings import PlatformSettings


class ScoringSettings(PlatformSettings):
    """Everything the scoring service can be told; the app factory takes one of these."""

    model_config = SettingsConfigDict(env_prefix="RISKALERT_", env_file=".env", extra="ignore")

    database_url: str = Field(
        "sqlite:///./riskalert.db",
        description="SQLAlchemy URL; SQLite by default, postgresql+psycopg://... in production.",
    )
    admin_api_key: SecretStr | None = Field(
        None, description="Bootstrap platform-admin key (creates tenants and keys)."
    )
    auto_migrate: bool = Field(
        True,
        description=(
            "Apply pending migrations at start-up (`serve --workers N`: once, in the parent); "
            "off, no process migrates. A schema ahead of this release is never migrated."
        ),
    )
    inline_worker: bool = Field(
        True, description="Run the rescoring worker and scheduler inside the API process."
    )
    clock_skew: Duration = Field(
        timedelta(minutes=5), description="How far in the future a reported time may lie."
    )
    max_batch_items: int = Field(1000, ge=1, le=10_000, description="Incidents per batch POST.")
    max_page_size: int = Field(500, ge=1, le=5000, description="Largest page of a list.")
    max_import_bytes: int = Field(
        50_000_000, ge=1, description="Largest file accepted by POST /v1/imports/{format}."
    )
    max_backtest_pairs: int = Field(100_000, ge=1, description="(point, time) pairs per backtest.")
    rescore_interval: Duration = Field(
        timedelta(minutes=10), description="How often every score is re-evaluated for decay."
    )
    worker_poll_interval: Duration = Field(
        timedelta(seconds=1), description="Fallback polling of the rescoring queue."
    )
    rescore_batch_size: int = Field(500, ge=1, description="Targets rescored per batch.")
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
        1000, ge=1, description="Incident feed entries read per pass to queue their targets."
    )
    rescore_lease: Duration = Field(
        timedelta(seconds=60),
        description="How long a worker holds queued targets before another may take them.",
    )
    change_min_delta: float = Field(
        1.0,
        ge=0,
        description="Smallest score move written to the change feed; band changes always are.",
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
    key_cache_ttl: Duration = Field(
        timedelta(seconds=10), description="How long a resolved API key is cached per process."
    )
    idempotency_ttl: Duration = Field(
        timedelta(hours=24), description="How long Idempotency-Key responses are kept."
    )
    sqlite_busy_timeout: Duration = Field(
        timedelta(seconds=30), description="How long SQLite waits for the write lock."
    )
    db_pool_size: int = Field(10, ge=1, description="Connections per process.")
