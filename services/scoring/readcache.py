"""Current score documents kept in each process, so a score read opens no transaction.

A read of `/v1/sites/{id}/score` (or a corridor's) without `as_of` serves the stored document
as it was stored: the cache keeps it, keyed by tenant, kind and id, with an ETag. Every unit of
work that stores scores or deletes a target announces `CHANNEL` when it commits
(`services.core.wake`): in this process that empties the cache at once, and on PostgreSQL a
`NOTIFY` does the same in every other process that listens. While a process's listener is not
connected its cache serves nothing, and what it kept before a reconnection is dropped
(notifications may have been missed meanwhile). `RISKALERT_SCORING_READ_CACHE_TTL` (60 s; 0
turns the cache off) bounds how long a document is kept whatever happens. The tenant is part of
the key: another tenant's id is a miss, which the database then answers 404 as before.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.scoring.taxonomy import TargetKind

CHANNEL = "riskalert_scores"
# Entries per process at most: a document is ~6 KB, so about 300 MB at the bound.
MAX_ENTRIES = 50_000


@dataclass(frozen=True, slots=True)
class Document:
    """A stored current score as served: its JSON, its ETag, and until when it may be."""

    body: bytes
    etag: str
    expires: float
    epoch: int


def etag_of(body: bytes) -> str:
    """A strong ETag for a document (its digest)."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def not_modified(document: Document, if_none_match: str) -> bool:
    """Whether `If-None-Match` names the document: RFC 9110 13.1.2's weak comparison, and `*`
    matches any current representation."""
    if if_none_match.strip() == "*":
        return True
    return document.etag in (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))


def always() -> int:
    """The epoch of a process that hears every change (SQLite's one process)."""
    return 0


def never() -> None:
    """The epoch of a process that cannot hear changes made elsewhere (SQLite with a separate
    worker): nothing is kept."""
    return None


class ScoreDocuments:
    """The current score documents this process served lately.

    `epoch()` is None while changes made elsewhere may go unheard (nothing is served then),
    and changes whenever they may have been missed (what was kept before is not served).
    """

    def __init__(
        self,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        epoch: Callable[[], int | None] = always,
        size: int = MAX_ENTRIES,
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._epoch = epoch
        self._size = size
        self._entries: dict[tuple[int, TargetKind, int], Document] = {}
        # Bumped by every clear: a document read before a change committed is not kept after.
        self.generation = 0
        # Puts run on the event loop and in request threads, clears in any thread: writes lock.
        self._lock = threading.Lock()

    def get(self, tenant_id: int, kind: TargetKind, target_id: int) -> Document | None:
        """The tenant's target's document, if kept, not expired and still trusted."""
        found = self._entries.get((tenant_id, kind, target_id))
        if found is None or found.expires <= self._clock() or found.epoch != self._epoch():
            return None
        return found

    def put(
        self, tenant_id: int, kind: TargetKind, target_id: int, body: str, generation: int
    ) -> Document:
        """Keep a document read from the database since `generation`, and return it."""
        raw = body.encode()
        epoch = self._epoch()
        expires = self._clock() + self._ttl
        document = Document(raw, etag_of(raw), expires, -1 if epoch is None else epoch)
        key = (tenant_id, kind, target_id)
        with self._lock:
            if self._ttl <= 0 or epoch is None or generation != self.generation:
                return document  # served once, not kept
            if len(self._entries) >= self._size:
                # The oldest entry goes (dicts keep insertion order): enough for a bound.
                del self._entries[next(iter(self._entries))]
            self._entries[key] = document
        return document

    def set(self) -> None:
        """Forget everything: scores were stored (a `wake` ring of CHANNEL)."""
        with self._lock:
            self.generation += 1
            self._entries.clear()
