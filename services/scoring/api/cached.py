"""A shortcut for the hottest read: a current score document this process keeps (readcache),
asked for by a tenant key this process has resolved lately (auth.KeyCache).

Such a request is answered before routing, without FastAPI's routing and dependency solving,
most of what a cached read cost (docs/benchmarks.md). Everything else, and every doubt (a query
string, two credentials, an unknown key, a document not kept, a rate limit reached), goes to
the route, which decides as it always has: the shortcut only ever gives the answer the route
would give. Observe and Touch wrap it, so these requests are counted, timed and logged too.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from services.core.auth import count, known_caller, tenant_holds
from services.core.ids import MAX_ID
from services.core.problems import Problem
from services.scoring.api.deps import READER_ROLES
from services.scoring.readcache import Document, ScoreDocuments, not_modified
from services.scoring.taxonomy import TargetKind

_PATH = re.compile(r"/v1/(sites|corridors)/([1-9][0-9]{0,9})/score")
_KINDS = {"sites": TargetKind.SITE, "corridors": TargetKind.CORRIDOR}
_HEADERS = (b"authorization", b"x-api-key", b"if-none-match")


class CachedScoreReads:
    """ASGI middleware: answer `GET /v1/{sites,corridors}/{id}/score` from the read cache when
    nothing about the request needs the route; pass everything else on untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The score routes, by kind, as the router named them in the scope of a request it
        # routed: a shortcut answer names its route the same way (metrics and logs use it).
        # A document is only kept by the route, so its kind's route is known before a hit.
        self._routes: dict[TargetKind, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = None
        if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]:
            matched = _PATH.fullmatch(scope["path"])
        if matched is None:
            await self.app(scope, receive, send)
            return
        kind, target_id = _KINDS[matched[1]], int(matched[2])
        if not await self._answered(scope, send, kind, target_id):
            await self.app(scope, receive, send)
            if kind not in self._routes and scope.get("route") is not None:
                self._routes[kind] = scope["route"]

    async def _answered(self, scope: Scope, send: Send, kind: TargetKind, target_id: int) -> bool:
        state = scope["app"].state
        cache: ScoreDocuments | None = getattr(state, "score_documents", None)
        route = self._routes.get(kind)
        if cache is None or route is None or target_id > MAX_ID:
            return False
        found = _headers(scope)
        if found is None:
            return False
        principal = known_caller(state, found.get(b"authorization"), found.get(b"x-api-key"))
        # What TenantReader admits; a key holding neither role gets the route's 403.
        if principal is None or not tenant_holds(principal, READER_ROLES):
            return False
        assert principal.tenant_id is not None
        document = cache.get(principal.tenant_id, kind, target_id)
        if document is None:
            return False
        try:
            count(state, principal)
        except Problem:
            # Over the limit: a refused hit is not counted, so the route refuses it again,
            # with its own problem document.
            return False
        scope["route"] = route
        await _send(send, document, found.get(b"if-none-match", b"").decode("latin-1"))
        return True


def _headers(scope: Scope) -> dict[bytes, bytes] | None:
    """The request's credentials and `If-None-Match`, or None if one is repeated (the route
    reads the first of each; the shortcut leaves such requests to it)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _HEADERS:
            if name in found:
                return None
            found[name] = value
    return found


async def _send(send: Send, document: Document, if_none_match: str) -> None:
    """The route's answer (`targets._document_response`): the document with its ETag, or 304."""
    etag = document.etag.encode()
    if not_modified(document, if_none_match):
        headers: list[tuple[bytes, bytes]] = [(b"etag", etag)]
        body = b""
        status = 304
    else:
        body = document.body
        status = 200
        headers = [
            (b"etag", etag),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
