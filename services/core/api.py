"""Platform plumbing every service's routes share: units of work, the clock, callers, ids,
pages and Idempotency-Key retries.

Services add their own resource loaders on top; nothing here knows a service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from services.core import idempotency
from services.core.auth import Principal, Role, authenticate, require
from services.core.idempotency import IdempotencyKey
from services.core.ids import MAX_ID
from services.core.settings import PlatformSettings


def _write_session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] = request.app.state.sessions
    with factory.begin() as session:
        yield session


async def _read_session(request: Request) -> AsyncIterator[Session]:
    # Async on purpose: opening a read session does no I/O (it connects on first query, in the
    # thread that queries), and closing an autocommit session only returns the connection to
    # the pool. Running it on the event loop saves two thread-pool hops per read.
    factory: sessionmaker[Session] = request.app.state.read_sessions
    with factory.begin() as session:
        yield session


# Dependencies that do no I/O are async: FastAPI runs them on the event loop instead of
# hopping to the thread pool, which matters on the hot read path.
async def _now(request: Request) -> datetime:
    now: datetime = request.app.state.clock()
    return now


S = TypeVar("S", bound=PlatformSettings)


def settings_of(kind: type[S]) -> Callable[[Request], Awaitable[S]]:
    """A dependency giving the process's settings as the service's own settings type."""

    async def settings(request: Request) -> S:
        found = request.app.state.settings
        assert isinstance(found, kind), f"the app's settings are not {kind.__name__}"
        return found

    return settings


# Function scope: the unit of work commits before the response is sent, so a failed commit
# is a 5xx, never a 2xx.
WriteSession = Annotated[Session, Depends(_write_session, scope="function")]
ReadSession = Annotated[Session, Depends(_read_session, scope="function")]
Now = Annotated[datetime, Depends(_now)]
Config = Annotated[PlatformSettings, Depends(settings_of(PlatformSettings))]

Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
Ingestor = Annotated[Principal, Depends(require(Role.INCIDENTS_WRITE))]

Id = Annotated[int, Path(ge=1, le=MAX_ID)]
Cursor = Annotated[int, Query(ge=0, le=MAX_ID, description="Return items after this id.")]


# A bound a deployment sets: `deployment_bounds` writes the setting's value into the OpenAPI
# document, so a schema states this deployment's bound rather than the largest allowed.
DEPLOYMENT = "x-deployment"


def deployment_bound(setting: str, keyword: str | None = None) -> dict[str, Any]:
    """`json_schema_extra` for a value bounded by `setting`: as the schema's `keyword` (a bound
    refused beyond), or only described (a cap the code applies)."""
    return {DEPLOYMENT: {"setting": setting, "keyword": keyword}}


def deployment_bounds(document: dict[str, Any], settings: PlatformSettings) -> None:
    """Write each deployment bound of an OpenAPI document with its value in `settings`."""

    def bind(node: dict[str, Any]) -> str | None:
        bound = node.get(DEPLOYMENT)
        if not isinstance(bound, dict) or "setting" not in bound:
            return None
        name = bound.pop("setting")
        value = getattr(settings, name)
        keyword = bound.pop("keyword", None)
        if keyword:
            node[keyword] = value
        bound.update(variable=f"RISKALERT_{name.upper()}", value=value)
        return f" Here: {value} ({bound['variable']})."

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            said = bind(node)
            if said and "description" in node:
                node["description"] += said
            for key, value in node.items():
                if key == "parameters" and isinstance(value, list):
                    for parameter in value:
                        said = bind(parameter.get("schema", {}))
                        if said:
                            parameter["description"] = parameter.get("description", "") + said
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)


# Durations as the API writes them (pydantic: ISO 8601 with years, weeks and fractions of a
# second, P1Y1D, PT2H4S, PT0.5S), which JSON Schema's `duration` format (RFC 3339's stricter
# grammar) refuses.
ISO_DURATION = {
    "type": "string",
    "pattern": r"^-?P([0-9]+Y)?([0-9]+M)?([0-9]+W)?([0-9]+D)?"
    r"(T([0-9]+H)?([0-9]+M)?([0-9]+(\.[0-9]+)?S)?)?$",
}


def iso_durations(document: dict[str, Any]) -> None:
    """State each `format: duration` string of an OpenAPI document as the ISO 8601 it is."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "string" and node.get("format") == "duration":
                for keyword in ("format", "ge", "le"):
                    node.pop(keyword, None)  # pydantic writes its bounds as ge and le
                node.update(ISO_DURATION)
                node.setdefault("description", "An ISO 8601 duration.")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)


MAX_PAGE_LIMIT = 5000


async def page_limit(
    settings: Config,
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_PAGE_LIMIT,
            description=(
                "Page size. A page holds at most the deployment's max_page_size items: a "
                "larger limit is accepted and served as that many."
            ),
            json_schema_extra=deployment_bound("max_page_size"),
        ),
    ] = 100,
) -> int:
    """The page size asked for, within the deployment's cap (a larger one is served capped)."""
    return min(limit, settings.max_page_size)


Limit = Annotated[int, Depends(page_limit)]


class _Row(Protocol):
    @property
    def id(self) -> int: ...


def next_cursor(rows: Sequence[_Row], limit: int) -> int | None:
    """The cursor of the page after `rows` (a keyset page of at most `limit`), None at the end."""
    return rows[-1].id if len(rows) == limit else None


M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Retries:
    """A create POST's Idempotency-Key context: the work runs once, retries get its response."""

    session: Session
    principal: Principal
    key: str | None
    path: str
    now: datetime

    def once(
        self,
        body: BaseModel,
        response_type: type[M],
        produce: Callable[[], tuple[int, M]],
        kept: Callable[[M], M] | None = None,
    ) -> tuple[int, M]:
        """Run `produce` unless this key already has a response, which is replayed instead
        (as `kept` left it, when given)."""
        return idempotency.once(
            self.session, self.principal, self.key, self.path, body, self.now, response_type,
            produce, kept,
        )  # fmt: skip


def _retries(
    request: Request,
    session: WriteSession,
    principal: Annotated[Principal, Depends(authenticate)],
    now: Now,
    key: IdempotencyKey = None,
) -> Retries:
    return Retries(session, principal, key, request.url.path, now)


Retryable = Annotated[Retries, Depends(_retries)]
