"""Import a stream of source rows: chunked upserts, merging, retractions and a summary.

One bad row never aborts an import: it is rejected with its line and reason, and the rows
around it are stored. Each chunk commits on its own, so a crash keeps what was committed and
a re-run finishes the rest (re-importing a row changes nothing). While an import runs it holds
the rescorer off the incident feed, so a bulk import rescores each target once, at its end.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services.feeds import acled, ucdp
from services.feeds.rows import Deletion, Item, Parsed, Rejected, csv_rows
from services.scoring import incidents, merge
from services.scoring.models import ImportRun

log = logging.getLogger(__name__)

Format = Literal["acled", "acled-deleted", "ucdp"]
FORMATS: tuple[Format, ...] = ("acled", "acled-deleted", "ucdp")
MAX_REPORTED = 1000  # rejected rows and warnings listed in a summary (all are counted)


@dataclass
class Summary:
    """What an import did, row by row where a row was not simply stored."""

    run_id: int = 0  # the ImportRun recording it
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    merged: int = 0
    retracted: int = 0
    rejected: int = 0
    warned: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, line: int, source_id: str | None, reason: str) -> None:
        """Count a rejected row; the first MAX_REPORTED are listed."""
        self.rejected += 1
        if len(self.rejections) < MAX_REPORTED:
            self.rejections.append({"line": line, "source_id": source_id, "reason": reason})

    def warn(self, line: int, source_id: str, text: str) -> None:
        """Count a stored row with something kept but not understood."""
        self.warned += 1
        if len(self.warnings) < MAX_REPORTED:
            self.warnings.append({"line": line, "source_id": source_id, "warning": text})

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON."""
        return {
            "read": self.read, "inserted": self.inserted, "updated": self.updated,
            "unchanged": self.unchanged, "merged": self.merged, "retracted": self.retracted,
            "rejected": self.rejected, "warned": self.warned,
            "rejections": self.rejections, "warnings": self.warnings,
        }  # fmt: skip


class Text(Protocol):
    """What an import reads: an open text file, or anything reading and iterating alike."""

    def read(self, size: int = -1, /) -> str: ...

    def __iter__(self) -> Iterator[str]: ...


def items(fmt: Format, stream: Text, now: datetime) -> Iterator[Item]:
    """The rows of a file in `fmt`: CSV, or JSON as the source's API returns it."""
    head = stream.read(1)
    while head and head.isspace():
        head = stream.read(1)
    if head in ("{", "["):
        yield from _json_items(fmt, head + stream.read(), now)
        return
    yield from _rows(fmt, csv_rows(_prepend(head, stream)), now)


def _prepend(head: str, stream: Text) -> Iterator[str]:
    first = True
    for line in stream:
        yield head + line if first else line
        first = False
    if first and head:
        yield head


def _json_items(fmt: Format, body: str, now: datetime) -> Iterator[Item]:
    try:
        document = json.loads(body)
    except json.JSONDecodeError as exc:
        yield Rejected(exc.lineno, None, f"unreadable JSON: {exc.msg} (column {exc.colno})")
        return
    pages = document if isinstance(document, list) else [document]
    if not all(isinstance(p, dict) for p in pages):
        yield Rejected(1, None, "expected an API page (an object) or a list of pages")
        return
    rows = ucdp.rows_from_pages(pages) if fmt == "ucdp" else acled.rows_from_pages(pages)
    yield from _rows(fmt, rows, now)


def _rows(
    fmt: Format, rows: Iterable[tuple[int, dict[str, str]] | Rejected], now: datetime
) -> Iterator[Item]:
    for entry in rows:
        if isinstance(entry, Rejected):
            yield entry
            continue
        line, row = entry
        if fmt == "acled":
            yield acled.parse(row, line, now)
        elif fmt == "ucdp":
            yield ucdp.parse(row, line, now)
        else:
            yield acled.deletion(row, line)


def run(
    factory: sessionmaker[Session],
    stream: Iterable[Item],
    *,
    fmt: str,
    origin: str,
    clock: Callable[[], datetime],
    skew: timedelta = timedelta(minutes=5),
    chunk_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """Store every item of `stream`, a chunk per transaction; return the summary."""
    summary = Summary()
    index = merge.Index()
    with factory.begin() as session:
        started = clock()
        record = ImportRun(
            format=fmt, origin=origin[:300], started_at=started, heartbeat_at=started
        )
        session.add(record)
        session.flush()
        run_id = summary.run_id = record.id
    try:
        chunk: list[Item] = []
        for item in stream:
            chunk.append(item)
            if len(chunk) >= chunk_size:
                _store(factory, chunk, summary, index, clock(), skew, run_id)
                if progress is not None:
                    progress(len(chunk))
                chunk = []
        if chunk:
            _store(factory, chunk, summary, index, clock(), skew, run_id)
            if progress is not None:
                progress(len(chunk))
    finally:
        with factory.begin() as session:
            session.execute(
                update(ImportRun)
                .where(ImportRun.id == run_id)
                .values(finished_at=clock(), summary=summary.as_dict())
            )
    return summary


def _store(
    factory: sessionmaker[Session],
    chunk: list[Item],
    summary: Summary,
    index: merge.Index,
    now: datetime,
    skew: timedelta,
    run_id: int,
) -> None:
    summary.read += len(chunk)
    reports: dict[tuple[str, str], Parsed] = {}
    deletions: dict[tuple[str, str], Deletion] = {}
    for item in chunk:
        if isinstance(item, Rejected):
            summary.reject(item.line, item.source_id, item.reason)
        elif isinstance(item, Deletion):
            deletions[(item.source, item.source_id)] = item
        elif (problem := _too_late(item, now, skew)) is not None:
            summary.reject(item.line, item.incident.source_id, problem)
        else:
            key = (item.incident.source, item.incident.source_id)
            earlier = reports.get(key)
            if earlier is not None:
                # Two rows of one report: the later edit (or the later row) is stored.
                summary.unchanged += 1
                if _edited(earlier) > _edited(item):
                    continue
            reports[key] = item
    try:
        _write(factory, list(reports.values()), list(deletions.values()), summary, index, now)
    except SQLAlchemyError as exc:
        # One row the database refuses (or a racing writer) must not cost the chunk: store
        # them one at a time, and reject only what fails alone.
        log.warning("import chunk failed (%s); storing its rows one by one", type(exc).__name__)
        index.clear()  # what the failed transaction put in it was rolled back
        for parsed in reports.values():
            try:
                _write(factory, [parsed], [], summary, index, now)
            except SQLAlchemyError as single:
                index.clear()
                reason = str(single.orig if hasattr(single, "orig") else single).splitlines()[0]
                summary.reject(parsed.line, parsed.incident.source_id, f"not stored: {reason}")
        for gone in deletions.values():
            try:
                _write(factory, [], [gone], summary, index, now)
            except SQLAlchemyError:
                index.clear()
                summary.reject(gone.line, gone.source_id, "deletion not stored")
    with factory.begin() as session:
        session.execute(update(ImportRun).where(ImportRun.id == run_id).values(heartbeat_at=now))


def _write(
    factory: sessionmaker[Session],
    reports: list[Parsed],
    deletions: list[Deletion],
    summary: Summary,
    index: merge.Index,
    now: datetime,
) -> None:
    counts = {"created": 0, "updated": 0, "unchanged": 0, "merged": 0, "retracted": 0}
    with factory.begin() as session:
        if reports:
            results = incidents.upsert_many(session, [p.incident for p in reports], now, index)
            for result in results:
                counts[result.outcome] += 1
                counts["merged"] += result.merged
        if deletions:
            gone = incidents.retract_many(
                session, [(d.source, d.source_id, d.deleted_at) for d in deletions], now, index
            )
            for retracted in gone:
                if retracted is None:
                    counts["unchanged"] += 1  # nothing stored under that id: nothing to undo
                else:
                    counts["retracted" if retracted.outcome == "updated" else "unchanged"] += 1
    # Counted once committed: a chunk retried row by row is not counted twice.
    summary.inserted += counts["created"]
    summary.updated += counts["updated"]
    summary.unchanged += counts["unchanged"]
    summary.merged += counts["merged"]
    summary.retracted += counts["retracted"]
    for parsed in reports:
        for warning in parsed.warnings:
            summary.warn(parsed.line, parsed.incident.source_id, warning)


def _edited(item: Parsed) -> datetime:
    return item.incident.source_updated_at or datetime.min.replace(tzinfo=UTC)


def _too_late(item: Parsed, now: datetime, skew: timedelta) -> str | None:
    limit = now + skew
    if item.incident.occurred_at > limit:
        return "occurred_at: lies in the future"
    return None
