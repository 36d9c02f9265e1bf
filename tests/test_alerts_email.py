"""Email deliver stage: rendering every payload type, and sending through a real SMTP server."""

import asyncio
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from services.alerts.email import SmtpConfig, render, send_email, subject, wire_bytes
from services.alerts.webhooks import AttemptResult

WAIT_S = 5.0
SENDER = "riskalert <alerts@riskalert.example>"
RECIPIENT = "ops@example.com"
MESSAGE_ID = "msg_2zWsYd1vQmNfH8kRcTaLpXeUoB"
# Long enough that default header folding would have mangled it into encoded words.
UNSUBSCRIBE_URL = "https://alerts.example.com/v1/unsubscribe/" + "t0k3n" * 30
NOW = datetime(2026, 11, 26, 7, 0, 5, tzinfo=UTC)

ALERT_DATA: dict[str, Any] = {
    "alert": {
        "id": 12,
        "url": "http://127.0.0.1:8000/v1/alerts/12",
        "state": "firing",
        "sequence": 3,
        "kind": "firing",
        "reason": "score at or above 60.0",
        "since": "2026-11-26T06:59:00Z",
    },
    "subscription": {"id": 4, "name": "Sadiola watch"},
    "rule": {"id": 7, "kind": "threshold", "metric": "score", "raise_at": 60.0, "clear_at": 50.0},
    "target": {
        "type": "Feature",
        "id": 3,
        "geometry": {"type": "Point", "coordinates": [-11.1, 13.9]},
        "properties": {"kind": "site", "name": "Sadiola mine", "tags": []},
    },
    "score": {
        "previous": 41.2,
        "current": 63.0,
        "previous_band": "elevated",
        "band": "high",
        "as_of": "2026-11-26T07:00:00Z",
        "model_version": 1,
        "components": {"violence": 50.1, "threats": 10.0, "kidnapping": 3.0, "escalation": 0.0},
    },
    "incident": None,
    "top_incidents": [
        {
            "incident_id": 5,
            "category": "ied",
            "points": 12.3,
            "title": "IED on the N1 <script>alert(1)</script>",
            "occurred_at": "2026-11-24T10:00:00Z",
        }
    ],
    "why": "Score rose from 41.2 (elevated) to 63.0 (high), at or above the raise level 60.0.",
}
FIRING = {"type": "alert.firing", "timestamp": "2026-11-26T07:00:00Z", "data": ALERT_DATA}
TRIGGERED = {
    "type": "alert.triggered",
    "timestamp": "2026-11-26T07:00:00Z",
    "data": {
        "alert": {"id": 13, "state": "firing", "sequence": 1},
        "subscription": {"id": 4, "name": "Sadiola watch"},
        "rule": {"id": 8, "kind": "event", "trigger": "kidnapping_nearby", "radius_km": 50},
        "target": {"type": "Feature", "id": 3, "properties": {"name": "Sadiola mine"}},
        "score": None,
        "incident": {
            "id": 9,
            "category": "kidnapping",
            "title": "Two engineers abducted",
            "occurred_at": "2026-11-26T05:00:00Z",
            "location_name": "Kéniéba",
            "country": "Mali",
            "distance_km": 12.34,
        },
        "top_incidents": None,
        "why": None,
    },
}


def rendered(payload: dict[str, Any], **kwargs: Any) -> EmailMessage:
    return render(
        payload,
        message_id=MESSAGE_ID,
        recipient=RECIPIENT,
        sender=SENDER,
        unsubscribe_url=UNSUBSCRIBE_URL,
        now=NOW,
        **kwargs,
    )


def parts(message: EmailMessage) -> tuple[str, str]:
    """The plain-text and HTML bodies."""
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    return str(text.get_content()), str(html.get_content())


class Handler:
    """An aiosmtpd handler that records messages and answers as the test says."""

    def __init__(self) -> None:
        self.rcpt_reply = "250 OK"
        self.data_reply = "250 OK: queued"
        self.envelopes: list[Envelope] = []

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.rcpt_reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return self.rcpt_reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # Appended before the reply goes out, so the client sees it once send_email returns.
        if self.data_reply.startswith("250"):
            self.envelopes.append(envelope)
        return self.data_reply

    def received(self) -> list[EmailMessage]:
        return [
            message_from_bytes(bytes(e.original_content or b""), policy=policy.default)
            for e in self.envelopes
        ]


class BoundController(Controller):
    """An aiosmtpd controller serving on a socket the test already bound (no port race)."""

    def __init__(self, handler: Handler, sock: socket.socket) -> None:
        self.sock = sock
        super().__init__(handler, hostname="127.0.0.1", port=sock.getsockname()[1])

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self.sock)


@pytest.fixture
def bound_socket() -> Iterator[socket.socket]:
    """A loopback socket bound but not listening: connecting to it is refused for sure."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def handler() -> Handler:
    return Handler()


@pytest.fixture
def smtp_port(handler: Handler, bound_socket: socket.socket) -> Iterator[int]:
    controller = BoundController(handler, bound_socket)
    controller.start()
    try:
        yield bound_socket.getsockname()[1]
    finally:
        controller.stop()


def config(port: int, timeout_s: float = WAIT_S) -> SmtpConfig:
    return SmtpConfig(
        host="127.0.0.1",
        port=port,
        timeout_s=timeout_s,
        username=None,
        password=None,
        start_tls=False,
        use_tls=False,
        sender="alerts@riskalert.example",
    )


def send(port: int, message: EmailMessage, timeout_s: float = WAIT_S) -> AttemptResult:
    return asyncio.run(send_email(config(port, timeout_s), message))


def test_delivered_message_carries_the_headers_and_both_parts(
    handler: Handler, smtp_port: int
) -> None:
    result = send(smtp_port, rendered(FIRING, unsubscribe_mailto="unsubscribe@riskalert.example"))

    assert (result.outcome, result.status_code, result.error_class) == ("delivered", 250, None)
    [envelope] = handler.envelopes
    assert envelope.mail_from == "alerts@riskalert.example"
    assert envelope.rcpt_tos == [RECIPIENT]
    [received] = handler.received()
    assert received["Message-ID"] == f"<{MESSAGE_ID}@riskalert>"
    assert received["Auto-Submitted"] == "auto-generated"
    assert received["List-Unsubscribe"] == (
        f"<{UNSUBSCRIBE_URL}>, <mailto:unsubscribe@riskalert.example>"
    )
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received["Subject"] == "[riskalert] HIGH: Sadiola mine risk rose to 63 (firing)"
    assert received["From"] == SENDER
    assert received["To"] == RECIPIENT
    assert received["Date"] == "Thu, 26 Nov 2026 07:00:05 +0000"
    assert received.get_content_type() == "multipart/alternative"
    text, html = parts(received)
    assert "Sadiola mine" in text
    assert "Sadiola mine" in html


def test_retried_message_keeps_its_message_id(handler: Handler, smtp_port: int) -> None:
    first = send(smtp_port, rendered(FIRING))
    again = send(smtp_port, rendered(FIRING))

    assert first.outcome == again.outcome == "delivered"
    assert [m["Message-ID"] for m in handler.received()] == [f"<{MESSAGE_ID}@riskalert>"] * 2


def test_550_at_data_is_a_permanent_failure(handler: Handler, smtp_port: int) -> None:
    handler.data_reply = "550 5.1.1 mailbox unavailable"

    result = send(smtp_port, rendered(FIRING))

    assert (result.outcome, result.status_code, result.error_class) == (
        "failed",
        550,
        "smtp_permanent",
    )
    assert result.error is not None
    assert "mailbox unavailable" in result.error


def test_451_at_data_is_retried(handler: Handler, smtp_port: int) -> None:
    handler.data_reply = "451 4.3.0 try again later"

    result = send(smtp_port, rendered(FIRING))

    assert (result.outcome, result.status_code, result.error_class) == (
        "retry",
        451,
        "smtp_transient",
    )


def test_refused_recipient_is_a_permanent_failure(handler: Handler, smtp_port: int) -> None:
    handler.rcpt_reply = "550 5.1.1 no such user"

    result = send(smtp_port, rendered(FIRING))

    assert (result.outcome, result.status_code, result.error_class) == (
        "failed",
        550,
        "smtp_refused",
    )
    assert result.error is not None
    assert RECIPIENT in result.error
    assert handler.envelopes == []


def test_greylisted_recipient_is_retried(handler: Handler, smtp_port: int) -> None:
    handler.rcpt_reply = "450 4.2.0 greylisted, come back later"

    result = send(smtp_port, rendered(FIRING))

    assert (result.outcome, result.status_code, result.error_class) == (
        "retry",
        450,
        "smtp_transient",
    )


def test_server_down_is_retried_then_delivered_once_it_is_up(
    handler: Handler, bound_socket: socket.socket
) -> None:
    port = bound_socket.getsockname()[1]

    down = send(port, rendered(FIRING))

    assert (down.outcome, down.error_class, down.status_code) == ("retry", "connect", None)
    controller = BoundController(handler, bound_socket)
    controller.start()
    try:
        up = send(port, rendered(FIRING))
    finally:
        controller.stop()
    assert up.outcome == "delivered"
    assert len(handler.envelopes) == 1


def test_server_that_never_greets_is_a_timeout(bound_socket: socket.socket) -> None:
    # The kernel completes the handshake for a listening socket nobody accepts from.
    bound_socket.listen(1)

    result = send(bound_socket.getsockname()[1], rendered(FIRING), timeout_s=0.3)

    assert (result.outcome, result.error_class, result.throttled) == ("retry", "timeout", True)


def test_firing_alert_renders_score_incidents_and_escapes_html() -> None:
    message = rendered(FIRING)
    text, html = parts(message)

    assert message["Subject"] == "[riskalert] HIGH: Sadiola mine risk rose to 63 (firing)"
    assert "41.2 (elevated) -> 63 (high)" in text
    assert "threshold on score (raise at 60, clear at 50)" in text
    assert "<script>alert(1)</script>" in text
    assert "<script>" not in html
    assert "IED on the N1 &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="http://127.0.0.1:8000/v1/alerts/12"' in html
    assert f'href="{UNSUBSCRIBE_URL}"' in html
    assert UNSUBSCRIBE_URL in text


def test_resolved_alert_says_the_score_fell() -> None:
    score = {**ALERT_DATA["score"], "previous": 63.0, "current": 45.5, "band": "elevated"}
    payload = {"type": "alert.resolved", "data": {**ALERT_DATA, "score": score}}

    assert subject(payload) == "[riskalert] ELEVATED: Sadiola mine risk fell to 45.5 (resolved)"


def test_event_alert_without_score_renders_its_incident() -> None:
    message = rendered(TRIGGERED)
    text, html = parts(message)

    assert message["Subject"] == (
        "[riskalert] KIDNAPPING: Two engineers abducted, 12.3 km from Sadiola mine (triggered)"
    )
    assert "kidnapping nearby within 50 km" in text
    assert "Kéniéba, Mali" in text
    assert "Kéniéba, Mali" in html
    assert "Score:" not in text


def test_alert_with_neither_score_nor_incident_still_renders() -> None:
    payload = {
        "type": "alert.escalated",
        "data": {"target": {"id": 3}, "score": None, "incident": None, "top_incidents": []},
    }

    message = rendered(payload)
    text, _ = parts(message)

    assert message["Subject"] == "[riskalert] target 3: alert escalated"
    assert "target 3" in text


def test_flapping_notice_names_the_target() -> None:
    assert subject({"type": "alert.flapping", "data": ALERT_DATA}) == (
        "[riskalert] HIGH: Sadiola mine risk is flapping, now 63"
    )


def test_digest_lists_each_alert() -> None:
    payload = {
        "type": "digest.daily",
        "timestamp": "2026-11-26T00:00:00Z",
        "data": {
            "period": {"from": "2026-11-25T00:00:00Z", "to": "2026-11-26T00:00:00Z"},
            "items": [{"type": "alert.firing", "data": ALERT_DATA}, TRIGGERED],
        },
    }

    message = rendered(payload)
    text, html = parts(message)

    assert message["Subject"] == (
        "[riskalert] Daily digest: 2 alerts from 2026-11-25 00:00 UTC to 2026-11-26 00:00 UTC"
    )
    assert "1. HIGH: Sadiola mine risk rose to 63 (firing)" in text
    assert "2. KIDNAPPING: Two engineers abducted" in text
    assert "&lt;script&gt;" in html
    assert "<script>" not in html


def test_empty_digest_says_so() -> None:
    payload = {"type": "digest.daily", "data": {"period": None, "items": []}}

    text, _ = parts(rendered(payload))

    assert subject(payload) == "[riskalert] Daily digest: 0 alerts"
    assert "Nothing to report" in text


def test_endpoint_test_and_disabled_notices() -> None:
    test_payload = {
        "type": "endpoint.test",
        "data": {"endpoint": {"id": 1, "name": "Ops inbox"}, "message": "Hello from riskalert"},
    }
    disabled_payload = {
        "type": "endpoint.disabled",
        "data": {
            "endpoint": {"id": 2, "name": "SOC hook", "address": "https://soc.example.com/in"},
            "reason": "HTTP 410 Gone",
        },
    }

    test_text, _ = parts(rendered(test_payload))
    disabled_text, disabled_html = parts(rendered(disabled_payload))

    assert subject(test_payload) == "[riskalert] Test notification for Ops inbox"
    assert "Hello from riskalert" in test_text
    assert subject(disabled_payload) == "[riskalert] Endpoint SOC hook disabled"
    assert "https://soc.example.com/in" in disabled_text
    assert "HTTP 410 Gone" in disabled_html


def test_unknown_type_renders_generically() -> None:
    payload = {"type": "tenant.quota", "data": {"message": "quota <b>reached</b>"}}

    text, html = parts(rendered(payload))

    assert subject(payload) == "[riskalert] tenant.quota"
    assert "quota <b>reached</b>" in text
    assert "quota &lt;b&gt;reached&lt;/b&gt;" in html


def test_names_with_line_breaks_cannot_inject_headers() -> None:
    data = {**ALERT_DATA, "target": {"properties": {"name": "Mine\r\nBcc: victim@example.com"}}}

    message = rendered({"type": "alert.firing", "data": data})

    assert message["Bcc"] is None
    assert "\n" not in str(message["Subject"])
    assert b"\r\nBcc:" not in wire_bytes(message)
