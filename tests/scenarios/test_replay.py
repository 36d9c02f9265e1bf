"""Scenario 12: replaying one delivery (same webhook-id, new timestamp) and recovering every
failure since a time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from tests.scenarios.harness import OK, Api, Receiver, Reply, Riskalert, wait_until


def test_replayed_delivery_keeps_its_webhook_id_with_a_new_timestamp(
    riskalert: Riskalert, receiver: Receiver
) -> None:
    api = Api(riskalert.serve())
    hook = api.create_webhook("ops", receiver.url("/r"))
    receiver.expect("/r", hook["secret"])
    delivery = api.send_test(hook["id"])
    api.wait_delivery(delivery["id"], "succeeded")
    [first] = receiver.answered("/r")
    # Timestamps are whole seconds: let one pass so the replay's is visibly new.
    wait_until(lambda: int(time.time()) > first.timestamp, what="the next second")

    assert api.replay(delivery["id"])["status"] == "pending"
    wait_until(lambda: len(receiver.answered("/r")) == 2, what="the replayed request")
    done = api.wait_delivery(delivery["id"], "succeeded")

    again = receiver.answered("/r")[1]
    assert again.webhook_id == first.webhook_id == delivery["message_id"]
    assert again.timestamp > first.timestamp
    assert again.body == first.body
    assert first.verified
    assert again.verified
    assert [a["outcome"] for a in done["attempt_log"]] == ["delivered", "delivered"]


def test_recover_replays_every_failed_delivery_since_the_given_time_and_no_older_one(
    riskalert: Riskalert, receiver: Receiver
) -> None:
    api = Api(riskalert.serve(RISKALERT_ALERTS_RETRY_SCHEDULE="[0, 0.2]"))
    hook = api.create_webhook("ops", receiver.url("/down"))
    receiver.expect("/down", hook["secret"])
    receiver.script("/down", [], then=Reply(500))
    older = api.send_test(hook["id"])
    api.wait_delivery(older["id"], "failed")
    since = datetime.now(UTC)
    newer = [api.send_test(hook["id"]) for _ in range(2)]
    for delivery in newer:
        api.wait_delivery(delivery["id"], "failed")
    assert {d["id"] for d in api.deliveries("failed")} == {older["id"]} | {d["id"] for d in newer}

    too_old = {"since": (datetime.now(UTC) - timedelta(days=15)).isoformat()}
    response = api.request("POST", "/v1/deliveries/recover", body=too_old)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["since"]

    receiver.script("/down", [], then=OK)
    replayed = api.recover(since)

    assert sorted(replayed) == sorted(d["id"] for d in newer)
    for delivery in newer:
        done = api.wait_delivery(delivery["id"], "succeeded")
        assert [a["outcome"] for a in done["attempt_log"]] == ["retry", "retry", "delivered"]
        ids = {
            r.webhook_id for r in receiver.got("/down") if r.webhook_id == delivery["message_id"]
        }
        assert ids == {delivery["message_id"]}
    assert api.delivery(older["id"])["status"] == "failed"
    assert [r.webhook_id for r in receiver.answered("/down")].count(older["message_id"]) == 0
    assert all(r.verified for r in receiver.got("/down"))
