"""Settings of the platform around the services: logs, request limits and metrics."""

from __future__ import annotations

from typing import Literal

from limits import parse_many
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class PlatformSettings(BaseSettings):
    """How the processes log, what a client may send and how often, and who reads metrics."""

    model_config = SettingsConfigDict(env_prefix="RISKALERT_", env_file=".env", extra="ignore")

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
    max_body_bytes: int = Field(
        2_000_000,
        ge=1024,
        description="Largest request body, but for file imports (max_import_bytes).",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="If set, GET /metrics needs `Authorization: Bearer <token>`; otherwise it "
        "is open (expose it only inside the cluster).",
    )

    @field_validator("rate_limit", "rate_limit_unauthenticated")
    @classmethod
    def _limits(cls, value: str) -> str:
        if value.strip():
            try:
                parse_many(value)
            except ValueError as exc:
                raise ValueError(f"not a rate limit like '600/minute': {exc}") from None
        return value
