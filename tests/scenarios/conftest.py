"""Fixtures of the delivery scenarios: a fresh database per test on SQLite and PostgreSQL,
riskalert processes with compressed timers, a webhook receiver and an SMTP server on loopback.

PostgreSQL follows tests/conftest.py: skipped when unreachable, a failure under CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, scratch_postgres
from tests.scenarios.harness import (
    Database,
    Mailbox,
    Receiver,
    Riskalert,
    postgres_clone,
    run_migrate,
    sqlite_clone,
)

_STACK = pytest.StashKey["Riskalert"]()
HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "scenario: delivery.md scenario run against real riskalert processes"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.scenario)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    """A failed scenario shows what its riskalert processes logged."""
    report: pytest.TestReport = yield
    stack = item.stash.get(_STACK, None)
    if report.failed and stack is not None:
        report.sections.append(("riskalert processes", stack.logs_text()))
    return report


@pytest.fixture(scope="session")
def scenario_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file built by `riskalert migrate`, copied for each scenario."""
    directory = tmp_path_factory.mktemp("scenario-template")
    path = directory / "template.db"
    run_migrate(f"sqlite:///{path}", directory / "migrate.log")
    return path


@pytest.fixture(scope="session")
def scenario_postgres_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL database built by `riskalert migrate`, cloned for each scenario."""
    with scratch_postgres("riskalert_scn_template") as url:
        run_migrate(url, tmp_path_factory.mktemp("scenario-pg-template") / "migrate.log")
        yield url


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, migrated database of its own: a SQLite file or a PostgreSQL database."""
    if request.param == "sqlite":
        template = request.getfixturevalue("scenario_sqlite_template")
        db = Database(sqlite_clone(template, tmp_path))
        try:
            yield db
        finally:
            db.close()
        return
    with postgres_clone(request.getfixturevalue("scenario_postgres_template")) as url:
        db = Database(url)
        try:
            yield db
        finally:
            db.close()


@pytest.fixture
def receiver(riskalert: Riskalert) -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 verifying every request with `standardwebhooks`.

    Set up after (so torn down before) the processes: requests it holds are released first,
    and the workers' graceful stop does not wait on them.
    """
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """An SMTP server (aiosmtpd) on 127.0.0.1."""
    box = Mailbox()
    box.start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture
def riskalert(
    request: pytest.FixtureRequest, database: Database, mailbox: Mailbox, tmp_path: Path
) -> Iterator[Riskalert]:
    """Starts riskalert processes on the test database; all stopped at teardown."""
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Riskalert(database, logs, mailbox.port)
    request.node.stash[_STACK] = stack
    try:
        yield stack
    finally:
        stack.stop_all()
