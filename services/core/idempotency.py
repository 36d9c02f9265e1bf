"""Safe retries of POSTs: a response stored under (caller, Idempotency-Key) is replayed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Header
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.core.auth import Principal
from services.core.models import IdempotencyRecord
from services.core.problems import Problem

MAX_KEY_LENGTH = 255
M = TypeVar("M", bound=BaseModel)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Makes a retried POST safe: the first response is replayed.",
    ),
]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response recorded for an idempotency key."""

    status_code: int
    body: Any


def request_fingerprint(path: str, body: BaseModel) -> str:
    """Hash what identifies a request, so a key reused for another request is refused."""
    digest = hashlib.sha256(path.encode())
    digest.update(b"\0")
    digest.update(body.model_dump_json().encode())
    return digest.hexdigest()


def lookup(
    session: Session, principal: Principal, key: str, fingerprint: str
) -> StoredResponse | None:
    """Return the stored response for a retried request, None for a first attempt."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise Problem(
            422,
            "validation",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
            errors=[
                {
                    "in": "header",
                    "pointer": "/idempotency-key",
                    "field": "Idempotency-Key",
                    "reason": "bad length",
                }
            ],
        )
    row = session.execute(
        select(IdempotencyRecord).where(
            IdempotencyRecord.principal == principal.ident, IdempotencyRecord.key == key
        )
    ).scalar_one_or_none()
    if row is None:
        return None
    if row.request_hash != fingerprint:
        # 409 rather than the draft standard's 422: the request itself is valid; it conflicts
        # with the one stored under this key (a new key sends it).
        raise Problem(
            409,
            "idempotency-key-reused",
            "this Idempotency-Key was already used for a different request",
            errors=[
                {
                    "in": "header",
                    "pointer": "/idempotency-key",
                    "field": "Idempotency-Key",
                    "reason": "already used for a different request",
                }
            ],
        )
    return StoredResponse(row.status_code, json.loads(row.body))


def remember(
    session: Session,
    principal: Principal,
    key: str,
    fingerprint: str,
    response: StoredResponse,
    now: datetime,
) -> None:
    """Store a response in the same unit of work as the change it reports."""
    record = IdempotencyRecord(
        principal=principal.ident,
        key=key,
        request_hash=fingerprint,
        status_code=response.status_code,
        body=json.dumps(response.body, separators=(",", ":"), default=str),
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(record)
    except IntegrityError as exc:
        # A concurrent request with the same key committed first; this one rolls back whole.
        raise Problem(
            409,
            "idempotency-conflict",
            "a request with this Idempotency-Key is being processed; retry to get its response",
        ) from exc


def once(
    session: Session,
    principal: Principal,
    key: str | None,
    path: str,
    body: BaseModel,
    now: datetime,
    response_type: type[M],
    produce: Callable[[], tuple[int, M]],
    kept: Callable[[M], M] | None = None,
) -> tuple[int, M]:
    """Run `produce` once per (caller, key); a retry with the same body gets the first response,
    or what `kept` leaves of it (a secret shown once is not stored, so not replayed)."""
    if key is None:
        return produce()
    fingerprint = request_fingerprint(path, body)
    stored = lookup(session, principal, key, fingerprint)
    if stored is not None:
        return stored.status_code, response_type.model_validate(stored.body)
    status, result = produce()
    remember(
        session,
        principal,
        key,
        fingerprint,
        StoredResponse(status, (kept(result) if kept else result).model_dump(mode="json")),
        now,
    )
    return status, result
