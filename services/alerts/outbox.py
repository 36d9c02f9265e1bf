"""The delivery outbox: enqueue in the deciding transaction, claim with leases, settle by token."""

from __future__ import annotations

import functools
import secrets
import string
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from random import Random
from typing import Any, cast, get_args

from sqlalchemy import (
    Integer,
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from services.alerts import notify, retry
from services.alerts.models import Delivery, DeliveryAttempt, DigestItem, Endpoint, EndpointSecret
from services.alerts.settings import AlertsSettings
from services.alerts.webhooks import AttemptResult, clip
from services.core import metrics, wake
from services.core.deadletters import Quarantine
from services.core.logs import current_request_id

# Rung (NOTIFY on Postgres, an event in-process) when a unit of work that enqueued commits.
DELIVERY_CHANNEL = "riskalert_delivery"

PENDING, SENDING = "pending", "sending"
SUCCEEDED, FAILED, CANCELLED, SUPERSEDED = "succeeded", "failed", "cancelled", "superseded"
SETTLED = (SUCCEEDED, FAILED, CANCELLED, SUPERSEDED)
STATUSES = (PENDING, SENDING, *SETTLED)

# Claim order: event alerts go before threshold notices, and those before digests, to every
# endpoint and across all of them (a backlog of bulk notices never holds a kidnapping alert).
URGENT, NOTICE, BULK = 0, 1, 2
_URGENT_TYPES = frozenset({"alert.triggered", "alert.updated", "endpoint.test"})

_ALPHABET = string.ascii_letters + string.digits
# How stale an endpoint's `last_success_at` may get while it keeps succeeding.
HEALTH_RESOLUTION = timedelta(minutes=1)


def priority_of(event_type: str) -> int:
    """The claim order of a notification: event alerts (and a test someone is waiting for)
    first, daily digests last, everything else in between."""
    if event_type in _URGENT_TYPES:
        return URGENT
    return BULK if event_type == "digest.daily" else NOTICE


def new_message_id() -> str:
    """A fresh Standard Webhooks message id (`msg_` and 24 random characters)."""
    return "msg_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def enqueue(
    session: Session,
    *,
    tenant_id: int,
    endpoints: Sequence[Endpoint],
    alert_id: int | None,
    event_type: str,
    sequence: int,
    payload: Mapping[str, Any],
    now: datetime,
    dedupe: str | None = None,
    flush: bool = True,
) -> list[Delivery]:
    """Add one delivery per enabled endpoint; older unsent states of the same alert are superseded.

    `dedupe` (with the endpoint id appended) makes enqueuing the same notification twice a
    constraint error, for ticks that several processes may run. Without `flush` the rows are
    written with the session's next flush (many notices, one multi-row INSERT), and have no
    ids until then.
    """
    rows: list[Delivery] = []
    for endpoint in endpoints:
        if not endpoint.enabled:
            continue
        # An alert's first notice (sequence 1) has no older state that could be waiting.
        if alert_id is not None and sequence > 1:
            # The receiver wants the newest state; an older one not yet sent would only arrive
            # after it or be dropped by `sequence`, so it is not sent at all.
            session.execute(
                update(Delivery)
                .where(
                    Delivery.alert_id == alert_id,
                    Delivery.endpoint_id == endpoint.id,
                    Delivery.status == PENDING,
                )
                .values(status=SUPERSEDED, settled_at=now, updated_at=now)
            )
        rows.append(
            Delivery(
                **new_delivery(
                    tenant_id=tenant_id, endpoint_id=endpoint.id, alert_id=alert_id,
                    event_type=event_type, sequence=sequence, payload=payload, now=now,
                    dedupe=dedupe,
                )
            )
        )  # fmt: skip
    if rows:
        session.add_all(rows)
        if flush:
            session.flush()
        wake.announce(session, DELIVERY_CHANNEL)
    return rows


def new_delivery(
    *,
    tenant_id: int,
    endpoint_id: int,
    alert_id: int | None,
    event_type: str,
    sequence: int,
    payload: Mapping[str, Any],
    now: datetime,
    dedupe: str | None,
) -> dict[str, Any]:
    """The columns of a new pending delivery, due now."""
    return {
        "tenant_id": tenant_id,
        "endpoint_id": endpoint_id,
        "alert_id": alert_id,
        "event_type": event_type,
        "message_id": new_message_id(),
        "dedupe_key": f"{dedupe}:e{endpoint_id}" if dedupe else None,
        "sequence": sequence,
        "priority": priority_of(event_type),
        "payload": dict(payload),
        "request_id": current_request_id(),
        "status": PENDING,
        "attempts": 0,
        "schedule_offset": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


def insert_new(session: Session, values: Sequence[Mapping[str, Any]]) -> None:
    """Insert first notices (`new_delivery`) in one executemany: no objects, no ids back.

    For many notices at once, such as one incident alerting many targets: without RETURNING
    the driver sends one short prepared statement per row in a pipeline, where an ORM flush
    would build, and the driver parse, one statement with a placeholder per value.
    """
    if values:
        session.execute(insert(_D), list(values))
        wake.announce(session, DELIVERY_CHANNEL)


def hold_for_digest(
    session: Session,
    *,
    tenant_id: int,
    endpoints: Sequence[Endpoint],
    alert_id: int | None,
    payload: Mapping[str, Any],
    now: datetime,
) -> None:
    """Keep a notification for each endpoint's next daily digest (written at the next flush)."""
    session.add_all(
        DigestItem(
            tenant_id=tenant_id,
            endpoint_id=e.id,
            alert_id=alert_id,
            payload=dict(payload),
            created_at=now,
        )
        for e in endpoints
        if e.enabled
    )


@dataclass(frozen=True)
class Claimed:
    """A leased delivery and everything needed to attempt it without the database."""

    id: int
    token: str
    attempt: int
    endpoint_id: int
    kind: str
    address: str
    secrets: tuple[str, ...]
    message_id: str
    event_type: str
    payload: dict[str, Any]
    unsubscribe_token: str | None
    # When the lease was taken and when it runs out: an attempt's deadline counts from the
    # claim, so a worker that stalls after claiming never sends once another could take over.
    leased_at: datetime
    lease_expires_at: datetime
    request_id: str | None = None  # of the request that caused it, for the attempt's logs


# The hot statements are Core, on the tables: the ORM's per-statement bookkeeping costs more
# than running these small queries. Built once, with bind parameters.
_D = cast(Table, Delivery.__table__)
_E = cast(Table, Endpoint.__table__)
_S = cast(Table, EndpointSecret.__table__)
_older = _D.alias("older")
# An endpoint's own limit of deliveries in flight (None: the setting's). A subquery per row,
# not a join: joined, the locking candidates query took six times as long.
_LIMIT_OF = select(_E.c.max_in_flight).where(_E.c.id == _D.c.endpoint_id).scalar_subquery()
# Deliveries in flight to the given endpoints across every worker (leases not yet expired),
# with each endpoint's own limit. By endpoint (ix_delivery_endpoint_id_status), never over all
# of `sending`: on PostgreSQL that index range holds every row version that was ever sending
# until a vacuum, thousands under load.
_IN_FLIGHT = (
    select(_D.c.endpoint_id, func.count().label("n"), _LIMIT_OF.label("max_in_flight"))
    .where(
        _D.c.endpoint_id.in_(bindparam("ids", expanding=True)),
        _D.c.status == SENDING,
        _D.c.lease_expires_at > bindparam("now"),
    )
    .group_by(_D.c.endpoint_id)
)
# Rounds of candidates a claim reads at most: each leaves out the endpoints the one before found
# at their limit (a hanging endpoint's backlog), so the others' deliveries are reached.
CLAIM_ROUNDS = 3
# Due candidates, most urgent first, then oldest first (a cheap, index-driven read); a delivery
# waits while an older state of the same alert is in flight to the same endpoint, so the newest
# arrives last. In the order of ix_delivery_status_priority_next_attempt_at and nothing more:
# with `id` added to the ORDER BY, PostgreSQL read and sorted every due row that shared the first
# due time (all of a fan-out enqueued in one transaction: 20,000 rows, 17 ms) to return the first
# few hundred. Deliveries due at the same moment go in index order (insertion order on SQLite).
_CANDIDATES = (
    select(_D.c.id, _D.c.endpoint_id, _LIMIT_OF.label("max_in_flight"))
    .where(
        _D.c.status == PENDING,
        _D.c.next_attempt_at <= bindparam("now"),
        # Endpoints found at their limit are left out here, not after the LIMIT, so a
        # hanging endpoint's backlog cannot fill every window (property 6).
        _D.c.endpoint_id.not_in(bindparam("full", expanding=True)),
        or_(
            _D.c.alert_id.is_(None),
            ~exists().where(
                _older.c.alert_id == _D.c.alert_id,
                _older.c.endpoint_id == _D.c.endpoint_id,
                _older.c.status.in_((PENDING, SENDING)),
                _older.c.id < _D.c.id,
            ),
        ),
    )
    .order_by(_D.c.priority, _D.c.next_attempt_at)
    .limit(bindparam("n", type_=Integer))
    .with_for_update(skip_locked=True)
)
# PostgreSQL: the endpoints no other worker is claiming for at this moment (a lock until this
# transaction ends), so two workers cannot both fill the same endpoint's free places.
_ENDPOINT_LOCK_SPACE = 0x0E1D
_TRY_LOCK_ENDPOINTS = text(
    "SELECT id FROM unnest(CAST(:ids AS integer[])) AS id "
    "WHERE pg_try_advisory_xact_lock(:space, id)"
)
# Leases the picked deliveries and returns what sending them needs, in one statement.
_LEASE = (
    update(_D)
    .where(_D.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status=SENDING,
        lease_owner=bindparam("owner"),
        lease_token=bindparam("token"),
        lease_expires_at=bindparam("expires"),
        attempts=_D.c.attempts + 1,
        updated_at=bindparam("now"),
    )
    .returning(
        _D.c.id,
        _D.c.endpoint_id,
        _D.c.attempts,
        _D.c.message_id,
        _D.c.event_type,
        _D.c.payload,
        _D.c.request_id,
    )
)
_SECRETS = (
    select(_S.c.endpoint_id, _S.c.secret)
    .where(
        _S.c.endpoint_id.in_(bindparam("ids", expanding=True)),
        or_(_S.c.expires_at.is_(None), _S.c.expires_at > bindparam("now")),
    )
    .order_by(_S.c.endpoint_id, _S.c.id.desc())
)
# Attempts are write-only from here and many.
_A = cast(Table, DeliveryAttempt.__table__)
_ATTEMPTS = insert(_A)
_ATTEMPT_COLUMNS = (
    "delivery_id", "number", "started_at", "duration_ms", "outcome", "status_code",
    "error_class", "error", "response_body", "worker",
)  # fmt: skip
# PostgreSQL: a batch of attempts as one statement over arrays, whose text (and so its prepared
# plan) does not change with the batch size, instead of one execution per row.
_ATTEMPTS_PG = text(
    "INSERT INTO delivery_attempt (delivery_id, number, started_at, duration_ms, outcome, "
    "status_code, error_class, error, response_body, worker) "
    "SELECT * FROM unnest(CAST(:delivery_id AS integer[]), CAST(:number AS integer[]), "
    "CAST(:started_at AS timestamptz[]), CAST(:duration_ms AS float8[]), "
    "CAST(:outcome AS varchar[]), CAST(:status_code AS integer[]), "
    "CAST(:error_class AS varchar[]), CAST(:error AS varchar[]), "
    "CAST(:response_body AS text[]), CAST(:worker AS varchar[]))"
)
# The claimed deliveries' endpoints as they are now (read at every claim: a PATCH, a rotation or
# a 410 takes effect at the next attempt), with the secrets that sign now, newest first.
_ENDPOINTS = (
    select(_E.c.id, _E.c.enabled, _E.c.kind, _E.c.address, _E.c.unsubscribe_token, _S.c.secret)
    .select_from(
        _E.outerjoin(
            _S,
            and_(
                _S.c.endpoint_id == _E.c.id,
                or_(_S.c.expires_at.is_(None), _S.c.expires_at > bindparam("now")),
            ),
        )
    )
    .where(_E.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_E.c.id, _S.c.id.desc())
)
_HOLDERS = (
    select(_D.c.id, _D.c.status, _D.c.lease_token)
    .where(_D.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_D.c.id)
    .with_for_update()
)
# What a delivered attempt leaves on its delivery: settled, its lease released.
_SUCCEEDED_VALUES: dict[str, Any] = {
    "status": SUCCEEDED,
    "settled_at": bindparam("now"),
    "updated_at": bindparam("now"),
    "lease_owner": None,
    "lease_token": None,
    "lease_expires_at": None,
    "last_error": None,
}
_SUCCEEDED = (
    update(_D).where(_D.c.id.in_(bindparam("ids", expanding=True))).values(_SUCCEEDED_VALUES)
)
# Delivered attempts whose worker still holds the lease (by delivery id and lease token), closed
# in one statement; the ids it closed come back, the rest take the general path.
_DELIVERED = (
    update(_D)
    .where(
        tuple_(_D.c.id, _D.c.lease_token).in_(bindparam("held", expanding=True)),
        _D.c.status == SENDING,
    )
    .values(_SUCCEEDED_VALUES)
    .returning(_D.c.id)
)
_DELIVERED_PG = text(
    "UPDATE delivery SET status = :succeeded, settled_at = :now, updated_at = :now, "
    "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, last_error = NULL "
    "FROM unnest(CAST(:ids AS integer[]), CAST(:tokens AS varchar[])) AS held (id, token) "
    "WHERE delivery.id = held.id AND delivery.lease_token = held.token "
    "AND delivery.status = :sending RETURNING delivery.id"
)
# Only endpoints whose health changes, or whose last success is over a minute old: a busy
# endpoint's row is not rewritten (and locked) by every worker's every batch.
_HEALTHY = (
    update(_E)
    .where(
        _E.c.id.in_(bindparam("ids", expanding=True)),
        or_(
            _E.c.failing_since.is_not(None),
            _E.c.last_success_at.is_(None),
            _E.c.last_success_at < bindparam("stale"),
        ),
    )
    .values(failing_since=None, last_success_at=bindparam("now"))
)


def claim(
    session: Session,
    *,
    owner: str,
    limit: int,
    now: datetime,
    lease: timedelta,
    slots: int,
) -> list[Claimed]:
    """Lease up to `limit` due deliveries, most urgent first, keeping every endpoint within its
    limit of deliveries in flight across all workers (`max_in_flight`, else `slots`)."""
    if limit <= 0:
        return []
    postgres = session.get_bind().dialect.name == "postgresql"
    skipped: set[int] = set()
    picked: list[int] = []
    for _ in range(CLAIM_ROUNDS):
        known = len(skipped)
        # An empty list would render as NOT IN (NULL), which matches nothing; 0 is no endpoint.
        params = {"now": now, "n": limit * 4, "full": sorted(skipped) or [0]}
        candidates = session.execute(_CANDIDATES, params).all()
        # The endpoints a pick could use if each had all its places free: only those are
        # locked and counted, not every candidate's.
        ends = {c.id: c.endpoint_id for c in candidates}
        usable = {ends[i] for i in pick(candidates, {}, slots=slots, limit=limit)}
        wanted = sorted(usable)
        candidates = [c for c in candidates if c.endpoint_id in usable]
        if postgres and wanted:
            # SQLite has one writer. Here another worker may be claiming for the same endpoints
            # at this moment: take only those no other worker holds (a lock until this
            # transaction ends), so the counts below stay true until the leases are written.
            held = set(
                session.execute(
                    _TRY_LOCK_ENDPOINTS, {"ids": wanted, "space": _ENDPOINT_LOCK_SPACE}
                ).scalars()
            )
            skipped.update(e for e in wanted if e not in held)
            candidates = [c for c in candidates if c.endpoint_id in held]
            wanted = sorted(held)
        room = {
            row.endpoint_id: (row.max_in_flight or slots) - row.n
            for row in session.execute(_IN_FLIGHT, {"now": now, "ids": wanted})
        }
        picked = pick(candidates, room, slots=slots, limit=limit)
        skipped.update(e for e, free in room.items() if free <= 0)
        if picked or len(skipped) == known:
            break
    if not picked:
        return []
    # One lease token for the batch: it is as unguessable as one per row, and one UPDATE
    # takes the whole batch.
    token = secrets.token_hex(16)
    leased = session.execute(
        _LEASE,
        {"ids": picked, "owner": owner, "token": token, "expires": now + lease, "now": now},
    ).all()
    # In the order picked: the most urgent is sent first.
    order = {delivery_id: n for n, delivery_id in enumerate(picked)}
    chosen = sorted(leased, key=lambda r: order[r.id])
    endpoint_ids = {d.endpoint_id for d in chosen}
    endpoints: dict[int, Any] = {}
    keys: dict[int, list[str]] = {}
    for row in session.execute(_ENDPOINTS, {"ids": sorted(endpoint_ids), "now": now}):
        endpoints.setdefault(row.id, row)
        if row.secret is not None:
            keys.setdefault(row.id, []).append(row.secret)
    # Disabled since it was enqueued (unsubscribed, 410, a concurrent PATCH): never sent.
    stopped = [d.id for d in chosen if not endpoints[d.endpoint_id].enabled]
    if stopped:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(stopped))
            .values(
                status=CANCELLED, settled_at=now, updated_at=now, last_error="endpoint disabled",
                lease_owner=None, lease_token=None, lease_expires_at=None,
            )
            .execution_options(synchronize_session=False)
        )  # fmt: skip
        chosen = [d for d in chosen if endpoints[d.endpoint_id].enabled]
    return [
        Claimed(
            id=row.id,
            token=token,
            attempt=row.attempts,
            endpoint_id=row.endpoint_id,
            kind=endpoints[row.endpoint_id].kind,
            address=endpoints[row.endpoint_id].address,
            secrets=tuple(keys.get(row.endpoint_id, ())),
            message_id=row.message_id,
            event_type=row.event_type,
            payload=row.payload,
            unsubscribe_token=endpoints[row.endpoint_id].unsubscribe_token,
            leased_at=now,
            lease_expires_at=now + lease,
            request_id=row.request_id,
        )
        for row in chosen
    ]


def pick(
    candidates: Sequence[Any], room: Mapping[int, int], *, slots: int, limit: int
) -> list[int]:
    """The ids of up to `limit` candidates, in their order, leaving no endpoint more deliveries
    in flight than it has room for (`room`; an endpoint not in it has all its places free:
    its `max_in_flight`, else `slots`)."""
    free = dict(room)
    picked: list[int] = []
    for delivery_id, endpoint_id, max_in_flight in candidates:
        left = free.get(endpoint_id, max_in_flight or slots)
        if left <= 0:
            continue
        free[endpoint_id] = left - 1
        picked.append(delivery_id)
        if len(picked) >= limit:
            break
    return picked


def active_secrets(session: Session, endpoint_ids: set[int], now: datetime) -> dict[int, list[str]]:
    """The secrets that sign now, per endpoint: the current one first, then any in grace."""
    rows = session.execute(_SECRETS, {"ids": sorted(endpoint_ids), "now": now})
    out: dict[int, list[str]] = {}
    for endpoint_id, secret in rows:
        out.setdefault(endpoint_id, []).append(secret)
    return out


# What settling reports besides a delivery's new status.
LEASE_LOST = "lease-lost"  # the attempt ended after its lease expired: recorded, decides nothing
RELEASED = "released"  # nothing was sent (the lease was too far gone): handed back, due now
DELETED = "deleted"  # the delivery was deleted meanwhile (its endpoint was): nothing recorded
# How the reaper records an attempt whose worker never settled it.
LOST, REAPER = "lost", "reaper"
_LATE = "finished after its lease expired; the delivery had been handed back to the queue"
_NEVER_SENT = "expired before it sent anything: nothing was sent"


@dataclass(frozen=True)
class Settled:
    """What settling one attempt did, for the worker's log and its owner notices."""

    delivery_id: int
    status: str
    disabled_endpoint: int | None = None
    attempt: int | None = None
    outcome: str | None = None


@dataclass(frozen=True)
class Attempted:
    """One finished attempt of a claimed delivery, to be settled.

    `sent` is False when the worker found its lease too far gone to send at all (it stalled
    between claim and send): nothing reached the receiver, and the delivery goes back to the
    queue without counting an attempt.
    """

    claimed: Claimed
    result: AttemptResult
    started_at: datetime
    sent: bool = True


def settle(
    session: Session,
    attempts: Sequence[Attempted],
    *,
    now: datetime,
    owner: str,
    settings: AlertsSettings,
    rng: Random,
    quarantine: Quarantine | None = None,
) -> list[Settled]:
    """Record attempts and move their deliveries on where this worker still holds the lease.

    A few statements for the whole batch: the attempts are inserted together, the deliveries
    and their endpoints are locked and read in one query each. With a `quarantine`, attempt by
    attempt: one that cannot be recorded is set aside and its delivery closed by its outcome
    alone (succeeded or failed), so it is neither sent again nor kept sending forever.
    """
    if quarantine is None:
        return _settle(session, attempts, now=now, owner=owner, settings=settings, rng=rng)
    out: list[Settled] = []
    for a in attempts:
        with quarantine.item(
            f"delivery {a.claimed.id}, attempt {a.claimed.attempt}",
            then=functools.partial(_close, session, a, now),
        ):
            out.extend(_settle(session, [a], now=now, owner=owner, settings=settings, rng=rng))
    return out


def _close(session: Session, attempt: Attempted, now: datetime) -> None:
    """Settle a delivery whose attempt could not be recorded, by the attempt's outcome only."""
    if not attempt.sent:
        _release(session, [attempt.claimed.id], now, token=attempt.claimed.token)
        return
    delivered = attempt.result.outcome == "delivered"
    session.execute(
        update(_D)
        .where(
            _D.c.id == attempt.claimed.id,
            _D.c.status == SENDING,
            _D.c.lease_token == attempt.claimed.token,
        )
        .values(
            status=SUCCEEDED if delivered else FAILED,
            settled_at=now,
            updated_at=now,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
            last_error=None if delivered else "the attempt could not be recorded (a dead letter)",
        )
    )


def _release(
    session: Session, ids: Sequence[int], now: datetime, *, token: str | None = None
) -> None:
    """Hand leased deliveries that were never sent back to the queue, due now; the attempt they
    were claimed for did not happen, so it is not counted. With a `token`, only where it still
    holds the lease (without, the caller has checked it under lock)."""
    held = [_D.c.status == SENDING] + ([_D.c.lease_token == token] if token else [])
    session.execute(
        update(_D)
        .where(_D.c.id.in_(ids), *held)
        .values(
            status=PENDING,
            attempts=_D.c.attempts - 1,
            next_attempt_at=now,
            updated_at=now,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
        )
    )
    wake.announce(session, DELIVERY_CHANNEL)


def record_attempts(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert attempt rows (`_attempt_values`) in one statement."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_ATTEMPTS_PG, {c: [r[c] for r in rows] for c in _ATTEMPT_COLUMNS})
    else:
        session.execute(_ATTEMPTS, list(rows))


def _attempt_values(a: Attempted, owner: str) -> dict[str, Any]:
    """The row recording one attempt."""
    return {
        "delivery_id": a.claimed.id,
        "number": a.claimed.attempt,
        "started_at": a.started_at,
        "duration_ms": a.result.duration_ms,
        "outcome": a.result.outcome,
        "status_code": a.result.status_code,
        "error_class": a.result.error_class,
        "error": (a.result.error or "")[:500] or None,
        "response_body": a.result.response_body,
        "worker": owner,
    }


def _settle(
    session: Session,
    attempts: Sequence[Attempted],
    *,
    now: datetime,
    owner: str,
    settings: AlertsSettings,
    rng: Random,
) -> list[Settled]:
    if not attempts:
        return []
    out = _settle_delivered(session, attempts, now=now, owner=owner)
    if out:
        closed = {s.delivery_id for s in out}
        attempts = [a for a in attempts if a.claimed.id not in closed]
        if not attempts:
            return out
    return out + _settle_held(session, attempts, now=now, owner=owner, settings=settings, rng=rng)


def _settle_delivered(
    session: Session, attempts: Sequence[Attempted], *, now: datetime, owner: str
) -> list[Settled]:
    """The common case, in three statements whatever the batch size: the delivered attempts
    whose lease is still this worker's close their deliveries, are recorded, and mark their
    endpoints healthy. What is left (failures, lost leases) is for `_settle_held`."""
    once = Counter(a.claimed.id for a in attempts)
    # A delivery twice in one batch (an attempt that outlived its lease, and the next claim's)
    # is told apart by its token, one by one, in the general path.
    delivered = [
        a
        for a in attempts
        if a.sent and a.result.outcome == "delivered" and once[a.claimed.id] == 1
    ]
    if not delivered:
        return []
    if session.get_bind().dialect.name == "postgresql":
        ids, tokens = [a.claimed.id for a in delivered], [a.claimed.token for a in delivered]
        params = {"ids": ids, "tokens": tokens, "now": now, "succeeded": SUCCEEDED}
        closing = session.execute(_DELIVERED_PG, {**params, "sending": SENDING})
    else:
        held = [(a.claimed.id, a.claimed.token) for a in delivered]
        closing = session.execute(_DELIVERED, {"held": held, "now": now})
    closed = set(closing.scalars())
    if not closed:
        return []
    delivered = [a for a in delivered if a.claimed.id in closed]
    record_attempts(session, [_attempt_values(a, owner) for a in delivered])
    session.execute(
        _HEALTHY,
        {
            "ids": sorted({a.claimed.endpoint_id for a in delivered}),
            "now": now,
            "stale": now - HEALTH_RESOLUTION,
        },
    )
    return [Settled(a.claimed.id, SUCCEEDED) for a in delivered]


def _settle_held(
    session: Session,
    attempts: Sequence[Attempted],
    *,
    now: datetime,
    owner: str,
    settings: AlertsSettings,
    rng: Random,
) -> list[Settled]:
    """Settle attempts one lock and read at a time: each delivery is locked and its lease
    checked, then recorded late, handed back, succeeded or moved on after its failure."""
    rows = session.execute(_HOLDERS, {"ids": [a.claimed.id for a in attempts]}).all()
    existing = {row.id for row in rows}
    leases = {row.id: row.lease_token for row in rows if row.status == SENDING}
    # A delivery deleted meanwhile (its endpoint was deleted) has nothing left to record.
    out = [Settled(a.claimed.id, DELETED) for a in attempts if a.claimed.id not in existing]
    attempts = [a for a in attempts if a.claimed.id in existing]
    held = [a for a in attempts if leases.get(a.claimed.id) == a.claimed.token]
    # The lease expired and the reaper handed the delivery back (it may be another worker's
    # now): its new holder decides; this attempt is only recorded, in place of the reaper's
    # "outcome unknown", so the log shows one attempt per claim.
    for a in attempts:
        if leases.get(a.claimed.id) != a.claimed.token:
            _record_late(session, a, owner)
            out.append(
                Settled(a.claimed.id, LEASE_LOST, attempt=a.claimed.attempt, outcome=_said(a))
            )
    unsent = [a for a in held if not a.sent]
    if unsent:
        _release(session, [a.claimed.id for a in unsent], now)
        out.extend(Settled(a.claimed.id, RELEASED, attempt=a.claimed.attempt) for a in unsent)
    held = [a for a in held if a.sent]
    if held:
        record_attempts(session, [_attempt_values(a, owner) for a in held])
    delivered = [a for a in held if a.result.outcome == "delivered"]
    failed = [a for a in held if a.result.outcome != "delivered"]
    endpoints: dict[int, Endpoint] = {}
    if failed:
        # Every endpoint this batch touches, locked once in id order before any is written (no
        # deadlock between workers), and FOR NO KEY UPDATE so delivery inserts that reference
        # them need not wait.
        endpoints = {
            e.id: e
            for e in session.execute(
                select(Endpoint)
                .where(Endpoint.id.in_(sorted({a.claimed.endpoint_id for a in held})))
                .order_by(Endpoint.id)
                .with_for_update(key_share=True)
            ).scalars()
        }
    if delivered:
        # The common case in two statements, whatever the batch size.
        session.execute(_SUCCEEDED, {"ids": [a.claimed.id for a in delivered], "now": now})
        session.execute(
            _HEALTHY,
            {
                "ids": sorted({a.claimed.endpoint_id for a in delivered}),
                "now": now,
                "stale": now - HEALTH_RESOLUTION,
            },
        )
        out.extend(Settled(a.claimed.id, SUCCEEDED) for a in delivered)
    if failed:
        out.extend(_fail(session, failed, endpoints, now=now, settings=settings, rng=rng))
    session.flush()
    return out


def _said(a: Attempted) -> str:
    """The outcome of an attempt as its log line names it."""
    return a.result.outcome if a.sent else "not sent"


def _record_late(session: Session, a: Attempted, owner: str) -> None:
    """Record an attempt that ended after its lease expired, over the reaper's placeholder for
    it when there is one (a stale attempt is not a second attempt of the same number)."""
    placeholder = session.execute(
        select(_A.c.id)
        .where(
            _A.c.delivery_id == a.claimed.id,
            _A.c.number == a.claimed.attempt,
            _A.c.outcome == LOST,
            _A.c.worker == REAPER,
        )
        .limit(1)
    ).scalar_one_or_none()
    if not a.sent:
        if placeholder is not None:
            session.execute(
                update(_A)
                .where(_A.c.id == placeholder)
                .values(error=f"the lease held by {owner} {_NEVER_SENT}")
            )
        return
    values = _attempt_values(a, owner)
    values["error_class"] = "lease_expired"
    values["error"] = clip(f"{_LATE}: {a.result.error}" if a.result.error else _LATE, 500)
    if placeholder is None:
        session.execute(_ATTEMPTS, [values])
    else:
        session.execute(update(_A).where(_A.c.id == placeholder).values(**values))


@dataclass(frozen=True)
class AfterFailure:
    """What a failed attempt means: the delivery's next status, and what becomes of its
    endpoint (how long it has been failing, and whether it is disabled, and why)."""

    status: str  # PENDING, FAILED, CANCELLED or SUPERSEDED
    next_attempt_at: datetime | None = None  # when PENDING
    failing_since: datetime | None = None  # the endpoint's, when it is set
    disable: str | None = None  # why the endpoint is disabled, when it is


def after_failure(
    result: AttemptResult,
    *,
    attempts_made: int,
    endpoint_enabled: bool,
    failing_since: datetime | None,
    newer_exists: bool,
    now: datetime,
    settings: AlertsSettings,
    rng: Random,
) -> AfterFailure:
    """Decide what a failed attempt means for its delivery and endpoint (pure).

    `attempts_made` counts the attempts of the delivery's current schedule (since its last
    replay), this one included; `newer_exists` says whether a newer state of the same alert
    was enqueued for the same endpoint.
    """
    if not endpoint_enabled:
        return AfterFailure(CANCELLED)
    if result.outcome in ("gone", "failed"):
        reason = (
            "the receiver answered 410 Gone"
            if result.outcome == "gone"
            else f"address refused permanently: {result.error}"
        )
        return AfterFailure(FAILED, disable=reason)
    since = failing_since or now
    if now - since >= settings.disable_after:
        return AfterFailure(
            FAILED, failing_since=since, disable=f"only failures since {notify.iso(since)}"
        )
    if newer_exists:
        # Sent again it would arrive after the newer state: the receiver gets that one.
        return AfterFailure(SUPERSEDED, failing_since=since)
    delay = retry.next_attempt_delay(
        attempts_made + 1,
        schedule=settings.retry_schedule,
        jitter=settings.retry_jitter,
        retry_after=result.retry_after,
        rng=rng,
        min_after_throttle=settings.throttle_floor if result.throttled else None,
    )
    if delay is None:
        return AfterFailure(FAILED, failing_since=since)
    return AfterFailure(PENDING, next_attempt_at=now + delay, failing_since=since)


def _fail(
    session: Session,
    failed: Sequence[Attempted],
    endpoints: Mapping[int, Endpoint],
    *,
    now: datetime,
    settings: AlertsSettings,
    rng: Random,
) -> list[Settled]:
    """Move on the deliveries of failed attempts (their endpoints locked): read the facts,
    then decide and apply attempt by attempt."""
    ids = [a.claimed.id for a in failed]
    deliveries = {
        d.id: d for d in session.execute(select(Delivery).where(Delivery.id.in_(ids))).scalars()
    }
    newer = superseded(session, ids)
    out: list[Settled] = []
    for a in failed:
        row = deliveries[a.claimed.id]
        endpoint = endpoints[row.endpoint_id]
        # One at a time: an endpoint disabled by one attempt cancels the next one's delivery.
        decision = after_failure(
            a.result,
            attempts_made=row.attempts - row.schedule_offset,
            endpoint_enabled=endpoint.enabled,
            failing_since=endpoint.failing_since,
            newer_exists=row.id in newer,
            now=now,
            settings=settings,
            rng=rng,
        )
        out.append(_apply(session, row, endpoint, decision, a.result, now))
    return out


def _apply(
    session: Session,
    row: Delivery,
    endpoint: Endpoint,
    decision: AfterFailure,
    result: AttemptResult,
    now: datetime,
) -> Settled:
    """Carry out the decision on a failed attempt's delivery and endpoint (the endpoint locked)."""
    row.lease_owner = row.lease_token = row.lease_expires_at = None
    row.updated_at = now
    row.last_error = (result.error or "")[:300] or None
    row.status = decision.status
    if decision.status == PENDING:
        row.next_attempt_at = decision.next_attempt_at
    else:
        row.settled_at = now
    if decision.failing_since is not None:
        endpoint.failing_since = decision.failing_since
    if decision.disable is None:
        return Settled(row.id, decision.status)
    disable_endpoint(session, endpoint, decision.disable, now)
    return Settled(row.id, decision.status, disabled_endpoint=endpoint.id)


_NEWER = _D.alias("newer")
_SUPERSEDED = select(_D.c.id).where(
    _D.c.id.in_(bindparam("ids", expanding=True)),
    exists().where(
        _NEWER.c.alert_id == _D.c.alert_id,
        _NEWER.c.endpoint_id == _D.c.endpoint_id,
        _NEWER.c.id > _D.c.id,
        _NEWER.c.status != CANCELLED,
    ),
)


def superseded(session: Session, ids: Sequence[int]) -> set[int]:
    """Those of the deliveries for which a newer state of the same alert was enqueued for the
    same endpoint (a delivery of no alert has none)."""
    if not ids:
        return set()
    return set(session.execute(_SUPERSEDED, {"ids": list(ids)}).scalars())


def disable_endpoint(session: Session, endpoint: Endpoint, reason: str, now: datetime) -> None:
    """Disable an endpoint, cancel what waits for it, and tell the tenant's email recipients."""
    if not endpoint.enabled:
        return
    endpoint.enabled = False
    endpoint.disabled_reason = reason[:200]
    endpoint.disabled_at = now
    endpoint.updated_at = now
    session.execute(
        update(Delivery)
        .where(Delivery.endpoint_id == endpoint.id, Delivery.status == PENDING)
        .values(status=CANCELLED, settled_at=now, updated_at=now, last_error="endpoint disabled")
    )
    owners = (
        session.execute(
            select(Endpoint).where(
                Endpoint.tenant_id == endpoint.tenant_id,
                Endpoint.kind == "email",
                Endpoint.enabled,
                Endpoint.id != endpoint.id,
            )
        )
        .scalars()
        .all()
    )
    data = {
        "endpoint": {"id": endpoint.id, "name": endpoint.name, "address": endpoint.address},
        "reason": reason,
    }
    enqueue(
        session,
        tenant_id=endpoint.tenant_id,
        endpoints=owners,
        alert_id=None,
        event_type="endpoint.disabled",
        sequence=0,
        payload=notify.envelope("endpoint.disabled", data, now),
        now=now,
    )


@dataclass(frozen=True)
class Reclaimed:
    """A delivery whose lease expired, handed back by the reaper, for the operator's log."""

    delivery_id: int
    endpoint_id: int
    attempt: int
    owner: str | None  # the worker that lost it
    overdue: timedelta  # how long after its lease expired the reaper found it
    status: str  # PENDING (sent again) or SUPERSEDED (a newer state is queued)


def reap(session: Session, now: datetime, limit: int = 1000) -> list[Reclaimed]:
    """Hand deliveries whose lease expired (a dead or stuck worker) back to the queue.

    Each gets an attempt of outcome `lost` in its log (the worker's own result replaces it,
    should that worker come back and settle it: `_record_late`).
    """
    rows = (
        session.execute(
            select(Delivery)
            .where(Delivery.status == SENDING, Delivery.lease_expires_at < now)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    newer = superseded(session, [row.id for row in rows if row.alert_id is not None])
    out: list[Reclaimed] = []
    for row in rows:
        expired = row.lease_expires_at or now
        session.add(
            DeliveryAttempt(
                delivery_id=row.id,
                number=row.attempts,
                started_at=expired,
                duration_ms=0.0,
                outcome=LOST,
                status_code=None,
                error_class="lease_expired",
                error=f"lease held by {row.lease_owner} expired; outcome unknown",
                response_body=None,
                worker=REAPER,
            )
        )
        owner = row.lease_owner
        row.lease_owner = row.lease_token = row.lease_expires_at = None
        row.updated_at = now
        if row.id in newer:
            # Sent again it would arrive after the newer state: the receiver has that one.
            row.status, row.settled_at = SUPERSEDED, now
        else:
            row.status = PENDING
            row.next_attempt_at = now
        out.append(
            Reclaimed(row.id, row.endpoint_id, row.attempts, owner, now - expired, row.status)
        )
    session.flush()
    if rows:
        wake.announce(session, DELIVERY_CHANNEL)
    return out


def replay(session: Session, delivery: Delivery, now: datetime) -> None:
    """Send a delivery again (same message id, a fresh retry schedule), whatever its status."""
    if delivery.status == SENDING:
        return
    delivery.status = PENDING
    delivery.next_attempt_at = now
    delivery.settled_at = None
    delivery.schedule_offset = delivery.attempts
    delivery.updated_at = now
    session.flush()
    wake.announce(session, DELIVERY_CHANNEL)


def recover(session: Session, tenant_id: int, since: datetime, now: datetime) -> list[int]:
    """Replay every failed delivery of a tenant created since `since`; return their ids."""
    rows = (
        session.execute(
            select(Delivery).where(
                Delivery.tenant_id == tenant_id,
                Delivery.status == FAILED,
                Delivery.created_at >= since,
            )
        )
        .scalars()
        .all()
    )
    enabled = {
        e.id
        for e in session.execute(
            select(Endpoint).where(Endpoint.tenant_id == tenant_id, Endpoint.enabled)
        ).scalars()
    }
    ids: list[int] = []
    for row in rows:
        if row.endpoint_id in enabled:
            replay(session, row, now)
            ids.append(row.id)
    return ids


ENDPOINT_OLDEST = metrics.DatabaseGauge(
    "riskalert_endpoint_oldest_undelivered_seconds",
    "Age of an endpoint's oldest notification not delivered yet (pending, waiting for a retry "
    "or being sent), from its creation; only the endpoints waiting longest, and only those with "
    "such a notification.",
    ("endpoint_id", "tenant_id"),
)
ATTEMPTS_RECENT = metrics.DatabaseGauge(
    "riskalert_delivery_attempts_recent",
    "Delivery attempts recorded in the last 15 minutes (at most the latest 50,000), by outcome.",
    ("outcome",),
)
# Series of ENDPOINT_OLDEST at most: the endpoints waiting longest, whatever their number.
AGE_SERIES = 20
ATTEMPTS_WINDOW = timedelta(minutes=15)
# delivery_attempt has no index on started_at: the window is looked for among the latest rows
# by id (the primary key), so a scrape never reads the whole retention.
ATTEMPTS_SCANNED = 50_000
ATTEMPT_OUTCOMES = (*get_args(retry.Outcome), LOST)


@metrics.read_from_database(
    metrics.QUEUE_DEPTH, metrics.QUEUE_OLDEST, ENDPOINT_OLDEST, ATTEMPTS_RECENT
)
def _gauges(session: Session, now: datetime) -> Iterator[metrics.Reading]:
    """Deliveries pending or being sent, how overdue the oldest is, how old each endpoint's
    oldest undelivered one is (overdue or waiting for a retry), and recent attempts by outcome."""
    unsettled = Delivery.status.in_((PENDING, SENDING))
    count, first_due = session.execute(
        select(func.count(), func.min(Delivery.next_attempt_at)).where(unsettled)
    ).one()
    yield metrics.QUEUE_DEPTH, ("delivery",), count
    yield metrics.QUEUE_OLDEST, ("delivery",), metrics.seconds_since(now, first_due)
    # A delivery waiting for its retry is not overdue, so QUEUE_OLDEST never sees an endpoint
    # that fails forever; its undelivered notifications only grow older.
    first = func.min(Delivery.created_at)
    for endpoint_id, tenant_id, created in session.execute(
        select(Delivery.endpoint_id, Delivery.tenant_id, first)
        .where(unsettled)
        .group_by(Delivery.endpoint_id, Delivery.tenant_id)
        .order_by(first, Delivery.endpoint_id)
        .limit(AGE_SERIES)
    ):
        labels = (str(endpoint_id), str(tenant_id))
        yield ENDPOINT_OLDEST, labels, metrics.seconds_since(now, created)
    floor = (
        select(DeliveryAttempt.id)
        .order_by(DeliveryAttempt.id.desc())
        .offset(ATTEMPTS_SCANNED)
        .limit(1)
        .scalar_subquery()
    )
    counts = dict.fromkeys(ATTEMPT_OUTCOMES, 0)
    for outcome, attempts in session.execute(
        select(DeliveryAttempt.outcome, func.count())
        .where(
            DeliveryAttempt.id > func.coalesce(floor, 0),
            DeliveryAttempt.started_at >= now - ATTEMPTS_WINDOW,
        )
        .group_by(DeliveryAttempt.outcome)
    ):
        counts[outcome] = attempts
    for outcome, attempts in counts.items():
        yield ATTEMPTS_RECENT, (outcome,), attempts
