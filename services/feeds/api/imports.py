"""Import routes: an ACLED or UCDP file posted as is, and the record of past imports."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy import select

from services.core.api import Id, Ingestor, Limit, ReadSession, next_cursor, settings_of
from services.core.ids import MAX_ID
from services.core.problems import Problem, not_found, payload_too_large, problem_responses
from services.feeds import importer
from services.feeds.rows import FileError
from services.feeds.settings import FeedsSettings
from services.scoring.models import ImportRun

router = APIRouter(prefix="/v1/imports", tags=["imports"])

MEDIA_TYPES = ("text/csv", "application/json", "text/plain")
# What each media type carries. Whether a file parses as the source's export (its columns, its
# pages) no schema says: a file that cannot be imported at all is a 422.
_TEXT = {"type": "string", "minLength": 1, "description": "The file as exported (CSV)."}
_FILE_SCHEMAS: dict[str, dict[str, Any]] = {
    "text/csv": _TEXT,
    "text/plain": _TEXT,
    "application/json": {
        "anyOf": [
            {"type": "object"},
            {"type": "array", "minItems": 1, "items": {"type": "object"}},
        ],
        "description": (
            "The source API's JSON page ({data: [...]} for ACLED, {Result: [...]} for UCDP), "
            "or a list of pages."
        ),
    },
}
_USE_THE_CLI = "; import the file with `riskalert import`"


class RowNote(BaseModel):
    """A rejected row, or a stored row with a value kept but not understood."""

    line: int = Field(description="Line of the file (CSV) or row number across pages (JSON).")
    source_id: str | None
    reason: str | None = None
    warning: str | None = None


class ImportSummary(BaseModel):
    """What an import did. `merged` counts, among the rows inserted or updated, those that
    joined another report's event; rejected and warned rows are listed (the first 1,000).
    `error` says why an import stopped before the end of its file (what it stored is kept)."""

    id: int
    format: str
    origin: str
    started_at: datetime
    finished_at: datetime | None
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    merged: int = 0
    retracted: int = 0
    rejected: int = 0
    warned: int = 0
    rejections: list[RowNote] = []
    warnings: list[RowNote] = []
    error: str | None = Field(
        None, description="Why the import stopped before the end; null when it read it all."
    )


class ImportList(BaseModel):
    """A page of import runs, newest first; pass `next_cursor` as `before` for the next."""

    items: list[ImportSummary]
    next_cursor: int | None


def _summary(run: ImportRun) -> ImportSummary:
    counts: dict[str, Any] = run.summary or {}
    return ImportSummary(
        id=run.id,
        format=run.format,
        origin=run.origin,
        started_at=run.started_at,
        finished_at=run.finished_at,
        **counts,
    )


@router.post(
    "/{format}",
    responses=problem_responses(400, 413, 415, 422),
    summary="Import a file of incidents (ACLED, ACLED deletions, UCDP GED)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The file as exported: CSV (an HXL tag row is skipped), or the "
            "source API's JSON page(s).",
            "content": {media: {"schema": _FILE_SCHEMAS[media]} for media in MEDIA_TYPES},
        }
    },
)
async def post_import(
    request: Request,
    format: Annotated[
        importer.Format, Path(description="acled, acled-deleted (retractions) or ucdp")
    ],
    principal: Ingestor,
    settings: Annotated[FeedsSettings, Depends(settings_of(FeedsSettings))],
) -> ImportSummary:
    """Store every good row, reject each bad one with its line and reason; re-posting the same
    file changes nothing. A file that cannot be imported at all (unreadable JSON, another
    delimiter, a quote in the header never closed, no record) is a 422 naming the problem, and
    nothing is stored. Scores follow as the rescoring worker reads the new incidents."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise Problem(
            415,
            "unsupported-media-type",
            f"send the file as one of {', '.join(MEDIA_TYPES)}",
            errors=[
                {
                    "in": "header",
                    "pointer": "/content-type",
                    "field": "content-type",
                    "reason": f"{media or 'missing'} is not one of {', '.join(MEDIA_TYPES)}",
                }
            ],
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_import_bytes:
        raise payload_too_large(settings.max_import_bytes, _USE_THE_CLI)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > settings.max_import_bytes:
            raise payload_too_large(settings.max_import_bytes, _USE_THE_CLI)
    try:
        content = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Problem(
            400,
            "validation",
            "the file is not UTF-8 text",
            errors=[
                {
                    "in": "body",
                    "pointer": "",
                    "field": "body",
                    "reason": f"byte {exc.start} is not UTF-8",
                }
            ],
        ) from None
    factory = request.app.state.sessions
    try:
        summary = await run_in_threadpool(
            importer.run_file,
            factory,
            format,
            io.StringIO(content, newline=""),
            parallel=False,  # bounded by max_import_bytes; the CLI parses big files in parallel
            origin=f"api:{principal.ident}",
            clock=request.app.state.clock,
            skew=settings.clock_skew,
        )
    except FileError as exc:
        raise Problem(
            422,
            "validation",
            f"the file cannot be imported: {exc.reason}",
            errors=[
                {
                    "in": "body",
                    "pointer": "",
                    "field": "body",
                    "reason": f"line {exc.line}: {exc.reason}",
                }
            ],
        ) from None
    with factory() as session:
        run = session.get(ImportRun, summary.run_id)
        assert run is not None
        return _summary(run)


@router.get("", summary="Past imports, newest first")
def list_imports(
    principal: Ingestor,
    session: ReadSession,
    limit: Limit,
    before: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_ID,
            description="Return runs older than this id (newest first); 0: from the newest.",
        ),
    ] = 0,
) -> ImportList:
    """Import runs of files and feed polls, with their summaries."""
    query = select(ImportRun).order_by(ImportRun.id.desc()).limit(limit)
    if before:
        query = query.where(ImportRun.id < before)
    runs = session.execute(query).scalars().all()
    return ImportList(
        items=[_summary(r) for r in runs],
        next_cursor=next_cursor(runs, limit),
    )


@router.get("/{import_id}", responses=problem_responses(404), summary="One import")
def get_import(import_id: Id, principal: Ingestor, session: ReadSession) -> ImportSummary:
    """An import run and its summary (counts only until it finishes)."""
    run = session.get(ImportRun, import_id)
    if run is None:
        raise not_found("import")
    return _summary(run)
