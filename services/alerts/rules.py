"""Threshold alert rules: the evaluate stage (a state machine) and the decide stage (notify?)."""

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from services.scoring.taxonomy import BAND_RANK, Band

Kind = Literal["firing", "resolved", "repeat", "escalated", "flapping", "none"]


@dataclass(frozen=True)
class ThresholdRule:
    """When a score raises, holds and clears an alert, and how often it may notify."""

    raise_at: float
    clear_at: float
    pending: timedelta = timedelta(0)
    keep_firing: timedelta = timedelta(0)
    repeat_every: timedelta | None = None
    # Gates only "firing" after an earlier notification: "resolved" must never be held back (the
    # receiver would keep an incident open) and "flapping" is already the damped, single notice.
    cooldown: timedelta = timedelta(minutes=30)
    flap_changes: int = 2
    flap_window: timedelta = timedelta(minutes=30)
    # What is compared, as reasons name it: "score" and its levels, or "band" and band names
    # (a band rule compares ranks, which no reader should see).
    measure: str = "score"
    raise_name: str | None = None
    clear_name: str | None = None

    @property
    def raising(self) -> str:
        """Why an alert raises, in words: "score at or above 30.0", "band at or above high"."""
        return f"{self.measure} at or above {self.raise_name or self.raise_at}"

    @property
    def clearing(self) -> str:
        """Why an alert clears, in words: "score below 20.0", "band below elevated"."""
        return f"{self.measure} below {self.clear_name or self.clear_at}"

    def __post_init__(self) -> None:
        if not math.isfinite(self.raise_at):
            raise ValueError(f"raise_at must be finite, got {self.raise_at}")
        if not math.isfinite(self.clear_at):
            raise ValueError(f"clear_at must be finite, got {self.clear_at}")
        if self.clear_at > self.raise_at:
            raise ValueError(
                f"clear_at ({self.clear_at}) must be <= raise_at ({self.raise_at}): hysteresis"
            )
        if self.pending < timedelta(0):
            raise ValueError(f"pending must be >= 0, got {self.pending}")
        if self.keep_firing < timedelta(0):
            raise ValueError(f"keep_firing must be >= 0, got {self.keep_firing}")
        if self.repeat_every is not None and self.repeat_every <= timedelta(0):
            raise ValueError(f"repeat_every must be > 0 or None, got {self.repeat_every}")
        if self.cooldown < timedelta(0):
            raise ValueError(f"cooldown must be >= 0, got {self.cooldown}")
        if self.flap_changes < 1:
            raise ValueError(f"flap_changes must be >= 1, got {self.flap_changes}")
        if self.flap_window <= timedelta(0):
            raise ValueError(f"flap_window must be > 0, got {self.flap_window}")


class AlertState(StrEnum):
    """Where an alert stands; RECOVERING still counts as firing to the outside."""

    NORMAL = "normal"
    PENDING = "pending"
    FIRING = "firing"
    RECOVERING = "recovering"
    FLAPPING = "flapping"


_ACTIVE = frozenset({AlertState.FIRING, AlertState.RECOVERING})


@dataclass(frozen=True)
class Alert:
    """One rule's alert for one key: its state, the timers behind it and what was last notified."""

    state: AlertState
    since: datetime
    # Start of the current run in which the condition holds (by hysteresis); None when it does not.
    condition_since: datetime | None = None
    # When the condition last stopped holding; None while it holds or before it ever held.
    cleared_since: datetime | None = None
    last_band: Band | None = None
    transitions: tuple[datetime, ...] = ()
    last_notified_at: datetime | None = None
    # The band last announced as firing: "resolved" and "flapping" keep it, so a re-fire is not
    # mistaken for a band rise over the lower band the alert resolved at.
    last_notified_band: Band | None = None
    last_notified_state: AlertState | None = None

    @classmethod
    def initial(cls, now: datetime) -> "Alert":
        """A normal alert that has never been evaluated nor notified."""
        _require_aware(now)
        return cls(state=AlertState.NORMAL, since=now)


@dataclass(frozen=True)
class Decision:
    """Whether to notify, as what kind, and why (for the delivery log)."""

    notify: bool
    kind: Kind
    reason: str

    def __post_init__(self) -> None:
        if self.notify != (self.kind != "none"):
            raise ValueError(f"kind {self.kind!r} does not match notify={self.notify}")


def evaluate(alert: Alert, rule: ThresholdRule, score: float, band: Band, now: datetime) -> Alert:
    """The alert after observing `score` (in `band`) at `now`."""
    _require_aware(now)
    if math.isnan(score):
        raise ValueError("score must be a number, got NaN")
    condition_since, cleared_since = alert.condition_since, alert.cleared_since
    if score >= rule.raise_at and condition_since is None:
        condition_since, cleared_since = now, None
    elif score < rule.clear_at and condition_since is not None:
        condition_since, cleared_since = None, now
    # A score between clear_at and raise_at moves nothing: that gap is the hysteresis.
    flipped = (condition_since is None) != (alert.condition_since is None)
    horizon = now - rule.flap_window
    transitions = tuple(t for t in alert.transitions if t > horizon)

    if alert.state is AlertState.FLAPPING:
        # While flapping nothing is notified, so the raw condition flips are what must go quiet;
        # pending and keep-firing would only hide flips that are still happening.
        if flipped:
            transitions += (now,)
        if transitions:
            state = AlertState.FLAPPING
        else:
            # A full window without flips: settle by the condition as it stands, entering from
            # the opposite side so pending and keep-firing still apply when longer than the window.
            entry = AlertState.FIRING if condition_since is None else AlertState.NORMAL
            state = _next_state(entry, condition_since, cleared_since, rule, now)
    else:
        state = _next_state(alert.state, condition_since, cleared_since, rule, now)
        if (state in _ACTIVE) != (alert.state in _ACTIVE):
            transitions += (now,)
            if len(transitions) > rule.flap_changes:
                state = AlertState.FLAPPING

    return replace(
        alert,
        state=state,
        since=alert.since if state is alert.state else now,
        condition_since=condition_since,
        cleared_since=cleared_since,
        last_band=band,
        transitions=transitions,
    )


def decide(before: Alert, after: Alert, rule: ThresholdRule, now: datetime) -> Decision:
    """Whether the step from `before` to `after` must be notified, given what was last notified."""
    _require_aware(now)
    # Compare the state with what the receiver was last told rather than with `before`: then a
    # re-evaluation of an unchanged state (a restart) is silent by construction, and a firing
    # held back by the cooldown is still sent once the cooldown is over.
    told = after.last_notified_state
    if after.state is AlertState.FLAPPING:
        if told is AlertState.FLAPPING:
            return _none("flapping already notified")
        if told is not AlertState.FIRING:
            # The receiver was last told the alert is clear; more flips would only be noise. If
            # it settles firing, that is sent then (a firing, one notice for the whole episode).
            return _none("flapping; the receiver was last told it is not firing")
        return Decision(
            True,
            "flapping",
            f"more than {rule.flap_changes} firing/resolved changes within {rule.flap_window}",
        )

    if after.state not in _ACTIVE:
        if told in (AlertState.FIRING, AlertState.FLAPPING):
            return Decision(True, "resolved", rule.clearing)
        return _none("not firing and no firing was notified")

    rose = _band_rose(after.last_band, after.last_notified_band)
    if told is AlertState.FIRING:
        if rose:
            return Decision(
                True, "escalated", f"band rose from {after.last_notified_band} to {after.last_band}"
            )
        if (
            rule.repeat_every is not None
            and after.last_notified_at is not None
            and now - after.last_notified_at >= rule.repeat_every
        ):
            return Decision(True, "repeat", f"still firing after {rule.repeat_every}")
        return _none(f"firing already notified at band {after.last_notified_band}")

    if after.state is AlertState.RECOVERING:
        # A first "firing" now would be followed by "resolved" within keep_firing.
        return _none("recovering; firing was never notified")

    if after.last_notified_at is not None and now - after.last_notified_at < rule.cooldown:
        if rose:
            rise = f"band rose from {after.last_notified_band} to {after.last_band}"
            return Decision(True, "firing", f"{rise}: cooldown bypassed")
        return _none(f"cooldown until {after.last_notified_at + rule.cooldown}")
    if before.state is AlertState.FIRING:
        return Decision(True, "firing", "still firing after the cooldown")
    return Decision(True, "firing", rule.raising)


def notified(alert: Alert, decision: Decision, band: Band, now: datetime) -> Alert:
    """The alert after the notification `decision` (at `band`) was enqueued at `now`."""
    _require_aware(now)
    if not decision.notify:
        raise ValueError("decision.notify is False: nothing was enqueued")
    if decision.kind == "resolved":
        return replace(alert, last_notified_at=now, last_notified_state=AlertState.NORMAL)
    if decision.kind == "flapping":
        return replace(alert, last_notified_at=now, last_notified_state=AlertState.FLAPPING)
    return replace(
        alert,
        last_notified_at=now,
        last_notified_state=AlertState.FIRING,
        last_notified_band=band,
    )


def _next_state(
    state: AlertState,
    condition_since: datetime | None,
    cleared_since: datetime | None,
    rule: ThresholdRule,
    now: datetime,
) -> AlertState:
    """The non-flapping successor of `state` given the condition's timers."""
    if state not in _ACTIVE:
        if condition_since is None:
            return AlertState.NORMAL
        return AlertState.FIRING if now - condition_since >= rule.pending else AlertState.PENDING
    if condition_since is not None:
        return AlertState.FIRING
    if cleared_since is None or now - cleared_since >= rule.keep_firing:
        return AlertState.NORMAL
    return AlertState.RECOVERING


def _band_rose(band: Band | None, announced: Band | None) -> bool:
    """Whether `band` is above the band last announced as firing (never, if none was)."""
    if band is None or announced is None:
        return False
    return BAND_RANK[band] > BAND_RANK[announced]


def _none(reason: str) -> Decision:
    """A decision not to notify."""
    return Decision(False, "none", reason)


def _require_aware(now: datetime) -> None:
    """Reject naive datetimes: every timestamp is timezone-aware UTC."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
