"""The settings of a riskalert process: the scoring, alerts and feeds services' together."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.alerts.settings import AlertsSettings
from services.feeds.settings import FeedsSettings
from services.scoring.settings import ScoringSettings


class Settings(ScoringSettings, AlertsSettings, FeedsSettings):
    """Read once from RISKALERT_* variables; each service is handed it as its own settings type."""

    model_config = SettingsConfigDict(env_prefix="RISKALERT_", env_file=".env", extra="ignore")
