"""Standard Webhooks signing: secrets, signatures, headers and rotation, as pure functions."""

import base64
import binascii
import functools
import hashlib
import hmac
import secrets as secrets_module
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

SECRET_PREFIX = "whsec_"  # noqa: S105 -- the spec's public prefix, not a secret
SECRET_BYTES = 32
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300


class TokenSource(Protocol):
    """Anything with `secrets.token_bytes`, so tests can pass a deterministic source."""

    def token_bytes(self, nbytes: int) -> bytes: ...


def generate_secret(rng: TokenSource | None = None) -> str:
    """Return a new `whsec_` secret holding 32 random bytes."""
    source: TokenSource = secrets_module if rng is None else rng
    return SECRET_PREFIX + base64.b64encode(source.token_bytes(SECRET_BYTES)).decode("ascii")


def decode_secret(secret: str) -> bytes:
    """Return the HMAC key inside a `whsec_` secret, or raise ValueError saying what is wrong."""
    # Messages never include the secret itself: they end up in logs and problem documents.
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}")
    encoded = secret.removeprefix(SECRET_PREFIX)
    # Secrets copied from other senders often drop the padding; the reference verifier accepts
    # that, so we do too, but anything else that is not base64 is refused (validate=True).
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError("webhook secret is not valid base64 after the prefix") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"webhook secret must decode to {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, "
            f"got {len(key)}"
        )
    return key


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    # The body is signed as sent, byte for byte: re-encoding it would break receivers.
    # One-shot HMAC in C: a fifth of what building an `hmac.HMAC` object costs per message.
    return hmac.digest(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)


@functools.lru_cache(maxsize=1024)
def _key(secret: str) -> bytes:
    """The HMAC key of a secret, decoded once per process (every attempt signs)."""
    return decode_secret(secret)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the `v1,<base64>` signature of one message under one secret."""
    digest = _digest(_key(secret), msg_id, timestamp, body)
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the `webhook-signature` value: one signature per active secret, space-separated."""
    # During a rotation both secrets sign, so receivers still holding the old one keep verifying.
    if not secrets:
        raise ValueError("at least one webhook secret is needed to sign")
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Return the Standard Webhooks request headers for one delivery attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def active_secrets(
    current: str,
    previous: str | None,
    rotated_at: datetime | None,
    now: datetime,
    grace: timedelta,
) -> list[str]:
    """Return the secrets that sign at `now`: the current one, plus the previous during grace."""
    # Naive datetimes would compare silently against each other but mean nothing in UTC.
    if now.tzinfo is None or (rotated_at is not None and rotated_at.tzinfo is None):
        raise ValueError("now and rotated_at must be timezone-aware")
    # Without a rotation time there is no grace period to honour, so only the current secret signs.
    if previous is None or rotated_at is None or previous == current:
        return [current]
    if now < rotated_at + grace:
        return [current, previous]
    return [current]


def verify(
    secret: str,
    msg_id: str,
    timestamp: int,
    body: bytes,
    signature_header: str,
    now_ts: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """Return whether any `v1` signature in the header matches and the timestamp is fresh."""
    # Old or future timestamps are refused so a captured request cannot be replayed later.
    if abs(now_ts - timestamp) > tolerance_s:
        return False
    expected = _digest(decode_secret(secret), msg_id, timestamp, body)
    for entry in signature_header.split():
        version, _, encoded = entry.partition(",")
        # Unknown versions are skipped, not failed, so new schemes can be added alongside v1.
        if version != SIGNATURE_VERSION:
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        # Constant time, so response timing does not reveal how much of a forgery was right.
        if hmac.compare_digest(expected, candidate):
            return True
    return False
