"""Incident histories as the model sees them: from the database, or generated (synth)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.engine import Row as SqlRow
from sqlalchemy.orm import Session

from services.feeds import acled, synth
from services.feeds.rows import Parsed
from services.scoring import incidents, risk
from services.scoring.models import Incident, Target
from services.scoring.taxonomy import Lifecycle


def generated(seed: int, rows: int, start: date, end: date) -> list[risk.Incident]:
    """A generated ACLED history (services/feeds/synth.py), read by the real ACLED parser."""
    now = datetime.combine(end, datetime.min.time(), UTC)
    out: list[risk.Incident] = []
    for line, event in enumerate(synth.generate(seed, rows, start, end), start=2):
        parsed = acled.parse(synth.acled_values(event), line, now)
        if isinstance(parsed, Parsed):
            out.append(incidents.from_report(parsed.incident, len(out) + 1, now))
    return out


def stored(session: Session) -> list[risk.Incident]:
    """Every incident in the database that counts (not retracted, not merged)."""
    query = select(*incidents.MODEL_COLUMNS).where(
        Incident.lifecycle != Lifecycle.RETRACTED.value, Incident.merged_into_id.is_(None)
    )
    return [incidents.to_model(cast(SqlRow[Any], row)) for row in session.execute(query)]


def target_points(session: Session) -> list[tuple[float, float]]:
    """(lat, lon) of every registered site, and of every corridor's vertices."""
    points: list[tuple[float, float]] = []
    for coordinates in session.execute(select(Target.coordinates)).scalars():
        pairs: Sequence[Sequence[float]] = coordinates
        points.extend((float(lat), float(lon)) for lon, lat in pairs)
    return points
