"""Scenario 1: every webhook verifies with the `standardwebhooks` package, across a rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.alerts import signing
from tests.scenarios.harness import Api, Receiver, Riskalert, wait_until

KNOWN_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KNOWN_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
KNOWN_TIMESTAMP = 1614265330
KNOWN_BODY = b'{"test": 2432232314}'
KNOWN_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_standard_webhooks_known_answer() -> None:
    ours = signing.sign(KNOWN_SECRET, KNOWN_ID, KNOWN_TIMESTAMP, KNOWN_BODY)
    theirs = Webhook(KNOWN_SECRET).sign(
        KNOWN_ID, datetime.fromtimestamp(KNOWN_TIMESTAMP, UTC), KNOWN_BODY.decode()
    )
    key = base64.b64decode(KNOWN_SECRET.removeprefix("whsec_"))
    by_hand = hmac.new(key, f"{KNOWN_ID}.{KNOWN_TIMESTAMP}.".encode() + KNOWN_BODY, hashlib.sha256)
    assert ours == theirs == KNOWN_SIGNATURE
    assert "v1," + base64.b64encode(by_hand.digest()).decode() == KNOWN_SIGNATURE


def test_webhooks_verify_with_old_and_new_secret_during_rotation_and_stale_ones_are_refused(
    riskalert: Riskalert, receiver: Receiver
) -> None:
    api = Api(riskalert.serve())
    endpoint = api.create_webhook("signed", receiver.url("/signed"))
    first = endpoint["secret"]
    assert first.startswith("whsec_")
    assert "secret" not in api.endpoint(endpoint["id"])  # shown once
    receiver.expect("/signed", first)

    api.send_test(endpoint["id"])
    [before] = wait_until(lambda: receiver.answered("/signed"), what="the first webhook")
    assert before.verified_by == (first,)
    assert before.event_type == "endpoint.test"
    assert set(before.json) == {"type", "timestamp", "data"}

    rotated = api.rotate_secret(endpoint["id"])["secret"]
    assert rotated not in (None, first)
    receiver.expect("/signed", rotated)
    api.send_test(endpoint["id"])
    during = wait_until(lambda: receiver.answered("/signed")[1:], what="the second webhook")[0]
    # Both secrets sign during the grace period: receivers holding either one verify it.
    assert set(during.verified_by) == {first, rotated}
    assert len(during.headers["webhook-signature"].split()) == 2

    # A request signed correctly but 6 minutes off (either way) is refused by the verifier.
    for skew in (-360, 360):
        stamp = during.timestamp + skew
        replayed = signing.headers([rotated], during.webhook_id, stamp, during.body)
        with pytest.raises(WebhookVerificationError, match="timestamp"):
            Webhook(rotated).verify(during.body, replayed)
    # Once the grace is over (here: a rotation without any), only the newest secret signs.
    newest = api.call("POST", f"/v1/endpoints/{endpoint['id']}/rotate-secret", body={"grace": 0})[
        "secret"
    ]
    receiver.expect("/signed", newest)
    api.send_test(endpoint["id"])
    after = wait_until(lambda: receiver.answered("/signed")[2:], what="the third webhook")[0]
    assert after.verified_by == (newest,)
    # Tampering with the body or the id breaks the signature.
    with pytest.raises(WebhookVerificationError):
        Webhook(rotated).verify(during.body + b" ", during.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(rotated).verify(during.body, {**during.headers, "webhook-id": "msg_other"})
