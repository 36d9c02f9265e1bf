"""Deliver stage for webhooks: one signed, SSRF-checked POST and what it came to.

Synchronous on purpose: the delivery worker runs attempts on a thread pool, where httpx's
blocking client sends about three times as many requests per second per process as its
asyncio client does on this kind of machine (docs/benchmarks.md). The request goes straight to
an httpx transport: a webhook needs none of what `httpx.Client` adds around it (redirects are
never followed, there is no auth, and a cookie jar would carry one receiver's cookies to the
next endpoint on the same host), and skipping it saves a fifth of the client's time.
"""

import functools
import ipaddress
import socket
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx

from services.alerts import retry, signing, ssrf
from services.alerts.retry import Outcome

Resolver = Callable[[str, int], list[str]]

MAX_ERROR_CHARS = 500
DEFAULT_MAX_RESPONSE_BYTES = 4096
# Per operation (connect, write, each read, waiting for a pooled connection), as the spec
# suggests; the worker passes its `webhook_timeout`.
DEFAULT_TIMEOUT_S = 15.0
USER_AGENT = "riskalert-webhooks/1"
# Per-operation client timeouts do not bound a receiver that drips its body one byte at a
# time, so reading the response stops at a deadline for the whole attempt too.
DEFAULT_TOTAL_TIMEOUT_S = 60.0
_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class AttemptResult:
    """What one delivery attempt came to (webhook or email)."""

    outcome: Outcome
    status_code: int | None
    error_class: str | None
    error: str | None
    response_body: str | None
    duration_ms: float
    retry_after: timedelta | None = None
    throttled: bool = False


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` cut to at most `limit` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _host_and_port(url: str) -> tuple[str, int] | None:
    """The host to resolve and the port to reach for `url`, or None when it has neither."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if port is None:
        port = _DEFAULT_PORTS.get(parts.scheme)
    if not host or port is None:
        return None
    return host, port


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def outcome_of_status(
    status: int,
    *,
    location: str | None,
    retry_after_header: str | None,
    now: datetime,
) -> tuple[Outcome, str | None, str | None, timedelta | None, bool]:
    """Outcome, error class, error, Retry-After and throttling for one HTTP response status."""
    retry_after = None if 200 <= status < 300 else retry.parse_retry_after(retry_after_header, now)
    if 300 <= status < 400:
        # Following would let a public URL bounce us to an internal one past the SSRF check.
        target = f"redirect to {location}" if location else f"redirect ({status}) without Location"
        return "retry", "redirect", clip(f"{target} not followed"), retry_after, False
    verdict = retry.classify_status(status)
    if verdict == "delivered":
        return "delivered", None, None, None, False
    reason = _reason_phrase(status)
    if verdict == "gone":
        return "gone", "http_status", f"HTTP {status}{reason}: receiver asked to stop", None, False
    return "retry", "http_status", f"HTTP {status}{reason}", retry_after, status == 429


def _reason_phrase(status: int) -> str:
    phrase = httpx.codes.get_reason_phrase(status)
    return f" {phrase}" if phrase else ""


@functools.lru_cache(maxsize=4096)
def _literal_verdict(url: str, allow_http: bool, allowlist: tuple[str, ...]) -> ssrf.Verdict | None:
    """The SSRF verdict for a URL whose host is an IP address, which no lookup can change (so
    it is worked out once); None for a URL naming a host, to be resolved at every attempt."""
    target = _host_and_port(url)
    if target is None or not _is_ip_literal(target[0]):
        return None
    return ssrf.check_url(url, [target[0]], allow_http=allow_http, allowlist=allowlist)


def _vetted_addresses(
    url: str,
    *,
    allow_http: bool,
    allowlist: Collection[str],
    resolver: Resolver,
) -> tuple[ssrf.Verdict, list[str]]:
    """The SSRF verdict for `url` now and the addresses to connect to (none: httpx resolves)."""
    literal = _literal_verdict(url, allow_http, tuple(allowlist))
    if literal is not None:
        return literal, []
    target = _host_and_port(url)
    resolved: list[str] = []
    if target is not None:
        host, port = target
        if _is_ip_literal(host):
            resolved = [host]
        else:
            try:
                resolved = resolver(host, port)
            except (OSError, UnicodeError):
                # A failed lookup is "could not resolve", which check_url reports as such.
                resolved = []
    verdict = ssrf.check_url(url, resolved, allow_http=allow_http, allowlist=allowlist)
    if target is None or _is_ip_literal(target[0]):
        return verdict, []
    return verdict, resolved


def _pinned_request(
    url: str, address: str | None
) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """URL, extra headers and extensions that send the request to an address already vetted."""
    original = httpx.URL(url)
    if address is None:
        return original, {}, {}
    # Connecting to the checked address (keeping Host and the TLS server name) closes the DNS
    # rebinding gap between our lookup and the one httpx would otherwise do.
    return (
        original.copy_with(host=address),
        {"host": original.netloc.decode("ascii")},
        {"sni_hostname": original.host},
    )


def send_webhook(
    transport: httpx.BaseTransport,
    *,
    url: str,
    secrets: Sequence[str],
    message_id: str,
    body: bytes,
    now: datetime,
    allow_http: bool,
    allowlist: Collection[str],
    resolver: Resolver = ssrf.resolve,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    total_timeout_s: float | None = DEFAULT_TOTAL_TIMEOUT_S,
) -> AttemptResult:
    """POST `body`, signed, to `url` once after checking where it goes; report how it went.

    `transport` is the sender's connection pool (an `httpx.HTTPTransport`, kept per thread).
    """
    started = time.perf_counter()
    verdict, addresses = _vetted_addresses(
        url, allow_http=allow_http, allowlist=allowlist, resolver=resolver
    )
    if not verdict.allowed:
        # A name that does not resolve is a DNS failure of its own, not an address refused.
        error_class = "dns" if verdict.unresolved else "ssrf"
        return AttemptResult(
            "retry", None, error_class, clip(verdict.reason), None, _elapsed_ms(started)
        )
    request_headers = signing.headers(secrets, message_id, int(now.timestamp()), body)
    # Compressed replies would be stored as gibberish, and inflating them is unbounded.
    request_headers["accept-encoding"] = "identity"
    request_headers["user-agent"] = USER_AGENT
    deadline = None if total_timeout_s is None else started + total_timeout_s
    return _post(
        transport,
        url=url,
        timeout_s=timeout_s,
        addresses=addresses,
        headers=request_headers,
        body=body,
        now=now,
        max_response_bytes=max_response_bytes,
        deadline=deadline,
        started=started,
    )


def _within(timeout_s: float, deadline: float | None) -> dict[str, float]:
    """The per-operation timeouts (a transport's `timeout` extension), none longer than what
    is left of the attempt's deadline."""
    if deadline is not None:
        timeout_s = min(timeout_s, max(0.001, deadline - time.perf_counter()))
    return {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}


class _Overdue(Exception):
    """The attempt's whole deadline passed while the response was still arriving."""


def _post(
    transport: httpx.BaseTransport,
    *,
    url: str,
    timeout_s: float,
    addresses: Sequence[str],
    headers: dict[str, str],
    body: bytes,
    now: datetime,
    max_response_bytes: int,
    deadline: float | None,
    started: float,
) -> AttemptResult:
    """Send the request, trying each vetted address in turn while connecting fails."""
    status: int | None = None
    location: str | None = None
    retry_after_header: str | None = None
    received = bytearray()
    failure: tuple[str, str, bool] | None = None
    candidates: Sequence[str | None] = list(addresses) or [None]
    for index, address in enumerate(candidates):
        if deadline is not None and time.perf_counter() >= deadline:
            # Spent on the lookup or on earlier addresses: sending now could reach the receiver
            # after another worker may have taken the delivery over.
            failure = ("timeout", "the attempt's deadline passed before the request was sent", True)
            break
        try:
            target, extra_headers, extensions = _pinned_request(url, address)
        except httpx.InvalidURL as exc:
            failure = ("invalid_url", f"invalid URL: {exc}", False)
            break
        try:
            request = httpx.Request(
                "POST",
                target,
                content=body,
                headers={**headers, **extra_headers} if extra_headers else headers,
                extensions={**extensions, "timeout": _within(timeout_s, deadline)},
            )
            # The transport never follows a redirect: a 3xx is the answer.
            response = transport.handle_request(request)
            try:
                status = response.status_code
                location = response.headers.get("location")
                retry_after_header = response.headers.get("retry-after")
                # Raw bytes, stopping at the cap: an endless body must not hold us; a body
                # dripping slower than the deadline is cut there.
                for chunk in response.iter_raw():
                    received += chunk[: max_response_bytes - len(received)]
                    if len(received) >= max_response_bytes:
                        break
                    if deadline is not None and time.perf_counter() > deadline:
                        raise _Overdue
            finally:
                # Back to the pool (or closed, when the body was not read to its end).
                response.close()
            failure = None
            break
        except _Overdue:
            failure = ("timeout", "no complete answer within the attempt's deadline", True)
            break
        except httpx.ConnectError as exc:
            # An allowlisted name is resolved by httpx: its lookup failing is still "dns".
            kind = "dns" if _caused_by(exc, socket.gaierror) else "connect"
            failure = (kind, _describe(exc, address), False)
            if index + 1 < len(candidates):
                continue
            break
        except httpx.TimeoutException as exc:
            failure = ("timeout", _describe(exc, address, "timed out"), True)
            break
        except httpx.HTTPError as exc:
            failure = (type(exc).__name__, _describe(exc, address), False)
            break
    elapsed = _elapsed_ms(started)
    response_body = (
        bytes(received).decode("utf-8", errors="replace") if status is not None else None
    )
    if status is not None:
        # The receiver answered: a later read error only cost us part of its reply.
        outcome, error_class, error, retry_after, throttled = outcome_of_status(
            status, location=location, retry_after_header=retry_after_header, now=now
        )
        return AttemptResult(
            outcome, status, error_class, error, response_body, elapsed, retry_after, throttled
        )
    error_class, error, throttled = failure or ("unknown", "no response", False)
    return AttemptResult("retry", None, error_class, clip(error), None, elapsed, None, throttled)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is anywhere in the exception's cause or context chain."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: Exception, address: str | None, fallback: str = "failed") -> str:
    """A readable reason for a transport error, naming the address that was tried."""
    text = str(exc) or f"{type(exc).__name__} ({fallback})"
    return text if address is None else f"{text} (connecting to {address})"
