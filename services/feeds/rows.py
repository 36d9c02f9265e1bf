"""What every importer shares: the outcome of reading one row, CSV reading with line numbers
(and the problems that stop a whole file), the small conversions both formats need (numbers,
countries, dates of unknown report), and CSV cells written safe for spreadsheets."""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from services.scoring import schemas

if TYPE_CHECKING:
    from _csv import Reader as CsvReader


class FileError(ValueError):
    """A file that cannot be imported at all, found before any of its rows is read: the
    message names the line and the real problem (a wrong delimiter, a quote never closed...)."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class NoRecords(FileError):
    """A file with nothing to import: empty, or a header row and no record."""


class RowError(ValueError):
    """A row that cannot be imported; the message names the field and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Parsed:
    """A row read into an incident report, with what was kept but not understood."""

    line: int
    incident: schemas.IncidentIn
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row that was not imported, and why."""

    line: int
    source_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Deletion:
    """The source deleted a report: it is retracted."""

    line: int
    source: str
    source_id: str
    deleted_at: datetime | None


Item = Parsed | Rejected | Deletion
Row = Mapping[str, str]


def csv_rows(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, str]] | Rejected]:
    """Records of a CSV file as {lower-case column: text}, each with the line it starts on.

    A byte-order mark is dropped, and so is a second header row of HXL tags (`#date`, ...)
    as the humanitarian data portals publish. A record with the wrong number of fields, or
    with a quote never closed, is rejected; the rest of the file is still read. The header and
    the first record are read at once: a file that cannot be imported at all (no usable
    header, another delimiter, no record) raises FileError before any row is returned.
    """
    source = _Lines(_without_bom(lines))
    reader = csv.reader(source)
    columns = _header(reader, source)
    records = _records(reader, source, columns)
    first = next(records, None)
    if first is None:
        raise NoRecords(2, "the file has a header row but no records")
    return itertools.chain([first], records)


class _Lines:
    """The lines fed to the CSV reader; `ended` is set once the reader asked past the last."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self.ended = False

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        try:
            return next(self._lines)
        except StopIteration:
            self.ended = True
            raise


# Delimiters of spreadsheet exports in locales where the comma is the decimal mark, and TSV.
DELIMITERS = {";": "';'", "\t": "tabs", "|": "'|'"}


def _header(reader: CsvReader, source: _Lines) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise NoRecords(1, "the file is empty") from None
    except csv.Error as exc:
        raise FileError(1, f"the header row cannot be read: {_csv_problem(exc)}") from None
    if source.ended:
        # The reader only asks past the last line while a quoted field is still open.
        raise FileError(1, "a quote opened in the header row is never closed")
    if len(header) == 1:
        counts = {mark: header[0].count(mark) for mark in DELIMITERS}
        mark = max(counts, key=lambda m: counts[m])
        if counts[mark]:
            raise FileError(
                1, f"the file uses {DELIMITERS[mark]} as its delimiter; export it comma-separated"
            )
    return [name.strip().lower() for name in header]


def _records(
    reader: CsvReader, source: _Lines, columns: list[str]
) -> Iterator[tuple[int, dict[str, str]] | Rejected]:
    first = True
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Rejected(start, None, f"unreadable CSV record: {_csv_problem(exc)}")
            continue
        if source.ended:
            # Only an open quote makes the reader ask past the last line: the quote swallowed
            # every line after it, which a field count alone may not notice.
            swallowed = (
                f": lines {start}-{reader.line_num} were read as one record"
                if reader.line_num > start
                else ""
            )
            yield Rejected(start, None, f"a quote opened in this record is never closed{swallowed}")
            return
        if first:
            first = False
            if record and all(not cell or cell.lstrip().startswith("#") for cell in record):
                continue  # the HXL tag row
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(columns):
            yield Rejected(
                start, None, f"expected {len(columns)} fields as in the header, found {len(record)}"
            )
            continue
        yield start, dict(zip(columns, record, strict=True))


def _csv_problem(exc: csv.Error) -> str:
    message = str(exc)
    if message.startswith("field larger than field limit"):
        return (
            f"a field is longer than {csv.field_size_limit()} characters (a quote never "
            "closed, or a file without line breaks?)"
        )
    return message


def _without_bom(lines: Iterable[str]) -> Iterator[str]:
    # NUL characters are dropped too: no field of either format may hold one.
    first = True
    for line in lines:
        if first:
            first = False
            line = line.removeprefix("\ufeff")
        yield line.replace("\x00", "") if "\x00" in line else line


def normalise(row: Mapping[str, Any]) -> dict[str, str]:
    """An API row as a CSV row reads: lower-case names, every value as text (API pages may send
    numbers), no NUL characters."""
    return {
        str(k).strip().lower().replace("\x00", ""): "" if v is None else str(v).replace("\x00", "")
        for k, v in row.items()
    }


def page_rows(pages: Iterable[Mapping[str, Any]], key: str) -> Iterator[tuple[int, dict[str, str]]]:
    """The rows listed under `key` in each API page, numbered from 1 across pages."""
    line = 0
    for page in pages:
        for row in page.get(key) or []:
            line += 1
            yield line, normalise(row) if isinstance(row, Mapping) else {}


def text(row: Row, name: str) -> str:
    """A column's text, stripped; empty when absent."""
    value = row.get(name)
    return value.strip() if isinstance(value, str) else ""


def integer(row: Row, name: str, *, required: bool = False) -> int | None:
    """A whole number column (`12`, `12.0`); None when empty."""
    value = text(row, name)
    if not value:
        if required:
            raise RowError(name, "missing")
        return None
    try:
        number = float(value)
    except ValueError:
        raise RowError(name, f"not a number: {value[:40]!r}") from None
    if not number.is_integer() or number < 0:
        raise RowError(name, f"not a whole number >= 0: {value[:40]!r}")
    return int(number)


def coordinate(row: Row, name: str, limit: float) -> float:
    """A latitude or longitude column, within +-limit."""
    value = text(row, name)
    if not value:
        raise RowError(name, "missing")
    try:
        number = float(value)
    except ValueError:
        raise RowError(name, f"not a number: {value[:40]!r}") from None
    if not -limit <= number <= limit:
        raise RowError(name, f"{number} is outside -{limit:g}..{limit:g}")
    return number


def unix_or_iso(row: Row, name: str) -> datetime | None:
    """A time given as Unix seconds (ACLED `timestamp`) or as ISO 8601 text; None when empty."""
    value = text(row, name)
    if not value:
        return None
    try:
        parsed = datetime.fromtimestamp(int(float(value)), UTC)
    except (ValueError, OverflowError, OSError):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise RowError(name, f"not a Unix time or ISO date: {value[:40]!r}") from None
    return plausible(name, parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


def plausible(name: str, moment: datetime) -> datetime:
    """A date read from column `name`, refused outside the years an incident may have (a
    placeholder such as 9999-12-31 is no date, and would overflow the dates derived from it)."""
    if not schemas.EARLIEST_YEAR <= moment.year <= schemas.LATEST_YEAR:
        raise RowError(
            name,
            f"{moment.date().isoformat()} is not between {schemas.EARLIEST_YEAR} and "
            f"{schemas.LATEST_YEAR}",
        )
    return moment


def build(line: int, source_id: str, data: dict[str, Any], warnings: list[str]) -> Parsed:
    """Validate an incident report built from a row; the first error names its field."""
    try:
        # Rows are read NUL-free (csv_rows, normalise): the check need not walk every field.
        incident = schemas.IncidentIn.model_validate(data, context={schemas.NUL_FREE: True})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "row"
        raise RowError(field, error["msg"]) from None
    return Parsed(line, incident, tuple(warnings))


# Country names as ACLED and UCDP spell them, for rows that carry no ISO code.
COUNTRIES = {
    "algeria": "DZA", "benin": "BEN", "burkina faso": "BFA", "cameroon": "CMR",
    "central african republic": "CAF", "chad": "TCD", "cote d'ivoire": "CIV",
    "côte d'ivoire": "CIV", "ivory coast": "CIV", "gambia": "GMB", "ghana": "GHA",
    "guinea": "GIN", "guinea-bissau": "GNB", "liberia": "LBR", "libya": "LBY", "mali": "MLI",
    "mauritania": "MRT", "morocco": "MAR", "niger": "NER", "nigeria": "NGA", "senegal": "SEN",
    "sierra leone": "SLE", "sudan": "SDN", "togo": "TGO", "western sahara": "ESH",
}  # fmt: skip


def country_code(name: str) -> str | None:
    """The ISO 3166-1 alpha-3 code of a country name, or None when not known here."""
    return COUNTRIES.get(name.strip().casefold())


# What starts a formula in a spreadsheet (OWASP, "CSV Injection"): = + - @, and a tab or
# carriage return, which some spreadsheets skip before looking for one of those.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_cell(value: object) -> str:
    """A value as a CSV cell that a spreadsheet shows rather than runs: a cell that would start
    a formula gets a leading `'`, unless it is a plain number such as -12.5."""
    cell = "" if value is None else str(value)
    if cell.startswith(_FORMULA_START) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell
