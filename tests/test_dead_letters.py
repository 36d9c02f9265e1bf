"""No poison item: ids are never reused, and what a pipeline cannot process is set aside while
everything else keeps flowing (alert feeds, timers, digests, the dispatcher, rescoring)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from services.alerts import jobs as alert_jobs
from services.alerts import outbox, pipeline
from services.alerts.models import Alert
from services.alerts.webhooks import AttemptResult
from services.core import deadletters
from services.core.models import DeadLetter, FeedCursor
from services.scoring import queue, scores
from services.scoring.models import RescoreMark, ScoreChange
from tests.conftest import Api, assert_problem
from tests.test_alerts_pipeline import add_watch, alerts, attack, deliveries
from tests.test_rescoring import create_site, east_of_base

KIDNAPPING = {"kind": "event", "trigger": "kidnapping_nearby", "radius_km": 50}


def letters(api: Api) -> list[DeadLetter]:
    with api.app.state.sessions() as session:
        return list(session.execute(select(DeadLetter).order_by(DeadLetter.id)).scalars())


def unread(api: Api) -> dict[str, int]:
    """Entries of each change feed after its alerts cursor."""
    with api.app.state.sessions() as session:
        positions = dict(session.execute(select(FeedCursor.name, FeedCursor.position)).all())
        newest = session.execute(select(ScoreChange.id).order_by(ScoreChange.id.desc())).first()
    return {"score_change": (newest[0] if newest else 0) - positions.get("score_change", 0)}


# ---------------------------------------------------------------------------------------------
# The alert pipeline sets aside what it cannot process


def _failing_for(target_id: int, real: Callable[..., Any]) -> Callable[..., Any]:
    def observe(session: Session, row: Alert, *args: Any, **kwargs: Any) -> Any:
        if row.target_id == target_id:
            raise ValueError(f"made to fail for target {target_id}")
        return real(session, row, *args, **kwargs)

    return observe


def test_a_score_change_that_cannot_be_evaluated_is_set_aside_and_the_rest_goes_on(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison = create_site(api, "Poison mine", *east_of_base(0))
    healthy = create_site(api, "Healthy mine", *east_of_base(1))
    add_watch(api, None, {"raise_at": 5, "clear_at": 2})
    api.drain_alerts()
    monkeypatch.setattr(pipeline, "observe", _failing_for(poison, pipeline.observe))

    attack(api, "a1", 0.5)
    api.drain_alerts()

    assert {a.target_id: a.state for a in alerts(api)} == {poison: "normal", healthy: "firing"}
    assert [d.event_type for d in deliveries(api)] == ["alert.firing"]
    [letter] = letters(api)
    assert letter.pipeline == "alerts.score_change"
    assert f"target {poison}" in letter.item
    assert letter.error_class == "ValueError"
    assert "made to fail" in letter.error
    assert "Traceback" in letter.trace
    assert letter.tenant_id == api.tenant_a
    assert unread(api) == {"score_change": 0}  # the cursor moved past it


def test_a_failure_of_the_database_sets_nothing_aside(
    sessions: sessionmaker[Session],
) -> None:
    def step(session: Session, quarantine: deadletters.Quarantine | None) -> int:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    with pytest.raises(OperationalError):
        deadletters.run(sessions, "test.pipeline", step, lambda: datetime.now(UTC))

    with sessions() as session:
        assert session.execute(select(DeadLetter)).first() is None


def test_an_item_failing_again_while_set_aside_counts_on_its_open_letter(
    sessions: sessionmaker[Session],
) -> None:
    now = datetime.now(UTC)

    def step(session: Session, quarantine: deadletters.Quarantine | None) -> None:
        with deadletters.guard(quarantine, "item 7"):
            raise KeyError("poison")

    deadletters.run(sessions, "test.pipeline", step, lambda: now)
    deadletters.run(sessions, "test.pipeline", step, lambda: now + timedelta(minutes=1))

    with sessions() as session:
        [letter] = session.execute(select(DeadLetter)).scalars().all()
    assert (letter.item, letter.occurrences, letter.last_at) == (
        "item 7",
        2,
        now + timedelta(minutes=1),
    )


def test_an_incident_that_cannot_be_matched_is_set_aside_and_other_kidnappings_alert(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_site(api, "Camp", *east_of_base(0))
    add_watch(api, None, KIDNAPPING)
    api.drain_alerts()
    real = pipeline._match_incident

    def match(session: Session, incident: Any, *args: Any) -> Any:
        if incident.source_id == "poison":
            raise RuntimeError("made to fail")
        return real(session, incident, *args)

    monkeypatch.setattr(pipeline, "_match_incident", match)

    attack(api, "poison", 1, category="kidnapping")
    attack(api, "k2", 30, category="kidnapping")
    api.drain_alerts()

    assert [d.event_type for d in deliveries(api)] == ["alert.triggered"]
    assert deliveries(api)[0].payload["data"]["incident"]["title"] is not None
    [letter] = letters(api)
    assert letter.pipeline == "alerts.incident_change"
    assert letter.item.startswith("incident_change ")


def test_a_timer_that_cannot_be_evaluated_is_set_aside_once_and_cleared(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_id = create_site(api, "Mine", *east_of_base(0))
    add_watch(api, site_id, {"raise_at": 5, "clear_at": 2, "repeat_every": "PT1H"})
    attack(api, "a1", 1)
    api.drain_alerts()
    later = datetime.now(UTC) + timedelta(hours=2)
    monkeypatch.setattr(pipeline, "observe", _failing_for(site_id, pipeline.observe))
    factory = api.app.state.sessions

    alert_jobs.reevaluate(factory, api.settings, lambda: later)
    alert_jobs.reevaluate(factory, api.settings, lambda: later + timedelta(hours=2))

    [letter] = letters(api)
    assert (letter.pipeline, letter.occurrences) == ("alerts.timers", 1)
    [alert] = alerts(api)
    assert alert.next_check_at is None


def test_a_rule_that_cannot_be_seeded_for_one_target_still_seeds_the_others(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison = create_site(api, "Poison mine", *east_of_base(0))
    healthy = create_site(api, "Healthy mine", *east_of_base(1))
    attack(api, "a1", 0.5)
    api.drain_alerts()
    monkeypatch.setattr(pipeline, "observe", _failing_for(poison, pipeline.observe))

    add_watch(api, None, {"raise_at": 5, "clear_at": 2})
    api.drain_alerts()

    assert {a.target_id: a.state for a in alerts(api)} == {healthy: "firing"}
    [letter] = letters(api)
    assert letter.pipeline == "alerts.seed"
    assert f"target {poison}" in letter.item
    with api.app.state.sessions() as session:
        assert pipeline.backlog(session) == set()  # seeded: not tried again at every poll


def test_a_digest_that_cannot_be_built_is_set_aside_and_other_endpoints_get_theirs(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    every_band = ["low", "moderate", "elevated", "high", "critical"]
    create_site(api, "Mine", *east_of_base(0))
    poison, _, _ = add_watch(api, None, {"raise_at": 5, "clear_at": 2}, digest_bands=every_band)
    healthy, _, _ = add_watch(api, None, {"raise_at": 5, "clear_at": 2}, digest_bands=every_band)
    attack(api, "a1", 0.5)
    api.drain_alerts()
    real = outbox.enqueue

    def enqueue(session: Session, **kwargs: Any) -> Any:
        if kwargs["endpoints"][0].id == poison:
            raise ValueError("made to fail")
        return real(session, **kwargs)

    monkeypatch.setattr(outbox, "enqueue", enqueue)

    assert alert_jobs.digests(api.app.state.sessions, api.settings) == 1

    assert [(d.endpoint_id, d.event_type) for d in deliveries(api)] == [(healthy, "digest.daily")]
    [letter] = letters(api)
    assert (letter.pipeline, letter.item) == ("alerts.digests", f"digest of endpoint {poison}")


# ---------------------------------------------------------------------------------------------
# The dispatcher and rescoring


def _delivered(claimed: outbox.Claimed) -> outbox.Attempted:
    result = AttemptResult(
        outcome="delivered", status_code=204, error_class=None, error=None,
        response_body=None, duration_ms=1.0,
    )  # fmt: skip
    return outbox.Attempted(claimed, result, datetime.now(UTC))


def test_an_attempt_that_cannot_be_recorded_is_set_aside_and_the_others_are_recorded(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_site(api, "Mine A", *east_of_base(0))
    create_site(api, "Mine B", *east_of_base(1))
    add_watch(api, None, {"raise_at": 5, "clear_at": 2})
    attack(api, "a1", 0.5)
    api.drain_alerts()
    factory = api.app.state.sessions
    args: dict[str, Any] = {"owner": "w1", "settings": api.settings, "rng": Random(1)}
    first, second = alert_jobs.settle_and_claim(factory, [], 10, **args)
    real = outbox._settle

    def settle(session: Session, attempts: Any, **kwargs: Any) -> Any:
        if any(a.claimed.id == first.id for a in attempts):
            raise ValueError("made to fail")
        return real(session, attempts, **kwargs)

    monkeypatch.setattr(outbox, "_settle", settle)

    alert_jobs.settle_and_claim(factory, [_delivered(first), _delivered(second)], 10, **args)

    by_id = {d.id: d for d in deliveries(api)}
    assert by_id[second.id].status == "succeeded"
    assert by_id[first.id].status == "succeeded"  # closed by its outcome alone
    assert by_id[first.id].lease_token is None
    [letter] = letters(api)
    assert (letter.pipeline, letter.item) == ("alerts.dispatch", f"delivery {first.id}, attempt 1")


def test_a_target_that_cannot_be_rescored_is_set_aside_and_the_others_are_rescored(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison = create_site(api, "Poison mine", *east_of_base(0))
    healthy = create_site(api, "Healthy mine", *east_of_base(1))
    api.drain()
    with api.app.state.sessions() as session:
        before = session.execute(select(func.max(ScoreChange.id))).scalar_one()
    real = scores.compute

    def compute(session: Session, model: Any, ids: Any, *args: Any) -> Any:
        if poison in ids:
            raise ZeroDivisionError("made to fail")
        return real(session, model, ids, *args)

    monkeypatch.setattr(scores, "compute", compute)

    attack(api, "a1", 0.5)
    api.drain()

    with api.app.state.sessions() as session:
        moved = set(
            session.execute(select(ScoreChange.target_id).where(ScoreChange.id > before)).scalars()
        )
        queued = set(session.execute(select(RescoreMark.target_id)).scalars())
    assert moved == {healthy}
    assert queued == set()  # the poison target left the queue: no endless retries
    [letter] = letters(api)
    assert (letter.pipeline, letter.item) == ("scoring.rescore", f"target {poison}")
    assert letter.tenant_id == api.tenant_a


def test_an_incident_that_cannot_queue_its_targets_is_set_aside_and_the_others_rescore(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    near_poison = create_site(api, "Mine west", *east_of_base(0))
    near_healthy = create_site(api, "Mine east", *east_of_base(300))
    api.drain()
    with api.app.state.sessions() as session:
        before = session.execute(select(func.max(ScoreChange.id))).scalar_one()
    real = queue._queue_affected

    def queue_affected(session: Session, fed: Any, *args: Any) -> Any:
        if any(row.source_id == "poison" for row in fed):
            raise ValueError("made to fail")
        return real(session, fed, *args)

    monkeypatch.setattr(queue, "_queue_affected", queue_affected)

    attack(api, "poison", 0.5)
    attack(api, "healthy", 300.5)
    api.drain()

    with api.app.state.sessions() as session:
        moved = set(
            session.execute(select(ScoreChange.target_id).where(ScoreChange.id > before)).scalars()
        )
    assert near_healthy in moved
    assert near_poison not in moved
    [letter] = letters(api)
    assert letter.pipeline == "scoring.incident_feed"
    assert letter.item.startswith("incident_change ")


# ---------------------------------------------------------------------------------------------
# What operators see


@pytest.fixture
def set_aside(api: Api, monkeypatch: pytest.MonkeyPatch) -> DeadLetter:
    poison = create_site(api, "Poison mine", *east_of_base(0))
    add_watch(api, poison, {"raise_at": 5, "clear_at": 2})
    api.drain_alerts()
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "observe", _failing_for(poison, pipeline.observe))
        attack(api, "a1", 0.5)
        api.drain_alerts()
    [letter] = letters(api)
    return letter


def test_dead_letters_are_listed_shown_and_resolved_by_an_admin(
    api: Api, set_aside: DeadLetter
) -> None:
    listed = api.client.get("/v1/dead-letters", headers=api.admin)
    assert listed.status_code == 200, listed.text
    [shown] = listed.json()["dead_letters"]
    assert (shown["id"], shown["pipeline"], shown["occurrences"]) == (
        set_aside.id,
        "alerts.score_change",
        1,
    )
    one = api.client.get(f"/v1/dead-letters/{set_aside.id}", headers=api.admin).json()
    assert "made to fail" in one["trace"]

    resolved = api.client.post(
        f"/v1/dead-letters/{set_aside.id}/resolve",
        json={"note": "rule fixed"},
        headers=api.admin,
    )

    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["note"] == "rule fixed"
    assert resolved.json()["resolved_at"] is not None
    assert api.client.get("/v1/dead-letters", headers=api.admin).json()["dead_letters"] == []
    every = api.client.get("/v1/dead-letters?status=all", headers=api.admin).json()
    assert [d["id"] for d in every["dead_letters"]] == [set_aside.id]
    audit = api.client.get("/v1/audit-log", headers=api.admin).json()["entries"]
    assert [e["action"] for e in audit][-1] == "dead_letter.resolve"


def test_a_resolution_note_with_a_nul_character_is_refused_naming_the_field(
    api: Api, set_aside: DeadLetter
) -> None:
    refused = api.client.post(
        f"/v1/dead-letters/{set_aside.id}/resolve", json={"note": "fixed\x00"}, headers=api.admin
    )

    doc = assert_problem(refused, 422)
    assert [e["field"] for e in doc["errors"]] == ["note"]
    assert [d["id"] for d in api.client.get("/v1/dead-letters", headers=api.admin).json()[
        "dead_letters"]] == [set_aside.id]  # fmt: skip


def test_dead_letters_are_for_admins_only(api: Api, set_aside: DeadLetter) -> None:
    assert_problem(api.client.get("/v1/dead-letters", headers=api.a), 403)
    assert_problem(api.client.post(f"/v1/dead-letters/{set_aside.id}/resolve", json={},
                                   headers=api.a), 403)  # fmt: skip
    assert_problem(api.client.get("/v1/dead-letters/999999", headers=api.admin), 404)


def test_open_dead_letters_are_a_metric(api: Api, set_aside: DeadLetter) -> None:
    text_ = api.client.get("/metrics", headers=api.admin).text

    assert 'riskalert_dead_letters_open{pipeline="alerts.score_change"} 1.0' in text_
    assert 'riskalert_dead_letters_total{pipeline="alerts.score_change"}' in text_


def test_set_aside_items_are_logged_as_errors_for_the_operator(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    poison = create_site(api, "Poison mine", *east_of_base(0))
    add_watch(api, poison, {"raise_at": 5, "clear_at": 2})
    api.drain_alerts()
    monkeypatch.setattr(pipeline, "observe", _failing_for(poison, pipeline.observe))

    attack(api, "a1", 0.5)
    with caplog.at_level("ERROR", logger="services.core.deadletters"):
        api.drain_alerts()

    [record] = [r for r in caplog.records if r.name == "services.core.deadletters"]
    assert "set aside" in record.getMessage()
    assert f"/v1/dead-letters/{letters(api)[0].id}" in record.getMessage()
