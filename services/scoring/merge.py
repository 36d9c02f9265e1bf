"""One event, one incident: which reports describe the same event, and an index to find them.

Two reports are of the same event when all of these hold (docs/feeds.md has the table):

- **Sources**: different ones. A source's own ids tell its events apart: two reports from one
  source with different ids are two events, however alike (ACLED codes a night of 28 attacks as
  28 rows that differ only in their ids); the source revises an event under the same id. An
  event keeps at most one report per source.
- **Time**: their occurrence times lie within the sum of their time slacks (1 day for a day,
  7 for a week, 31 for a month).
- **Place**: both are located, and they lie within 10 km plus each one's location slack
  (0 km exact, 15 km near, 50 km region-wide).
- **Category**: the same, or the same family (attacks and clashes; explosive devices; fire
  from afar), or a coarse lethal-violence code (UCDP's types of violence) against any lethal
  category.

Retracted reports and reports with an area scope (threats made across a region) never merge.
The first stored report of an event is its primary, which alone counts in scores and alerts;
the others are merged into it and keep their own figures.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from services.scoring import geo
from services.scoring.models import Incident
from services.scoring.taxonomy import Category, Lifecycle, LocationPrecision, TimePrecision

BASE_KM = 10.0
PLACE_SLACK_KM = {
    LocationPrecision.EXACT: 0.0,
    LocationPrecision.NEAR: 15.0,
    LocationPrecision.REGION: 50.0,
}
TIME_SLACK = {
    TimePrecision.DAY: timedelta(days=1),
    TimePrecision.WEEK: timedelta(days=7),
    TimePrecision.MONTH: timedelta(days=31),
}
MAX_TIME_SLACK = max(TIME_SLACK.values())
FAMILY = {
    Category.ARMED_ASSAULT: "attack",
    Category.ARMED_CLASH: "attack",
    Category.OTHER_VIOLENCE: "attack",
    Category.TERRITORY_SEIZURE: "attack",
    Category.IED: "explosive",
    Category.VBIED: "explosive",
    Category.SUICIDE_BOMBING: "explosive",
    Category.INDIRECT_FIRE: "fire",
    Category.AIR_DRONE_STRIKE: "fire",
    Category.ANTI_AIRCRAFT_FIRE: "fire",
}
# What a source that codes only the type of violence (UCDP) gives for a lethal event ...
COARSE = frozenset({Category.ARMED_CLASH, Category.ARMED_ASSAULT})
# ... which can be any of these, as another source codes it.
LETHAL = frozenset(FAMILY) | {Category.KIDNAPPING}
CELL_DEGREES = 1.0  # wider than the largest place limit (10 + 50 + 50 km)


@dataclass(slots=True)
class Report:
    """What matching reads of a stored report."""

    id: int
    source: str
    source_id: str
    category: Category
    occurred_at: datetime
    occurred_precision: TimePrecision
    lat: float | None
    lon: float | None
    location_precision: LocationPrecision
    scoped: bool
    lifecycle: Lifecycle
    merged_into_id: int | None
    fatalities: int | None = None  # the best (or only) figure, to tell close candidates apart
    day: int = 0  # occurred_at's ordinal day, for the index and a cheap first test
    slack: int = 0  # days either side, from occurred_precision

    def __post_init__(self) -> None:
        self.day = self.occurred_at.toordinal()
        self.slack = TIME_SLACK[self.occurred_precision].days

    @property
    def event_id(self) -> int:
        """The primary report of this report's event."""
        return self.merged_into_id or self.id

    @classmethod
    def of(cls, row: Any) -> Report:
        """From an Incident row (or a row of `COLUMNS`)."""
        return cls(
            id=row.id,
            source=row.source,
            source_id=row.source_id,
            category=Category(row.category),
            occurred_at=row.occurred_at,
            occurred_precision=TimePrecision(row.occurred_precision),
            lat=row.lat,
            lon=row.lon,
            location_precision=LocationPrecision(row.location_precision),
            scoped=bool(row.scope_countries),
            lifecycle=Lifecycle(row.lifecycle),
            merged_into_id=row.merged_into_id,
            fatalities=row.fatalities_best,
        )


COLUMNS = (
    Incident.id, Incident.source, Incident.source_id, Incident.category, Incident.occurred_at,
    Incident.occurred_precision, Incident.lat, Incident.lon, Incident.location_precision,
    Incident.scope_countries, Incident.lifecycle, Incident.merged_into_id,
    Incident.fatalities_best,
)  # fmt: skip


def compatible(a: Category, b: Category) -> bool:
    """Whether two sources' categories can describe one event."""
    if a is b:
        return True
    family = FAMILY.get(a)
    if family is not None and family == FAMILY.get(b):
        return True
    return (a in COARSE and b in LETHAL) or (b in COARSE and a in LETHAL)


def distance(a: Report, b: Report) -> float | None:
    """How far apart two reports of one event are (0 is a perfect match); None if not one event.

    The distance adds the place and the time gap, each as a share of its limit, and how far
    the fatality figures differ (a factor of 3 counts 1); it only ranks candidates that pass
    the limits.
    Cheap tests go first: an import compares each report with every report near it.
    """
    if a.source == b.source:
        return None  # one source's reports with different ids are different events
    if a.lat is None or a.lon is None or b.lat is None or b.lon is None:
        return None
    if a.scoped or b.scoped or Lifecycle.RETRACTED in (a.lifecycle, b.lifecycle):
        return None
    if not compatible(a.category, b.category):
        return None
    gap = abs(a.occurred_at - b.occurred_at)
    time_limit = TIME_SLACK[a.occurred_precision] + TIME_SLACK[b.occurred_precision]
    if gap > time_limit:
        return None
    km_limit = BASE_KM + PLACE_SLACK_KM[a.location_precision] + PLACE_SLACK_KM[b.location_precision]
    if abs(a.lat - b.lat) * geo.KM_PER_DEGREE > km_limit:
        return None
    km = _haversine_km(a.lat, a.lon, b.lat, b.lon)
    if km > km_limit:
        return None
    return km / km_limit + gap / time_limit + _toll_gap(a.fatalities, b.fatalities)


def _toll_gap(a: int | None, b: int | None) -> float:
    # Two counts of one event's dead differ by a factor, not a fixed number: a factor of 3
    # weighs like a place or time gap at its limit. Unknown on either side: no evidence.
    if a is None or b is None:
        return 0.0
    return abs(math.log1p(a) - math.log1p(b)) / math.log(3)


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    # The scalar form of geo.haversine_km (which takes arrays): called per pair of reports.
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * geo.EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class Index:
    """Located reports by place (1-degree cells) and time, read from the database.

    Reports known to the day or week are kept by day; month-precise ones, by week. One index
    can serve a whole import: each day is read once, and the import's own reports are put in as
    they are stored. A local index (one ingest request) reads only the candidates of its own
    reports, and the whole events they belong to.
    """

    def __init__(self, *, local: bool = False) -> None:
        self._local = local
        # (cell row, cell column) -> day (or week, for month-precise reports) -> report ids
        self._fine: dict[tuple[int, int], dict[int, set[int]]] = defaultdict(
            lambda: defaultdict(set)
        )
        self._coarse: dict[tuple[int, int], dict[int, set[int]]] = defaultdict(
            lambda: defaultdict(set)
        )
        self._reports: dict[int, Report] = {}
        self._events: dict[int, set[int]] = defaultdict(set)
        self._days: set[int] = set()

    def __len__(self) -> int:
        """How many reports the index holds."""
        return len(self._reports)

    def clear(self) -> None:
        """Forget everything (after a rollback undid what was put in)."""
        self.__init__(local=self._local)  # type: ignore[misc]

    def _slot(self, report: Report) -> tuple[dict[int, set[int]], int] | None:
        if report.lat is None or report.lon is None:
            return None
        cell = (int(report.lat // CELL_DEGREES), int(report.lon // CELL_DEGREES))
        if report.occurred_precision is TimePrecision.MONTH:
            return self._coarse[cell], report.day // 7
        return self._fine[cell], report.day

    def load(self, session: Session, reports: Sequence[Report], rows: Sequence[Any]) -> None:
        """Read the stored reports that could match any of `reports` (stored as `rows`).

        An import's index reads the located reports of whole days, each day once. One
        ingest's index (up to 20 located reports) reads only the reports each of its own could
        pair with, whatever else lies near: its cost follows the matches, not the reports
        around them. A larger batch's reads whole days, as an import's does.
        """
        # `rows` is not read: matching needs no more of a stored report than `Report` holds.
        if self._local:
            located = [r for r in reports if r.lat is not None]
            own = {r.id for r in reports} | {
                r.merged_into_id for r in reports if r.merged_into_id is not None
            }
            if len(located) <= _LOCAL_QUERY:
                if located:
                    self._read(session, or_(*(_pairable(r) for r in located)))
                # The whole events of the candidates too: what `best_event` reads.
                own |= {r.event_id for r in self._reports.values()}
            else:
                # A large batch: a query of one condition per report costs more to build
                # (compiled and parsed in Python) than reading its days, events and all.
                self._load_days(session, located)
            self._load_events(session, sorted(own))
            return
        self._load_days(session, reports)

    def _load_days(self, session: Session, reports: Sequence[Report]) -> None:
        span = 2 * MAX_TIME_SLACK.days
        wanted: set[int] = set()
        for r in reports:
            if r.lat is not None:
                wanted.update(range(r.day - span, r.day + span + 1))
        wanted -= self._days
        if not wanted:
            return
        ranges: list[tuple[int, int]] = []
        for day in sorted(wanted):
            if ranges and ranges[-1][1] == day - 1:
                ranges[-1] = (ranges[-1][0], day)
            else:
                ranges.append((day, day))
        for start in range(0, len(ranges), 50):
            conditions = [
                Incident.occurred_at.between(_midnight(lo), _midnight(hi + 1) - _TICK)
                for lo, hi in ranges[start : start + 50]
            ]
            self._read(session, or_(*conditions), Incident.lat.is_not(None))
        self._days |= wanted

    def _load_events(self, session: Session, events: Sequence[int]) -> None:
        # Whole events: a revision's splits and promotions read the other reports of its own.
        for start in range(0, len(events), _EVENTS_QUERY):
            chunk = events[start : start + _EVENTS_QUERY]
            self._read(session, or_(Incident.id.in_(chunk), Incident.merged_into_id.in_(chunk)))

    def _read(self, session: Session, *where: ColumnElement[bool]) -> None:
        for row in session.execute(select(*COLUMNS).where(*where)):
            if row.id not in self._reports:
                self.put(Report.of(row))

    def put(self, report: Report) -> None:
        """Add or replace a report."""
        self.drop(report.id)
        slot = self._slot(report)
        if slot is None:
            return
        days, day = slot
        self._reports[report.id] = report
        days[day].add(report.id)
        self._events[report.event_id].add(report.id)

    def drop(self, report_id: int) -> None:
        """Forget a report."""
        old = self._reports.pop(report_id, None)
        if old is not None:
            slot = self._slot(old)
            assert slot is not None
            days, day = slot
            days[day].discard(report_id)
            self._events[old.event_id].discard(report_id)

    def get(self, report_id: int) -> Report | None:
        """An indexed report, by id."""
        return self._reports.get(report_id)

    def members(self, event_id: int) -> list[Report]:
        """The indexed reports of one event, its primary included."""
        return [self._reports[i] for i in sorted(self._events.get(event_id, ()))]

    def near(self, report: Report) -> list[Report]:
        """Indexed reports close enough in time and place to be worth comparing."""
        if report.lat is None or report.lon is None:
            return []
        row, col = int(report.lat // CELL_DEGREES), int(report.lon // CELL_DEGREES)
        fine = report.slack + TIME_SLACK[TimePrecision.WEEK].days
        coarse = report.slack + TIME_SLACK[TimePrecision.MONTH].days
        found: list[int] = []
        for cells, first, last in (
            (self._fine, report.day - fine, report.day + fine),
            (self._coarse, (report.day - coarse) // 7, (report.day + coarse) // 7),
        ):
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    days = cells.get((row + dr, col + dc))
                    if not days:
                        continue
                    for slot in range(first, last + 1):
                        ids = days.get(slot)
                        if ids:
                            found.extend(ids)
        return [self._reports[i] for i in found]

    def best_event(self, report: Report) -> Report | None:
        """The primary of the indexed event `report` describes, or None."""
        best: tuple[float, int] | None = None
        for other in self.near(report):
            if abs(other.day - report.day) > report.slack + other.slack:
                continue  # too far apart in time: the common case, tested without a call
            event_id = other.event_id
            if event_id == report.id or other.id == report.id:
                continue
            score = distance(report, other)
            if score is None or (best is not None and (score, event_id) >= best):
                continue
            if event_id not in self._reports:
                continue  # its primary lies outside what was read
            if any(m.source == report.source and m.id != report.id for m in self.members(event_id)):
                continue  # the event has a report from this source already: another event
            best = (score, event_id)
        return None if best is None else self._reports[best[1]]


_TICK = timedelta(microseconds=1)
# Up to this many located reports, a local index reads each one's candidates (one query);
# above, whole days as an import does.
_LOCAL_QUERY = 20
_EVENTS_QUERY = 500  # event ids per query


def _pairable(report: Report) -> ColumnElement[bool]:
    # Stored reports `distance` could pair with `report` (a located one): a superset, by the
    # columns the database has indexes for, tested again in Python.
    slack = TIME_SLACK[report.occurred_precision]
    in_time = [
        and_(
            Incident.occurred_precision == precision.value,
            Incident.occurred_at.between(
                report.occurred_at - slack - other, report.occurred_at + slack + other
            ),
        )
        for precision, other in TIME_SLACK.items()
    ]
    reach = BASE_KM + PLACE_SLACK_KM[report.location_precision] + max(PLACE_SLACK_KM.values())
    return and_(
        Incident.lat.is_not(None),
        Incident.lifecycle != Lifecycle.RETRACTED.value,
        Incident.source != report.source,
        Incident.category.in_(sorted(c.value for c in Category if compatible(report.category, c))),
        or_(*in_time),
        _box(report, reach),
    )


def _box(report: Report, km: float) -> ColumnElement[bool]:
    assert report.lat is not None
    assert report.lon is not None
    min_lon, min_lat, max_lon, max_lat = geo.bbox_around(report.lat, report.lon, km)
    return and_(Incident.lat.between(min_lat, max_lat), Incident.lon.between(min_lon, max_lon))


def _midnight(day: int) -> datetime:
    return datetime.fromordinal(day).replace(tzinfo=UTC)
