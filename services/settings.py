"""The settings of a riskalert process: the scoring, alerts and feeds services' and the
dashboard's together."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.alerts.settings import AlertsSettings
from services.dashboard.settings import DashboardSettings
from services.feeds.settings import FeedsSettings
from services.scoring.settings import ScoringSettings


class Settings(ScoringSettings, AlertsSettings, FeedsSettings, DashboardSettings):
    """Read once from RISKALERT_* variables; each service is handed it as its own settings type."""

    model_config = SettingsConfigDict(env_prefix="RISKALERT_", env_file=".env", extra="ignore")
