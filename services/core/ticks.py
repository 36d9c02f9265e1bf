"""Periodic ticks that run once per slot, however many processes schedule them.

Every API and worker process schedules the same ticks (APScheduler 3, aligned to multiples of
their interval since 2000-01-01 UTC). Before running, a process claims the tick's slot with an
`INSERT ... ON CONFLICT DO NOTHING` into `tick_run`: the first claim runs, the others skip. A
tick whose run fails is not retried in the same slot; the next slot runs it again, and each
tick is idempotent anyway (a second run finds nothing left to do).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.base import BaseScheduler
from sqlalchemy import Table, delete
from sqlalchemy.orm import Session, sessionmaker

from services.core import metrics
from services.core.db import insert_ignoring_conflicts
from services.core.models import TickRun

log = logging.getLogger(__name__)

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# Claims older than this are deleted as new ones are made: the table stays a few rows a tick.
KEEP = timedelta(days=2)
PROCESS = f"{socket.gethostname()}:{os.getpid()}"[:120]


def slot_of(moment: datetime, every: timedelta) -> datetime:
    """The slot a run at `moment` belongs to: the nearest multiple of `every` since EPOCH, so
    that processes firing a little early or late for the same slot name the same one."""
    return EPOCH + math.floor((moment - EPOCH) / every + 0.5) * every


def claim(factory: sessionmaker[Session], name: str, every: timedelta, moment: datetime) -> bool:
    """Claim `name`'s slot at `moment`; False when another process already has it."""
    slot = slot_of(moment, every)
    table = TickRun.__table__
    assert isinstance(table, Table)
    with factory.begin() as session:
        won = insert_ignoring_conflicts(
            session,
            table,
            {"name": name, "slot_at": slot, "process": PROCESS, "started_at": moment},
            ["name", "slot_at"],
        )
        if won:
            session.execute(
                delete(TickRun).where(TickRun.name == name, TickRun.slot_at < slot - KEEP)
            )
    return won


def run_once(
    factory: sessionmaker[Session],
    name: str,
    every: timedelta,
    func: Callable[..., object],
    args: Sequence[object],
) -> bool:
    """Run `func(*args)` if this process wins the current slot of tick `name`."""
    now = datetime.now(UTC)
    slot = {"tick": name, "slot": slot_of(now, every).isoformat()}
    if not claim(factory, name, every, now):
        log.debug("tick %s: this slot ran in another process", name, extra=slot)
        metrics.TICKS.labels(name, "elsewhere").inc()
        return False
    began = time.perf_counter()
    try:
        func(*args)
    except Exception:
        metrics.TICKS.labels(name, "failed").inc()
        raise
    metrics.TICKS.labels(name, "ran").inc()
    # Ticks are minutes apart in production: a line each tells which process did what.
    log.info(
        "tick %s ran", name, extra={**slot, "ms": round((time.perf_counter() - began) * 1000, 1)}
    )
    return True


def add_tick(
    scheduler: BaseScheduler,
    factory: sessionmaker[Session],
    name: str,
    every: timedelta,
    func: Callable[..., object],
    args: Sequence[object],
    **job: Any,
) -> None:
    """Schedule `func(*args)` every `every`, run once per slot across all processes."""
    scheduler.add_job(
        run_once,
        "interval",
        args=[factory, name, every, func, list(args)],
        seconds=every.total_seconds(),
        id=name,
        # Every process fires at the same moments, so they compete for the same slot.
        start_date=EPOCH,
        # A tick that could not run on time (a busy process, or none up at midnight) runs late
        # rather than not at all; ticks missed meanwhile are one run.
        misfire_grace_time=None,
        coalesce=True,
        max_instances=1,
        **job,
    )
