"""Fixtures: every database test runs on SQLite and on PostgreSQL, schema built by migrations.

PostgreSQL comes from RISKALERT_TEST_POSTGRES_URL (default: the local server, trust auth).
When it is unreachable the Postgres half is skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from services.alerts import jobs as alert_jobs
from services.app import create_app
from services.core.auth import Role, generate_key
from services.core.db import make_engine, make_sessionmaker, upgrade_to_head
from services.core.models import ApiKey, Tenant
from services.scoring import jobs
from services.settings import Settings

POSTGRES_ADMIN_URL = os.environ.get(
    "RISKALERT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
ADMIN_KEY = "rak_test_admin_key"
BACKENDS = [b for b in os.environ.get("RISKALERT_TEST_BACKENDS", "sqlite,postgresql").split(",")]


# The longest single tests (the fuzzer, about 90 s per engine): run first, beside the others,
# rather than last, when the other worker of `-n 2` has nothing left to do.
LONGEST_FIRST = ("test_schemathesis.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: order kept


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _postgres_reachable() -> str | None:
    try:
        with psycopg.connect(_libpq(POSTGRES_ADMIN_URL), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)


@contextmanager
def scratch_postgres(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards.

    Skips when PostgreSQL is unreachable, except under CI=true, where that fails the test.
    """
    problem = _postgres_reachable()
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL unreachable under CI=true: {problem}")
        pytest.skip(f"PostgreSQL unreachable: {problem}")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(POSTGRES_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(_libpq(POSTGRES_ADMIN_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated Postgres database for this test process, dropped at the end."""
    with scratch_postgres("riskalert_test") as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade_to_head(f"sqlite:///{path}")
    return path


def _truncate_all(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        tables = (
            conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version'"
                )
            )
            .scalars()
            .all()
        )
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: SQLite file or PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "riskalert.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_template")
        _truncate_all(url)
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on the test database."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """The session factory the app would use."""
    return make_sessionmaker(engine)


TENANT_KEY_ROLES = [Role.SCORES_READ, Role.TARGETS_WRITE, Role.ALERTS_READ, Role.ALERTS_WRITE]


def make_settings(db_url: str, **overrides: Any) -> Settings:
    """Settings for tests: no inline worker (tests drain the queue themselves), no auto-migrate."""
    values: dict[str, Any] = {
        "database_url": db_url,
        "admin_api_key": ADMIN_KEY,
        "auto_migrate": False,
        "inline_worker": False,
        "key_cache_ttl": 0,
        # Tests scrape /metrics right after changing what it counts (test_metrics sets a TTL).
        "metrics_cache_ttl": 0,
    }
    values.update(overrides)
    return Settings(**values)


class Api:
    """A test client with keys for two tenants, an ingest key and the admin key."""

    def __init__(self, client: TestClient, app: FastAPI, settings: Settings) -> None:
        self.client = client
        self.app = app
        self.settings = settings
        self.admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        factory: sessionmaker[Session] = app.state.sessions
        with factory.begin() as session:
            self.tenant_a = self._tenant(session, "Tenant A")
            self.tenant_b = self._tenant(session, "Tenant B")
            self.a = self._key(session, self.tenant_a, TENANT_KEY_ROLES)
            self.b = self._key(session, self.tenant_b, TENANT_KEY_ROLES)
            self.a_read = self._key(session, self.tenant_a, [Role.SCORES_READ])
            self.ingest = self._key(session, None, [Role.INCIDENTS_WRITE])

    @staticmethod
    def _tenant(session: Session, name: str) -> int:
        tenant = Tenant(name=name, created_at=jobs.utc_now())
        session.add(tenant)
        session.flush()
        return tenant.id

    @staticmethod
    def _key(session: Session, tenant_id: int | None, roles: list[Role]) -> dict[str, str]:
        raw, prefix, key_hash = generate_key()
        session.add(
            ApiKey(
                tenant_id=tenant_id,
                name="test",
                prefix=prefix,
                key_hash=key_hash,
                roles=[r.value for r in roles],
                created_at=jobs.utc_now(),
            )
        )
        return {"Authorization": f"Bearer {raw}"}

    def drain(self) -> int:
        """Run the rescoring worker until its queue is empty."""
        return jobs.drain(self.app.state.sessions, self.settings)

    def drain_alerts(self) -> int:
        """Rescore, then run the alert pipeline until the feeds are consumed."""
        taken = self.drain()
        return taken + alert_jobs.drain(self.app.state.sessions, self.settings)


@pytest.fixture
def api_factory(db_url: str) -> Iterator[Callable[..., Api]]:
    """Build apps on the test database with setting overrides; closed after the test."""
    clients: list[TestClient] = []

    def build(**overrides: Any) -> Api:
        settings = make_settings(db_url, **overrides)
        app = create_app(settings)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return Api(client, app, settings)

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def api(api_factory: Callable[..., Api]) -> Api:
    """The app on the test database with default test settings."""
    return api_factory()


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    """Check an RFC 9457 problem document without a stack trace, and return it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status
    assert doc["type"].startswith("https://riskalert.dev/problems/")
    assert "Traceback" not in response.text
    return doc


def error_fields(doc: dict[str, Any]) -> set[str]:
    """The fields a validation problem names."""
    return {e["field"] for e in doc.get("errors", [])}


DELETE = object()


def setter(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of a request body: set (or, with DELETE, remove) a dotted path."""

    def apply(body: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        target = body
        for part in parents:
            target = target[part]
        if value is DELETE:
            del target[leaf]
        else:
            target[leaf] = value

    return apply
