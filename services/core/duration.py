"""Durations: ISO 8601 (`PT10M`) or a number of seconds; in settings also from environment text,
in request bodies never as true or false."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator


def _seconds_text(value: object) -> object:
    """Numbers written as text (`RISKALERT_ALERTS_LEASE=45`) mean seconds, as numbers do."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


Duration = Annotated[timedelta, BeforeValidator(_seconds_text)]


def _not_a_flag(value: object) -> object:
    # pydantic reads a bool as the number 0 or 1, so `false` would pass as no time at all.
    # Field(strict=True) cannot say this: FastAPI validates decoded JSON in Python mode, where a
    # strict timedelta refuses the ISO 8601 text and the numbers a body may carry.
    if isinstance(value, bool):
        raise ValueError("expected an ISO 8601 duration or a number of seconds, not true or false")
    return value


BodyDuration = Annotated[timedelta, BeforeValidator(_not_a_flag)]
