"""Current score documents kept in each process, so a score read opens no transaction.

A read of `/v1/sites/{id}/score` (or a corridor's) without `as_of` serves the stored document
as it was stored: the cache keeps it, keyed by tenant, kind and id, with an ETag, for
`RISKALERT_SCORING_READ_CACHE_TTL` (5 s by default; 0 turns the cache off). A miss reads the
database once, as before. Within a process, storing a score or changing or deleting a target
drops the entry at once; another process (a separate worker, another uvicorn worker) may
serve a document up to the TTL older than the stored one, and a document says when it was
computed (`as_of`). The tenant is part of the key: another tenant's id is a miss, which the
database then answers 404 as before.
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from services.scoring.taxonomy import TargetKind

# Entries per process at most: a document is ~6 KB, so about 300 MB at the bound.
MAX_ENTRIES = 50_000


@dataclass(frozen=True, slots=True)
class Document:
    """A stored current score as served: its JSON, its ETag, and until when it may be."""

    body: bytes
    etag: str
    expires: float


def etag_of(body: bytes) -> str:
    """A strong ETag for a document (its digest)."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


class ScoreDocuments:
    """The current score documents this process served lately, each for `ttl` seconds."""

    def __init__(
        self, ttl: float, *, clock: Callable[[], float] = time.monotonic, size: int = MAX_ENTRIES
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._size = size
        self._entries: dict[tuple[int, TargetKind, int], Document] = {}
        self._by_target: dict[int, tuple[int, TargetKind, int]] = {}
        # Puts run on the event loop, drops in worker threads too: writes take the lock.
        self._lock = threading.Lock()
        _LIVE.add(self)

    @property
    def enabled(self) -> bool:
        """Whether documents are kept at all."""
        return self._ttl > 0

    def get(self, tenant_id: int, kind: TargetKind, target_id: int) -> Document | None:
        """The tenant's target's document, if kept and not expired."""
        found = self._entries.get((tenant_id, kind, target_id))
        if found is None or found.expires <= self._clock():
            return None
        return found

    def put(self, tenant_id: int, kind: TargetKind, target_id: int, body: str) -> Document:
        """Keep a document read from the database, and return it."""
        raw = body.encode()
        document = Document(raw, etag_of(raw), self._clock() + self._ttl)
        if not self.enabled:
            return document
        key = (tenant_id, kind, target_id)
        with self._lock:
            if len(self._entries) >= self._size:
                # The oldest entry goes (dicts keep insertion order): enough for a bound.
                oldest = next(iter(self._entries))
                del self._entries[oldest]
                self._by_target.pop(oldest[2], None)
            self._entries[key] = document
            self._by_target[target_id] = key
        return document

    def drop(self, target_ids: Iterable[int]) -> None:
        """Forget the documents of these targets (a score stored, a target changed)."""
        with self._lock:
            for target_id in target_ids:
                key = self._by_target.pop(target_id, None)
                if key is not None:
                    self._entries.pop(key, None)


_LIVE: weakref.WeakSet[ScoreDocuments] = weakref.WeakSet()


def changed(target_ids: Iterable[int]) -> None:
    """Drop these targets' documents from every cache of this process."""
    ids = list(target_ids)
    for cache in list(_LIVE):
        cache.drop(ids)
