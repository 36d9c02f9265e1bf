"""Settings of feed polling, read once from RISKALERT_* environment variables."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.core.duration import Duration
from services.core.settings import PlatformSettings
from services.feeds.importer import Format

NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
# Largest page each API serves: ACLED 5,000 rows, the UCDP GED API 1,000.
PAGE_SIZES: dict[str, int] = {"acled": 5000, "acled-deleted": 5000, "ucdp": 1000}
# Query parameters the poller sets itself: a filter may not override paging or the watermark.
RESERVED = frozenset(
    {"limit", "page", "pagesize", "timestamp", "timestamp_where", "deleted_timestamp",
     "deleted_timestamp_where", "startdate", "key", "email"}
)  # fmt: skip


class FeedConfig(BaseModel):
    """One incident feed to poll: where, how often, with which credentials and filters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        description="Slug naming the feed in its state and health (a-z, 0-9, '-'; 64 at most)."
    )
    kind: Format = Field(
        description="acled (events), acled-deleted (ACLED's deleted events) or ucdp (GED API)."
    )
    url: str = Field(
        description=(
            "Endpoint, http or https, e.g. https://acleddata.com/api/acled/read, "
            "https://api.acleddata.com/deleted/read or "
            "https://ucdpapi.pcr.uu.se/api/gedevents/25.1."
        )
    )
    interval: Duration = Field(
        timedelta(hours=1),
        ge=timedelta(seconds=1),
        description="Time between two successful polls (ISO 8601 or seconds).",
    )
    page_size: int = Field(
        PAGE_SIZES["acled"],
        ge=1,
        le=10_000,
        description="Rows asked for per page; by default 5000 for ACLED, 1000 for UCDP.",
    )
    key: SecretStr | None = Field(
        None, description="ACLED legacy access key, sent as the `key` query parameter."
    )
    email: str | None = Field(
        None, description="ACLED legacy account email, sent with `key` as `email`."
    )
    token: SecretStr | None = Field(
        None,
        description=(
            "Access token: `Authorization: Bearer` for ACLED's OAuth API, the "
            "`x-ucdp-access-token` header for UCDP."
        ),
    )
    query: dict[str, str] = Field(
        default_factory=dict,
        description='Extra filters sent as query parameters, e.g. {"iso": "466|854|562"}.',
    )
    start: date | None = Field(
        None,
        description=(
            "Lower bound of the first poll (ACLED: rows edited since; UCDP: events since); "
            "without it the first poll reads everything the filters match."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _page_size_of_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and "page_size" not in data:
            return {**data, "page_size": PAGE_SIZES.get(str(data.get("kind")), PAGE_SIZES["acled"])}
        return data

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError("a slug of a-z, 0-9 and '-', 64 characters at most")
        return value

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("credentials go in key/email/token, not in the URL")
        return value

    @field_validator("query")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        clash = sorted(k for k in value if k.lower() in RESERVED)
        if clash:
            raise ValueError(f"set by the poller itself: {', '.join(clash)}")
        return value

    @model_validator(mode="after")
    def _fits_kind(self) -> Self:
        if (self.key is None) != (self.email is None):
            raise ValueError("ACLED's legacy key and email go together")
        if self.key is not None and self.kind == "ucdp":
            raise ValueError("key/email are ACLED credentials; UCDP takes a token")
        if self.kind == "ucdp" and self.page_size > PAGE_SIZES["ucdp"]:
            raise ValueError("the UCDP API serves at most 1000 rows a page")
        return self


class FeedsSettings(PlatformSettings):
    """The feeds polled on a schedule, and how polling backs off when a source fails."""

    model_config = SettingsConfigDict(env_prefix="RISKALERT_", env_file=".env", extra="ignore")

    max_import_bytes: int = Field(
        50_000_000, ge=1, description="Largest file accepted by POST /v1/imports/{format}."
    )

    feeds: list[FeedConfig] = Field(
        default_factory=list,
        description="Feeds to poll: a JSON list of FeedConfig objects in RISKALERT_FEEDS.",
    )
    feed_poll_tick: Duration = Field(
        timedelta(seconds=30), description="How often the scheduler looks for feeds that are due."
    )
    feed_failure_threshold: int = Field(
        5, ge=1, description="Failed polls in a row that open a feed's circuit."
    )
    feed_circuit_open: Duration = Field(
        timedelta(minutes=30),
        description="How long an open circuit sends no request before one trial poll (at least).",
    )
    feed_max_backoff: Duration = Field(
        timedelta(hours=6),
        description="Longest wait after a failed poll (the interval, doubled per failure).",
    )
    feed_request_timeout: Duration = Field(
        timedelta(seconds=30), description="Connect, read and write timeout of each request."
    )
    feed_retries: int = Field(
        3, ge=0, le=10, description="Retries of a request after a 429, a 5xx or a network error."
    )
    feed_retry_base: Duration = Field(
        timedelta(seconds=2),
        description="Wait before a request's first retry; doubled each retry, with jitter.",
    )
    feed_max_retry_wait: Duration = Field(
        timedelta(seconds=60),
        description="Longest wait between retries, whatever a Retry-After header asks for.",
    )
    feed_lease: Duration = Field(
        timedelta(minutes=15),
        description=(
            "How long a process holds a feed it polls; renewed every page, so only a process "
            "that died leaves it for this long."
        ),
    )
    feed_max_pages: int = Field(
        1000, ge=1, description="Pages one poll may read; more fails the poll (narrow the query)."
    )

    @field_validator("feeds")
    @classmethod
    def _unique(cls, value: list[FeedConfig]) -> list[FeedConfig]:
        names = [feed.name for feed in value]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"feed names must be unique: {', '.join(doubled)}")
        return value

    def feed(self, name: str) -> FeedConfig | None:
        """The configured feed called `name`, if any."""
        return next((f for f in self.feeds if f.name == name), None)
