"""Retry decisions: the schedule, jitter, throttling floor, Retry-After and status outcomes."""

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any, get_args

import pytest

from services.alerts import outbox
from services.alerts.retry import (
    DEFAULT_JITTER,
    DEFAULT_SCHEDULE,
    THROTTLE_FLOOR,
    Outcome,
    classify_status,
    next_attempt_delay,
    parse_retry_after,
)
from services.alerts.settings import AlertsSettings
from services.alerts.webhooks import AttemptResult

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def delay(
    attempt: int,
    *,
    jitter: float = 0.0,
    retry_after: timedelta | None = None,
    seed: int = 1,
    min_after_throttle: timedelta | None = None,
) -> timedelta | None:
    return next_attempt_delay(
        attempt,
        schedule=DEFAULT_SCHEDULE,
        jitter=jitter,
        retry_after=retry_after,
        rng=Random(seed),
        min_after_throttle=min_after_throttle,
    )


def test_default_schedule_matches_the_delivery_promise() -> None:
    assert [d.total_seconds() for d in DEFAULT_SCHEDULE] == [
        0,
        5,
        5 * 60,
        30 * 60,
        2 * 3600,
        5 * 3600,
        10 * 3600,
        10 * 3600,
    ]
    assert DEFAULT_JITTER == 0.2
    assert THROTTLE_FLOOR == 60 * S


def test_without_jitter_each_attempt_waits_its_scheduled_delay() -> None:
    assert [delay(n) for n in range(1, len(DEFAULT_SCHEDULE) + 1)] == list(DEFAULT_SCHEDULE)


def test_first_attempt_is_immediate() -> None:
    assert delay(1, jitter=0.2) == timedelta(0)


def test_schedule_spent_returns_none() -> None:
    assert delay(len(DEFAULT_SCHEDULE) + 1) is None
    assert delay(100, jitter=0.2, retry_after=10 * S, min_after_throttle=THROTTLE_FLOOR) is None


def test_jitter_stays_within_twenty_percent_and_actually_spreads() -> None:
    scheduled = DEFAULT_SCHEDULE[2]
    factors = []
    for seed in range(500):
        got = delay(3, jitter=0.2, seed=seed)
        assert got is not None
        factors.append(got / scheduled)
    assert all(0.8 <= f <= 1.2 for f in factors)
    assert min(factors) < 0.85
    assert max(factors) > 1.15


def test_same_seed_gives_the_same_delay() -> None:
    assert delay(4, jitter=0.2, seed=7) == delay(4, jitter=0.2, seed=7)


def test_retry_after_below_the_schedule_is_raised_to_the_scheduled_delay() -> None:
    assert delay(3, retry_after=10 * S) == 5 * 60 * S


def test_retry_after_inside_the_window_is_honoured() -> None:
    assert delay(3, retry_after=7 * 60 * S) == 7 * 60 * S
    # Honoured exactly even with jitter, as long as it stays within [delay, 2 x delay].
    assert delay(3, jitter=0.2, retry_after=7 * 60 * S) == 7 * 60 * S


def test_retry_after_above_the_window_is_capped_at_twice_the_scheduled_delay() -> None:
    assert delay(3, retry_after=timedelta(days=3)) == 10 * 60 * S
    assert delay(3, retry_after=timedelta.max) == 10 * 60 * S


def test_after_a_429_on_the_five_second_step_the_wait_is_at_least_sixty_seconds() -> None:
    assert delay(2) == 5 * S
    assert delay(2, min_after_throttle=THROTTLE_FLOOR) == 60 * S
    assert delay(2, jitter=0.2, min_after_throttle=THROTTLE_FLOOR) == 60 * S
    # The floor also beats a short Retry-After that the clamp allowed.
    assert delay(2, retry_after=8 * S, min_after_throttle=THROTTLE_FLOOR) == 60 * S


def test_throttle_floor_does_not_shorten_longer_steps() -> None:
    assert delay(4, min_after_throttle=THROTTLE_FLOOR) == 30 * 60 * S


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="attempt"):
        delay(0)
    with pytest.raises(ValueError, match="jitter"):
        delay(2, jitter=1.5)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120 * S),
        ("  0 ", timedelta(0)),
        ("Sat, 01 Mar 2025 12:02:30 GMT", 150 * S),
        ("Sat, 01 Mar 2025 12:02:30 -0000", 150 * S),
        ("Sat, 01 Mar 2025 13:02:30 +0100", 150 * S),
        ("Sat, 01 Mar 2025 11:00:00 GMT", timedelta(0)),
        ("-5", None),
        ("1.5", None),
        ("²", None),
        ("", None),
        ("soon", None),
        ("9" * 40, timedelta.max),
        ("9" * 5000, timedelta.max),
    ],
)
def test_parse_retry_after(value: str | None, expected: timedelta | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_parse_retry_after_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone"):
        parse_retry_after("5", datetime(2025, 3, 1, 12, 0))


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"),
        (201, "delivered"),
        (204, "delivered"),
        (299, "delivered"),
        (301, "retry"),
        (302, "retry"),
        (307, "retry"),
        (400, "retry"),
        (401, "retry"),
        (403, "retry"),
        (404, "retry"),
        (413, "retry"),
        (408, "retry"),
        (429, "retry"),
        (410, "gone"),
        (500, "retry"),
        (502, "retry"),
        (503, "retry"),
        (504, "retry"),
        (None, "retry"),
        (100, "retry"),
        (600, "retry"),
    ],
)
def test_classify_status(status: int | None, outcome: str) -> None:
    assert classify_status(status) == outcome


# ---------------------------------------------------------------------------------------------
# After a failed attempt: the decision, apart from carrying it out (outbox.after_failure)


def failure(outcome: Outcome = "retry", **fields: Any) -> AttemptResult:
    return AttemptResult(outcome, fields.pop("status_code", 500), "http_status", "HTTP 500",
                         None, 1.0, **fields)  # fmt: skip


def after(result: AttemptResult, **facts: Any) -> outbox.AfterFailure:
    values: dict[str, Any] = {
        "attempts_made": 1,
        "endpoint_enabled": True,
        "failing_since": None,
        "newer_exists": False,
        "now": NOW,
        "settings": AlertsSettings(retry_jitter=0.0),
        "rng": Random(1),
    }
    values.update(facts)
    return outbox.after_failure(result, **values)


def test_a_failed_attempt_is_retried_on_the_schedule_and_the_endpoint_starts_failing() -> None:
    assert after(failure(), attempts_made=2) == outbox.AfterFailure(
        outbox.PENDING, next_attempt_at=NOW + 5 * 60 * S, failing_since=NOW
    )


def test_a_throttled_attempt_waits_at_least_the_throttle_floor() -> None:
    decision = after(failure(status_code=429, throttled=True), attempts_made=1)
    assert decision.next_attempt_at == NOW + THROTTLE_FLOOR


def test_an_attempt_to_a_disabled_endpoint_cancels_its_delivery_and_nothing_else() -> None:
    assert after(failure(), endpoint_enabled=False) == outbox.AfterFailure(outbox.CANCELLED)


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [("gone", "the receiver answered 410 Gone"), ("failed", "address refused permanently")],
)
def test_a_permanent_failure_fails_the_delivery_and_disables_the_endpoint(
    outcome: Outcome, reason: str
) -> None:
    decision = after(failure(outcome))
    assert decision.status == outbox.FAILED
    assert decision.disable is not None
    assert decision.disable.startswith(reason)


def test_an_endpoint_failing_for_the_whole_disable_period_is_disabled() -> None:
    since = NOW - AlertsSettings().disable_after
    decision = after(failure(), failing_since=since)
    assert (decision.status, decision.failing_since) == (outbox.FAILED, since)
    assert decision.disable == "only failures since 2025-02-24T12:00:00Z"


def test_a_failed_attempt_with_a_newer_state_queued_is_superseded_not_retried() -> None:
    since = NOW - timedelta(hours=1)
    assert after(failure(), newer_exists=True, failing_since=since) == outbox.AfterFailure(
        outbox.SUPERSEDED, failing_since=since
    )


def test_a_spent_schedule_fails_the_delivery_without_disabling_the_endpoint() -> None:
    decision = after(failure(), attempts_made=len(DEFAULT_SCHEDULE))
    assert decision == outbox.AfterFailure(outbox.FAILED, failing_since=NOW)


def test_the_attempt_outcome_is_defined_once_in_the_alerts_service() -> None:
    package = Path(outbox.__file__).parent
    defined = [
        f"{path.name}:{node.lineno}"
        for path in sorted(package.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.ClassDef) and node.name == "Outcome")
        or (
            isinstance(node, ast.Assign | ast.AnnAssign)
            and any(
                isinstance(t, ast.Name) and t.id == "Outcome"
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            )
        )
    ]
    assert len(defined) == 1, defined
    assert get_args(Outcome) == ("delivered", "retry", "gone", "failed")
