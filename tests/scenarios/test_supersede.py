"""Scenario 13: while an endpoint is down a target changes state three times; once it is back
it gets the newest state last, in increasing sequence."""

from __future__ import annotations

import json

from tests.scenarios.harness import OK, Api, Database, Receiver, Reply, Riskalert, wait_until
from tests.test_rescoring import east_of_base

# Enough retries to outlast the outage.
SCHEDULE = json.dumps([0] + [0.3] * 40)


def test_endpoint_down_during_three_state_changes_gets_the_newest_state_last(
    riskalert: Riskalert, database: Database, receiver: Receiver
) -> None:
    api = Api(riskalert.serve(RISKALERT_ALERTS_RETRY_SCHEDULE=SCHEDULE))
    site = api.create_site("Mine", *east_of_base(0))
    hook = api.create_webhook("ops", receiver.url("/sup"))
    receiver.expect("/sup", hook["secret"])
    receiver.script("/sup", [], then=Reply(503))  # down
    rule = {"kind": "threshold", "raise_at": 60, "clear_at": 40, "cooldown": 0, "flap_changes": 10}
    api.subscribe([hook["id"]], [rule], target_id=site)
    wait_until(database.idle, what="the site to be scored and the rule seeded")

    database.push_score(api.tenant_id, site, 70.0, "high")  # firing
    wait_until(lambda: receiver.got("/sup"), what="a first attempt against the down endpoint")
    database.push_score(api.tenant_id, site, 30.0, "moderate")  # resolved
    database.push_score(api.tenant_id, site, 75.0, "high")  # firing again
    wait_until(lambda: len(api.deliveries()) == 3, what="three deliveries")
    wait_until(database.feeds_consumed, what="the feed to be consumed")

    receiver.script("/sup", [], then=OK)  # back up
    wait_until(lambda: receiver.answered("/sup"), what="a delivery once the endpoint is back")
    wait_until(database.idle, what="nothing left to send")

    rows = api.deliveries()
    assert [(d["event_type"], d["sequence"]) for d in rows] == [
        ("alert.firing", 1),
        ("alert.resolved", 2),
        ("alert.firing", 3),
    ]
    # The older states were superseded; one caught in flight at the switch may also have gone
    # through, before the newest (the order of arrival is checked below); none is retried.
    assert {d["status"] for d in rows[:2]} <= {"superseded", "succeeded"}
    assert rows[2]["status"] == "succeeded"
    got = receiver.got("/sup")
    sequences = [r.alert["sequence"] for r in got]
    assert sequences == sorted(sequences)  # never an older state after a newer one
    delivered = receiver.answered("/sup")
    assert delivered[-1] is got[-1]
    assert (delivered[-1].alert["sequence"], delivered[-1].alert["state"]) == (3, "firing")
    assert delivered[-1].webhook_id == rows[2]["message_id"]
    assert all(r.verified for r in got)
