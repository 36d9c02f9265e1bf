"""Webhook deliver stage against a real receiver on loopback: signatures, outcomes, SSRF."""

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.alerts import webhooks
from services.alerts.signing import generate_secret
from services.alerts.ssrf import resolve
from services.alerts.webhooks import AttemptResult, Resolver, send_webhook
from tests import httpd

SECRET = generate_secret()
OLD_SECRET = generate_secret()
MSG_ID = "msg_2zWsYd1vQmNfH8kRcTaLpXeUoB"
BODY = b'{"type": "alert.firing", "timestamp": "2026-11-26T07:00:00Z", "data": {"band": "high"}}'
LOOPBACK = ("127.0.0.1",)
WAIT_S = 5.0


@dataclass
class Reply:
    """What the receiver answers next."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    verified_with: tuple[str, ...]


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that verifies Standard Webhooks signatures."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self.secrets = list(secrets)
        self.reply = Reply()
        self.requests: list[Received] = []
        self.changed = threading.Condition()
        # Set at teardown so a receiver told to hang never outlives its test.
        self.release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def wait_for(self, count: int) -> bool:
        """Whether `count` requests arrived within the deadline."""
        with self.changed:
            return self.changed.wait_for(lambda: len(self.requests) >= count, timeout=WAIT_S)

    def _verified_with(self, body: bytes, headers: dict[str, str]) -> tuple[str, ...]:
        good = []
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            good.append(secret)
        return tuple(good)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                received = Received(headers, body, receiver._verified_with(body, headers))
                with receiver.changed:
                    receiver.requests.append(received)
                    receiver.changed.notify_all()
                reply = receiver.reply
                if reply.hang:
                    receiver.release.wait(timeout=WAIT_S)
                httpd.send(self, reply.status, reply.headers, reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver([SECRET, OLD_SECRET])
    server.thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=WAIT_S)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening, so connecting is refused for sure."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def deliver(
    url: str,
    *,
    secrets: Sequence[str] = (SECRET,),
    allowlist: Sequence[str] = LOOPBACK,
    timeout: float = WAIT_S,
    transport: httpx.BaseTransport | None = None,
    **kwargs: Any,
) -> AttemptResult:
    """One send_webhook call through a fresh transport, as the worker's sender threads make it."""
    with transport or httpx.HTTPTransport(trust_env=False) as sender:
        return send_webhook(
            sender,
            url=url,
            timeout_s=timeout,
            secrets=secrets,
            message_id=MSG_ID,
            body=BODY,
            now=datetime.now(UTC),
            allow_http=True,
            allowlist=allowlist,
            **kwargs,
        )


def fake_resolver(*answers: list[str]) -> tuple[Resolver, list[tuple[str, int]]]:
    """A resolver giving `answers` in turn (the last one repeats), and the lookups it saw."""
    calls: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return list(answers[min(len(calls), len(answers)) - 1])

    return resolver, calls


class RecordingTransport(httpx.BaseTransport):
    """A transport that answers 200 and counts requests, to prove none were sent."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200)


def test_2xx_is_delivered_and_verifies_with_the_reference_library(receiver: Receiver) -> None:
    before = int(time.time())
    result = deliver(receiver.url)

    assert result.outcome == "delivered"
    assert result.status_code == 200
    assert (result.error_class, result.error) == (None, None)
    assert result.response_body == "ok"
    assert result.duration_ms > 0
    assert not result.throttled
    [request] = receiver.requests
    assert request.body == BODY
    assert request.verified_with == (SECRET,)
    assert request.headers["webhook-id"] == MSG_ID
    assert before <= int(request.headers["webhook-timestamp"]) <= int(time.time())
    assert request.headers["content-type"] == "application/json"


def test_old_and_new_secret_both_verify_during_rotation(receiver: Receiver) -> None:
    result = deliver(receiver.url, secrets=[SECRET, OLD_SECRET])

    assert result.outcome == "delivered"
    [request] = receiver.requests
    assert request.verified_with == (SECRET, OLD_SECRET)
    assert len(request.headers["webhook-signature"].split()) == 2


def test_500_is_retried_with_the_status_and_body_kept(receiver: Receiver) -> None:
    receiver.reply = Reply(status=500, body=b"boom")

    result = deliver(receiver.url)

    assert result.outcome == "retry"
    assert result.status_code == 500
    assert result.error_class == "http_status"
    assert result.error == "HTTP 500 Internal Server Error"
    assert result.response_body == "boom"
    assert not result.throttled


def test_410_means_gone(receiver: Receiver) -> None:
    receiver.reply = Reply(status=410, body=b"")

    result = deliver(receiver.url)

    assert result.outcome == "gone"
    assert result.status_code == 410
    assert result.error is not None
    assert "410" in result.error


def test_429_is_throttled_and_carries_retry_after(receiver: Receiver) -> None:
    receiver.reply = Reply(status=429, headers={"Retry-After": "120"})

    result = deliver(receiver.url)

    assert result.outcome == "retry"
    assert result.status_code == 429
    assert result.throttled
    assert result.retry_after == timedelta(seconds=120)


def test_503_retry_after_is_parsed_but_not_throttled(receiver: Receiver) -> None:
    receiver.reply = Reply(status=503, headers={"Retry-After": "30"})

    result = deliver(receiver.url)

    assert (result.outcome, result.retry_after, result.throttled) == (
        "retry",
        timedelta(seconds=30),
        False,
    )


def test_receiver_slower_than_the_client_timeout_is_a_throttled_retry(
    receiver: Receiver,
) -> None:
    receiver.reply = Reply(hang=True)

    result = deliver(receiver.url, timeout=0.3)

    assert result.outcome == "retry"
    assert result.error_class == "timeout"
    assert result.status_code is None
    assert result.throttled
    assert receiver.wait_for(1)


def test_whole_attempt_deadline_bounds_a_receiver_that_never_answers(
    receiver: Receiver,
) -> None:
    receiver.reply = Reply(hang=True)

    result = deliver(receiver.url, timeout=WAIT_S, total_timeout_s=0.3)

    assert (result.outcome, result.error_class, result.throttled) == ("retry", "timeout", True)
    assert result.duration_ms < WAIT_S * 1000


class Unread(httpx.SyncByteStream):
    """An empty body not read yet, as a real answer's is when the client streams it."""

    def __iter__(self) -> Iterator[bytes]:
        yield b""


class SlowLookups:
    """A stand-in for the `time` module whose clock jumps while a name is being resolved."""

    def __init__(self, lookup_s: float) -> None:
        self.now = 1000.0
        self.lookup_s = lookup_s

    def perf_counter(self) -> float:
        return self.now

    def resolver(self, host: str, port: int) -> list[str]:
        self.now += self.lookup_s
        return ["93.184.216.34"]

    @staticmethod
    def transport(sent: list[httpx.Request]) -> httpx.MockTransport:
        """A transport answering 204 at once, keeping each request it got in `sent`."""

        def answer(request: httpx.Request) -> httpx.Response:
            sent.append(request)
            return httpx.Response(204, stream=Unread())

        return httpx.MockTransport(answer)


def test_a_deadline_spent_before_the_request_goes_out_sends_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = SlowLookups(lookup_s=2.0)
    monkeypatch.setattr(webhooks, "time", clock)
    sent: list[httpx.Request] = []

    result = deliver(
        "https://hooks.example.com/hook",
        resolver=clock.resolver,
        allowlist=(),
        transport=clock.transport(sent),
        total_timeout_s=1.5,
    )

    assert sent == []
    assert (result.outcome, result.error_class, result.throttled) == ("retry", "timeout", True)
    assert result.error == "the attempt's deadline passed before the request was sent"


def test_a_lookup_within_the_deadline_still_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SlowLookups(lookup_s=1.0)
    monkeypatch.setattr(webhooks, "time", clock)
    sent: list[httpx.Request] = []

    result = deliver(
        "https://hooks.example.com/hook",
        resolver=clock.resolver,
        allowlist=(),
        transport=clock.transport(sent),
        total_timeout_s=1.5,
    )

    assert result.outcome == "delivered"
    assert len(sent) == 1


def test_redirect_to_internal_address_is_not_followed(receiver: Receiver) -> None:
    receiver.reply = Reply(status=302, headers={"Location": "http://10.0.0.1/"}, body=b"")

    result = deliver(receiver.url, timeout=2.0)

    assert result.outcome == "retry"
    assert result.status_code == 302
    assert result.error_class == "redirect"
    assert result.error == "redirect to http://10.0.0.1/ not followed"
    assert len(receiver.requests) == 1


def test_response_body_is_cut_at_the_byte_cap(receiver: Receiver) -> None:
    receiver.reply = Reply(body=b"x" * 200_000)

    result = deliver(receiver.url, max_response_bytes=100)

    assert result.outcome == "delivered"
    assert result.response_body == "x" * 100


def test_nothing_listening_is_a_connect_retry(closed_port: int) -> None:
    result = deliver(f"http://127.0.0.1:{closed_port}/hook")

    assert (result.outcome, result.error_class, result.status_code) == ("retry", "connect", None)
    assert result.error
    assert not result.throttled


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/hook", "loopback address 127.0.0.1"),
        ("http://localhost:{port}/hook", "loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
        ("http://10.0.0.1/hook", "private address 10.0.0.1"),
        ("http://[::1]:{port}/hook", "loopback address ::1"),
    ],
)
def test_internal_targets_are_refused_without_sending(
    receiver: Receiver, url: str, reason: str
) -> None:
    transport = RecordingTransport()

    result = deliver(url.format(port=receiver.port), allowlist=(), transport=transport)

    assert result.outcome == "retry"
    assert result.error_class == "ssrf"
    assert result.error is not None
    assert result.error.startswith(reason)
    assert result.status_code is None
    assert transport.requests == []


def test_real_resolver_names_the_host_behind_a_loopback_address() -> None:
    addresses = resolve("localhost", 80)

    assert addresses
    result = deliver("http://localhost/hook", allowlist=(), transport=RecordingTransport())
    assert result.error is not None
    assert result.error.endswith("(resolved from localhost)")


def test_name_resolving_to_loopback_is_refused_and_the_receiver_gets_nothing(
    receiver: Receiver,
) -> None:
    resolver, calls = fake_resolver(["127.0.0.1"])

    result = deliver(
        f"http://hooks.example.test:{receiver.port}/hook", allowlist=(), resolver=resolver
    )

    assert result.error_class == "ssrf"
    assert result.error == "loopback address 127.0.0.1 (resolved from hooks.example.test)"
    assert calls == [("hooks.example.test", receiver.port)]
    assert receiver.requests == []


def test_every_attempt_resolves_again_and_connects_only_to_the_vetted_address(
    receiver: Receiver,
) -> None:
    # hooks.example.test does not resolve for real: delivery works only because the request
    # goes to the address that was checked, with the original Host header.
    resolver, calls = fake_resolver(["127.0.0.1"], ["10.0.0.1"])
    url = f"http://hooks.example.test:{receiver.port}/hook"

    first = deliver(url, resolver=resolver)
    second = deliver(url, resolver=resolver)

    assert first.outcome == "delivered"
    assert receiver.requests[0].headers["host"] == f"hooks.example.test:{receiver.port}"
    assert second.error_class == "ssrf"
    assert second.error == "private address 10.0.0.1 (resolved from hooks.example.test)"
    assert len(calls) == 2
    assert len(receiver.requests) == 1


def test_an_unresolvable_host_is_a_dns_failure_not_an_ssrf_refusal() -> None:
    resolver, _ = fake_resolver([])

    result = deliver("https://nowhere.example.test/hook", resolver=resolver, allowlist=())

    assert result.error_class == "dns"
    assert result.error == "could not resolve host nowhere.example.test"


def test_a_lookup_failing_inside_the_http_client_is_a_dns_failure_too() -> None:
    # An allowlisted name is resolved by httpx itself: its lookup failing is still "dns".
    def fail(request: httpx.Request) -> httpx.Response:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc

    resolver, _ = fake_resolver([])
    result = deliver(
        "https://intranet.example.test/hook",
        resolver=resolver,
        allowlist=("intranet.example.test",),
        transport=httpx.MockTransport(fail),
    )

    assert (result.outcome, result.error_class) == ("retry", "dns")


def test_http_is_refused_unless_allowed(receiver: Receiver) -> None:
    with httpx.HTTPTransport(trust_env=False) as transport:
        result = send_webhook(
            transport,
            url=receiver.url,
            secrets=[SECRET],
            message_id=MSG_ID,
            body=BODY,
            now=datetime.now(UTC),
            allow_http=False,
            allowlist=LOOPBACK,
        )

    assert (result.outcome, result.error_class, result.error) == (
        "retry",
        "ssrf",
        "scheme http not allowed",
    )
    assert receiver.requests == []


def test_refused_connection_falls_back_to_the_next_vetted_address(receiver: Receiver) -> None:
    # The receiver listens on 127.0.0.1 only, so 127.0.0.2 (also loopback) refuses.
    resolver, _ = fake_resolver(["127.0.0.2", "127.0.0.1"])

    result = deliver(
        f"http://hooks.example.test:{receiver.port}/hook",
        resolver=resolver,
        allowlist=("127.0.0.0/8",),
    )

    assert result.outcome == "delivered"
    assert len(receiver.requests) == 1
