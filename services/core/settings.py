"""Settings of the platform around the services: the database, keys, logs, request limits and
metrics."""

from __future__ import annotations

import ipaddress
import os
import warnings
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal

from limits import parse_many
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.core.duration import Duration


def renamed(name: str, *old: str) -> AliasChoices:
    """The variable RISKALERT_<NAME> for a setting, still read (with a warning) under its `old`
    names for one release."""
    return AliasChoices(*(f"RISKALERT_{n}" for n in (name, *old)))


def deprecated_names(
    settings: type[BaseSettings], environ: Mapping[str, str]
) -> list[tuple[str, str]]:
    """(old, new) for each variable in `environ` that names a setting by its old name."""
    present = {key.upper() for key in environ}
    found = []
    for field in settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            new, *old = [str(choice) for choice in alias.choices]
            found += [(name, new) for name in old if name in present]
    return found


class PlatformSettings(BaseSettings):
    """How the processes log, what a client may send and how often, and who reads metrics."""

    # populate_by_name: code and tests pass settings by field name, whatever their variable.
    model_config = SettingsConfigDict(
        env_prefix="RISKALERT_", env_file=".env", extra="ignore", populate_by_name=True
    )

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
    max_page_size: int = Field(500, ge=1, le=5000, description="Largest page of a list.")

    sqlite_min_free_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="SQLite: /readyz fails (storage-full) when the database's file system has "
        "less free space than this; the write-ahead log needs room (docs/operations.md).",
    )
    clock_skew: Duration = Field(
        timedelta(minutes=5), description="How far in the future a reported time may lie."
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

    log_format: Literal["auto", "json", "console"] = Field(
        "auto",
        description="json: one JSON object a line; console: for people; auto: console on a "
        "terminal, json otherwise.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO")
    rate_limit: str = Field(
        "100/second;3000/minute",
        description="Requests per API key per process (limits' notation; several separated by "
        "';'). Empty: no limit.",
    )
    rate_limit_unauthenticated: str = Field(
        "60/minute",
        description="Requests without a valid key per client address per process: bounds "
        "key guessing. Empty: no limit.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; empty: none, the peer's address is the client's.",
    )
    max_body_bytes: int = Field(
        2_000_000,
        ge=1024,
        description="Largest request body, but for file imports (max_import_bytes).",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="If set, GET /metrics (the API's, and a worker's --metrics-port) needs "
        "`Authorization: Bearer <token>`; otherwise it is open (expose it only inside the "
        "cluster). Scrapes without the valid token count against rate_limit_unauthenticated.",
    )
    metrics_cache_ttl: Duration = Field(
        timedelta(seconds=5),
        ge=timedelta(0),
        description="How long the gauges read from the database are reused by an API process: "
        "a scrape within it runs no query. 0: read at every scrape.",
    )

    def model_post_init(self, context: Any, /) -> None:
        """Warn once per old variable name still in use (read this release, not the next)."""
        for old, new in deprecated_names(type(self), os.environ):
            warnings.warn(
                f"{old} is deprecated and will stop working in the next release: use {new}",
                FutureWarning,
                stacklevel=2,
            )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"not an address or a CIDR network: {entry!r}") from None
        return value

    @field_validator("rate_limit", "rate_limit_unauthenticated")
    @classmethod
    def _limits(cls, value: str) -> str:
        if value.strip():
            try:
                parse_many(value)
            except ValueError as exc:
                raise ValueError(f"not a rate limit like '600/minute': {exc}") from None
        return value
