"""UCDP GED rows (annual releases and monthly candidate events, CSV or API JSON) as reports.

GED holds lethal events only, coded by type of violence rather than by weapon: the headline
refines the category where it names one. The mapping is a table in docs/feeds.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from services.feeds import hints as free_text
from services.feeds.acled import ANTI_AIRCRAFT, REMOTE
from services.feeds.rows import (
    Parsed,
    Rejected,
    Row,
    RowError,
    build,
    coordinate,
    country_code,
    integer,
    page_rows,
    plausible,
    text,
)
from services.scoring.taxonomy import (
    Category,
    Lifecycle,
    LocationPrecision,
    TargetType,
    TimePrecision,
)

SOURCE = "ucdp"
# Independent, conservative fatality coding with low/best/high bounds.
RELIABILITY = 0.85
# Candidate events are published monthly: a back-filled event could be known a month after.
PUBLICATION_DELAY = timedelta(days=31)

TYPE_OF_VIOLENCE = {
    1: (Category.ARMED_CLASH, "state-based"),
    2: (Category.ARMED_CLASH, "non-state"),
    3: (Category.ARMED_ASSAULT, "one-sided"),
}
# where_prec: 1 exact place, 2 within about 25 km, 3 second-order region, 4 first-order
# region, 5 a line between places, 6 the country, 7 international waters or airspace.
WHERE_PRECISION = {
    1: LocationPrecision.EXACT,
    2: LocationPrecision.NEAR,
    3: LocationPrecision.NEAR,
    4: LocationPrecision.REGION,
    5: LocationPrecision.REGION,
    6: LocationPrecision.REGION,
    7: LocationPrecision.REGION,
}
# date_prec: 1 the day, 2 within 2-6 days, 3 within the month, 4 within the year (or more: 5).
DATE_PRECISION = {
    1: TimePrecision.DAY,
    2: TimePrecision.WEEK,
    3: TimePrecision.MONTH,
    4: TimePrecision.MONTH,
    5: TimePrecision.MONTH,
}
KEPT = (
    "type_of_violence", "where_prec", "date_prec", "conflict_name", "dyad_name",
    "where_description", "adm_2", "deaths_a", "deaths_b", "deaths_civilians", "deaths_unknown",
    "low", "best", "high", "number_of_sources", "source_article", "event_clarity", "code_status",
    "country_id", "relid",
)  # fmt: skip


def rows_from_pages(pages: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, dict[str, str]]]:
    """The rows of UCDP API pages (`{"Result": [...]}`), numbered from 1 across pages."""
    return page_rows(pages, "Result")


def parse(row: Row, line: int, now: datetime) -> Parsed | Rejected:
    """One GED row (lower-case column names) as an incident report, or why it cannot be one."""
    source_id = text(row, "id") or None
    try:
        return _parse(dict(row), line, now)
    except RowError as exc:
        return Rejected(line, source_id, str(exc))


def _parse(row: dict[str, str], line: int, now: datetime) -> Parsed:
    warnings: list[str] = []
    source_id = text(row, "id")
    if not source_id:
        raise RowError("id", "missing")
    start = _time(row, "date_start")
    if start is None:
        raise RowError("date_start", "missing")
    end = _time(row, "date_end") or start
    if end < start:
        raise RowError("date_end", "before date_start")
    date_code = integer(row, "date_prec")
    occurred_precision = DATE_PRECISION.get(date_code or 0)
    if occurred_precision is None:
        warnings.append(f"date_prec {date_code!r} unknown: kept, read as a month")
        occurred_precision = TimePrecision.MONTH
    elif date_code in (4, 5):
        warnings.append(f"date_prec {date_code} is coarser than a month: read as a month")
    where_code = integer(row, "where_prec")
    location_precision = WHERE_PRECISION.get(where_code or 0)
    if location_precision is None:
        warnings.append(f"where_prec {where_code!r} unknown: kept, read as region-wide")
        location_precision = LocationPrecision.REGION
    lat = coordinate(row, "latitude", 90)
    lon = coordinate(row, "longitude", 180)
    headline = text(row, "source_headline")
    found = free_text.read(headline)
    violence = integer(row, "type_of_violence")
    coded = TYPE_OF_VIOLENCE.get(violence or 0)
    tags = [SOURCE]
    if coded is None:
        warnings.append(f"type_of_violence {violence!r} unknown: kept, counted as other violence")
        tags.append("unmapped-event-type")
        category, kind = Category.OTHER_VIOLENCE, "unknown"
    else:
        category, kind = coded
        # The headline may name the weapon GED does not code.
        category = next((c for p, c in REMOTE if p.search(headline)), category)
        if ANTI_AIRCRAFT.search(headline):
            category = Category.ANTI_AIRCRAFT_FIRE
        if found.kidnapping and category is Category.ARMED_ASSAULT:
            category = Category.KIDNAPPING
    tags.append(kind)
    low, best, high = (integer(row, name) for name in ("low", "best", "high"))
    if best is None:
        deaths = [integer(row, n) for n in ("deaths_a", "deaths_b", "deaths_civilians",
                                            "deaths_unknown")]  # fmt: skip
        best = (
            sum(d for d in deaths if d is not None) if any(d is not None for d in deaths) else None
        )
    country_name = text(row, "country")
    # "Mali (Sahel)" and similar: the name before any bracket.
    country = country_code(re.sub(r"\s*\(.*\)$", "", country_name))
    if country is None:
        warnings.append(f"country {country_name!r} unknown: kept without a code")
    reported = max(start, min(end + PUBLICATION_DELAY, now))
    fields: dict[str, Any] = {name: text(row, name)[:2000] for name in KEPT if text(row, name)}
    fields["reported_at_basis"] = "date_end + 31 days"
    if warnings:
        fields["warnings"] = "; ".join(warnings)[:2000]
    civilians = integer(row, "deaths_civilians") or 0
    data: dict[str, Any] = {
        "source": SOURCE,
        "source_id": source_id,
        "category": category,
        "occurred_at": start,
        "occurred_precision": occurred_precision,
        "reported_at": reported,
        "reported_at_estimated": True,
        "location": {"type": "Point", "coordinates": [lon, lat]},
        "location_precision": location_precision,
        "country": country,
        "admin1": _region(text(row, "adm_1")),
        "admin2": _region(text(row, "adm_2")),
        "location_name": text(row, "where_description")[:200] or None,
        "actors": [a[:200] for a in (text(row, "side_a"), text(row, "side_b")) if a],
        "target_type": found.target_type
        or (TargetType.CIVILIANS if violence == 3 or civilians else None),
        **found.profiles(category),
        "fatalities": {"low": low, "best": best, "high": high, "claimed": found.claimed_fatalities},
        "source_reliability": RELIABILITY,
        "lifecycle": Lifecycle.CONFIRMED,
        "title": (headline or text(row, "dyad_name") or f"{kind} violence")[:200],
        "description": headline[:4000],
        "tags": tags + found.tags,
        "source_fields": fields,
    }
    return build(line, source_id, data, warnings)


def _time(row: dict[str, str], name: str) -> datetime | None:
    value = text(row, name)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "T", 1))
    except ValueError:
        raise RowError(name, f"not a date like 2020-08-01: {value[:40]!r}") from None
    try:
        utc = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        raise RowError(name, f"out of range: {value[:40]!r}") from None
    return plausible(name, utc)


def _region(name: str) -> str | None:
    # GED writes "Gao region" and "Ansongo cercle"; ACLED writes "Gao" and "Ansongo".
    name = re.sub(r"\s+(region|province|cercle|department|commune|state)$", "", name, flags=re.I)
    return name[:100] or None
