"""The migrations are the schema: upgrade an empty database, compare with the models, go back."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, inspect, pool, text
from typer.testing import CliRunner

import services.alerts.models
import services.core.models
import services.scoring.models  # noqa: F401  (registers the tables on Base.metadata)
from services.app import create_app
from services.cli import app as cli
from services.core.db import (
    MIGRATIONS_DIR,
    Base,
    SchemaState,
    alembic_config,
    downgrade_to_base,
    schema_state,
    upgrade_to_head,
)
from tests.conftest import ADMIN_KEY, BACKENDS, make_settings, scratch_postgres


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A brand-new, empty database of its own (not the migrated test template)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with scratch_postgres("riskalert_migrations") as url:
        yield url


def _tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _drift(url: str, metadata: MetaData = Base.metadata) -> list[object]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "target_metadata": metadata}
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _current_revision(url: str) -> str | None:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _head(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def _stamp(url: str, revision: str) -> None:
    """Set the database's recorded revision, as a later release's migrate step would."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    finally:
        engine.dispose()


def test_upgrade_of_empty_database_reaches_head_without_drift(empty_url: str) -> None:
    assert _tables(empty_url) == set()

    upgrade_to_head(empty_url)

    assert _current_revision(empty_url) == _head(empty_url)
    assert _tables(empty_url) == set(Base.metadata.tables) | {"alembic_version"}
    assert _drift(empty_url) == []


def test_drift_check_notices_a_model_table_missing_from_the_migrations(empty_url: str) -> None:
    upgrade_to_head(empty_url)
    models = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(models)
    Table("canary", models, Column("id", Integer, primary_key=True))

    drift = _drift(empty_url, models)

    assert [(d[0], d[1].name) for d in drift if isinstance(d, tuple)] == [("add_table", "canary")]


def test_upgrade_at_head_is_a_no_op(empty_url: str) -> None:
    upgrade_to_head(empty_url)

    upgrade_to_head(empty_url)

    assert _current_revision(empty_url) == _head(empty_url)
    assert _drift(empty_url) == []


def test_downgrade_to_base_leaves_only_alembic_version_and_upgrade_works_again(
    empty_url: str,
) -> None:
    upgrade_to_head(empty_url)

    downgrade_to_base(empty_url)

    assert _tables(empty_url) == {"alembic_version"}
    assert _current_revision(empty_url) is None
    upgrade_to_head(empty_url)
    assert _current_revision(empty_url) == _head(empty_url)
    assert _drift(empty_url) == []


def test_revisions_are_date_prefixed_linear_and_never_import_app_models() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    revisions = list(script.walk_revisions())
    assert len(script.get_heads()) == 1
    assert len([r for r in revisions if r.down_revision is None]) == 1
    files = sorted((MIGRATIONS_DIR / "versions").glob("*.py"))
    files = [f for f in files if f.name != "__init__.py"]
    assert len(files) == len(revisions)
    for path in files:
        assert re.match(r"^\d{4}_\d{2}_\d{2}_\d{4}_[a-z0-9_]+\.py$", path.name), path.name
        source = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+services\b", source, re.MULTILINE), path.name
        assert "def downgrade()" in source, path.name


def test_readiness_needs_the_schema_this_release_ships(empty_url: str) -> None:
    from alembic import command

    def ready() -> tuple[int, dict[str, object]]:
        with TestClient(create_app(make_settings(empty_url, auto_migrate=False))) as client:
            response = client.get("/readyz")
            return response.status_code, response.json()

    def probe() -> int:
        return CliRunner().invoke(cli, ["check", "--database-url", empty_url]).exit_code

    head = ScriptDirectory.from_config(alembic_config(empty_url)).get_current_head()
    upgrade_to_head(empty_url)
    database = "sqlite" if empty_url.startswith("sqlite") else "postgresql"
    assert ready() == (
        200,
        {"status": "ready", "database": database, "schema": head, "schema_state": "current"},
    )
    assert probe() == 0

    # One migration behind: not ready, and the problem says what to run.
    command.downgrade(alembic_config(empty_url), "-1")
    status, doc = ready()
    assert status == 503
    assert str(doc["type"]).endswith("/schema-not-at-head")
    assert "riskalert migrate" in str(doc["detail"])
    assert probe() == 1

    # A revision this release does not know is a later release's (rolling out): still ready,
    # and the body says so (the fields a probe reads are unchanged).
    _stamp(empty_url, "from_the_future")
    status, doc = ready()
    assert status == 200
    assert doc["status"] == "ready"
    assert doc["schema"] == "from_the_future"
    assert doc["schema_state"] == "ahead"
    assert "a later release's" in str(doc["note"])
    assert probe() == 0


def test_schema_state_tells_behind_current_and_ahead_apart() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    older = [r.revision for r in script.walk_revisions() if r.revision != head]

    assert schema_state(None) is SchemaState.BEHIND
    assert all(schema_state(r) is SchemaState.BEHIND for r in older)
    assert schema_state(head) is SchemaState.CURRENT
    assert schema_state("2099_later_release") is SchemaState.AHEAD


def test_app_with_auto_migrate_off_starts_on_an_empty_database_and_creates_nothing(
    empty_url: str,
) -> None:
    settings = make_settings(empty_url, auto_migrate=False, inline_worker=True)

    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
        alive = client.get("/healthz")

    assert alive.status_code == 200
    assert response.status_code == 503
    assert response.json()["type"].endswith("/schema-not-at-head")
    assert "run `riskalert migrate`" in response.json()["detail"]
    assert _tables(empty_url) == set()


def test_app_with_auto_migrate_on_migrates_an_empty_database_at_start(empty_url: str) -> None:
    with TestClient(create_app(make_settings(empty_url, auto_migrate=True))) as client:
        response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["schema_state"] == "current"
    assert _current_revision(empty_url) == _head(empty_url)


def test_app_with_auto_migrate_on_serves_a_schema_a_later_release_migrated(
    empty_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    upgrade_to_head(empty_url)
    _stamp(empty_url, "2099_later_release")

    with TestClient(create_app(make_settings(empty_url, auto_migrate=True))) as client:
        response = client.get("/readyz")
        created = client.post(
            "/v1/tenants",
            json={"name": "After the rollback"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )

    assert response.status_code == 200
    assert response.json()["schema_state"] == "ahead"
    assert created.status_code == 201, created.text
    assert any("a later release's" in r.getMessage() for r in caplog.records)
    assert _current_revision(empty_url) == "2099_later_release"


def test_migrate_on_a_schema_a_later_release_migrated_applies_nothing_and_succeeds(
    empty_url: str,
) -> None:
    upgrade_to_head(empty_url)
    _stamp(empty_url, "2099_later_release")

    result = CliRunner().invoke(cli, ["migrate", "--database-url", empty_url])

    assert result.exit_code == 0, result.output
    assert "nothing to apply" in result.output
    assert _current_revision(empty_url) == "2099_later_release"
