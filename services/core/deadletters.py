"""Dead letters: what a shared pipeline could not process, set aside so that the rest flows on.

A pipeline (a change-feed consumer, a tick, the delivery dispatcher, rescoring) runs a batch as
one unit of work. When the batch fails for a reason of its own rather than the database's (see
`transient`), `run` runs it again with a `Quarantine`: each item in a savepoint of its own. An
item that still raises is rolled back, recorded here with its error and skipped; the cursor
moves past it with the rest. Operators see dead letters at `GET /v1/dead-letters`, in the
`riskalert_dead_letters_open` gauge and in an ERROR log line, and resolve them once the cause is
dealt with.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from typing import TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.core.clock import Clock
from services.core.metrics import DEAD_LETTERS
from services.core.models import DeadLetter

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ERROR = 1000
MAX_TRACE = 8000


def transient(exc: BaseException) -> bool:
    """Whether a failure is the database's (away, busy, a conflict between transactions, a
    statement timeout): the whole batch runs again later and no item is to blame."""
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


class Quarantine:
    """Runs each item of a batch in a savepoint of its own; an item that raises is set aside."""

    def __init__(self, session: Session, pipeline: str, now: datetime) -> None:
        self._session = session
        self.pipeline = pipeline
        self._now = now

    @contextmanager
    def item(
        self, key: str, *, tenant_id: int | None = None, then: Callable[[], object] | None = None
    ) -> Iterator[None]:
        """Process one item: on a failure of its own, roll it back and record it instead, then
        run `then` (what keeps the item from coming back, such as clearing its timer)."""
        try:
            with self._session.begin_nested():
                yield
        except Exception as exc:
            if transient(exc):
                raise
            record(self._session, self.pipeline, key, exc, self._now, tenant_id=tenant_id)
            if then is not None:
                then()


def guard(
    quarantine: Quarantine | None,
    key: str,
    *,
    tenant_id: int | None = None,
    then: Callable[[], object] | None = None,
) -> AbstractContextManager[None]:
    """`quarantine.item(...)` when a batch is being run item by item; nothing otherwise."""
    if quarantine is None:
        return nullcontext()
    return quarantine.item(key, tenant_id=tenant_id, then=then)


def run(
    factory: sessionmaker[Session],
    pipeline: str,
    step: Callable[[Session, Quarantine | None], T],
    clock: Clock,
) -> T:
    """Run `step` as one unit of work; when it fails for one of its items, run it again item by
    item, setting aside those that fail on their own. A database failure is raised as it is."""
    try:
        with factory.begin() as session:
            return step(session, None)
    except Exception as exc:
        if transient(exc):
            raise
        log.warning(
            "%s: a batch failed (%s: %s); running it again item by item",
            pipeline,
            type(exc).__name__,
            _first_line(exc),
        )
    with factory.begin() as session:
        return step(session, Quarantine(session, pipeline, clock()))


def record(
    session: Session,
    pipeline: str,
    key: str,
    exc: BaseException,
    now: datetime,
    *,
    tenant_id: int | None = None,
) -> DeadLetter:
    """Store a dead letter for `key` in this unit of work, count it and tell the operator.

    The same item failing again while its letter is open adds an occurrence to that letter.
    """
    trace = "".join(traceback.format_exception(exc))[-MAX_TRACE:]
    error = _first_line(exc)[:MAX_ERROR]
    letter = session.execute(
        select(DeadLetter)
        .where(
            DeadLetter.resolved_at.is_(None),
            DeadLetter.pipeline == pipeline,
            DeadLetter.item == key[:200],
        )
        .limit(1)
    ).scalar_one_or_none()
    if letter is None:
        letter = DeadLetter(
            pipeline=pipeline,
            item=key[:200],
            tenant_id=tenant_id,
            error_class=type(exc).__name__[:120],
            error=error,
            trace=trace,
            created_at=now,
            occurrences=1,
            last_at=now,
        )
        session.add(letter)
        session.flush()
    else:
        letter.occurrences += 1
        letter.last_at = now
        letter.error_class, letter.error, letter.trace = type(exc).__name__[:120], error, trace
    DEAD_LETTERS.labels(pipeline).inc()
    log.error(
        "%s: set aside %s as dead letter %d (%s, %d time(s)); the rest goes on. "
        "See GET /v1/dead-letters/%d, and resolve it once the cause is fixed.",
        pipeline,
        key,
        letter.id,
        type(exc).__name__,
        letter.occurrences,
        letter.id,
        # The stack trace once; it is stored with the letter.
        exc_info=exc if letter.occurrences == 1 else None,
        extra={"dead_letter_id": letter.id, "pipeline": pipeline, "item": key},
    )
    return letter


def resolve(
    session: Session, letter: DeadLetter, *, by: int | None, note: str | None, now: datetime
) -> None:
    """Mark a dead letter dealt with (it stays listed, no longer counted as open)."""
    letter.resolved_at = now
    letter.resolved_by = by
    letter.note = note


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
