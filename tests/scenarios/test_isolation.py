"""Scenario 4: a hanging endpoint holds at most two worker slots; healthy ones go at once."""

from __future__ import annotations

import time

from tests.scenarios.harness import Api, Database, Receiver, Reply, Riskalert, seconds, wait_until

# The fallback poll; the healthy endpoint must not wait longer than that (it is woken at once).
POLL = 2.0


def test_hanging_endpoint_holds_two_slots_and_a_healthy_one_is_served_within_one_poll(
    riskalert: Riskalert, database: Database, receiver: Receiver
) -> None:
    api = Api(
        riskalert.serve(
            # Long enough that nothing hanging comes back during the scenario (an attempt may
            # take 80 % of its lease).
            RISKALERT_WEBHOOK_TIMEOUT=seconds(20),
            RISKALERT_ALERTS_LEASE=seconds(30),
            RISKALERT_ALERTS_POLL_INTERVAL=seconds(POLL),
        )
    )
    stuck = api.create_webhook("stuck", receiver.url("/stuck"))
    healthy = api.create_webhook("healthy", receiver.url("/healthy"))
    receiver.expect("/stuck", stuck["secret"])
    receiver.expect("/healthy", healthy["secret"])
    receiver.script("/stuck", [], then=Reply(hang=True))

    waiting = [api.send_test(stuck["id"])["id"] for _ in range(4)]
    wait_until(lambda: receiver.inflight["/stuck"] == 2, what="two requests hanging")

    started = time.monotonic()
    test = api.send_test(healthy["id"])
    [served] = wait_until(lambda: receiver.answered("/healthy"), timeout=POLL * 3, what="healthy")
    assert served.arrived - started < POLL
    assert served.webhook_id == test["message_id"]
    api.wait_delivery(test["id"], "succeeded")

    # The hanging endpoint never had more than its two slots; the rest of its work waits.
    assert receiver.max_inflight["/stuck"] == 2
    statuses = sorted(database.delivery(d).status for d in waiting)
    assert statuses == ["pending", "pending", "sending", "sending"]
