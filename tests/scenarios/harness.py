"""The scenario harness: riskalert as real processes, a real webhook receiver and a real mailbox.

Everything here waits on conditions with deadlines and every loop is bounded, so a scenario
that goes wrong fails within seconds and says what it was waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.alerts import notify, outbox, pipeline
from services.alerts.models import (
    Delivery,
    DeliveryAttempt,
    Endpoint,
    EndpointSecret,
    Rule,
)
from services.alerts.signing import generate_secret
from services.core.db import make_engine, make_sessionmaker
from services.core.models import FeedCursor, Tenant
from services.scoring import feed, queue
from services.scoring.models import CurrentScore, IncidentChange, RescoreMark, ScoreChange
from tests.conftest import POSTGRES_ADMIN_URL, _libpq

ROOT = Path(__file__).resolve().parents[2]
# The `riskalert` of the environment running the tests (a venv, tox, an IDE's interpreter), not
# of one checkout's .venv.
RISKALERT = Path(sys.executable).parent / "riskalert"
ADMIN_KEY = "rak_scenario_admin_key"
# Generous: two cores run two scenarios at once, each starting interpreters of ~3 s CPU.
START_TIMEOUT = 45.0
WAIT = 15.0
POLL = 0.05
# A receiver told to hang never holds a request longer than this, even if teardown is missed.
MAX_HANG = 30.0

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = WAIT,
    what: str | Callable[[], str] = "the condition",
) -> T:
    """Poll `predicate` every 50 ms until it returns something truthy; fail after `timeout`.

    `what` names the condition in the failure (a callable is asked only then, for late state).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {described}")
        time.sleep(POLL)


def holds_for(predicate: Callable[[], bool], *, seconds: float, what: str) -> None:
    """Check that `predicate` stays true for `seconds` (the way to observe that nothing happens)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), f"{what} stopped holding"
        time.sleep(POLL)
    assert predicate(), f"{what} stopped holding"


def seconds(value: float) -> str:
    """A duration for a RISKALERT_* variable, in ISO 8601 (settings also take bare seconds)."""
    return f"PT{value:g}S"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------
# Databases


def run_command(command: str, url: str, log: Path) -> None:
    """Run `riskalert COMMAND --database-url URL` to its end, as a deployment would."""
    with log.open("ab") as out:
        done = subprocess.run(
            [str(RISKALERT), command, "--database-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            env=clean_env(),
            timeout=120,
        )
    assert done.returncode == 0, f"riskalert {command} failed:\n{log.read_text()}"


def run_migrate(url: str, log: Path) -> None:
    """Build the schema with the command line."""
    run_command("migrate", url, log)


@contextmanager
def postgres_clone(template_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database copied from a migrated template, dropped afterwards."""
    template = template_url.rsplit("/", 1)[1]
    name = f"riskalert_scn_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(POSTGRES_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(_libpq(POSTGRES_ADMIN_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlite_clone(template: Path, directory: Path) -> str:
    """A fresh SQLite file copied from a migrated template."""
    path = directory / "riskalert.db"
    shutil.copy(template, path)
    return f"sqlite:///{path}"


class Database:
    """The test's database, seen from the test process (to force states and read outcomes)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = make_engine(url)
        self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
        # Reads take no write lock (SQLite), so polling never holds up the processes.
        self.reader: sessionmaker[Session] = make_sessionmaker(self.engine, read_only=True)

    @property
    def engine_name(self) -> str:
        return "sqlite" if self.url.startswith("sqlite") else "postgresql"

    def delivery(self, delivery_id: int) -> Delivery:
        with self.reader() as session:
            row = session.get(Delivery, delivery_id)
            assert row is not None, f"no delivery {delivery_id}"
            return row

    def deliveries(self) -> list[Delivery]:
        with self.reader() as session:
            return list(session.execute(select(Delivery).order_by(Delivery.id)).scalars())

    def attempts(self, delivery_id: int | None = None) -> list[DeliveryAttempt]:
        query = select(DeliveryAttempt).order_by(DeliveryAttempt.id)
        if delivery_id is not None:
            query = query.where(DeliveryAttempt.delivery_id == delivery_id)
        with self.reader() as session:
            return list(session.execute(query).scalars())

    def add_tenant(self, name: str) -> int:
        with self.sessions.begin() as session:
            tenant = Tenant(name=name, created_at=datetime.now(UTC))
            session.add(tenant)
            session.flush()
            return tenant.id

    def add_webhooks(self, tenant_id: int, urls: Sequence[str]) -> list[tuple[int, str]]:
        """Webhook endpoints written directly (no API round trips); [(id, secret)]."""
        now = datetime.now(UTC)
        out = []
        with self.sessions.begin() as session:
            for i, url in enumerate(urls):
                endpoint = Endpoint(
                    tenant_id=tenant_id,
                    kind="webhook",
                    name=f"hook {i}",
                    address=url,
                    enabled=True,
                    created_at=now,
                    updated_at=now,
                )
                session.add(endpoint)
                session.flush()
                secret = generate_secret()
                session.add(EndpointSecret(endpoint_id=endpoint.id, secret=secret, created_at=now))
                out.append((endpoint.id, secret))
        return out

    def enqueue(
        self,
        tenant_id: int,
        endpoint_ids: Sequence[int],
        *,
        copies: int = 1,
        event_type: str = "endpoint.test",
        not_before: datetime | None = None,
    ) -> list[int]:
        """Deliveries written straight into the outbox in one transaction, round-robin over
        the endpoints; their ids."""
        now = datetime.now(UTC)
        ids: list[int] = []
        with self.sessions.begin() as session:
            endpoints = [session.get(Endpoint, e) for e in endpoint_ids]
            for copy in range(copies):
                data = {"message": f"scenario notification {copy}"}
                rows = outbox.enqueue(
                    session,
                    tenant_id=tenant_id,
                    endpoints=[e for e in endpoints if e is not None],
                    alert_id=None,
                    event_type=event_type,
                    sequence=0,
                    payload=notify.envelope(event_type, data, now),
                    now=now,
                )
                if not_before is not None:
                    for row in rows:
                        row.next_attempt_at = not_before
                ids += [r.id for r in rows]
        return ids

    def push_score(self, tenant_id: int, target_id: int, value: float, band: str) -> int:
        """Append a score change to the scoring feed, as a rescoring would; its feed id."""
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            change = ScoreChange(
                tenant_id=tenant_id,
                target_id=target_id,
                target_kind="site",
                model_version=1,
                as_of=now,
                previous_value=None,
                value=value,
                previous_band=None,
                band=band,
                components={},
                top_incidents=[],
                cause="scenario",
                created_at=now,
            )
            feed.append(session, [change])
            return change.id

    def idle(self) -> bool:
        """Nothing left to do now: no target to rescore, the feeds consumed, every rule seeded,
        no delivery due or in flight."""
        now = datetime.now(UTC)
        with self.sessions() as session:
            # One snapshot for every check: otherwise work moving from one stage to the next
            # between two checks could pass unseen (SQLite: BEGIN IMMEDIATE is one already).
            if self.engine_name == "postgresql":
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            if session.execute(select(RescoreMark.target_id).limit(1)).first() is not None:
                return False
            if session.execute(select(Rule.id).where(Rule.seeded.is_(False))).first():
                return False
            busy = select(Delivery.id).where(
                (Delivery.status == "sending")
                | ((Delivery.status == "pending") & (Delivery.next_attempt_at <= now))
            )
            if session.execute(busy.limit(1)).first() is not None:
                return False
            return self._feeds_consumed(session)

    def scored_at(self, target_id: int) -> datetime | None:
        """When the target's current score was computed (its as-of time), None before any."""
        with self.reader() as session:
            score = session.get(CurrentScore, target_id)
            return None if score is None else score.as_of

    def feeds_consumed(self) -> bool:
        """Whether the alerts pipeline and the rescorer have read every entry of the feeds."""
        with self.sessions() as session:
            return self._feeds_consumed(session)

    @staticmethod
    def _feeds_consumed(session: Session) -> bool:
        cursors = {c.name: c.position for c in session.execute(select(FeedCursor)).scalars()}
        for name, table in (
            (pipeline.SCORE_FEED, ScoreChange),
            (pipeline.INCIDENT_FEED, IncidentChange),
            (queue.FEED_CURSOR, IncidentChange),
        ):
            last = session.execute(select(func.max(table.id))).scalar()
            if last is not None and cursors.get(name, 0) < last:
                return False
        return True

    def close(self) -> None:
        self.engine.dispose()


# --------------------------------------------------------------------------------------------
# Processes


def clean_env(**values: str) -> dict[str, str]:
    """The environment of a child: ours without any RISKALERT_* leaking in, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKALERT_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(values)
    return env


class Proc:
    """One riskalert process with its output in files; stopped for sure at teardown."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], logs: Path) -> None:
        self.name = name
        self.args = list(args)
        self.out = logs / f"{name}.out"
        self.err = logs / f"{name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.popen = subprocess.Popen(
                [str(RISKALERT), *args], stdout=out, stderr=err, env=dict(env), cwd=logs
            )
        self.pid = self.popen.pid
        self._terminated = False

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything the process wrote so far (stdout, then stderr)."""
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def exited_early(self) -> str | None:
        if self.running:
            return None
        return f"{self.name} exited with {self.popen.returncode}:\n{self.output()[-4000:]}"

    def wait_for_output(self, text: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until the process has printed `text` (it must not exit first)."""

        def printed() -> bool:
            problem = self.exited_early()
            assert problem is None, problem
            return text in self.output()

        wait_until(printed, timeout=timeout, what=f"{self.name} to print {text!r}")

    def kill9(self) -> None:
        """SIGKILL: no chance to finish or record anything."""
        if self.running:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def sigterm(self) -> None:
        """Ask the process to stop (once: a second SIGTERM makes uvicorn skip its shutdown)."""
        if self.running and not self._terminated:
            self._terminated = True
            self.popen.send_signal(signal.SIGTERM)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the exit; return the exit code."""
        self.sigterm()
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running {timeout:g} s after SIGTERM:\n{self.output()[-4000:]}"
            ) from None

    def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if it does not go within a few seconds."""
        if not self.running:
            return
        self.sigterm()
        try:
            self.popen.wait(timeout=8)
        except subprocess.TimeoutExpired:
            self.kill9()


class Server:
    """A `riskalert serve` process and an HTTP client for it."""

    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=20.0)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            problem = self.proc.exited_early()
            assert problem is None, problem
            try:
                return self.http.get("/readyz", timeout=2.0).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=timeout, what=f"{self.proc.name} /readyz")

    def close(self) -> None:
        self.http.close()


class Riskalert:
    """Starts riskalert processes on one database with every timer compressed."""

    def __init__(self, database: Database, logs: Path, smtp_port: int) -> None:
        self.database = database
        self.logs = logs
        self.smtp_port = smtp_port
        self.procs: list[Proc] = []
        self.servers: list[Server] = []
        self._names: Counter[str] = Counter()

    def env(self, **overrides: str) -> dict[str, str]:
        values = {
            "RISKALERT_DATABASE_URL": self.database.url,
            "RISKALERT_ADMIN_API_KEY": ADMIN_KEY,
            "RISKALERT_AUTO_MIGRATE": "false",
            "RISKALERT_KEY_CACHE_TTL": seconds(0),
            "RISKALERT_ALERTS_LEASE": seconds(2),
            "RISKALERT_ALERTS_REAPER_INTERVAL": seconds(0.5),
            "RISKALERT_ALERTS_POLL_INTERVAL": seconds(0.2),
            "RISKALERT_SCORING_POLL_INTERVAL": seconds(0.2),
            "RISKALERT_ALERTS_REEVALUATE_INTERVAL": seconds(0.5),
            "RISKALERT_ALERTS_RETRY_SCHEDULE": "[0, 0.2, 0.4, 0.6, 0.8]",
            "RISKALERT_ALERTS_RETRY_JITTER": "0",
            "RISKALERT_ALERTS_THROTTLE_FLOOR": seconds(1),
            "RISKALERT_WEBHOOK_TIMEOUT": seconds(1),
            "RISKALERT_WEBHOOK_ALLOW_HTTP": "true",
            "RISKALERT_WEBHOOK_ALLOWLIST": '["127.0.0.1"]',
            "RISKALERT_SMTP_HOST": "127.0.0.1",
            "RISKALERT_SMTP_PORT": str(self.smtp_port),
            "RISKALERT_SMTP_TIMEOUT": seconds(2),
            "RISKALERT_SHUTDOWN_GRACE": seconds(5),
            "RISKALERT_MAIL_FROM": "riskalert <alerts@riskalert.example>",
        }
        values.update(overrides)
        return clean_env(**values)

    def _name(self, kind: str) -> str:
        self._names[kind] += 1
        return f"{kind}{self._names[kind]}"

    def serve(
        self,
        *extra: str,
        inline_worker: bool = True,
        port: int | None = None,
        wait: bool = True,
        **env: str,
    ) -> Server:
        """Start `riskalert serve [EXTRA]` (with the workers inside unless `inline_worker` is
        False)."""
        port = port or free_port()
        overrides = {
            "RISKALERT_INLINE_WORKER": "true" if inline_worker else "false",
            "RISKALERT_PUBLIC_URL": f"http://127.0.0.1:{port}",
            **env,
        }
        proc = Proc(
            self._name("serve"),
            ["serve", "--host", "127.0.0.1", "--port", str(port), *extra],
            self.env(**overrides),
            self.logs,
        )
        self.procs.append(proc)
        server = Server(proc, port)
        self.servers.append(server)
        if wait:
            server.wait_ready()
        return server

    def worker(self, role: str = "alerts", *extra: str, wait: bool = True, **env: str) -> Proc:
        """Start `riskalert worker --role ROLE [EXTRA]`; wait until it runs."""
        args = ["worker", "--role", role, *extra]
        proc = Proc(self._name("worker"), args, self.env(**env), self.logs)
        self.procs.append(proc)
        if wait:
            proc.wait_for_output("worker running")
        return proc

    def logs_text(self) -> str:
        return "\n".join(
            f"===== {p.name} ({' '.join(p.args)}) =====\n{p.output()[-20000:]}" for p in self.procs
        )

    def stop_all(self) -> None:
        """SIGTERM every process at once, then wait for each (SIGKILL after a few seconds)."""
        for server in self.servers:
            server.close()
        for proc in self.procs:
            proc.sigterm()
        for proc in self.procs:
            proc.stop()


# --------------------------------------------------------------------------------------------
# The webhook receiver


@dataclass(frozen=True)
class Reply:
    """One answer of the receiver: a status after an optional delay (or a hang)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0
    hang: bool = False  # until the receiver is released (teardown) or MAX_HANG
    drip: int = 0  # answer at once, then send the body one byte every `delay` seconds


OK = Reply()


@dataclass
class Request:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    verified_by: tuple[str, ...]
    arrived: float  # time.monotonic()
    arrived_at: datetime
    finished: float | None = None
    status: int | None = None

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def timestamp(self) -> int:
        return int(self.headers.get("webhook-timestamp", "0"))

    @property
    def verified(self) -> bool:
        return bool(self.verified_by)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_type(self) -> str:
        return str(self.json.get("type"))

    @property
    def alert(self) -> dict[str, Any]:
        alert: dict[str, Any] = self.json["data"].get("alert") or {}
        return alert


class Receiver:
    """A webhook receiver on 127.0.0.1 that verifies every request with `standardwebhooks`.

    An asyncio server (uvicorn, in a thread of the test process), so a few hundred concurrent
    senders cost no thread each. Each path has its own script of replies (consumed in order,
    then a default) and its own secrets; requests are recorded with their arrival time.
    """

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._scripts: dict[str, list[Reply]] = {}
        self._defaults: dict[str, Reply] = {}
        self._secrets: dict[str, list[str]] = {}
        self.inflight: Counter[str] = Counter()
        self.max_inflight: Counter[str] = Counter()
        self._lock = threading.Lock()
        # Set (from any thread, through the receiver's loop) to cut every held reply short.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released: asyncio.Event | None = None
        # IPPROTO_TCP given explicitly: asyncio only turns Nagle off for sockets that say so,
        # and a response written as headers then body would otherwise stall 40 ms each.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            interface="asgi3",
            log_level="warning",
            access_log=False,
            lifespan="off",
            backlog=2048,
            timeout_keep_alive=120,  # no idle connection closed under a sender mid-scenario
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._sock])), daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        wait_until(lambda: self._server.started, timeout=10, what="the receiver to listen")

    def close(self) -> None:
        if self._loop is not None and self._released is not None:
            self._loop.call_soon_threadsafe(self._released.set)
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def expect(self, path: str, secret: str) -> None:
        """Verify requests to `path` with `secret` too (an endpoint's, as shown at creation)."""
        with self._lock:
            self._secrets.setdefault(path, []).append(secret)

    def script(self, path: str, replies: Sequence[Reply], then: Reply = OK) -> None:
        """Answer the next requests to `path` with `replies` in order, then with `then`."""
        with self._lock:
            self._scripts[path] = list(replies)
            self._defaults[path] = then

    def got(self, path: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def answered(self, path: str | None = None, status: int = 200) -> list[Request]:
        """Requests to `path` already answered with `status`."""
        return [r for r in self.got(path) if r.status == status]

    def _next_reply(self, path: str) -> Reply:
        with self._lock:
            script = self._scripts.get(path)
            if script:
                return script.pop(0)
            return self._defaults.get(path, OK)

    def _verify(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[str, ...]:
        with self._lock:
            secrets = list(self._secrets.get(path, ()))
        good = []
        for secret in secrets:
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            good.append(secret)
        return tuple(good)

    async def _pause(self, seconds: float) -> None:
        """Hold a reply `seconds` (a slow receiver is what the scenario tests), or until the
        receiver is released at teardown."""
        if self._released is None:
            self._loop, self._released = asyncio.get_running_loop(), asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), seconds)

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        for _ in range(10_000):  # bounded: a body arrives in a few chunks
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        request = Request(
            path=path,
            headers=headers,
            body=body,
            verified_by=self._verify(path, body, headers),
            arrived=time.monotonic(),
            arrived_at=datetime.now(UTC),
        )
        with self._lock:
            self.requests.append(request)
            self.inflight[path] += 1
            self.max_inflight[path] = max(self.max_inflight[path], self.inflight[path])
        reply = self._next_reply(path)
        try:
            if not reply.drip:
                await self._pause(MAX_HANG if reply.hang else reply.delay)
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status,
                    "headers": [
                        (k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()
                    ],
                }
            )
            for _ in range(reply.drip):
                await send({"type": "http.response.body", "body": b".", "more_body": True})
                await self._pause(reply.delay)
            await send({"type": "http.response.body", "body": reply.body})
        except OSError:
            pass  # the sender gave up (its timeout, or it was killed)
        finally:
            with self._lock:
                self.inflight[path] -= 1
                request.finished = time.monotonic()
                request.status = reply.status


# --------------------------------------------------------------------------------------------
# The mailbox


@dataclass(frozen=True)
class Mail:
    """One message the SMTP server accepted."""

    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    arrived: float

    def text(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None, "no text/plain part"
        return str(part.get_content())

    def html(self) -> str:
        part = self.message.get_body(("html",))
        assert part is not None, "no text/html part"
        return str(part.get_content())


class _MailHandler:
    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.mailbox._next_reply(address)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        message = message_from_bytes(bytes(envelope.original_content or b""), policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self.mailbox._lock:
            self.mailbox.mails.append(Mail(tuple(envelope.rcpt_tos), message, time.monotonic()))
        return "250 OK: queued"


class Mailbox:
    """An aiosmtpd server on 127.0.0.1 that records messages and refuses as scripted.

    It can be stopped and started again on the same port (a relay going down and back up).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self.refusals: list[tuple[str, str]] = []
        self._scripts: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    def start(self) -> None:
        assert self._controller is None
        controller = Controller(
            _MailHandler(self), hostname="127.0.0.1", port=self.port, ready_timeout=10
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def script(self, address: str, replies: Sequence[str]) -> None:
        """Answer RCPT TO `address` with `replies` in order (e.g. "451 4.7.1 later"), then 250."""
        with self._lock:
            self._scripts[address.lower()] = list(replies)

    def _next_reply(self, address: str) -> str:
        with self._lock:
            script = self._scripts.get(address.lower())
            reply = script.pop(0) if script else "250 OK"
            if not reply.startswith("250"):
                self.refusals.append((address, reply))
            return reply

    def to(self, address: str) -> list[Mail]:
        with self._lock:
            return [m for m in self.mails if address in m.rcpt_tos]


# --------------------------------------------------------------------------------------------
# The API, as a tenant and as the ingest feed


class ApiError(AssertionError):
    """An API call answered something other than what the scenario needed."""


class Api:
    """The riskalert HTTP API for one tenant: its key, an ingest key, and the admin key."""

    def __init__(self, server: Server, name: str = "Scenario firm") -> None:
        self.server = server
        self.http = server.http
        self.admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        tenant = self.call("POST", "/v1/tenants", self.admin, {"name": name}, 201)
        self.tenant_id: int = tenant["id"]
        roles = ["scores:read", "targets:write", "alerts:read", "alerts:write"]
        key = self.call(
            "POST",
            "/v1/api-keys",
            self.admin,
            {"name": "scenario", "tenant_id": self.tenant_id, "roles": roles},
            201,
        )
        self.key = {"Authorization": f"Bearer {key['key']}"}
        ingest = self.call(
            "POST",
            "/v1/api-keys",
            self.admin,
            {"name": "ingest", "tenant_id": None, "roles": ["incidents:write"]},
            201,
        )
        self.ingest = {"Authorization": f"Bearer {ingest['key']}"}

    def rebind(self, server: Server) -> None:
        """Talk to another (e.g. restarted) server with the same keys."""
        self.server = server
        self.http = server.http

    def call(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        expect: int | Sequence[int] = (200, 201, 202),
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        response = self.request(method, path, headers, body, params)
        wanted = (expect,) if isinstance(expect, int) else tuple(expect)
        if response.status_code not in wanted:
            raise ApiError(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response.json() if response.content else None

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        return self.http.request(
            method, path, headers=dict(headers or self.key), json=body, params=params
        )

    # Scoring

    def create_site(self, name: str, lat: float, lon: float, **props: Any) -> int:
        body = {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"name": name, "country": "MLI", **props},
        }
        site: dict[str, Any] = self.call("POST", "/v1/sites", self.key, body, 201)
        return int(site["id"])

    def post_incident(self, body: Mapping[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = self.call(
            "POST", "/v1/incidents", self.ingest, dict(body), (200, 201)
        )
        return doc

    def site_score(self, site_id: int) -> dict[str, Any]:
        doc: dict[str, Any] = self.call("GET", f"/v1/sites/{site_id}/score", self.key, None, 200)
        return doc

    # Alerts

    def create_webhook(self, name: str, url: str) -> dict[str, Any]:
        body = {"kind": "webhook", "name": name, "url": url}
        doc: dict[str, Any] = self.call("POST", "/v1/endpoints", self.key, body, 201)
        return doc

    def create_email(self, name: str, address: str) -> dict[str, Any]:
        body = {"kind": "email", "name": name, "address": address}
        doc: dict[str, Any] = self.call("POST", "/v1/endpoints", self.key, body, 201)
        return doc

    def rotate_secret(self, endpoint_id: int) -> dict[str, Any]:
        doc: dict[str, Any] = self.call(
            "POST", f"/v1/endpoints/{endpoint_id}/rotate-secret", self.key, None, (200, 201)
        )
        return doc

    def endpoint(self, endpoint_id: int) -> dict[str, Any]:
        doc: dict[str, Any] = self.call("GET", f"/v1/endpoints/{endpoint_id}", self.key, None, 200)
        return doc

    def send_test(self, endpoint_id: int) -> dict[str, Any]:
        """Ask for a test notification; return the answer (naming the delivery)."""
        doc: dict[str, Any] = self.call(
            "POST", f"/v1/endpoints/{endpoint_id}/test", self.key, None, 202
        )
        return doc

    def subscribe(
        self,
        endpoint_ids: Sequence[int],
        rules: Sequence[Mapping[str, Any]],
        *,
        target_id: int | None = None,
        name: str = "watch",
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": name,
            "scope": "target" if target_id is not None else "all",
            "endpoint_ids": list(endpoint_ids),
            "rules": [dict(r) for r in rules],
            "digest_bands": [],
        }
        if target_id is not None:
            body["target_id"] = target_id
        doc: dict[str, Any] = self.call("POST", "/v1/subscriptions", self.key, body, 201)
        return doc

    def delivery(self, delivery_id: int) -> dict[str, Any]:
        doc: dict[str, Any] = self.call("GET", f"/v1/deliveries/{delivery_id}", self.key, None, 200)
        return doc

    def deliveries(self, status: str | None = None) -> list[dict[str, Any]]:
        """The tenant's deliveries (first page, oldest first), by status if given."""
        params: dict[str, Any] = {"limit": 500}
        if status:
            params["status"] = status
        doc = self.call("GET", "/v1/deliveries", self.key, None, 200, params=params)
        items: list[dict[str, Any]] = doc["deliveries"]
        return items

    def replay(self, delivery_id: int) -> dict[str, Any]:
        doc: dict[str, Any] = self.call(
            "POST", f"/v1/deliveries/{delivery_id}/replay", self.key, None, 202
        )
        return doc

    def recover(self, since: datetime) -> list[int]:
        body = {"since": since.isoformat()}
        doc = self.call("POST", "/v1/deliveries/recover", self.key, body, 202)
        replayed: list[int] = doc["replayed"]
        return replayed

    def alerts(self) -> list[dict[str, Any]]:
        doc = self.call("GET", "/v1/alerts", self.key, None, 200, params={"limit": 500})
        items: list[dict[str, Any]] = doc["alerts"]
        return items

    def wait_delivery(self, delivery_id: int, status: str, timeout: float = WAIT) -> dict[str, Any]:
        """Wait until a delivery reaches `status`; return it with its attempts."""
        seen: list[str] = []

        def reached() -> dict[str, Any] | None:
            doc = self.delivery(delivery_id)
            seen.append(doc["status"])
            return doc if doc["status"] == status else None

        return wait_until(
            reached,
            timeout=timeout,
            what=lambda: f"delivery {delivery_id} to be {status} (last seen {seen[-1:]})",
        )
