"""Fitting the model on the history the service holds, as a job or from the command line.

A fit (services/scoring/risk/fit.py) runs on every counting incident in the database and on the
registered targets' points. It is published only when it beats the version in force on the
validation splits (lower Brier score), unless it is a dry run; publishing is audited, carries
stored thresholds over when the bands change, and queues every target for rescoring.

Jobs: `POST /v1/model/fits` (admin) adds a pending fit; a worker tick (`run_pending`) claims it
with a lease, fits outside any transaction, and records the report and the outcome. A worker
killed mid-fit leaves the lease to run out; the fit is then taken again. With
RISKALERT_REFIT_AFTER_INCIDENTS > 0, a tick queues a fit when that many incidents were received
since the version in force was published.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.core import audit
from services.core.auth import Principal, Role
from services.scoring import history, risk, scores
from services.scoring.models import Incident, ModelFit, ModelVersion
from services.scoring.settings import ScoringSettings

if TYPE_CHECKING:
    from services.scoring.risk import fit as fitting

log = logging.getLogger(__name__)

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


@dataclass(frozen=True, slots=True)
class Request:
    """What a fit is asked to do."""

    dry_run: bool = False
    # Publish even if it does not beat the version in force (never for the schedule).
    force: bool = False
    origins: int = 40
    folds: int = 4
    max_places: int = 2000

    def options(self) -> fitting.FitOptions:
        """The fit's sampling options."""
        from services.scoring.risk import fit as fitting  # imported late: see compute

        return fitting.FitOptions(
            origins=self.origins, folds=self.folds, max_places=self.max_places
        )


@dataclass(frozen=True, slots=True)
class Inputs:
    """What a fit reads from the database."""

    incidents: list[risk.Incident]
    target_points: list[tuple[float, float]]
    active: scores.ActiveModel | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a fit did: its report, and the version it published (None if it did not)."""

    report: dict[str, Any]
    version: int | None
    outcome: str
    carried_over: dict[str, list[dict[str, Any]]]


def inputs(session: Session) -> Inputs:
    """The history, the targets' points and the version in force."""
    return Inputs(
        history.stored(session), history.target_points(session), scores.active_model(session)
    )


def compute(data: Inputs, request: Request, now: datetime) -> fitting.FitResult:
    """Fit on the inputs (no database), starting from the structure of the version in force."""
    # Imported here: SciPy and scikit-learn take about a second to import, and every process
    # (API, workers, CLI) imports this module while only a fit needs them.
    from services.scoring.risk import fit as fitting

    base = data.active.params if data.active is not None else risk.DEFAULT_PARAMS
    return fitting.fit(
        data.incidents,
        base,
        target_points=data.target_points,
        options=request.options(),
        active=data.active.params if data.active is not None else None,
        now=now,
    )


def publish(
    session: Session,
    result: fitting.FitResult,
    data: Inputs,
    request: Request,
    principal: Principal,
    now: datetime,
) -> Outcome:
    """Publish a fit if it beats the version in force (or is forced), audited; or say why not."""
    validation = result.report["validation"]
    if request.dry_run:
        return Outcome(result.report, None, "dry run: not published", {})
    if result.beats_active is False and not request.force:
        active = validation.get("active", {}).get("brier")
        return Outcome(
            result.report,
            None,
            f"not published: Brier score {validation['model']['brier']} does not beat the version"
            f" in force ({active}) on the validation splits",
            {},
        )
    model = validation["model"]
    note = (
        f"fitted on {result.report['data']['incidents']} incidents; validation ROC AUC "
        f"{model['roc_auc']}, Brier {model['brier']} (decay baseline "
        f"{validation['baseline']['roc_auc']}, {validation['baseline']['brier']})"
    )
    published = scores.publish_model(
        session, result.params.to_dict(), note, principal.ident, now, report=result.report
    )
    audit.record(
        session,
        principal,
        action="model.publish",
        resource=f"model/{published.row.id}",
        before={"version": data.active.version if data.active else None},
        after={
            "version": published.row.id,
            "note": note,
            "validation": validation,
            "carried_over": published.carried_over,
        },
        now=now,
    )
    return Outcome(
        result.report,
        published.row.id,
        f"published as version {published.row.id}",
        published.carried_over,
    )


# --------------------------------------------------------------------------------------------
# Jobs


def request_fit(
    session: Session, request: Request, principal: Principal, now: datetime
) -> ModelFit:
    """Queue a fit for a worker; audited."""
    row = ModelFit(
        status=PENDING,
        dry_run=request.dry_run,
        options=asdict(request),
        requested_by=principal.ident,
        requested_key_id=principal.key_id,
        requested_at=now,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        principal,
        action="model.fit",
        resource=f"model_fit/{row.id}",
        before=None,
        after={"options": row.options},
        now=now,
    )
    return row


def claim(session: Session, now: datetime, lease: timedelta) -> ModelFit | None:
    """Take the oldest pending fit (or a running one whose lease ran out) for this process."""
    candidate = session.execute(
        select(ModelFit.id)
        .where(
            or_(
                ModelFit.status == PENDING,
                (ModelFit.status == RUNNING) & (ModelFit.lease_until < now),
            )
        )
        .order_by(ModelFit.id)
        .limit(1)
    ).scalar()
    if candidate is None:
        return None
    # Compare-and-set: of several processes, the one whose update matches takes it.
    taken = session.execute(
        update(ModelFit)
        .where(
            ModelFit.id == candidate,
            or_(
                ModelFit.status == PENDING,
                (ModelFit.status == RUNNING) & (ModelFit.lease_until < now),
            ),
        )
        .values(status=RUNNING, started_at=now, lease_until=now + lease)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.get_one(ModelFit, candidate)


def _principal(row: ModelFit) -> Principal:
    """Who a job publishes as: the key that asked for it (the schedule as the system)."""
    return Principal(key_id=row.requested_key_id, tenant_id=None, roles=frozenset({Role.ADMIN}))


def run_pending(
    factory: sessionmaker[Session], settings: ScoringSettings, clock: Callable[[], datetime]
) -> int | None:
    """Run one pending fit; its id, or None when there was none."""
    now = clock()
    with factory.begin() as session:
        row = claim(session, now, settings.fit_lease)
        if row is None:
            return None
        fit_id, request = row.id, Request(**row.options)
        principal = _principal(row)
    try:
        with factory() as session:
            data = inputs(session)
        result = compute(data, request, now)
        with factory.begin() as session:
            done = clock()
            outcome = publish(session, result, data, request, principal, done)
            session.execute(
                update(ModelFit)
                .where(ModelFit.id == fit_id)
                .values(
                    status=DONE,
                    finished_at=done,
                    report=outcome.report,
                    model_version_id=outcome.version,
                    outcome=outcome.outcome,
                )
            )
        log.info("model fit %s: %s", fit_id, outcome.outcome)
    except Exception as exc:
        # A fit that cannot run (too little history, a bad option) is recorded as failed, with
        # its reason; it does not come back at every tick.
        log.exception("model fit %s failed", fit_id)
        with factory.begin() as session:
            session.execute(
                update(ModelFit)
                .where(ModelFit.id == fit_id)
                .values(
                    status=FAILED, finished_at=clock(), error=f"{type(exc).__name__}: {exc}"[:1000]
                )
            )
    return fit_id


def queue_scheduled(session: Session, settings: ScoringSettings, now: datetime) -> ModelFit | None:
    """Queue a fit when RISKALERT_REFIT_AFTER_INCIDENTS incidents were received since the version
    in force was published (or the last fit was asked for) and no fit is waiting or running."""
    if settings.refit_after_incidents <= 0:
        return None
    busy = session.execute(
        select(ModelFit.id).where(ModelFit.status.in_((PENDING, RUNNING))).limit(1)
    ).first()
    if busy is not None:
        return None
    since = session.execute(
        select(ModelVersion.created_at).where(ModelVersion.active.is_(True))
    ).scalar()
    last_fit = session.execute(select(func.max(ModelFit.requested_at))).scalar()
    since = max(t for t in (since, last_fit) if t is not None) if (since or last_fit) else None
    query = select(func.count()).select_from(Incident)
    if since is not None:
        # Received since: an import of old events is new history all the same.
        query = query.where(Incident.created_at > since)
    new = int(session.execute(query).scalar_one())
    if new < settings.refit_after_incidents:
        return None
    system = Principal(key_id=None, tenant_id=None, roles=frozenset({Role.ADMIN}))
    row = request_fit(session, Request(), system, now)
    row.requested_by = "schedule"
    return row
