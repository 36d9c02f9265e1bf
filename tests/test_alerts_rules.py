"""Threshold rules: hysteresis, pending, keep-firing, cooldown, repeat, restart and flapping."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.alerts.rules import (
    Alert,
    AlertState,
    Decision,
    ThresholdRule,
    decide,
    evaluate,
    notified,
)
from services.scoring.taxonomy import Band

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
HIGH, MID, LOW = 80.0, 65.0, 50.0
RULE = ThresholdRule(raise_at=70.0, clear_at=60.0)
# Flap detection out of the way, so cooldown, repeat and keep-firing are seen on their own.
CALM = replace(RULE, flap_changes=100)


def band_of(score: float) -> Band:
    return Band.HIGH if score >= 70 else Band.ELEVATED if score >= 55 else Band.MODERATE


def step(
    alert: Alert, rule: ThresholdRule, score: float, minute: float, band: Band | None = None
) -> tuple[Alert, Decision]:
    """Evaluate, decide and, as the pipeline would, record an enqueued notification."""
    now = T0 + minute * MIN
    band = band or band_of(score)
    after = evaluate(alert, rule, score, band, now)
    decision = decide(alert, after, rule, now)
    if decision.notify:
        after = notified(after, decision, band, now)
    return after, decision


def run(rule: ThresholdRule, scores: list[tuple[float, float]]) -> tuple[Alert, list[str]]:
    alert = Alert.initial(T0)
    kinds: list[str] = []
    for minute, score in scores:
        alert, decision = step(alert, rule, score, minute)
        if decision.notify:
            kinds.append(decision.kind)
    return alert, kinds


def test_score_between_clear_and_raise_changes_nothing() -> None:
    for start in (LOW, HIGH):
        alert, _ = step(Alert.initial(T0), RULE, start, 0)
        after = evaluate(alert, RULE, MID, band_of(start), T0 + 5 * MIN)
        assert (after.state, after.since) == (alert.state, alert.since)
        assert (after.condition_since, after.cleared_since) == (
            alert.condition_since,
            alert.cleared_since,
        )
        assert after.transitions == alert.transitions
        assert not decide(alert, after, RULE, T0 + 5 * MIN).notify


def test_condition_fires_only_after_holding_for_the_pending_period() -> None:
    rule = replace(RULE, pending=5 * MIN)
    alert, decision = step(Alert.initial(T0), rule, HIGH, 0)
    assert alert.state is AlertState.PENDING
    assert not decision.notify
    alert, decision = step(alert, rule, MID, 4)
    assert alert.state is AlertState.PENDING
    assert not decision.notify
    alert, decision = step(alert, rule, HIGH, 5)
    assert alert.state is AlertState.FIRING
    assert decision.kind == "firing"


def test_pending_is_reset_when_the_score_clears_meanwhile() -> None:
    rule = replace(RULE, pending=5 * MIN)
    alert, _ = run(rule, [(0, HIGH), (2, LOW)])
    assert alert.state is AlertState.NORMAL
    alert, decision = step(alert, rule, HIGH, 3)
    assert alert.state is AlertState.PENDING
    alert, decision = step(alert, rule, HIGH, 7)
    assert alert.state is AlertState.PENDING
    alert, decision = step(alert, rule, HIGH, 8)
    assert alert.state is AlertState.FIRING
    assert decision.kind == "firing"


def test_pending_that_never_fires_never_notifies() -> None:
    rule = replace(RULE, pending=5 * MIN)
    _, kinds = run(rule, [(0, HIGH), (2, LOW), (3, HIGH), (4, LOW)])
    assert kinds == []


def test_without_pending_a_high_score_fires_at_once() -> None:
    alert, kinds = run(RULE, [(0, HIGH)])
    assert alert.state is AlertState.FIRING
    assert kinds == ["firing"]


def test_keep_firing_holds_the_alert_until_the_score_stays_clear() -> None:
    rule = replace(CALM, keep_firing=10 * MIN)
    alert, kinds = run(rule, [(0, HIGH), (1, LOW)])
    assert alert.state is AlertState.RECOVERING
    assert kinds == ["firing"]
    alert, decision = step(alert, rule, HIGH, 5)
    assert alert.state is AlertState.FIRING
    assert not decision.notify
    alert, _ = step(alert, rule, LOW, 6)
    alert, decision = step(alert, rule, LOW, 15)
    assert alert.state is AlertState.RECOVERING
    assert not decision.notify
    alert, decision = step(alert, rule, LOW, 16)
    assert alert.state is AlertState.NORMAL
    assert decision.kind == "resolved"


def test_without_keep_firing_a_cleared_score_resolves_at_once() -> None:
    alert, kinds = run(CALM, [(0, HIGH), (1, LOW)])
    assert alert.state is AlertState.NORMAL
    assert kinds == ["firing", "resolved"]


def test_cooldown_suppresses_a_refire_but_sends_it_once_the_window_is_over() -> None:
    alert, kinds = run(CALM, [(0, HIGH), (5, LOW)])
    assert kinds == ["firing", "resolved"]
    alert, decision = step(alert, CALM, HIGH, 10)
    assert alert.state is AlertState.FIRING
    assert not decision.notify
    assert "cooldown" in decision.reason
    alert, decision = step(alert, CALM, HIGH, 34)
    assert not decision.notify
    # Cooldown counts from the last notification (the resolved at minute 5).
    alert, decision = step(alert, CALM, HIGH, 35)
    assert decision.kind == "firing"
    alert, decision = step(alert, CALM, HIGH, 36)
    assert not decision.notify


def test_band_increase_bypasses_the_cooldown() -> None:
    alert, _ = run(CALM, [(0, HIGH), (5, LOW)])
    alert, decision = step(alert, CALM, 90.0, 10, band=Band.CRITICAL)
    assert decision.notify
    assert decision.kind == "firing"
    assert "bypassed" in decision.reason
    assert alert.last_notified_band is Band.CRITICAL


def test_band_increase_while_firing_escalates_once() -> None:
    alert, _ = run(CALM, [(0, HIGH)])
    alert, decision = step(alert, CALM, 90.0, 1, band=Band.CRITICAL)
    assert decision.kind == "escalated"
    alert, decision = step(alert, CALM, HIGH, 2, band=Band.HIGH)
    assert not decision.notify
    alert, decision = step(alert, CALM, 90.0, 3, band=Band.CRITICAL)
    assert not decision.notify


def test_repeat_is_sent_each_interval_while_firing() -> None:
    rule = replace(CALM, repeat_every=timedelta(hours=1))
    alert, _ = run(rule, [(0, HIGH)])
    alert, decision = step(alert, rule, HIGH, 59)
    assert not decision.notify
    alert, decision = step(alert, rule, HIGH, 60)
    assert decision.kind == "repeat"
    alert, decision = step(alert, rule, HIGH, 61)
    assert not decision.notify
    alert, decision = step(alert, rule, HIGH, 120)
    assert decision.kind == "repeat"


def test_no_repeat_when_repeat_every_is_none() -> None:
    _, kinds = run(CALM, [(m, HIGH) for m in range(0, 600, 30)])
    assert kinds == ["firing"]


def test_resolved_is_sent_only_after_a_notified_firing() -> None:
    # The re-fire at minute 10 is held back by the cooldown, so its clearing is not news.
    _, kinds = run(CALM, [(0, HIGH), (5, LOW), (10, HIGH), (12, LOW)])
    assert kinds == ["firing", "resolved"]


def test_normal_alert_never_resolves() -> None:
    _, kinds = run(CALM, [(0, LOW), (1, MID), (2, LOW)])
    assert kinds == []


@pytest.mark.parametrize("scores", [[(0, HIGH)], [(0, HIGH), (5, LOW)], [(0, LOW)]])
def test_restart_reevaluating_an_unchanged_score_does_not_notify(
    scores: list[tuple[float, float]],
) -> None:
    alert, _ = run(CALM, scores)
    minute, score = scores[-1]
    later = T0 + (minute + 3) * MIN
    after = evaluate(alert, CALM, score, band_of(score), later)
    decision = decide(alert, after, CALM, later)
    assert (decision.notify, decision.kind) == (False, "none")
    assert after.state is alert.state


OSCILLATION = [(float(m), HIGH if m % 2 == 0 else LOW) for m in range(20)]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (RULE, ["firing", "resolved"]),
        (replace(RULE, pending=5 * MIN), []),
        (replace(RULE, keep_firing=5 * MIN), ["firing"]),
        (CALM, ["firing", "resolved"]),
    ],
    ids=["defaults", "pending", "keep_firing", "cooldown_only"],
)
def test_scenario_9_oscillating_score_notifies_at_most_once_per_kind(
    rule: ThresholdRule, expected: list[str]
) -> None:
    alert, kinds = run(rule, OSCILLATION)
    assert kinds == expected
    assert set(kinds) <= {"firing", "resolved", "flapping"}
    assert kinds.count("firing") <= 1
    assert kinds.count("resolved") <= 1
    assert kinds.count("flapping") <= 1
    if "flapping" in kinds:
        assert kinds[-1] == "flapping"
        assert alert.state is AlertState.FLAPPING


def test_flapping_returns_to_normal_after_a_quiet_window() -> None:
    alert, _ = run(RULE, OSCILLATION)
    last_flip = 19
    alert, decision = step(alert, RULE, LOW, last_flip + 29)
    assert alert.state is AlertState.FLAPPING
    assert not decision.notify
    alert, decision = step(alert, RULE, LOW, last_flip + 30)
    assert alert.state is AlertState.NORMAL
    # "resolved" was already sent before the flapping began: settling clear is not news.
    assert decision.kind == "none"
    assert alert.transitions == ()


def test_flapping_is_notified_once_when_the_receiver_was_last_told_firing() -> None:
    rule = replace(RULE, flap_changes=1)
    alert, kinds = run(rule, OSCILLATION)
    assert kinds == ["firing", "flapping"]
    alert, decision = step(alert, rule, LOW, 19 + 30)
    assert alert.state is AlertState.NORMAL
    assert decision.kind == "resolved"


def test_flapping_settles_to_firing_when_the_score_stays_high() -> None:
    alert, _ = run(RULE, [*OSCILLATION, (20, HIGH)])
    alert, decision = step(alert, RULE, MID, 49)
    assert alert.state is AlertState.FLAPPING
    alert, decision = step(alert, RULE, MID, 50)
    assert alert.state is AlertState.FIRING
    assert decision.kind == "firing"


def test_flips_while_flapping_extend_the_quiet_window() -> None:
    alert, _ = run(RULE, OSCILLATION)
    alert, _ = step(alert, RULE, HIGH, 40)
    alert, decision = step(alert, RULE, HIGH, 69)
    assert alert.state is AlertState.FLAPPING
    assert not decision.notify
    alert, _ = step(alert, RULE, HIGH, 70)
    assert alert.state is AlertState.FIRING


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"clear_at": 71.0}, "clear_at"),
        ({"raise_at": float("nan")}, "raise_at"),
        ({"pending": -MIN}, "pending"),
        ({"keep_firing": -MIN}, "keep_firing"),
        ({"repeat_every": timedelta(0)}, "repeat_every"),
        ({"cooldown": -MIN}, "cooldown"),
        ({"flap_changes": 0}, "flap_changes"),
        ({"flap_window": timedelta(0)}, "flap_window"),
    ],
)
def test_rule_rejects_invalid_settings_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        replace(RULE, **changes)


def test_rule_accepts_equal_raise_and_clear_levels() -> None:
    assert ThresholdRule(raise_at=70.0, clear_at=70.0).clear_at == 70.0


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(Alert.initial(T0), RULE, HIGH, Band.HIGH, datetime(2025, 3, 1))


def test_notified_rejects_a_decision_not_to_notify() -> None:
    with pytest.raises(ValueError, match="notify"):
        notified(Alert.initial(T0), Decision(False, "none", "quiet"), Band.LOW, T0)


def test_decision_kind_must_match_notify() -> None:
    with pytest.raises(ValueError, match="kind"):
        Decision(True, "none", "contradiction")
