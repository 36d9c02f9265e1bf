"""RFC 9457 problem documents: one exception type and the handlers that render it."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import RouteContext, iter_route_contexts
from pydantic import BaseModel, Field
from pydantic_core import InitErrorDetails, PydanticCustomError
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.core.db import storage_full

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://riskalert.dev/problems/"
PROBLEM_SCHEMA_REF = "#/components/schemas/ProblemDocument"
# Field errors listed in one document: a body with 100,000 wrong fields gets the first ones and
# a count of the rest, not an answer ten times the size of the request.
MAX_FIELD_ERRORS = 50
# The type of a pydantic error that stands for `ctx.count` errors found but not listed: a model
# that stops early on a flood of errors raises it after those it lists (omitted_errors).
OMITTED_ERRORS = "errors_omitted"

log = logging.getLogger(__name__)

_TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}


class FieldError(BaseModel):
    """Where a request is wrong: the part, an RFC 6901 pointer into it, the field and why."""

    in_: Literal["body", "query", "path", "header", "cookie"] = Field(alias="in")
    pointer: str
    field: str
    reason: str


class ProblemDocument(BaseModel):
    """An RFC 9457 problem document, as every error response carries (documentation only)."""

    type: str = Field(description="Stable URI of the kind of problem.")
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] = Field(
        [], description=f"What is wrong, field by field: the first {MAX_FIELD_ERRORS}."
    )
    errors_omitted: int = Field(
        0, ge=0, description="How many more field errors were found than `errors` lists."
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries declaring problem documents for `statuses`."""
    content = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}}
    return {s: {"description": _TITLES.get(s, "Error"), "content": content} for s in statuses}


def unreadable_bodies(document: dict[str, Any]) -> None:
    """Declare the 400 of an unreadable body (not UTF-8 text) on every operation that takes a
    JSON body: FastAPI answers it before any route runs, so no route can forget it."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                operation.setdefault("responses", {}).setdefault("400", problem_responses(400)[400])


class Problem(Exception):
    """An expected failure that becomes a problem document."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[Mapping[str, Any]] = (),
        omitted: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.title = title or _TITLES.get(status, "Error")
        # Every document is capped here, whoever raised it; `omitted` counts errors a caller
        # found but left out already.
        self.errors = list(errors[:MAX_FIELD_ERRORS])
        self.omitted = omitted + max(0, len(errors) - MAX_FIELD_ERRORS)
        self.headers = dict(headers or {})

    def document(self, instance: str | None = None) -> dict[str, Any]:
        """Render the problem as an RFC 9457 JSON object."""
        doc: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        if self.errors:
            doc["errors"] = self.errors
        if self.omitted:
            doc["errors_omitted"] = self.omitted
        return doc


def payload_too_large(limit: int, advice: str = "") -> Problem:
    """413 for a request body over `limit` bytes, naming the body (`advice` ends the detail)."""
    return Problem(
        413,
        "payload-too-large",
        f"the request body is larger than {limit} bytes{advice}",
        errors=[
            {"in": "body", "pointer": "", "field": "body", "reason": f"more than {limit} bytes"}
        ],
    )


class BodyTooLarge(StarletteHTTPException):
    """A body streamed past `limit`: an HTTPException, so FastAPI's body parsing lets it through
    to the problem handlers."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, payload_too_large(limit).detail)
        self.limit = limit


def not_found(what: str) -> Problem:
    """The 404 used for missing resources and for other tenants' resources alike."""
    return Problem(404, "not-found", f"{what} not found")


def omitted_errors(count: int) -> InitErrorDetails:
    """A pydantic error standing for `count` more errors, which problem documents count in
    `errors_omitted` instead of listing."""
    return InitErrorDetails(
        type=PydanticCustomError(OMITTED_ERRORS, "{count} more errors", {"count": count}),
        loc=(),
        input=None,
    )


def validation_problem(errors: Sequence[Mapping[str, Any]], *, location: str = "body") -> Problem:
    """The 422 for pydantic errors: the first MAX_FIELD_ERRORS listed, the others counted."""
    listed: list[Mapping[str, Any]] = []
    omitted = 0
    for error in errors:
        if error.get("type") == OMITTED_ERRORS:
            omitted += int(error.get("ctx", {}).get("count", 0))
        elif len(listed) < MAX_FIELD_ERRORS:
            listed.append(error)
        else:
            omitted += 1
    entries = field_errors(listed, location=location)
    fields = ", ".join(sorted({e["field"] for e in entries})) or "request"
    more = f" (and {omitted} more errors)" if omitted else ""
    return Problem(
        422, "validation", f"invalid value in: {fields}{more}", errors=entries, omitted=omitted
    )


def field_errors(
    errors: Sequence[Mapping[str, Any]], *, location: str = "body"
) -> list[dict[str, Any]]:
    """Turn pydantic errors into `{pointer, field, reason}` entries (RFC 6901 pointers).

    `location` is the request part of errors whose `loc` does not start with one. An error
    standing for others not listed (OMITTED_ERRORS) is no entry.
    """
    out: list[dict[str, Any]] = []
    for error in errors:
        if error.get("type") == OMITTED_ERRORS:
            continue
        loc = [str(part) for part in error.get("loc", ())]
        if loc and loc[0] in {"body", "query", "path", "header", "cookie"}:
            where, loc = loc[0], loc[1:]
        else:
            where = location
        if error.get("type") == "json_invalid":
            # Its loc ends with a character offset, not a field: the whole body is at fault.
            loc = []
        out.append(
            {
                "in": where,
                "pointer": "".join(
                    "/" + part.replace("~", "~0").replace("/", "~1") for part in loc
                ),
                # A member named "" (JSON allows it) is named so, not left blank.
                "field": ".".join(part or '""' for part in loc) if loc else where,
                "reason": str(error.get("msg", "invalid")),
            }
        )
    return out


def _unreadable_body(cause: BaseException) -> Problem:
    """The 400 for a request body that cannot be read as JSON text at all."""
    if isinstance(cause, UnicodeDecodeError):
        reason = f"not UTF-8 text (byte {cause.start})"
    else:
        reason = "not readable as JSON text"
    return Problem(
        400,
        "validation",
        "invalid value in: body",
        errors=[{"in": "body", "pointer": "", "field": "body", "reason": reason}],
    )


def _respond(problem: Problem, request: Request) -> JSONResponse:
    return JSONResponse(
        problem.document(str(request.url.path)),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _path_params(dependant: Dependant) -> list[Any]:
    """The path parameters a route's endpoint and its dependencies declare."""
    found = list(dependant.path_params)
    for sub in dependant.dependencies:
        found += [f for f in _path_params(sub) if f.name not in {p.name for p in found}]
    return found


def _takes(route: RouteContext, scope: MutableMapping[str, Any]) -> bool:
    """Whether `route` answers the path of `scope` with path parameters it accepts.

    /v1/imports/1 fits the template /v1/imports/{format}, but 1 is no format: that route does
    not serve the path, its sibling /v1/imports/{import_id} does.
    """
    match, child = route.matches(scope)
    if match is Match.NONE:
        return False
    dependant = getattr(route, "dependant", None)
    if not isinstance(dependant, Dependant):
        return True
    _, errors = request_params_to_args(_path_params(dependant), child.get("path_params", {}))
    return not errors


def _served_methods(request: Request) -> list[str]:
    """The methods served at the request's path, by the routes whose path parameters fit it.

    Starlette names only the first matching route's, and counts routes whose parameters do not
    fit (a sibling template); when no route's parameters fit, every matching route counts.
    """
    base = {
        "type": "http",
        "path": request.url.path,
        "root_path": request.scope.get("root_path", ""),
    }
    routes = list(iter_route_contexts(request.app.router.routes))
    fitting = [r for r in routes if _takes(r, {**base, "method": "GET"})] or routes
    return [
        method
        for method in _METHODS
        if any(r.matches({**base, "method": method})[0] is Match.FULL for r in fitting)
    ]


def _wrong_method(request: Request) -> Problem | None:
    """The 405 for a request whose path parameters fit only routes of other methods."""
    served = _served_methods(request)
    if not served or request.method in served:
        return None
    return Problem(
        405,
        "method-not-allowed",
        "Method Not Allowed",
        headers={"Allow": ", ".join(served)},
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error, expected or not, a problem document without a stack trace."""
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # `problem_responses` refer to the ProblemDocument schema: publish it with the others.
        schema = generate_openapi()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "ProblemDocument" not in components:
            document = ProblemDocument.model_json_schema(
                ref_template="#/components/schemas/{model}", mode="serialization"
            )
            components.update(document.pop("$defs", {}))
            components["ProblemDocument"] = document
        # Any request body may be refused for its size (services.core.observe): say so.
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if isinstance(operation, dict) and "requestBody" in operation:
                    operation.setdefault("responses", {}).setdefault(
                        "413", problem_responses(413)[413]
                    )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return _respond(exc, request)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if any(e.get("loc", ())[:1] == ("path",) for e in errors):
            # The path fits this route's template but not its parameters: if it fits a
            # sibling's (POST /v1/imports/1 beside GET /v1/imports/{import_id}), the resource
            # exists and the method is what is wrong.
            wrong = _wrong_method(request)
            if wrong is not None:
                return _respond(wrong, request)
        return _respond(validation_problem(errors), request)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI could not read the JSON body (bytes that are not UTF-8): name the body
            # and why, as for any other invalid body.
            return _respond(_unreadable_body(exc.__cause__), request)
        if isinstance(exc, BodyTooLarge):
            return _respond(payload_too_large(exc.limit), request)
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_served_methods(request))
        problem = Problem(exc.status_code, slug, str(exc.detail), headers=headers)
        return _respond(problem, request)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, OperationalError) and storage_full(exc):
            # Retrying will not help until an operator frees space: say so, and let /readyz
            # say it too for a while.
            request.app.state.storage_full_at = time.monotonic()
            log.error("database storage full on %s %s: %s", request.method, request.url.path, exc)
            problem = Problem(
                507,
                "storage-full",
                "the database's storage is full: nothing was stored; space must be freed "
                "before writes can succeed",
                headers={"Retry-After": "60"},
            )
            return _respond(problem, request)
        if isinstance(exc, (OperationalError, PoolTimeout)):
            # The database is away, or every connection of this process stayed busy for the
            # pool's timeout (an overload, or a stall behind a lock): the client may retry.
            away = isinstance(exc, OperationalError)
            log.warning(
                "%s on %s %s: %s",
                "database unavailable" if away else "no database connection free",
                request.method,
                request.url.path,
                exc,
            )
            detail = (
                "the database is unavailable; retry shortly"
                if away
                else "no database connection was free in time; retry shortly"
            )
            problem = Problem(503, "database-unavailable", detail, headers={"Retry-After": "5"})
            return _respond(problem, request)
        if isinstance(exc, IntegrityError):
            # Two requests raced to create the same thing (on PostgreSQL; SQLite serialises
            # writers); this one was rolled back whole and can simply be retried.
            log.info("conflicting concurrent write on %s %s", request.method, request.url.path)
            problem = Problem(
                409,
                "concurrent-conflict",
                "a concurrent request wrote the same resource; retry",
                headers={"Retry-After": "1"},
            )
            return _respond(problem, request)
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _respond(Problem(500, "internal", "an unexpected error occurred"), request)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    # Database errors by class, so they are answered where other handled errors are: a
    # handler for Exception runs in Starlette's outermost middleware, which answers and then
    # re-raises, logging a stack trace for what is an expected overload or race.
    app.add_exception_handler(OperationalError, on_unexpected)
    app.add_exception_handler(PoolTimeout, on_unexpected)
    app.add_exception_handler(IntegrityError, on_unexpected)
    app.add_exception_handler(Exception, on_unexpected)
