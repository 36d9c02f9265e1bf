"""Scenarios 2 and 3: retries on the schedule with one webhook-id; timeouts, 429 and 410."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.scenarios.harness import (
    Api,
    Database,
    Mailbox,
    Receiver,
    Reply,
    Riskalert,
    seconds,
    wait_until,
)

SCHEDULE = [0, 0.2, 0.4, 0.6, 0.8]  # the harness default, in seconds


def test_receiver_failing_three_times_gets_exactly_four_attempts_with_one_webhook_id(
    riskalert: Riskalert, receiver: Receiver
) -> None:
    api = Api(riskalert.serve())
    endpoint = api.create_webhook("flaky", receiver.url("/flaky"))
    receiver.expect("/flaky", endpoint["secret"])
    big = b"boom " * 2000  # 10 KB: only the first 4 KB are kept with the attempt
    receiver.script("/flaky", [Reply(500, body=big)] * 3)

    delivery = api.send_test(endpoint["id"])
    done = api.wait_delivery(delivery["id"], "succeeded")

    got = receiver.got("/flaky")
    assert [r.status for r in got] == [500, 500, 500, 200]
    assert {r.webhook_id for r in got} == {delivery["message_id"]}
    assert all(r.verified for r in got)
    # Each retry waited at least its step of the schedule.
    for n in range(1, 4):
        assert got[n].arrived - got[n - 1].arrived >= SCHEDULE[n] - 0.01
    log = done["attempt_log"]
    assert done["attempts"] == len(log) == 4
    assert [(a["number"], a["outcome"], a["status_code"]) for a in log] == [
        (1, "retry", 500),
        (2, "retry", 500),
        (3, "retry", 500),
        (4, "delivered", 200),
    ]
    assert all(a["error_class"] == "http_status" and "500" in a["error"] for a in log[:3])
    assert log[0]["response_body"] == big[:4096].decode()
    assert all(a["duration_ms"] > 0 for a in log)
    # Each attempt is signed afresh: its own timestamp, never going back.
    stamps = [r.timestamp for r in got]
    assert stamps == sorted(stamps)


def test_timeout_then_429_then_410_backs_off_disables_cancels_and_emails_the_owner(
    riskalert: Riskalert, database: Database, receiver: Receiver, mailbox: Mailbox
) -> None:
    floor = 0.6  # least wait after a timeout or a 429; more than the schedule's early steps
    api = Api(
        riskalert.serve(
            RISKALERT_ALERTS_RETRY_SCHEDULE="[0, 0.2, 0.5, 0.5, 0.5]",
            RISKALERT_ALERTS_THROTTLE_FLOOR=seconds(floor),
            RISKALERT_WEBHOOK_TIMEOUT=seconds(1),
        )
    )
    hook = api.create_webhook("moody", receiver.url("/moody"))
    receiver.expect("/moody", hook["secret"])
    api.create_email("owner", "owner@example.com")
    receiver.script(
        "/moody",
        [
            Reply(503, delay=2.5),  # past the 1 s timeout
            Reply(429, headers={"Retry-After": "1"}),
            Reply(410, body=b"gone"),
        ],
    )
    # Another notification for the same endpoint, waiting for a later attempt.
    later = datetime.now(UTC) + timedelta(hours=1)
    [parked] = database.enqueue(api.tenant_id, [hook["id"]], not_before=later)

    delivery = api.send_test(hook["id"])
    done = api.wait_delivery(delivery["id"], "failed")

    got = receiver.got("/moody")
    assert len(got) == 3
    assert {r.webhook_id for r in got} == {delivery["message_id"]}
    log = done["attempt_log"]
    assert [(a["outcome"], a["status_code"], a["error_class"]) for a in log] == [
        ("retry", None, "timeout"),
        ("retry", 429, "http_status"),
        ("gone", 410, "http_status"),
    ]
    # After the timeout: the timeout itself, then at least the throttle floor (not 0.2 s).
    assert got[1].arrived - got[0].arrived >= 1.0 + floor - 0.01
    # After the 429: Retry-After (1 s) honoured, above both the schedule (0.5) and the floor.
    assert got[2].arrived - got[1].arrived >= 1.0 - 0.01

    endpoint = api.endpoint(hook["id"])
    assert endpoint["enabled"] is False
    assert "410" in endpoint["disabled_reason"]
    assert database.delivery(parked).status == "cancelled"
    [notice] = wait_until(lambda: mailbox.to("owner@example.com"), what="the owner's email")
    assert "moody" in notice.message["Subject"]
    assert "disabled" in notice.message["Subject"].lower()
    assert "410" in notice.text()


def test_endpoint_failing_for_the_whole_disable_period_is_disabled_and_its_owner_emailed(
    riskalert: Riskalert, receiver: Receiver, mailbox: Mailbox
) -> None:
    # Five days of nothing but failures, compressed to one second.
    api = Api(
        riskalert.serve(
            RISKALERT_ALERTS_DISABLE_AFTER=seconds(1),
            RISKALERT_ALERTS_RETRY_SCHEDULE="[0, 0.5, 0.5, 0.5, 0.5, 0.5]",
        )
    )
    hook = api.create_webhook("broken", receiver.url("/broken"))
    receiver.expect("/broken", hook["secret"])
    receiver.script("/broken", [], then=Reply(500))
    api.create_email("owner", "owner@example.com")

    delivery = api.send_test(hook["id"])
    done = api.wait_delivery(delivery["id"], "failed")

    log = done["attempt_log"]
    assert 2 < len(log) < 6  # stopped by the disable period, not by the end of the schedule
    first, last = (datetime.fromisoformat(log[i]["started_at"]) for i in (0, -1))
    assert last - first >= timedelta(seconds=0.8)  # about the period (minus attempt durations)
    endpoint = api.endpoint(hook["id"])
    assert endpoint["enabled"] is False
    assert endpoint["disabled_reason"].startswith("only failures since")
    [notice] = wait_until(lambda: mailbox.to("owner@example.com"), what="the owner's email")
    assert "broken" in notice.message["Subject"]
    assert "only failures since" in notice.text()
