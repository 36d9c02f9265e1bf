"""A webhook receiver for the benchmarks: verifies every request with `standardwebhooks`.

    .venv/bin/python -m benchmarks.receiver --port 9100 --secret whsec_...

POST anything: verified, recorded, answered 204 (401 when the signature does not verify).
GET /stats: every record so far as JSON; GET /count: only how many, by type, and how many
incidents have had an `alert.triggered` (cheap enough to poll). POST /reset: forget them.
Binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Receiver:
    """A raw ASGI app: no framework between the socket and the verifier."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret)
        self.records: list[dict[str, Any]] = []
        self.rejected = 0
        self.by_type: Counter[str] = Counter()
        self.triggered: set[int] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        arrived = time.time()
        if scope["method"] == "GET" and scope["path"] == "/stats":
            await answer(
                send, 200, json.dumps({"records": self.records, "rejected": self.rejected})
            )
            return
        if scope["method"] == "GET" and scope["path"] == "/count":
            counts = {
                "records": len(self.records),
                "by_type": self.by_type,
                "triggered_incidents": len(self.triggered),
                "rejected": self.rejected,
            }
            await answer(send, 200, json.dumps(counts))
            return
        if scope["method"] == "POST" and scope["path"] == "/reset":
            self.records, self.rejected = [], 0
            self.by_type, self.triggered = Counter(), set()
            await answer(send, 204, "")
            return
        headers = headers_of(scope)
        payload = await verified(self._webhook, body, headers, send)
        if payload is None:
            self.rejected += 1
            return
        data = payload.get("data", {})
        incident = data.get("incident") or {}
        kind = str(payload.get("type"))
        self.by_type[kind] += 1
        if kind == "alert.triggered" and incident.get("id") is not None:
            self.triggered.add(incident["id"])
        self.records.append(
            {
                "id": headers["webhook-id"],
                "at": arrived,
                "path": scope["path"],
                "type": payload.get("type"),
                "incident_id": incident.get("id"),
            }
        )
        await answer(send, 204, "")


async def read_body(receive: Receive) -> bytes:
    """The whole request body (bounded: a body comes in a few chunks)."""
    body = b""
    for _ in range(100_000):
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return body


def headers_of(scope: Scope) -> dict[str, str]:
    """A request's headers by (lower-case) name."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


async def verified(
    webhook: Webhook, body: bytes, headers: dict[str, str], send: Send
) -> dict[str, Any] | None:
    """The payload if its signature verifies; else None, once 401 is answered."""
    try:
        payload: dict[str, Any] = webhook.verify(body, headers)
    except WebhookVerificationError:
        await answer(send, 401, "")
        return None
    return payload


async def answer(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    uvicorn.run(
        Receiver(args.secret),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
