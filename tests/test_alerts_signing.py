"""Webhook signing: the spec's known answer, the reference verifier, rotation and freshness."""

import base64
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from services.alerts.signing import (
    active_secrets,
    decode_secret,
    generate_secret,
    headers,
    sign,
    signature_header,
    verify,
)

KAT_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KAT_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
KAT_TIMESTAMP = 1614265330
KAT_BODY = b'{"test": 2432232314}'
KAT_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

BODY = b'{"type": "alert.firing", "timestamp": "2025-06-10T12:00:00Z", "data": {"band": "high"}}'
MSG_ID = "msg_2zWsYd1vQmNfH8kRcTaLpXeUoB"
ROTATED_AT = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
GRACE = timedelta(hours=24)


def _secret_of(n_bytes: int) -> str:
    return "whsec_" + base64.b64encode(bytes(range(n_bytes))).decode()


class _FixedTokens:
    def __init__(self, fill: int) -> None:
        self.fill = fill

    def token_bytes(self, nbytes: int) -> bytes:
        return bytes([self.fill]) * nbytes


def test_sign_matches_the_spec_known_answer_vector() -> None:
    assert sign(KAT_SECRET, KAT_ID, KAT_TIMESTAMP, KAT_BODY) == KAT_SIGNATURE


def test_sign_matches_the_reference_library_signer() -> None:
    reference = Webhook(KAT_SECRET).sign(
        msg_id=KAT_ID, timestamp=datetime.fromtimestamp(KAT_TIMESTAMP, tz=UTC), data=BODY.decode()
    )
    assert sign(KAT_SECRET, KAT_ID, KAT_TIMESTAMP, BODY) == reference


def test_headers_verify_with_the_standardwebhooks_package() -> None:
    secret = generate_secret()
    sent = headers([secret], MSG_ID, int(time.time()), BODY)

    assert Webhook(secret).verify(BODY, sent) == {
        "type": "alert.firing",
        "timestamp": "2025-06-10T12:00:00Z",
        "data": {"band": "high"},
    }
    assert sent["webhook-id"] == MSG_ID
    assert sent["content-type"] == "application/json"


def test_headers_carry_the_timestamp_in_unix_seconds_and_verify_with_our_verifier() -> None:
    sent = headers([KAT_SECRET], KAT_ID, KAT_TIMESTAMP, KAT_BODY)

    assert sent["webhook-timestamp"] == "1614265330"
    assert sent["webhook-signature"] == KAT_SIGNATURE
    assert verify(
        KAT_SECRET, KAT_ID, KAT_TIMESTAMP, KAT_BODY, sent["webhook-signature"], KAT_TIMESTAMP
    )


def test_during_rotation_receivers_with_the_old_or_the_new_secret_both_verify() -> None:
    old, new = generate_secret(), generate_secret()
    signing = active_secrets(new, old, ROTATED_AT, ROTATED_AT + timedelta(hours=23), GRACE)
    now = int(time.time())
    sent = headers(signing, MSG_ID, now, BODY)

    assert signing == [new, old]
    assert len(sent["webhook-signature"].split(" ")) == 2
    for receiver_secret in (old, new):
        Webhook(receiver_secret).verify(BODY, sent)
        assert verify(receiver_secret, MSG_ID, now, BODY, sent["webhook-signature"], now)


def test_after_the_grace_period_only_the_new_secret_signs() -> None:
    old, new = generate_secret(), generate_secret()
    signing = active_secrets(new, old, ROTATED_AT, ROTATED_AT + GRACE, GRACE)
    now = int(time.time())
    sent = headers(signing, MSG_ID, now, BODY)

    assert signing == [new]
    Webhook(new).verify(BODY, sent)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(BODY, sent)
    assert not verify(old, MSG_ID, now, BODY, sent["webhook-signature"], now)


def test_without_a_previous_secret_or_rotation_time_only_the_current_secret_signs() -> None:
    now = ROTATED_AT + timedelta(minutes=1)
    assert active_secrets("whsec_new", None, None, now, GRACE) == ["whsec_new"]
    assert active_secrets("whsec_new", "whsec_old", None, now, GRACE) == ["whsec_new"]


def test_active_secrets_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        active_secrets("whsec_new", "whsec_old", ROTATED_AT, datetime(2025, 6, 10), GRACE)


@pytest.mark.parametrize("offset_s", [-360, 360], ids=["six_minutes_old", "six_minutes_ahead"])
def test_a_timestamp_six_minutes_off_is_rejected(offset_s: int) -> None:
    secret = generate_secret()
    now = int(time.time())
    sent = headers([secret], MSG_ID, now + offset_s, BODY)

    with pytest.raises(WebhookVerificationError, match="timestamp too"):
        Webhook(secret).verify(BODY, sent)
    assert not verify(secret, MSG_ID, now + offset_s, BODY, sent["webhook-signature"], now)


def test_a_timestamp_within_five_minutes_is_accepted_by_verify() -> None:
    secret = generate_secret()
    stamped = KAT_TIMESTAMP - 300
    header = signature_header([secret], MSG_ID, stamped, BODY)

    assert verify(secret, MSG_ID, stamped, BODY, header, now_ts=KAT_TIMESTAMP)
    assert not verify(secret, MSG_ID, stamped, BODY, header, now_ts=KAT_TIMESTAMP, tolerance_s=299)


def test_a_tampered_body_fails_verification() -> None:
    secret = generate_secret()
    now = int(time.time())
    sent = headers([secret], MSG_ID, now, BODY)
    tampered = BODY.replace(b"high", b"low")

    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(secret).verify(tampered, sent)
    assert not verify(secret, MSG_ID, now, tampered, sent["webhook-signature"], now)


def test_a_changed_id_or_timestamp_fails_verification() -> None:
    header = signature_header([KAT_SECRET], KAT_ID, KAT_TIMESTAMP, KAT_BODY)

    assert not verify(KAT_SECRET, "msg_other", KAT_TIMESTAMP, KAT_BODY, header, KAT_TIMESTAMP)
    assert not verify(KAT_SECRET, KAT_ID, KAT_TIMESTAMP + 1, KAT_BODY, header, KAT_TIMESTAMP)


@pytest.mark.parametrize(
    "header",
    ["", "v1", "v1,", "v1,not base64!", "v2," + KAT_SIGNATURE[3:], "garbage v1,AAAA"],
)
def test_verify_returns_false_for_malformed_or_unknown_signatures(header: str) -> None:
    assert not verify(KAT_SECRET, KAT_ID, KAT_TIMESTAMP, KAT_BODY, header, KAT_TIMESTAMP)


def test_verify_accepts_a_match_among_unknown_versions_and_other_signatures() -> None:
    header = f"v2,AAAA v1,{'A' * 44} {KAT_SIGNATURE}"
    assert verify(KAT_SECRET, KAT_ID, KAT_TIMESTAMP, KAT_BODY, header, KAT_TIMESTAMP)


def test_decode_secret_rejects_a_key_shorter_than_24_bytes() -> None:
    with pytest.raises(ValueError, match="24 to 64 bytes, got 16"):
        decode_secret(_secret_of(16))


def test_decode_secret_rejects_a_key_longer_than_64_bytes() -> None:
    with pytest.raises(ValueError, match="24 to 64 bytes, got 65"):
        decode_secret(_secret_of(65))


def test_decode_secret_accepts_the_24_and_64_byte_bounds() -> None:
    assert len(decode_secret(_secret_of(24))) == 24
    assert len(decode_secret(_secret_of(64))) == 64


def test_decode_secret_rejects_a_string_without_the_whsec_prefix() -> None:
    with pytest.raises(ValueError, match="must start with 'whsec_'"):
        decode_secret(KAT_SECRET.removeprefix("whsec_"))


def test_decode_secret_rejects_invalid_base64_without_echoing_the_secret() -> None:
    with pytest.raises(ValueError, match="not valid base64") as caught:
        decode_secret("whsec_not*base64*at*all*here!!!!")
    assert "not*base64" not in str(caught.value)


def test_decode_secret_accepts_a_secret_copied_without_padding() -> None:
    padded = _secret_of(32)
    assert padded.endswith("=")
    assert decode_secret(padded.rstrip("=")) == decode_secret(padded)


def test_sign_refuses_a_too_short_secret() -> None:
    with pytest.raises(ValueError, match="got 16"):
        sign(_secret_of(16), KAT_ID, KAT_TIMESTAMP, KAT_BODY)


def test_signature_header_needs_at_least_one_secret() -> None:
    with pytest.raises(ValueError, match="at least one"):
        signature_header([], KAT_ID, KAT_TIMESTAMP, KAT_BODY)


def test_generated_secret_decodes_to_32_bytes_and_verifies() -> None:
    secret = generate_secret()
    now = int(time.time())
    sent = headers([secret], MSG_ID, now, BODY)

    assert secret.startswith("whsec_")
    assert len(decode_secret(secret)) == 32
    assert verify(secret, MSG_ID, now, BODY, sent["webhook-signature"], now)
    Webhook(secret).verify(BODY, sent)


def test_generated_secrets_differ_and_the_source_of_randomness_is_injectable() -> None:
    assert generate_secret() != generate_secret()
    assert decode_secret(generate_secret(_FixedTokens(7))) == bytes([7]) * 32
