"""Structured logs: one JSON object a line, with the request id and what a job works on.

Every module logs through the standard library (`logging.getLogger(__name__)`); structlog's
formatter renders those records, adds the context bound in `contextvars` (the request id of the
request being served, or the request ids, incident and delivery a job is working on), and
scrubs secrets. An API key, a webhook secret or a database password never reaches a log line,
even when an exception message carries one.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars, get_contextvars
from structlog.typing import EventDict, Processor

REQUEST_ID = "request_id"
# An inbound X-Request-ID is kept when it looks like an id; anything else is replaced.
_REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_REQUEST_IDS = 50
REDACTED = "[redacted]"
# (pattern, replacement) pairs applied to every string in a log event.
_SECRETS = (
    # API keys and webhook secrets by their prefixes, wherever they appear.
    (re.compile(r"rak_[A-Za-z0-9_-]{6,}"), REDACTED),
    (re.compile(r"whsec_[A-Za-z0-9+/=]{6,}"), REDACTED),
    # Passwords in URLs (database, SMTP): scheme://user:password@host.
    (re.compile(r"://([^/@:\s]+):[^/@\s]+@"), rf"://\1:{REDACTED}@"),
    # Bearer tokens, and secrets quoted as `name=value` or `"name": "value"`.
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"), f"Bearer {REDACTED}"),
    (
        re.compile(
            r"""(?i)(password|passwd|secret|api[_-]?key|token)(['"]?\s*[=:]\s*['"]?)[^\s'",}]+"""
        ),
        rf"\1\2{REDACTED}",
    ),
)


# What each of the patterns above needs to match: most strings hold none of these, and one
# search is a fifth of the cost of trying every pattern (a log line per request pays it).
_ANY_SECRET = re.compile(r"(?i)rak_|whsec_|://|bearer|passw|secret|api[_-]?key|token")


def _scrub_text(text: str) -> str:
    if not _ANY_SECRET.search(text):
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def scrub(_: Any, __: str, event: EventDict) -> EventDict:
    """A structlog processor: replace secrets in every string value of the event."""
    for name, value in event.items():
        if isinstance(value, str):
            event[name] = _scrub_text(value)
    return event


def formatter(as_json: bool) -> logging.Formatter:
    """A formatter rendering standard-library records with structlog: bound context added,
    secrets scrubbed, as one JSON object a line or for people."""
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Stack traces go into the event as text (one JSON line), then get scrubbed too.
            structlog.processors.format_exc_info,
            scrub,
            renderer,
        ],
    )


class FailureStreak:
    """A loop's failures in a row, logged without flooding: the first with its stack trace,
    then one line every `every`, and the recovery once. Call `failed` in the except block."""

    def __init__(self, logger: logging.Logger, what: str, every: int = 100) -> None:
        self._log = logger
        self._what = what
        self._every = every
        self.count = 0

    def failed(self) -> None:
        """Count a failure (in an except block: the first one's stack trace is logged)."""
        self.count += 1
        if self.count == 1 or self.count % self._every == 0:
            self._log.error(
                "%s failed (%d in a row)", self._what, self.count, exc_info=self.count == 1
            )

    def succeeded(self) -> None:
        """End the streak, if any, with one line."""
        if self.count:
            self._log.info("%s works again after %d failures", self._what, self.count)
            self.count = 0


def configure(log_format: str = "auto", level: str = "INFO") -> None:
    """Route every standard-library log record through structlog, as JSON or for people."""
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(as_json))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # One line per webhook request is noise at volume; attempts are stored with their outcome.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    logging.getLogger("apscheduler.scheduler").setLevel(logging.WARNING)
    # Alembic announces its dialect each time the schema revision is read (every /readyz);
    # the upgrades it runs are still logged.
    logging.getLogger("alembic.runtime.migration").addFilter(_only_upgrades)
    # The request middleware logs each request once, with its id; uvicorn's access log would
    # repeat it without.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


def _only_upgrades(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(("Context impl", "Will assume"))


def request_id_from(inbound: str | None) -> str:
    """The id of a request: the caller's X-Request-ID if it looks like one, else a new one."""
    if inbound and _REQUEST_ID_SHAPE.fullmatch(inbound):
        return inbound
    return f"{_ID_PREFIX[0]}{next(_ID_COUNTER):016x}"


# A new request id is a random prefix drawn once per process and a counter: unique across
# processes as a uuid4 would be, without reading the system's random source per request. A
# forked worker draws its own prefix.
_ID_PREFIX = [uuid.uuid4().hex[:16]]
_ID_COUNTER = itertools.count(1)


def _new_process_prefix() -> None:
    _ID_PREFIX[0] = uuid.uuid4().hex[:16]


os.register_at_fork(after_in_child=_new_process_prefix)


def current_request_id() -> str | None:
    """The request id bound in this context (a request, or a job working for one)."""
    value = get_contextvars().get(REQUEST_ID)
    return value if isinstance(value, str) else None


@contextmanager
def working_for(request_ids: Iterable[str | None], **context: Any) -> Iterator[None]:
    """Bind, for a job's work, the request id(s) that caused it and what it works on."""
    ids = sorted({i for i in request_ids if i})
    values: MutableMapping[str, Any] = dict(context)
    if len(ids) == 1:
        values[REQUEST_ID] = ids[0]
    elif ids:
        # A bulk import's job names its first ids; the rest are counted.
        values["request_ids"] = ids[:MAX_REQUEST_IDS]
        if len(ids) > MAX_REQUEST_IDS:
            values["request_ids_more"] = len(ids) - MAX_REQUEST_IDS
    with bound_contextvars(**values):
        yield


__all__ = [
    "FailureStreak",
    "bind_contextvars",
    "configure",
    "current_request_id",
    "request_id_from",
    "working_for",
]
