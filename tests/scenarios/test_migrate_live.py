"""RISKALERT_AUTO_MIGRATE governs every real process: off, `serve --workers 2` and `worker`
leave an empty database untouched and /readyz names `riskalert migrate`; on, a schema ahead of
this release (a later release's, after a rollback) is served as it is instead of crashing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect, text

from tests.conftest import BACKENDS, scratch_postgres
from tests.scenarios.harness import (
    START_TIMEOUT,
    Api,
    Database,
    Mailbox,
    Riskalert,
    Server,
    run_migrate,
    wait_until,
)
from tests.test_rescoring import east_of_base

# A revision no release of this code base knows: the schema a later release migrated to.
LATER_REVISION = "2099_later_release"


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database no migration has touched: a SQLite file not yet created, or a PostgreSQL
    database just created."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'empty.db'}")
        try:
            yield db
        finally:
            db.close()
        return
    with scratch_postgres("riskalert_scn_empty") as url:
        db = Database(url)
        try:
            yield db
        finally:
            db.close()


@pytest.fixture
def on_empty(empty_database: Database, mailbox: Mailbox, tmp_path: Path) -> Iterator[Riskalert]:
    """Starts riskalert processes on the empty database; all stopped at teardown."""
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Riskalert(empty_database, logs, mailbox.port)
    try:
        yield stack
    finally:
        stack.stop_all()


def tables(database: Database) -> set[str]:
    return set(inspect(database.engine).get_table_names())


def readyz(server: Server) -> httpx.Response:
    """/readyz on a fresh connection, so the two uvicorn workers take turns answering."""
    with httpx.Client(base_url=server.url, timeout=10) as fresh:
        return fresh.get("/readyz")


def answering(server: Server) -> httpx.Response | None:
    problem = server.proc.exited_early()
    assert problem is None, problem
    try:
        return readyz(server)
    except httpx.TransportError:
        return None


def test_serve_with_workers_and_worker_never_migrate_when_auto_migrate_is_off(
    on_empty: Riskalert, empty_database: Database
) -> None:
    off = {"RISKALERT_AUTO_MIGRATE": "false"}
    server = on_empty.serve("--workers", "2", inline_worker=False, wait=False, **off)
    worker = on_empty.worker("all", wait=False, **off)

    first = wait_until(lambda: answering(server), timeout=START_TIMEOUT, what="/readyz to answer")
    assert first.status_code == 503, first.text
    assert tables(empty_database) == set(), on_empty.logs_text()
    # Each uvicorn worker says why it is not ready as it starts, and starts all the same.
    wait_until(
        lambda: server.proc.output().count("run `riskalert migrate`") >= 2,
        timeout=START_TIMEOUT,
        what=lambda: f"both uvicorn workers to warn:\n{server.proc.output()[-4000:]}",
    )
    worker.wait_for_output("worker running")

    for answer in [first, *(readyz(server) for _ in range(6))]:
        assert answer.status_code == 503, answer.text
        doc = answer.json()
        assert doc["type"].endswith("/schema-not-at-head"), doc
        assert "riskalert migrate" in doc["detail"], doc
    assert tables(empty_database) == set(), on_empty.logs_text()

    # Once the migrate step has run, the processes already up are ready, with no restart.
    run_migrate(empty_database.url, on_empty.logs / "migrate.log")
    wait_until(lambda: readyz(server).status_code == 200, what="/readyz 200 after migrate")
    assert server.proc.running
    assert worker.running


def test_auto_migrate_serves_a_schema_a_later_release_migrated_instead_of_crashing(
    riskalert: Riskalert, database: Database
) -> None:
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": LATER_REVISION})
    on = {"RISKALERT_AUTO_MIGRATE": "true"}

    worker = riskalert.worker("all", wait=False, **on)
    server = riskalert.serve("--workers", "2", inline_worker=False, **on)
    worker.wait_for_output("worker running")

    for _ in range(6):
        answer = readyz(server)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "ready"
        assert body["schema"] == LATER_REVISION
        assert body["schema_state"] == "ahead"
        assert "later release" in body["note"]
    # It serves: the admin creates a tenant and keys, a tenant creates a site.
    api = Api(server)
    api.create_site("Camp", *east_of_base(0))
    assert "Can't locate revision" not in riskalert.logs_text()
    assert "a later release's" in server.proc.output()
    assert "a later release's" in worker.output()
    with database.reader() as session:
        revision = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert revision == LATER_REVISION
    assert worker.running
