"""Settings of the ops dashboard, read once from RISKALERT_* environment variables."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import AwareDatetime, Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.core.settings import PlatformSettings


class DashboardSettings(PlatformSettings):
    """What the dashboard page is told when it starts (`GET /dashboard/config.json`)."""

    model_config = SettingsConfigDict(env_prefix="RISKALERT_", env_file=".env", extra="ignore")

    demo_as_of: AwareDatetime | None = Field(
        None,
        description=(
            "The map opens as of this moment, saying it shows the demo then, with a button back "
            "to now. `serve --demo` sets the demo's story time (2025-06-12) unless this is set. "
            "Unset: the map opens at now."
        ),
    )

    @field_validator("demo_as_of")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(UTC)
