"""Scenario 11: email through a real SMTP server on loopback: headers, refusals, greylisting,
and a relay that is down for a while."""

from __future__ import annotations

import json

import httpx

from tests.scenarios.harness import Api, Mail, Mailbox, Riskalert, wait_until

SCHEDULE = json.dumps([0] + [0.3] * 7)


def mail_with_id(mailbox: Mailbox, address: str, message_id: str) -> list[Mail]:
    return [
        m for m in mailbox.to(address) if m.message["Message-ID"] == f"<{message_id}@riskalert>"
    ]


def test_email_is_delivered_with_its_headers_550_suppresses_451_retries_and_outages_are_outlasted(
    riskalert: Riskalert, mailbox: Mailbox
) -> None:
    server = riskalert.serve(RISKALERT_ALERTS_RETRY_SCHEDULE=SCHEDULE)
    api = Api(server)
    ok = api.create_email("ok", "ok@example.com")
    grey = api.create_email("grey", "grey@example.com")
    later = api.create_email("later", "later@example.com")
    bounce = api.create_email("bounce", "bounce@example.com")
    assert ok["secret"] is None

    # Delivered, with the headers of delivery.md.
    sent = api.send_test(ok["id"])
    done = api.wait_delivery(sent["id"], "succeeded")
    [mail] = mail_with_id(mailbox, "ok@example.com", sent["message_id"])
    message = mail.message
    assert message["From"] == "riskalert <alerts@riskalert.example>"
    assert message["To"] == "ok@example.com"
    assert message["Subject"] == "[riskalert] Test notification for ok"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = message["List-Unsubscribe"].strip("<>")
    assert unsubscribe.startswith(f"{server.url}/v1/unsubscribe/")
    assert message.get_content_type() == "multipart/alternative"
    assert "Test notification for ok" in mail.text()
    assert "<html" in mail.html().lower()
    assert [(a["outcome"], a["status_code"]) for a in done["attempt_log"]] == [("delivered", 250)]

    # Greylisted twice (451): retried on the schedule, then delivered once.
    mailbox.script("grey@example.com", ["451 4.7.1 greylisted, try again later"] * 2)
    sent = api.send_test(grey["id"])
    done = api.wait_delivery(sent["id"], "succeeded")
    assert [(a["outcome"], a["status_code"]) for a in done["attempt_log"]] == [
        ("retry", 451),
        ("retry", 451),
        ("delivered", 250),
    ]
    assert len(mail_with_id(mailbox, "grey@example.com", sent["message_id"])) == 1

    # The relay is down, then back: the message goes through once it is.
    mailbox.stop()
    sent = api.send_test(later["id"])
    failed = wait_until(
        lambda: api.delivery(sent["id"])["attempt_log"], what="an attempt against the down relay"
    )
    assert failed[0]["outcome"] == "retry"
    assert failed[0]["error_class"] == "connect"
    mailbox.start()
    api.wait_delivery(sent["id"], "succeeded")
    assert len(mail_with_id(mailbox, "later@example.com", sent["message_id"])) == 1

    # 550: failed at once, and the address is suppressed.
    mailbox.script("bounce@example.com", ["550 5.1.1 no such mailbox"])
    sent = api.send_test(bounce["id"])
    done = api.wait_delivery(sent["id"], "failed")
    [attempt] = done["attempt_log"]
    assert (attempt["outcome"], attempt["status_code"], attempt["error_class"]) == (
        "failed",
        550,
        "smtp_refused",
    )
    assert "no such mailbox" in attempt["error"]
    suppressed = api.endpoint(bounce["id"])
    assert suppressed["enabled"] is False
    assert "550" in suppressed["disabled_reason"]
    assert api.request("POST", f"/v1/endpoints/{bounce['id']}/test").status_code == 409
    assert mailbox.to("bounce@example.com") == []

    # The List-Unsubscribe link works with one POST (RFC 8058), without a key.
    response = httpx.post(unsubscribe, content=b"List-Unsubscribe=One-Click", timeout=10)
    assert response.status_code == 200
    assert api.endpoint(ok["id"])["enabled"] is False
