"""Scenario 8: restarts send nothing when nothing changed; a change made while the worker was
down is sent exactly once after it starts."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.scenarios.harness import (
    Api,
    Database,
    Receiver,
    Riskalert,
    holds_for,
    seconds,
    wait_until,
)
from tests.test_rescoring import east_of_base, incident_body

TICKS = {"RISKALERT_RESCORE_INTERVAL": seconds(1)}  # a decay rescoring of everything each second


def rescored_since(database: Database, site: int, moment: datetime) -> bool:
    """Whether the site's score was computed again (the decay tick) after `moment`."""
    scored = database.scored_at(site)
    return scored is not None and scored > moment


def alert_notifications(receiver: Receiver) -> list[tuple[str, int]]:
    return [
        (r.event_type, r.alert["sequence"])
        for r in receiver.answered("/r")
        if r.event_type.startswith("alert.")
    ]


def test_restart_with_nothing_changed_sends_nothing_and_a_change_while_down_is_sent_once(
    riskalert: Riskalert, database: Database, receiver: Receiver
) -> None:
    server = riskalert.serve(inline_worker=False, **TICKS)
    api = Api(server)
    site = api.create_site("Mine", *east_of_base(0))
    hook = api.create_webhook("ops", receiver.url("/r"))
    receiver.expect("/r", hook["secret"])
    api.subscribe(
        [hook["id"]], [{"kind": "threshold", "raise_at": 5, "clear_at": 2}], target_id=site
    )
    worker = riskalert.worker("all", **TICKS)
    body = incident_body("a1", *east_of_base(3))
    api.post_incident(body)
    wait_until(lambda: alert_notifications(receiver), what="the firing notification")
    wait_until(database.idle, what="the pipeline to go idle")
    assert alert_notifications(receiver) == [("alert.firing", 1)]

    # Restart both processes; nothing changed in between.
    worker.terminate()
    server.proc.terminate()
    server = riskalert.serve(inline_worker=False, port=server.port, **TICKS)
    api.rebind(server)
    restarted = datetime.now(UTC)
    worker = riskalert.worker("all", **TICKS)
    # The restarted worker rescored everything (decay tick), consumed the feeds and ran its
    # alert ticks (every 0.5 s, within the quiet second), and still has nothing to say.
    wait_until(lambda: rescored_since(database, site, restarted), what="a decay rescoring")
    wait_until(database.idle, what="the pipeline to go idle after the restart")
    holds_for(lambda: len(receiver.got("/r")) == 1, seconds=1.0, what="no new notification")

    # The incident is retracted while the worker is down: the score falls once it is back.
    worker.terminate()
    api.post_incident({**body, "lifecycle": "retracted"})
    assert not database.idle()  # the site waits to be rescored
    restarted = datetime.now(UTC)
    worker = riskalert.worker("all", **TICKS)
    wait_until(lambda: len(alert_notifications(receiver)) == 2, what="the resolved notification")
    wait_until(lambda: rescored_since(database, site, restarted), what="a decay rescoring")
    wait_until(database.idle, what="the pipeline to go idle")
    holds_for(lambda: len(receiver.got("/r")) == 2, seconds=1.0, what="no further notification")
    assert alert_notifications(receiver) == [("alert.firing", 1), ("alert.resolved", 2)]
    assert all(r.verified for r in receiver.got("/r"))
