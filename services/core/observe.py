"""The outermost ASGI middleware: a request id, a body size limit, no caching of API answers,
metrics and one log line for every request.

Pure ASGI (no BaseHTTPMiddleware), so streamed bodies and responses pass through untouched.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import MutableMapping, Sequence
from typing import Any

from structlog.contextvars import bound_contextvars

from services.core import metrics
from services.core.activity import App, Receive, Scope, Send
from services.core.logs import REQUEST_ID, request_id_from
from services.core.problems import PROBLEM_MEDIA_TYPE, BodyTooLarge, payload_too_large

log = logging.getLogger("riskalert.request")

REQUEST_ID_HEADER = b"x-request-id"


class Observe:
    """Give each request an id (the caller's `X-Request-ID` if it looks like one), answer 413
    to bodies over `max_body_bytes` (but under `exempt` path prefixes, which check their own),
    count it, time it and log it once."""

    def __init__(self, app: App, *, max_body_bytes: int, exempt: Sequence[str] = ()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.exempt = tuple(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = request_id_from(headers.get(REQUEST_ID_HEADER, b"").decode("latin-1"))
        started = time.perf_counter()
        status = 500
        limited = not scope["path"].startswith(self.exempt)
        # Tenant data must not outlive a session in a browser's or proxy's cache.
        private = scope["path"].startswith("/v1/")

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(str(message["status"]))
                headers = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
                if private and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        received = 0

        async def counted() -> MutableMapping[str, Any]:
            nonlocal received
            message = await receive()
            if limited and message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        with bound_contextvars(**{REQUEST_ID: request_id}):
            try:
                declared = headers.get(b"content-length", b"")
                if limited and declared.isdigit() and int(declared) > self.max_body_bytes:
                    await self._too_large(scope, send_with_id)
                else:
                    try:
                        await self.app(scope, counted, send_with_id)
                    except BodyTooLarge:
                        await self._too_large(scope, send_with_id)
            finally:
                self._record(scope, status, time.perf_counter() - started)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        body = json.dumps(payload_too_large(self.max_body_bytes).document(scope["path"])).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _record(scope: Scope, status: int, seconds: float) -> None:
        matched = scope.get("route")
        # Route templates, not paths: ids in paths would make a series per resource.
        route = getattr(matched, "path", None) or "unmatched"
        method = scope["method"]
        metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
        metrics.HTTP_SECONDS.labels(method, route).observe(seconds)
        log.info(
            "%s %s %d",
            method,
            route,
            status,
            extra={"path": scope["path"], "status": status, "ms": round(seconds * 1000, 1)},
        )
