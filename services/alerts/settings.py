"""Settings of the alerts service, read once from RISKALERT_* environment variables."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.alerts import retry, ssrf
from services.core.duration import Duration
from services.core.settings import PlatformSettings, renamed


class AlertsSettings(PlatformSettings):
    """Everything the alerts service can be told; every timer can be compressed for tests."""

    model_config = SettingsConfigDict(env_prefix="RISKALERT_", env_file=".env", extra="ignore")

    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base URL of the API, for the alert links and unsubscribe links sent out.",
    )
    # Webhooks
    webhook_timeout: Duration = Field(timedelta(seconds=15), description="Per request.")
    webhook_allow_http: bool = Field(False, description="Allow http:// webhook URLs.")
    webhook_allowlist: list[str] = Field(
        default_factory=list,
        description=(
            "Hosts, addresses or networks (optionally :port) let through the SSRF guard, "
            "e.g. 127.0.0.1 for loopback test receivers. JSON list in the environment."
        ),
    )
    secret_rotation_grace: Duration = Field(
        timedelta(hours=24), description="How long a rotated-out secret keeps signing."
    )
    max_response_bytes: int = Field(
        4096,
        ge=0,
        description="Response body kept per attempt.",
        validation_alias=renamed("ALERTS_MAX_RESPONSE_BYTES", "MAX_RESPONSE_BYTES"),
    )
    # Retries
    retry_schedule: list[Duration] = Field(
        default_factory=lambda: list(retry.DEFAULT_SCHEDULE),
        description="Delay before each attempt; the first is usually 0.",
        validation_alias=renamed("ALERTS_RETRY_SCHEDULE", "RETRY_SCHEDULE"),
    )
    retry_jitter: float = Field(
        retry.DEFAULT_JITTER,
        ge=0.0,
        lt=1.0,
        validation_alias=renamed("ALERTS_RETRY_JITTER", "RETRY_JITTER"),
    )
    throttle_floor: Duration = Field(
        retry.THROTTLE_FLOOR,
        description="Least wait after a timeout or a 429.",
        validation_alias=renamed("ALERTS_THROTTLE_FLOOR", "THROTTLE_FLOOR"),
    )
    disable_after: Duration = Field(
        timedelta(days=5),
        description="An endpoint failing only for this long is disabled.",
        validation_alias=renamed("ALERTS_DISABLE_AFTER", "DISABLE_AFTER"),
    )
    replay_window: Duration = Field(
        timedelta(days=14),
        description="How far back failed deliveries can be recovered.",
        validation_alias=renamed("ALERTS_REPLAY_WINDOW", "REPLAY_WINDOW"),
    )
    # Workers
    lease: Duration = Field(
        timedelta(seconds=45),
        description="How long a claim is held.",
        validation_alias=renamed("ALERTS_LEASE", "LEASE"),
    )
    reaper_interval: Duration = Field(
        timedelta(seconds=15),
        description="Expired-lease sweep.",
        validation_alias=renamed("ALERTS_REAPER_INTERVAL", "REAPER_INTERVAL"),
    )
    poll_interval: Duration = Field(
        timedelta(seconds=1),
        description="Fallback polling when no wake-up arrives.",
        validation_alias=renamed("ALERTS_POLL_INTERVAL", "POLL_INTERVAL"),
    )
    concurrency: int = Field(
        64,
        ge=1,
        description=(
            "Deliveries in flight per worker process (sending threads); up to claim_batch more "
            "wait, claimed, for a thread."
        ),
        validation_alias=renamed("ALERTS_CONCURRENCY", "CONCURRENCY"),
    )
    active_sends: int = Field(
        12,
        ge=1,
        description=(
            "Deliveries a worker process sends at once while they are answered promptly; one "
            "still unanswered after slow_send_after stops counting, so slow endpoints can take "
            "up to concurrency. Past a dozen, threads of one process that all have an answer to "
            "read mostly wait for each other (the interpreter lock): more send less."
        ),
        validation_alias=renamed("ALERTS_ACTIVE_SENDS"),
    )
    slow_send_after: Duration = Field(
        timedelta(milliseconds=100),
        description="When an attempt in flight stops counting against active_sends.",
        validation_alias=renamed("ALERTS_SLOW_SEND_AFTER"),
    )
    endpoint_slots: int = Field(
        2,
        ge=1,
        description=(
            "Deliveries in flight per endpoint across every worker, for endpoints without "
            "their own max_in_flight."
        ),
        validation_alias=renamed("ALERTS_ENDPOINT_SLOTS", "ENDPOINT_SLOTS"),
    )
    claim_batch: int = Field(
        100,
        ge=1,
        description="Deliveries claimed per query.",
        validation_alias=renamed("ALERTS_CLAIM_BATCH", "CLAIM_BATCH"),
    )
    feed_batch: int = Field(
        500,
        ge=1,
        description="Feed entries consumed per transaction.",
        validation_alias=renamed("ALERTS_FEED_BATCH", "FEED_BATCH"),
    )
    reevaluate_interval: Duration = Field(
        timedelta(seconds=15),
        description="How often timers (pending, keep-firing, repeat, snooze) are re-evaluated.",
        validation_alias=renamed("ALERTS_REEVALUATE_INTERVAL", "REEVALUATE_INTERVAL"),
    )
    digest_interval: Duration = Field(
        timedelta(days=1),
        description="How often digests are sent (daily, at UTC midnight).",
        validation_alias=renamed("ALERTS_DIGEST_INTERVAL", "DIGEST_INTERVAL"),
    )
    retention: Duration = Field(
        timedelta(days=30),
        description="Settled deliveries and their attempts are kept so long.",
        validation_alias=renamed("ALERTS_RETENTION", "RETENTION"),
    )
    shutdown_grace: Duration = Field(
        timedelta(seconds=20), description="How long SIGTERM waits for requests in flight."
    )
    # Email
    smtp_host: str = Field("127.0.0.1", description="SMTP relay.")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = Field(False, description="Upgrade with STARTTLS.")
    smtp_tls: bool = Field(False, description="Implicit TLS (port 465).")
    smtp_timeout: Duration = Field(timedelta(seconds=30))
    mail_from: str = Field("riskalert <alerts@riskalert.invalid>", description="From: header.")

    @field_validator("webhook_allowlist")
    @classmethod
    def _allowlist_parses(cls, value: list[str]) -> list[str]:
        # A bad entry fails at start-up, not as a 500 on every endpoint creation.
        for entry in value:
            ssrf.parse_allowlist_entry(entry)
        return value

    @field_validator("retry_schedule")
    @classmethod
    def _schedule_not_empty(cls, value: list[timedelta]) -> list[timedelta]:
        if not value or any(step < timedelta(0) for step in value):
            raise ValueError("retry_schedule needs at least one non-negative delay")
        return value
