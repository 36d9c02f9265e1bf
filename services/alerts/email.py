"""Deliver stage for email: render a notification from templates and send it over SMTP."""

import email.policy
import email.utils
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import jinja2

from services.alerts.retry import Outcome
from services.alerts.webhooks import AttemptResult, clip

SUBJECT_PREFIX = "[riskalert]"
MAX_SUBJECT_CHARS = 200
TEMPLATES_DIR = Path(__file__).with_name("templates")
# Bodies are encoded with the usual 78-column limit; headers are written out with the 998
# hard limit instead, because the stdlib turns a longer-than-78 URL into RFC 2047 gibberish,
# which would break List-Unsubscribe links.
_BODY_POLICY = email.policy.SMTP
_WIRE_POLICY = email.policy.SMTP.clone(max_line_length=998)

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to hand mail over: one SMTP relay."""

    host: str
    port: int
    timeout_s: float
    username: str | None
    password: str | None
    start_tls: bool
    use_tls: bool
    sender: str


@dataclass(frozen=True)
class IncidentView:
    """One incident as the templates show it."""

    title: str
    category: str | None
    occurred_at: str | None
    where: str | None
    distance: str | None
    points: str | None


@dataclass(frozen=True)
class AlertView:
    """One alert notification as the templates show it."""

    event: str
    headline: str
    target_name: str
    target_kind: str | None
    band: str | None
    previous_band: str | None
    current: str | None
    previous: str | None
    why: str | None
    reason: str | None
    url: str | None
    subscription: str | None
    rule: str | None
    sequence: str | None
    as_of: str | None
    incident: IncidentView | None
    top_incidents: Sequence[IncidentView]
    components: Sequence[tuple[str, str]]


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str | None:
    """`value` as one line of text, or None when it is missing or blank."""
    if value is None or isinstance(value, Mapping | list):
        return None
    text = " ".join(str(value).split())
    return text or None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def fmt_number(value: object) -> str | None:
    """A score or distance for people: one decimal, without a trailing `.0`."""
    number = _number(value)
    if number is None:
        return None
    text = f"{number:.1f}"
    return text.removesuffix(".0")


def fmt_time(value: object) -> str | None:
    """An ISO 8601 timestamp as `YYYY-MM-DD HH:MM UTC`; anything else as given."""
    text = _text(value)
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return text
    if when.tzinfo is None:
        return when.strftime("%Y-%m-%d %H:%M")
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _label(value: object) -> str | None:
    """A machine tag such as `kidnapping_nearby` as words."""
    text = _text(value)
    return None if text is None else text.replace("_", " ")


def _incident_view(raw: object) -> IncidentView | None:
    data = _mapping(raw)
    if not data:
        return None
    place = [p for p in (_text(data.get("location_name")), _text(data.get("country"))) if p]
    distance = fmt_number(data.get("distance_km"))
    identifier = data.get("incident_id", data.get("id"))
    return IncidentView(
        title=_text(data.get("title")) or f"incident {identifier}",
        category=_label(data.get("category")),
        occurred_at=fmt_time(data.get("occurred_at")),
        where=", ".join(place) or None,
        distance=None if distance is None else f"{distance} km",
        points=fmt_number(data.get("points")),
    )


def _rule_summary(rule: Mapping[str, Any]) -> str | None:
    kind = _text(rule.get("kind"))
    if kind == "threshold":
        metric = _label(rule.get("metric")) or "score"
        levels = [
            f"{name} {level}"
            for name, level in (
                ("raise at", fmt_number(rule.get("raise_at"))),
                ("clear at", fmt_number(rule.get("clear_at"))),
            )
            if level is not None
        ]
        return f"threshold on {metric}" + (f" ({', '.join(levels)})" if levels else "")
    if kind == "event":
        trigger = _label(rule.get("trigger")) or "event"
        radius = fmt_number(rule.get("radius_km"))
        return trigger + (f" within {radius} km" if radius is not None else "")
    return _label(kind)


def _headline(
    event: str, name: str, score: Mapping[str, Any], incident: IncidentView | None
) -> str:
    """What happened, in one line: the subject without its prefix."""
    current, previous = _number(score.get("current")), _number(score.get("previous"))
    band = _text(score.get("band"))
    label = band.upper() if band else event.upper()
    if event == "flapping":
        now = f", now {fmt_number(current)}" if current is not None else ""
        return f"{label}: {name} risk is flapping{now}"
    if current is not None:
        if previous is not None and current > previous:
            verb = "rose to"
        elif previous is not None and current < previous:
            verb = "fell to"
        else:
            verb = "is at"
        return f"{label}: {name} risk {verb} {fmt_number(current)} ({event})"
    if incident is not None:
        category = (incident.category or "incident").upper()
        distance = f", {incident.distance} from {name}" if incident.distance else f" near {name}"
        return f"{category}: {incident.title}{distance} ({event})"
    return f"{name}: alert {event}"


def alert_view(event_type: str, data: Mapping[str, Any]) -> AlertView:
    """Flatten one alert notification's data into what the templates show, tolerating gaps."""
    event = event_type.removeprefix("alert.")
    alert, score = _mapping(data.get("alert")), _mapping(data.get("score"))
    target = _mapping(data.get("target"))
    properties = _mapping(target.get("properties"))
    name = (
        _text(properties.get("name"))
        or _text(target.get("name"))
        or (f"target {target['id']}" if target.get("id") is not None else "a target")
    )
    incident = _incident_view(data.get("incident"))
    top = data.get("top_incidents")
    components = _mapping(score.get("components"))
    return AlertView(
        event=event,
        headline=_headline(event, name, score, incident),
        target_name=name,
        target_kind=_label(properties.get("kind")),
        band=_text(score.get("band")),
        previous_band=_text(score.get("previous_band")),
        current=fmt_number(score.get("current")),
        previous=fmt_number(score.get("previous")),
        why=_text(data.get("why")),
        reason=_text(alert.get("reason")),
        url=_text(alert.get("url")),
        subscription=_text(_mapping(data.get("subscription")).get("name")),
        rule=_rule_summary(_mapping(data.get("rule"))),
        sequence=_text(alert.get("sequence")),
        as_of=fmt_time(score.get("as_of")) or fmt_time(alert.get("since")),
        incident=incident,
        top_incidents=[
            view
            for view in (_incident_view(item) for item in (top if isinstance(top, list) else []))
            if view is not None
        ],
        components=[
            (_label(key) or str(key), shown)
            for key, value in components.items()
            if (shown := fmt_number(value)) is not None
        ],
    )


def _content(payload: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """Template name, subject (without prefix) and template context for one payload."""
    event_type = _text(payload.get("type")) or "notification"
    data = _mapping(payload.get("data"))
    when = fmt_time(payload.get("timestamp"))
    if event_type.startswith("alert."):
        view = alert_view(event_type, data)
        return "alert", view.headline, {"alert": view, "when": when}
    if event_type == "digest.daily":
        period = _mapping(data.get("period"))
        raw_items = data.get("items")
        items = [
            alert_view(_text(item.get("type")) or "alert", _mapping(item.get("data")))
            for item in (raw_items if isinstance(raw_items, list) else [])
            if isinstance(item, Mapping)
        ]
        start, end = fmt_time(period.get("from")), fmt_time(period.get("to"))
        count = f"{len(items)} alert" + ("" if len(items) == 1 else "s")
        span = f" from {start} to {end}" if start and end else ""
        context = {"items": items, "start": start, "end": end, "when": when}
        return "digest", f"Daily digest: {count}{span}", context
    endpoint = _mapping(data.get("endpoint"))
    endpoint_name = _text(endpoint.get("name")) or _text(endpoint.get("id")) or "your endpoint"
    if event_type == "endpoint.test":
        context = {
            "endpoint_name": endpoint_name,
            "message": _text(data.get("message")),
            "when": when,
        }
        return "endpoint_test", f"Test notification for {endpoint_name}", context
    if event_type == "endpoint.disabled":
        context = {
            "endpoint_name": endpoint_name,
            "address": _text(endpoint.get("address")),
            "reason": _text(data.get("reason")),
            "when": when,
        }
        return "endpoint_disabled", f"Endpoint {endpoint_name} disabled", context
    summary = _text(data.get("why")) or _text(data.get("message")) or _text(data.get("reason"))
    context = {"event_type": event_type, "summary": summary, "when": when}
    return "generic", event_type, context


def subject(payload: Mapping[str, Any]) -> str:
    """The subject line for a payload: prefix plus what happened, on one line."""
    return clip(f"{SUBJECT_PREFIX} {_content(payload)[1]}", MAX_SUBJECT_CHARS)


def render(
    payload: Mapping[str, Any],
    *,
    message_id: str,
    recipient: str,
    sender: str,
    unsubscribe_url: str,
    unsubscribe_mailto: str | None = None,
    now: datetime | None = None,
) -> EmailMessage:
    """Build the multipart (plain text and HTML) email for one notification payload."""
    template, headline, context = _content(payload)
    title = clip(f"{SUBJECT_PREFIX} {headline}", MAX_SUBJECT_CHARS)
    mailto = None if unsubscribe_mailto is None else unsubscribe_mailto.removeprefix("mailto:")
    context |= {
        "subject": title,
        "recipient": recipient,
        "unsubscribe_url": unsubscribe_url,
        "unsubscribe_mailto": mailto,
    }
    text = _TEMPLATES.get_template(f"{template}.txt").render(context)
    html = _TEMPLATES.get_template(f"{template}.html").render(context)

    message = EmailMessage(policy=_BODY_POLICY)
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = title
    message["Date"] = email.utils.format_datetime(now or datetime.now(UTC))
    # Derived from the delivery, so a retried send is recognisably the same message.
    message["Message-ID"] = f"<{message_id}@riskalert>"
    # RFC 3834: tells vacation responders and ticket systems not to answer.
    message["Auto-Submitted"] = "auto-generated"
    targets = [f"<{unsubscribe_url}>"] + ([f"<mailto:{mailto}>"] if mailto else [])
    message["List-Unsubscribe"] = ", ".join(targets)
    # RFC 8058: mail providers may unsubscribe with one POST, without a confirmation page.
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    # Quoted-printable keeps the message 7-bit, so any relay takes it without 8BITMIME.
    message.set_content(text, cte="quoted-printable")
    message.add_alternative(html, subtype="html", cte="quoted-printable")
    return message


def wire_bytes(message: EmailMessage) -> bytes:
    """The message as sent over SMTP: CRLF lines, long headers kept readable."""
    return message.as_bytes(policy=_WIRE_POLICY)


def _recipients(message: EmailMessage) -> list[str]:
    fields = [str(value) for key in ("To", "Cc", "Bcc") for value in message.get_all(key, [])]
    return [address for _, address in email.utils.getaddresses(fields) if address]


async def send_email(config: SmtpConfig, message: EmailMessage) -> AttemptResult:
    """Hand one message to the SMTP relay and report how it went."""
    started = time.perf_counter()

    def result(
        outcome: Outcome, code: int | None, error_class: str | None, error: str | None
    ) -> AttemptResult:
        elapsed = (time.perf_counter() - started) * 1000.0
        return AttemptResult(
            outcome,
            code,
            error_class,
            None if error is None else clip(error),
            None,
            elapsed,
            throttled=error_class == "timeout",
        )

    recipients = _recipients(message)
    if not recipients:
        return result("failed", None, "smtp_invalid_address", "message has no recipient")
    client = aiosmtplib.SMTP(
        hostname=config.host,
        port=config.port,
        timeout=config.timeout_s,
        username=config.username,
        password=config.password,
        start_tls=config.start_tls,
        use_tls=config.use_tls,
    )
    try:
        async with client:
            refused, _ = await client.sendmail(config.sender, recipients, wire_bytes(message))
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [refusal.code for refusal in exc.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        # Greylisting answers RCPT with 4xx: that recipient is fine, just not yet.
        if codes and all(code >= 500 for code in codes):
            return result("failed", max(codes), "smtp_refused", f"recipient refused: {detail}")
        return result("retry", min(codes, default=None), "smtp_transient", detail)
    except (aiosmtplib.SMTPAuthenticationError, aiosmtplib.SMTPSenderRefused) as exc:
        # Our credentials or sender address are wrong, not the recipient's: never suppress them.
        tag = "smtp_auth" if isinstance(exc, aiosmtplib.SMTPAuthenticationError) else "smtp_sender"
        return result("retry", exc.code, tag, f"{exc.code} {exc.message}")
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code >= 500 and isinstance(exc, aiosmtplib.SMTPDataError):
            return result("failed", exc.code, "smtp_permanent", f"{exc.code} {exc.message}")
        if exc.code >= 500:
            # A 5xx greeting or HELO is the relay refusing us, not the recipient's address.
            return result("retry", exc.code, "smtp_relay", f"{exc.code} {exc.message}")
        return result("retry", exc.code, "smtp_transient", f"{exc.code} {exc.message}")
    except aiosmtplib.SMTPTimeoutError as exc:
        return result("retry", None, "timeout", exc.message or "SMTP timed out")
    except aiosmtplib.SMTPConnectError as exc:
        return result("retry", None, "connect", exc.message)
    except aiosmtplib.SMTPServerDisconnected as exc:
        return result("retry", None, "smtp_disconnected", exc.message or "server disconnected")
    except aiosmtplib.SMTPException as exc:
        return result("retry", None, type(exc).__name__, exc.message)
    except TimeoutError as exc:
        return result("retry", None, "timeout", str(exc) or "SMTP timed out")
    except OSError as exc:
        return result("retry", None, "connect", str(exc) or type(exc).__name__)
    except ValueError as exc:
        # aiosmtplib refuses an address it cannot put on a command line; retrying cannot help.
        return result("failed", None, "smtp_invalid_address", str(exc))
    if refused:
        # Some of several recipients were refused; the others have the message, so resending
        # would duplicate it for them.
        detail = "; ".join(f"{rcpt}: {r.code} {r.message}" for rcpt, r in refused.items())
        return result("delivered", 250, None, f"some recipients refused: {detail}")
    return result("delivered", 250, None, None)
