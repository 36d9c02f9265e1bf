"""ACLED rows (CSV exports, portal re-publications with HXL tags, API JSON) as incident reports.

The mapping is documented as a table in docs/feeds.md; keep the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from services.feeds import hints as free_text
from services.feeds.rows import (
    Deletion,
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
    unix_or_iso,
)
from services.scoring.schemas import is_country_code
from services.scoring.taxonomy import (
    Category,
    Lifecycle,
    LocationPrecision,
    TargetType,
    TimePrecision,
)

SOURCE = "acled"
# ACLED codes from several reports per event and reviews them: a good, not perfect, source.
RELIABILITY = 0.8
# ACLED publishes weekly: a back-filled event could first be known about a week after it.
PUBLICATION_DELAY = timedelta(days=7)

SUB_EVENT_TYPES = {
    "attack": Category.ARMED_ASSAULT,
    "armed clash": Category.ARMED_CLASH,
    "government regains territory": Category.ARMED_CLASH,
    "non-state actor overtakes territory": Category.TERRITORY_SEIZURE,
    "remote explosive/landmine/ied": Category.IED,
    "shelling/artillery/missile attack": Category.INDIRECT_FIRE,
    "air/drone strike": Category.AIR_DRONE_STRIKE,
    "suicide bomb": Category.SUICIDE_BOMBING,
    "grenade": Category.ARMED_ASSAULT,
    "chemical weapon": Category.OTHER_VIOLENCE,
    "abduction/forced disappearance": Category.KIDNAPPING,
    "sexual violence": Category.ARMED_ASSAULT,
    "looting/property destruction": Category.LOOTING,
    "headquarters or base established": Category.BASE_ESTABLISHED,
    "disrupted weapons use": Category.OTHER_VIOLENCE,
    # A strategic development: control changed hands without a fight.
    "non-violent transfer of territory": Category.POLITICAL_STATEMENT,
    "violent demonstration": Category.OTHER_VIOLENCE,
    "mob violence": Category.OTHER_VIOLENCE,
    "excessive force against protesters": Category.ARMED_ASSAULT,
    "peaceful protest": Category.POLITICAL_STATEMENT,
    "protest with intervention": Category.POLITICAL_STATEMENT,
    "agreement": Category.POLITICAL_STATEMENT,
    "arrests": Category.POLITICAL_STATEMENT,
    "change to group/activity": Category.POLITICAL_STATEMENT,
    "other": Category.POLITICAL_STATEMENT,
}
# Exports before 2019 have no sub-event type, and other event types.
OLD_EVENT_TYPES = {
    "battle-no change of territory": Category.ARMED_CLASH,
    "battle-government regains territory": Category.ARMED_CLASH,
    "battle-non-state actor overtakes territory": Category.TERRITORY_SEIZURE,
    "violence against civilians": Category.ARMED_ASSAULT,
    "remote violence": Category.OTHER_VIOLENCE,  # refined from the notes below
    "riots/protests": Category.POLITICAL_STATEMENT,
    "strategic development": Category.POLITICAL_STATEMENT,
    "headquarters or base established": Category.BASE_ESTABLISHED,
    "non-violent transfer of territory": Category.POLITICAL_STATEMENT,
}
# Sub-event (or, before 2019, event) types whose notes may reveal a kidnapping or a threat.
ABDUCTING = frozenset({"attack", "looting/property destruction", "violence against civilians"})
STATING = frozenset({"other", "change to group/activity", "strategic development"})
TIME_PRECISION = {1: TimePrecision.DAY, 2: TimePrecision.WEEK, 3: TimePrecision.MONTH}
GEO_PRECISION = {1: LocationPrecision.EXACT, 2: LocationPrecision.NEAR, 3: LocationPrecision.REGION}
# What a remote-violence row (old exports) or an explosive attack was, from its notes.
REMOTE = (
    (re.compile(r"\b(car bomb|vehicle[- ]borne|VBIED)\b", re.I), Category.VBIED),
    (re.compile(r"\b(suicide)\b", re.I), Category.SUICIDE_BOMBING),
    # A bare "mine" is also a gold mine: only a mine something hit or stepped on is explosive.
    (re.compile(r"\b(IEDs?|landmines?|explosive devices?|roadside bombs?|"
                r"(hit|struck|stepped on|ran over|detonated) an? (land)?mine)\b", re.I),
     Category.IED),
    (re.compile(r"\b(air ?strikes?|drones?|bombard\w* from the air)\b", re.I),
     Category.AIR_DRONE_STRIKE),
    (re.compile(r"\b(shell\w*|mortars?|rockets?|artillery|missiles?)\b", re.I),
     Category.INDIRECT_FIRE),
)  # fmt: skip
ANTI_AIRCRAFT = re.compile(
    r"\b(shot down|anti-aircraft|fired (at|on) (an?|the) (aircraft|helicopter|plane|drone))\b", re.I
)
# Older exports and some re-publications name a few columns differently.
ALIASES = {"ally_actor_1": "assoc_actor_1", "ally_actor_2": "assoc_actor_2"}
DATE_FORMATS = ("%Y-%m-%d", "%d %B %Y", "%d-%B-%Y", "%d %b %Y")
KEPT = (
    "event_type", "sub_event_type", "disorder_type", "inter1", "inter2", "interaction",
    "civilian_targeting", "time_precision", "geo_precision", "fatalities", "source",
    "source_scale", "admin3", "tags", "timestamp", "iso",
)  # fmt: skip


def rows_from_pages(pages: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, dict[str, str]]]:
    """The rows of ACLED API pages (`{"data": [...]}`), numbered from 1 across pages."""
    return page_rows(pages, "data")


def parse(row: Row, line: int, now: datetime) -> Parsed | Rejected:
    """One ACLED row as an incident report, or why it cannot be one."""
    row = _aliased(row)
    source_id = text(row, "event_id_cnty") or None
    try:
        return _parse(row, line, now)
    except RowError as exc:
        return Rejected(line, source_id, str(exc))


def _aliased(row: Row) -> dict[str, str]:
    # Rows come with lower-case names (csv_rows, rows_from_pages); older names are mapped here.
    out = dict(row)
    for old, new in ALIASES.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    return out


def deletion(row: Row, line: int) -> Deletion | Rejected:
    """A row of ACLED's deleted events (`event_id_cnty`, `deleted_timestamp`)."""
    row = _aliased(row)
    source_id = text(row, "event_id_cnty")
    if not source_id:
        return Rejected(line, None, "event_id_cnty: missing")
    try:
        deleted_at = unix_or_iso(row, "deleted_timestamp")
    except RowError as exc:
        return Rejected(line, source_id, str(exc))
    return Deletion(line, SOURCE, source_id, deleted_at)


def _parse(row: dict[str, str], line: int, now: datetime) -> Parsed:
    warnings: list[str] = []
    source_id = text(row, "event_id_cnty")
    if not source_id:
        raise RowError("event_id_cnty", "missing")
    occurred = _date(text(row, "event_date"))
    time_code = integer(row, "time_precision")
    occurred_precision = TIME_PRECISION.get(time_code or 0)
    if occurred_precision is None:
        warnings.append(f"time_precision {time_code!r} unknown: kept, read as a month")
        occurred_precision = TimePrecision.MONTH
    geo_code = integer(row, "geo_precision")
    location_precision = GEO_PRECISION.get(geo_code or 0)
    if location_precision is None:
        warnings.append(f"geo_precision {geo_code!r} unknown: kept, read as region-wide")
        location_precision = LocationPrecision.REGION
    lat = coordinate(row, "latitude", 90)
    lon = coordinate(row, "longitude", 180)
    notes = text(row, "notes")
    found = free_text.read(notes)
    category, tags = _category(row, notes, found, warnings)
    edited = unix_or_iso(row, "timestamp")
    reported, basis = _reported(occurred, occurred_precision, edited, now)
    country = _country(row, source_id)
    if country is None:
        warnings.append(f"country {text(row, 'country')!r} unknown: kept without a code")
    admin1 = text(row, "admin1")[:100] or None
    scope = None
    if category is Category.EXPLICIT_THREAT and country is not None:
        # A threat applies across the region it was made in, not at one point.
        scope = {"countries": [country], "admin1": [admin1] if admin1 else []}
    fatalities = integer(row, "fatalities")
    fields: dict[str, Any] = {name: text(row, name)[:2000] for name in KEPT if text(row, name)}
    fields["reported_at_basis"] = basis
    if warnings:
        fields["warnings"] = "; ".join(warnings)[:2000]
    data: dict[str, Any] = {
        "source": SOURCE,
        "source_id": source_id,
        "category": category,
        "occurred_at": occurred,
        "occurred_precision": occurred_precision,
        "reported_at": reported,
        "reported_at_estimated": True,
        "location": {"type": "Point", "coordinates": [lon, lat]},
        "location_precision": location_precision,
        "scope": scope,
        "country": country,
        "admin1": admin1,
        "admin2": text(row, "admin2")[:100] or None,
        "location_name": text(row, "location")[:200] or None,
        "actors": _actors(row),
        "target_type": found.target_type or _target_type(row),
        **found.profiles(category),
        "fatalities": {"best": fatalities, "claimed": found.claimed_fatalities},
        "source_reliability": RELIABILITY,
        "lifecycle": Lifecycle.CONFIRMED,
        "title": _title(row, category),
        "description": notes[:4000],
        "tags": tags,
        "source_updated_at": edited,
        "source_fields": fields,
    }
    return build(line, source_id, data, warnings)


def _date(value: str) -> datetime:
    if not value:
        raise RowError("event_date", "missing")
    if len(value) == 10 and value[4] == "-":
        try:
            parsed = datetime.combine(date.fromisoformat(value), time(), UTC)
        except ValueError:
            pass
        else:
            return plausible("event_date", parsed)
    for fmt in DATE_FORMATS:
        try:
            parsed = datetime.strptime(value, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
        return plausible("event_date", parsed)
    raise RowError("event_date", f"not a date like 2020-08-01 or 01 August 2020: {value[:40]!r}")


def _category(
    row: dict[str, str], notes: str, found: free_text.Hints, warnings: list[str]
) -> tuple[Category, list[str]]:
    sub = text(row, "sub_event_type")
    event = text(row, "event_type")
    tags = ["acled"]
    if sub:
        category = SUB_EVENT_TYPES.get(sub.casefold())
    else:
        category = OLD_EVENT_TYPES.get(event.casefold())
        if category is Category.OTHER_VIOLENCE:
            category = next((c for p, c in REMOTE if p.search(notes)), category)
    if category is None:
        warnings.append(f"event type {event!r} / {sub!r} unknown: kept, counted as other violence")
        tags.append("unmapped-event-type")
        category = Category.OTHER_VIOLENCE
    elif category in (Category.IED, Category.SUICIDE_BOMBING):
        # A car bomb is a vehicle-borne IED, whoever drove it.
        if REMOTE[0][0].search(notes):
            category = Category.VBIED
    elif category in (Category.ARMED_ASSAULT, Category.ARMED_CLASH) and ANTI_AIRCRAFT.search(notes):
        category = Category.ANTI_AIRCRAFT_FIRE
    # An attack or looting whose notes tell of abductions, not a protest or riot about one.
    if found.kidnapping and (
        sub.casefold() in ABDUCTING or (not sub and event.casefold() in ABDUCTING)
    ):
        category = Category.KIDNAPPING
    # A statement ACLED codes as "Other" strategic development, not a protest about threats or
    # the arrest of someone who made one.
    if found.threat and (sub.casefold() in STATING or (not sub and event.casefold() in STATING)):
        category = Category.EXPLICIT_THREAT
    if sub.casefold() == "disrupted weapons use":
        tags.append("disrupted")
    return category, tags + found.tags


def _reported(
    occurred: datetime, precision: TimePrecision, edited: datetime | None, now: datetime
) -> tuple[datetime, str]:
    """When the event could first be known (an estimate: ACLED has no first-report time)."""
    span = {TimePrecision.DAY: 1, TimePrecision.WEEK: 7, TimePrecision.MONTH: 31}[precision]
    published = occurred + timedelta(days=span) + PUBLICATION_DELAY
    if edited is not None and occurred <= edited < published:
        return min(edited, now), "timestamp"  # the row existed by its last edit
    return max(occurred, min(published, now)), "event_date + 7 days"


def _country(row: dict[str, str], source_id: str) -> str | None:
    # The same check as the API's: a code that is not ISO 3166-1 is no code.
    iso3 = text(row, "iso3").upper()
    if is_country_code(iso3):
        return iso3
    code = country_code(text(row, "country"))
    if code is not None:
        return code
    prefix = source_id[:3].upper()
    return prefix if is_country_code(prefix) else None


def _actors(row: dict[str, str]) -> list[str]:
    actors: list[str] = []
    for name in ("actor1", "assoc_actor_1", "actor2", "assoc_actor_2"):
        for actor in text(row, name).split(";"):
            actor = actor.strip()[:200]
            if actor and actor not in actors:
                actors.append(actor)
    return actors[:20]


def _target_type(row: dict[str, str]) -> TargetType | None:
    if text(row, "civilian_targeting").casefold() == "civilian targeting":
        return TargetType.CIVILIANS
    inter2 = text(row, "inter2").casefold()
    if inter2 in ("1", "state forces"):
        return TargetType.MILITARY
    if inter2 in ("7", "civilians"):
        return TargetType.CIVILIANS
    return None


def _title(row: dict[str, str], category: Category) -> str:
    what = text(row, "sub_event_type") or text(row, "event_type") or category.value
    where = text(row, "location")
    return (f"{what} in {where}" if where else what)[:200]
