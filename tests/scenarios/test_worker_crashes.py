"""Scenarios 5 and 6: a killed worker's delivery is sent again after its lease; SIGTERM lets
the request in flight finish and be recorded once."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from itertools import pairwise

import pytest

from tests.scenarios.harness import Api, Receiver, Reply, Riskalert, seconds, wait_until

LEASE = 2.0  # the harness default


def test_delivery_of_a_killed_worker_is_sent_after_the_lease_with_the_same_webhook_id(
    riskalert: Riskalert, receiver: Receiver
) -> None:
    api = Api(riskalert.serve(inline_worker=False))
    endpoint = api.create_webhook("k", receiver.url("/k"))
    receiver.expect("/k", endpoint["secret"])
    receiver.script("/k", [Reply(hang=True)])  # the first request never gets its answer
    first_worker = riskalert.worker("alerts")

    delivery = api.send_test(endpoint["id"])
    wait_until(lambda: receiver.inflight["/k"] == 1, what="the first request in flight")
    first_worker.kill9()
    killed = time.monotonic()
    riskalert.worker("alerts")

    done = api.wait_delivery(delivery["id"], "succeeded", timeout=30)
    got = receiver.got("/k")
    assert len(got) == 2
    assert {r.webhook_id for r in got} == {delivery["message_id"]}
    assert all(r.verified for r in got)
    assert got[1].arrived > killed
    log = done["attempt_log"]
    assert [(a["outcome"], a["error_class"]) for a in log] == [
        ("lost", "lease_expired"),
        ("delivered", None),
    ]
    # Sent again only once the lease taken for the first request had expired.
    lease_expired_at = datetime.fromisoformat(log[0]["started_at"])
    assert lease_expired_at - timedelta(seconds=LEASE) <= got[0].arrived_at
    assert datetime.fromisoformat(log[1]["started_at"]) >= lease_expired_at
    assert got[1].arrived_at >= lease_expired_at


def test_sigterm_lets_the_request_in_flight_finish_and_records_it_once(
    riskalert: Riskalert, receiver: Receiver
) -> None:
    api = Api(riskalert.serve(inline_worker=False))
    endpoint = api.create_webhook("slow", receiver.url("/slow"))
    receiver.expect("/slow", endpoint["secret"])
    receiver.script("/slow", [Reply(200, delay=1.5)])
    # Timeout and lease (an attempt may take 80 % of it) well beyond the 1.5 s answer.
    worker = riskalert.worker(
        "alerts", RISKALERT_WEBHOOK_TIMEOUT=seconds(10), RISKALERT_ALERTS_LEASE=seconds(10)
    )

    delivery = api.send_test(endpoint["id"])
    wait_until(lambda: receiver.inflight["/slow"] == 1, what="the request in flight")
    assert worker.terminate(timeout=20) == 0
    exited = time.monotonic()

    [request] = receiver.got("/slow")
    assert request.status == 200
    assert request.finished is not None
    assert request.finished <= exited
    done = api.delivery(delivery["id"])
    assert done["status"] == "succeeded"
    assert [(a["number"], a["outcome"]) for a in done["attempt_log"]] == [(1, "delivered")]
    assert "stopped after 1 attempts" in worker.output()


# About the worker process alone, not the database: run on one engine.
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_receiver_dripping_its_answer_is_never_sent_the_same_webhook_twice_at_once(
    riskalert: Riskalert, receiver: Receiver
) -> None:
    # Timeout 1 s and lease 2 s stand for the defaults' 15 s and 45 s: each byte arrives
    # within the timeout, so only a deadline for the whole attempt bounds it.
    api = Api(riskalert.serve(RISKALERT_WEBHOOK_TIMEOUT=seconds(1)))
    endpoint = api.create_webhook("drip", receiver.url("/drip"))
    receiver.expect("/drip", endpoint["secret"])
    receiver.script("/drip", [Reply(200, delay=0.4, drip=12)])  # 4.8 s for the whole answer

    delivery = api.send_test(endpoint["id"])
    wait_until(lambda: receiver.got("/drip"), what="the first request")
    wait_until(
        lambda: all(r.finished is not None for r in receiver.got("/drip")),
        timeout=20,
        what="every request to be answered",
    )
    api.wait_delivery(delivery["id"], "succeeded")

    got = receiver.got("/drip")
    assert {r.webhook_id for r in got} == {delivery["message_id"]}
    for earlier, later in pairwise(got):
        assert earlier.finished is not None
        assert later.arrived >= earlier.finished, "sent again while the first was in flight"


# About the worker process alone, not the database: run on one engine.
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_sigterm_abandons_a_request_hanging_past_the_grace_to_its_lease(
    riskalert: Riskalert, receiver: Receiver
) -> None:
    grace = 0.5
    api = Api(riskalert.serve(inline_worker=False))
    endpoint = api.create_webhook("hung", receiver.url("/hung"))
    receiver.expect("/hung", endpoint["secret"])
    receiver.script("/hung", [Reply(hang=True)])
    env = {
        "RISKALERT_SHUTDOWN_GRACE": seconds(grace),
        # The attempt would hang on for 80 % of the lease (9.6 s), far past the grace, and
        # past the margin a loaded machine needs to stop the process.
        "RISKALERT_WEBHOOK_TIMEOUT": seconds(20),
        "RISKALERT_ALERTS_LEASE": seconds(12),
    }
    worker = riskalert.worker("alerts", **env)

    delivery = api.send_test(endpoint["id"])
    wait_until(lambda: receiver.inflight["/hung"] == 1, what="the request in flight")
    # Gone soon after the grace, not when the attempt would have given up.
    assert worker.terminate(timeout=grace + 5.5) == 0

    riskalert.worker("alerts", **env)
    done = api.wait_delivery(delivery["id"], "succeeded", timeout=30)  # after the 12 s lease
    assert [a["outcome"] for a in done["attempt_log"]] == ["lost", "delivered"]
    assert {r.webhook_id for r in receiver.got("/hung")} == {delivery["message_id"]}
