"""Durations in settings: ISO 8601 (`PT10M`) or a number of seconds, also from environment text."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator


def _seconds_text(value: object) -> object:
    """Numbers written as text (`RISKALERT_LEASE=45`) mean seconds, as numbers do."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


Duration = Annotated[timedelta, BeforeValidator(_seconds_text)]
