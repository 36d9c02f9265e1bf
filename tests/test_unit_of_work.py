"""One unit of work per request: a failed commit is a 5xx and stores nothing; errors stay terse."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from services.app import create_app
from services.core.db import make_engine
from tests.conftest import ADMIN_KEY, Api, make_settings

DJIBO = [-1.63, 14.10]
SITE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": DJIBO},
    "properties": {"name": "Djibo camp", "country": "BFA"},
}
INCIDENT = {
    "source": "acled",
    "source_id": "evt-1",
    "category": "armed_assault",
    "occurred_at": "2025-06-01T00:00:00Z",
    "location": {"type": "Point", "coordinates": DJIBO},
    "fatalities": {"best": 20},
}
SECRET = "s3cr3t-internal-detail"
TABLES = ("target", "current_score", "score_change", "audit_entry", "incident", "rescore_mark")


def assert_terse_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """A problem document that tells nothing about the code or the failure's internals."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status
    assert doc["type"].startswith("https://riskalert.dev/problems/")
    for leak in ("Traceback", 'File "', SECRET, "sqlalchemy", "psycopg", "services/"):
        assert leak not in response.text
    return doc


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows per table the write paths touch."""
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


@pytest.fixture
def failing_commits(api: Api) -> Iterator[list[BaseException]]:
    """Make every commit of the app's write sessions raise the exception put in the list."""
    failure: list[BaseException] = [RuntimeError(SECRET)]

    def refuse(session: Session) -> None:
        raise failure[0]

    factory = api.app.state.sessions
    event.listen(factory, "before_commit", refuse)
    yield failure
    event.remove(factory, "before_commit", refuse)


COMMIT_FAILURES = [
    pytest.param(RuntimeError(SECRET), 500, id="bug"),
    pytest.param(
        OperationalError("COMMIT", {}, Exception(f"server closed the connection {SECRET}")),
        503,
        id="database-lost",
    ),
]


@pytest.mark.parametrize(("error", "status"), COMMIT_FAILURES)
def test_failed_commit_of_new_site_is_5xx_and_stores_nothing(
    api: Api,
    engine: Engine,
    failing_commits: list[BaseException],
    error: BaseException,
    status: int,
) -> None:
    failing_commits[0] = error

    response = api.client.post("/v1/sites", json=SITE, headers=api.a)

    assert_terse_problem(response, status)
    assert row_counts(engine) == dict.fromkeys(TABLES, 0)


def test_failed_commit_of_incident_is_5xx_and_stores_nothing(
    api: Api, engine: Engine, failing_commits: list[BaseException]
) -> None:
    one = api.client.post("/v1/incidents", json=INCIDENT, headers=api.ingest)
    batch = api.client.post("/v1/incidents/batch", json={"items": [INCIDENT]}, headers=api.ingest)

    assert_terse_problem(one, 500)
    assert_terse_problem(batch, 500)
    assert row_counts(engine) == dict.fromkeys(TABLES, 0)


def test_retry_after_failed_commit_with_same_idempotency_key_is_done_fresh(
    api: Api, engine: Engine
) -> None:
    headers = {**api.a, "Idempotency-Key": "site-1"}

    def refuse(session: Session) -> None:
        raise RuntimeError(SECRET)

    factory = api.app.state.sessions
    event.listen(factory, "before_commit", refuse)
    try:
        assert_terse_problem(api.client.post("/v1/sites", json=SITE, headers=headers), 500)
    finally:
        event.remove(factory, "before_commit", refuse)

    retry = api.client.post("/v1/sites", json=SITE, headers=headers)

    assert retry.status_code == 201, retry.text
    assert row_counts(engine)["target"] == 1


def test_unexpected_exception_in_route_is_500_problem_without_traceback(
    api: Api, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise KeyError(SECRET)

    monkeypatch.setattr("services.scoring.targets.create", boom)
    monkeypatch.setattr("services.scoring.incidents.search", boom)

    write = api.client.post("/v1/sites", json=SITE, headers=api.a)
    read = api.client.get("/v1/incidents", headers=api.a_read)

    doc = assert_terse_problem(write, 500)
    assert doc["type"].endswith("/internal")
    assert doc["instance"] == "/v1/sites"
    assert assert_terse_problem(read, 500)["instance"] == "/v1/incidents"
    assert row_counts(engine) == dict.fromkeys(TABLES, 0)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(params=["postgresql", "sqlite"])
def down_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL nothing answers on."""
    if request.param == "postgresql":
        return f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/riskalert"
    return f"sqlite:///{tmp_path / 'no-such-directory' / 'riskalert.db'}"


def test_database_down_gives_503_problems_not_500(down_url: str) -> None:
    app = create_app(make_settings(down_url, auto_migrate=False))
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    tenant = {"Authorization": "Bearer rak_some_tenant_key"}

    # Raising server exceptions: a database error is answered as a problem and goes no
    # further (it is not re-raised to the server, which would log a stack trace).
    with TestClient(app, raise_server_exceptions=True) as client:
        responses = [
            client.get("/readyz"),
            client.get("/v1/sites", headers=tenant),
            client.post("/v1/sites", json=SITE, headers=tenant),
            client.post("/v1/incidents", json=INCIDENT, headers=admin),
            client.get("/v1/incidents", headers=admin),
        ]
        alive = client.get("/healthz")

    for response in responses:
        doc = assert_terse_problem(response, 503)
        assert doc["type"].endswith("/database-unavailable")
        assert str(down_url.rsplit("/", 1)[0]) not in response.text
    assert all(r.headers.get("retry-after") == "5" for r in responses[1:])
    assert alive.status_code == 200


@pytest.fixture
def full_storage(api: Api) -> Iterator[Api]:
    """The app, on a database where writes that need room fail as on a full disk: SQLite's
    file may not grow (SQLITE_FULL), PostgreSQL answers disk_full (53100) to new targets. The
    PostgreSQL trigger is dropped afterwards: the test database outlives this test."""
    assert api.client.get("/readyz").status_code == 200  # ready before the disk fills
    engine: Engine = api.app.state.engine
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            pages = connection.execute(text("PRAGMA page_count")).scalar_one()

        @event.listens_for(engine, "connect")
        def _no_growth(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

        engine.dispose()  # pooled connections reconnect with the cap
        yield api
        return
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; END $$"
            )
        )
        connection.execute(
            text("CREATE TRIGGER disk_full BEFORE INSERT ON target EXECUTE FUNCTION disk_full()")
        )
    try:
        yield api
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TRIGGER disk_full ON target"))
            connection.execute(text("DROP FUNCTION disk_full()"))


def test_a_full_database_disk_is_named_507_storage_full_and_readyz_says_so(
    full_storage: Api,
) -> None:
    api = full_storage
    # Bounded: SQLite first fills the free pages it has, then refuses to grow.
    statuses = []
    for n in range(200):
        properties = {**SITE["properties"], "name": f"site {n} " + "x" * 150}
        body = {**SITE, "properties": properties}
        response = api.client.post("/v1/sites", json=body, headers=api.a)
        statuses.append(response.status_code)
        if response.status_code != 201:
            break
    doc = assert_terse_problem(response, 507)
    assert doc["type"].endswith("/storage-full")
    assert set(statuses[:-1]) <= {201}
    listed = api.client.get("/v1/sites", params={"limit": 500}, headers=api.a).json()
    assert len(listed["features"]) == len(statuses) - 1  # the refused write left nothing
    ready = api.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["type"].endswith("/storage-full")


def test_readyz_fails_when_the_sqlite_file_system_has_less_room_than_the_wal_needs(
    api_factory: Callable[..., Api],
) -> None:
    api = api_factory(sqlite_min_free_bytes=2**62)
    ready = api.client.get("/readyz")
    if api.app.state.engine.dialect.name != "sqlite":
        assert ready.status_code == 200  # PostgreSQL's disk is not this process's to see
        return
    assert ready.status_code == 503
    assert "MiB free beside the SQLite database" in ready.json()["detail"]


def test_a_sqlite_pool_keeps_its_connections_open_through_a_burst(tmp_path: Path) -> None:
    # Reopening a SQLite connection re-runs its PRAGMAs: 64 readers at once must not pay that
    # again on the next burst. (PostgreSQL keeps its pool small: connections are a budget.)
    engine = make_engine(f"sqlite:///{tmp_path / 'pool.db'}", pool_size=10)
    opened: list[object] = []
    event.listen(engine, "connect", lambda conn, _record: opened.append(conn))
    try:
        for _ in range(2):
            held = [engine.connect() for _ in range(64)]
            for conn in held:
                conn.close()
        assert len(opened) == 64
    finally:
        engine.dispose()
