"""Import a stream of source rows: chunked upserts, merging, retractions and a summary.

One bad row never aborts an import: whatever fails while it is read or stored, it is rejected
with its line and reason, and the rows around it are stored. A file that cannot be imported at
all (unreadable JSON, another delimiter, no record) is refused before anything is written.
Each chunk commits on its own, so a crash keeps what was committed, the run records why it
stopped, and a re-run finishes the rest (re-importing a row changes nothing). While an import
runs it holds the rescorer off the incident feed, so a bulk import rescores each target once,
at its end.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from services.core.db import refresh_statistics
from services.feeds import acled, ucdp
from services.feeds.rows import (
    Deletion,
    FileError,
    Item,
    NoRecords,
    Parsed,
    Rejected,
    csv_rows,
)
from services.scoring import incidents, merge
from services.scoring.models import ImportRun, Incident

log = logging.getLogger(__name__)
_T = TypeVar("_T")

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
    error: str | None = None  # why the import stopped before the end of its input

    def reject(self, line: int, source_id: str | None, reason: str) -> None:
        """Count a rejected row; the first MAX_REPORTED are listed."""
        self.rejected += 1
        if len(self.rejections) < MAX_REPORTED:
            self.rejections.append({"line": line, "source_id": source_id, "reason": reason})

    def warn(self, line: int, source_id: str, texts: Iterable[str]) -> None:
        """Count a stored row with something kept but not understood; list each warning."""
        self.warned += 1
        for text in texts:
            if len(self.warnings) < MAX_REPORTED:
                self.warnings.append({"line": line, "source_id": source_id, "warning": text})

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON."""
        return {
            "read": self.read, "inserted": self.inserted, "updated": self.updated,
            "unchanged": self.unchanged, "merged": self.merged, "retracted": self.retracted,
            "rejected": self.rejected, "warned": self.warned,
            "rejections": self.rejections, "warnings": self.warnings, "error": self.error,
        }  # fmt: skip


class Text(Protocol):
    """What an import reads: an open text file, or anything reading and iterating alike."""

    def read(self, size: int = -1, /) -> str: ...

    def __iter__(self) -> Iterator[str]: ...


def items(fmt: Format, stream: Text, now: datetime) -> Iterator[Item]:
    """The rows of a file in `fmt`, parsed: CSV, or JSON as the source's API returns it.

    Read leniently: a file that cannot be imported is one rejected item, an empty one none.
    """
    try:
        raw = records(fmt, stream)
    except NoRecords:
        return iter(())
    except FileError as exc:
        return iter([Rejected(exc.line, None, exc.reason)])
    return parse_rows(fmt, raw, now)


def records(fmt: Format, stream: Text) -> Iterator[tuple[int, dict[str, str]] | Rejected]:
    """The raw rows of a file with their line numbers: CSV, or the source API's JSON pages.

    The head of the file is read at once: FileError says why it cannot be imported at all.
    """
    head = stream.read(1)
    while head and head.isspace():
        head = stream.read(1)
    if head in ("{", "["):
        pages = _json_pages(head + stream.read())
        _check_listed(pages, "Result" if fmt == "ucdp" else "data")
        return ucdp.rows_from_pages(pages) if fmt == "ucdp" else acled.rows_from_pages(pages)
    return csv_rows(_prepend(head, stream))


def _prepend(head: str, stream: Text) -> Iterator[str]:
    first = True
    for line in stream:
        yield head + line if first else line
        first = False
    if first and head:
        yield head


def _json_pages(body: str) -> list[dict[str, Any]]:
    try:
        document = json.loads(body)
    except json.JSONDecodeError as exc:
        raise FileError(exc.lineno, f"unreadable JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        # json recurses once per level: a document nested past the interpreter's limit is no
        # API page (those are four levels deep), and must not become a 500.
        raise FileError(1, "JSON nested too deeply: API pages are four levels deep") from None
    pages = document if isinstance(document, list) else [document]
    if not all(isinstance(p, dict) for p in pages):
        raise FileError(1, "expected an API page (an object) or a list of pages")
    return pages


def _check_listed(pages: list[dict[str, Any]], key: str) -> None:
    """API pages list their rows under `key`: anything else, or no row at all, is no file to
    import (as a CSV with a header and no record is not)."""
    for page in pages:
        if not isinstance(page.get(key, []), list):
            raise FileError(1, f"`{key}` is not a list of records")
    if not any(page.get(key) for page in pages):
        raise NoRecords(1, f"the JSON has no records (no `{key}` list with a row)")


def parse_rows(
    fmt: Format, rows: Iterable[tuple[int, dict[str, str]] | Rejected], now: datetime
) -> Iterator[Item]:
    """Raw rows (and rows already rejected) parsed as `fmt`; a row whose parsing fails in any
    way is rejected with its line and the reason."""
    logged = False
    for entry in rows:
        if isinstance(entry, Rejected):
            yield entry
            continue
        line, row = entry
        try:
            item = _parse(fmt, row, line, now)
        except Exception as exc:
            if not logged:
                # The parsers name the field of every failure they expect: this is a bug or a
                # case they miss. The first one's trace is kept, not one per row.
                log.info("row %d not parsed as %s", line, fmt, exc_info=True)
                logged = True
            # Deletions name their report as ACLED rows do.
            source_id = row.get(ID_COLUMN.get(fmt, "event_id_cnty"), "").strip()[:128] or None
            item = Rejected(line, source_id, f"not readable: {describe(exc)}")
        yield item


def _parse(fmt: Format, row: dict[str, str], line: int, now: datetime) -> Item:
    if fmt == "acled":
        return acled.parse(row, line, now)
    if fmt == "ucdp":
        return ucdp.parse(row, line, now)
    return acled.deletion(row, line)


def describe(exc: BaseException) -> str:
    """An exception as one line of a rejection or a run's error: its kind and first line."""
    if isinstance(exc, UnicodeDecodeError):
        return f"the file is not UTF-8 text (byte {exc.object[exc.start : exc.start + 1]!r})"
    cause = getattr(exc, "orig", None) or exc  # a database error: the driver's message
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0][:300]}" if text else type(cause).__name__


@dataclass(frozen=True, slots=True)
class Ready:
    """A parsed report as the column values to store: cheap to pass between processes."""

    line: int
    values: dict[str, Any]
    warnings: tuple[str, ...]

    @property
    def source_id(self) -> str:
        """The report's id at its source."""
        return str(self.values["source_id"])


@dataclass(frozen=True, slots=True)
class Known:
    """A row stored before exactly as it is now (same fingerprint): nothing to do."""


Stored = Ready | Rejected | Deletion | Known
Raw = tuple[int, dict[str, str]] | Rejected
# Bump when parsing changes what a row becomes, so a re-import reads every row again.
PARSER_VERSION = "2"
# The column holding each format's report id (deletions are not fingerprinted).
ID_COLUMN = {"acled": "event_id_cnty", "ucdp": "id"}
SOURCE = {"acled": acled.SOURCE, "ucdp": ucdp.SOURCE}


def fingerprint(fmt: str, row: dict[str, str]) -> str:
    """What identifies a source row's content, with the parser version and format."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{PARSER_VERSION}\x1f{fmt}".encode())
    for name in sorted(row):
        digest.update(f"\x1e{name}\x1f{row[name]}".encode())
    return digest.hexdigest()


def _ready(item: Item, now: datetime, source_hash: str | None = None) -> Stored:
    if isinstance(item, Parsed):
        try:
            values = incidents.values(item.incident, now)
        except Exception as exc:
            return Rejected(item.line, item.incident.source_id, f"not readable: {describe(exc)}")
        if source_hash is not None:
            values["source_hash"] = source_hash
        return Ready(item.line, values, item.warnings)
    return item


def _parse_chunk(fmt: Format, now: datetime, rows: list[Raw]) -> list[Stored]:
    out: list[Stored] = []
    for raw in rows:
        digest = None
        if fmt in ID_COLUMN and not isinstance(raw, Rejected):
            digest = fingerprint(fmt, raw[1])
        out.extend(_ready(item, now, digest) for item in parse_rows(fmt, [raw], now))
    return out


def _screen(factory: sessionmaker[Session], fmt: Format, rows: list[Raw]) -> tuple[int, list[Raw]]:
    """How many rows of a chunk are stored exactly as they are now, and the others."""
    column = ID_COLUMN.get(fmt)
    if column is None:
        return 0, rows
    # Each row with its own fingerprint: a file may hold two edits of one report.
    marked = [
        (entry, (SOURCE[fmt], entry[1].get(column, "").strip()), fingerprint(fmt, entry[1]))
        if not isinstance(entry, Rejected)
        else (entry, None, None)
        for entry in rows
    ]
    keys = {key for _, key, _ in marked if key is not None and key[1]}
    if not keys:
        return 0, rows
    with factory() as session:
        stored = {
            (r.source, r.source_id): r.source_hash
            for r in session.execute(
                select(Incident.source, Incident.source_id, Incident.source_hash).where(
                    incidents.with_keys(keys)
                )
            )
        }
    rest = [
        entry
        for entry, key, digest in marked
        if key is None or digest is None or stored.get(key) != digest
    ]
    return len(rows) - len(rest), rest


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
    summary: Summary | None = None,
) -> Summary:
    """Store every item of `stream`, a chunk per transaction; return the summary.

    An import that stops on an error is recorded with it, then the error is raised: a caller
    that reports on such an import passes its own `summary`, filled as the import goes.
    """
    now = clock()
    return _run(
        factory,
        (_ready(item, now) for item in stream),
        fmt=fmt,
        origin=origin,
        clock=clock,
        skew=skew,
        chunk_size=chunk_size,
        progress=progress,
        summary=Summary() if summary is None else summary,
    )


def run_file(
    factory: sessionmaker[Session],
    fmt: Format,
    stream: Text,
    *,
    origin: str,
    clock: Callable[[], datetime],
    skew: timedelta = timedelta(minutes=5),
    chunk_size: int = 1000,
    progress: Callable[[int], None] | None = None,
    parallel: bool = True,
    summary: Summary | None = None,
) -> Summary:
    """Import a file: read here, parsed in a second process (when `parallel` and there is a
    second core) while this one stores the chunks parsed before. A row whose fingerprint
    matches the stored report's is counted unchanged without being parsed.

    A file that cannot be imported at all raises FileError before anything is written; an
    error after that is recorded with the run and raised, as for `run`.
    """
    now = clock()
    parse = functools.partial(_parse_chunk, fmt, now)
    raw = records(fmt, stream)
    # Rows stored before exactly as they are now are counted, not parsed again.
    screened = (_screen(factory, fmt, chunk) for chunk in _batched(raw, chunk_size))
    summary = Summary() if summary is None else summary
    if not parallel or (os.cpu_count() or 1) < 2:
        return _run(
            factory,
            (item for known, rows in screened for item in [*parse(rows), *[Known()] * known]),
            fmt=fmt, origin=origin, clock=clock, skew=skew, chunk_size=chunk_size,
            progress=progress, summary=summary,
        )  # fmt: skip
    # A spawned process: forking one that runs threads (a progress bar, a pool) is unsafe.
    with ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        parsed = _ahead(pool, parse, screened, depth=3)
        return _run(
            factory,
            (item for chunk in parsed for item in chunk),
            fmt=fmt,
            origin=origin,
            clock=clock,
            skew=skew,
            chunk_size=chunk_size,
            progress=progress,
            summary=summary,
        )


def _batched(rows: Iterable[_T], size: int) -> Iterator[list[_T]]:
    chunk: list[_T] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ahead(
    pool: ProcessPoolExecutor,
    func: Callable[[list[Raw]], list[Stored]],
    chunks: Iterator[tuple[int, list[Raw]]],
    depth: int,
) -> Iterator[list[Stored]]:
    """`func` over the rows left in `chunks` in the pool, in order, with at most `depth` chunks
    in flight; rows known unchanged come back as `Known`."""
    waiting: collections.deque[tuple[int, Future[list[Stored]]]] = collections.deque()

    def take() -> list[Stored]:
        known, future = waiting.popleft()
        return [*future.result(), *(Known() for _ in range(known))]

    for known, rows in chunks:
        waiting.append((known, pool.submit(func, rows)))
        if len(waiting) >= depth:
            yield take()
    while waiting:
        yield take()


def _run(
    factory: sessionmaker[Session],
    stream: Iterable[Stored],
    *,
    fmt: str,
    origin: str,
    clock: Callable[[], datetime],
    skew: timedelta,
    chunk_size: int,
    progress: Callable[[int], None] | None,
    summary: Summary,
) -> Summary:
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
        for chunk in _batched(stream, chunk_size):
            _store(factory, chunk, summary, index, clock(), skew, run_id)
            if progress is not None:
                progress(len(chunk))
    except BaseException as exc:
        # Recorded as it ended: a run that stopped early must not read as a finished one.
        summary.error = "interrupted" if isinstance(exc, KeyboardInterrupt) else describe(exc)
        raise
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
    chunk: list[Stored],
    summary: Summary,
    index: merge.Index,
    now: datetime,
    skew: timedelta,
    run_id: int,
) -> None:
    summary.read += len(chunk)
    reports: dict[tuple[str, str], Ready] = {}
    deletions: dict[tuple[str, str], Deletion] = {}
    for item in chunk:
        if isinstance(item, Known):
            summary.unchanged += 1
        elif isinstance(item, Rejected):
            summary.reject(item.line, item.source_id, item.reason)
        elif isinstance(item, Deletion):
            deletions[(item.source, item.source_id)] = item
        elif item.values["occurred_at"] > now + skew:
            summary.reject(item.line, item.source_id, "occurred_at: lies in the future")
        else:
            key = (item.values["source"], item.source_id)
            earlier = reports.get(key)
            if earlier is not None:
                # Two rows of one report: the later edit (or the later row) is stored.
                summary.unchanged += 1
                if _edited(earlier) > _edited(item):
                    continue
            reports[key] = item
    try:
        _write(
            factory, list(reports.values()), list(deletions.values()), summary, index, now, run_id
        )
    except Exception as exc:
        # One row the database refuses, a racing writer, or a row the merge cannot place must
        # not cost the chunk: store them one at a time, and reject only what fails alone.
        log.warning("import chunk failed (%s); storing its rows one by one", type(exc).__name__)
        index.clear()  # what the failed transaction put in it was rolled back
        for ready in reports.values():
            try:
                _write(factory, [ready], [], summary, index, now, run_id)
            except Exception as single:
                index.clear()
                summary.reject(ready.line, ready.source_id, f"not stored: {describe(single)}")
        for gone in deletions.values():
            try:
                _write(factory, [], [gone], summary, index, now, run_id)
            except Exception:
                index.clear()
                summary.reject(gone.line, gone.source_id, "deletion not stored")


def _write(
    factory: sessionmaker[Session],
    reports: list[Ready],
    deletions: list[Deletion],
    summary: Summary,
    index: merge.Index,
    now: datetime,
    run_id: int,
) -> None:
    counts = {"created": 0, "updated": 0, "unchanged": 0, "merged": 0, "retracted": 0}
    with factory.begin() as session:
        # The run's heartbeat goes with its chunks: one commit each.
        session.execute(update(ImportRun).where(ImportRun.id == run_id).values(heartbeat_at=now))
        if reports:
            results = incidents.upsert_rows(session, [r.values for r in reports], now, index)
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
    # A first import fills an empty table far faster than autovacuum analyzes it.
    refresh_statistics(factory, Incident.__tablename__)
    # Counted once committed: a chunk retried row by row is not counted twice.
    summary.inserted += counts["created"]
    summary.updated += counts["updated"]
    summary.unchanged += counts["unchanged"]
    summary.merged += counts["merged"]
    summary.retracted += counts["retracted"]
    for ready in reports:
        if ready.warnings:
            summary.warn(ready.line, ready.source_id, ready.warnings)


def _edited(item: Ready) -> datetime:
    edited: datetime | None = item.values["source_updated_at"]
    return edited or datetime.min.replace(tzinfo=UTC)
