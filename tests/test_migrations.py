"""The migrations are the schema: upgrade an empty database, compare with the models, go back."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, inspect, pool

import services.alerts.models
import services.core.models
import services.scoring.models  # noqa: F401  (registers the tables on Base.metadata)
from services.core.db import (
    MIGRATIONS_DIR,
    Base,
    alembic_config,
    downgrade_to_base,
    upgrade_to_head,
)
from tests.conftest import BACKENDS, scratch_postgres


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
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from services.app import create_app
    from services.cli import app as cli
    from tests.conftest import make_settings

    def ready() -> tuple[int, dict[str, object]]:
        with TestClient(create_app(make_settings(empty_url, auto_migrate=False))) as client:
            response = client.get("/readyz")
            return response.status_code, response.json()

    def probe() -> int:
        return CliRunner().invoke(cli, ["check", "--database-url", empty_url]).exit_code

    head = ScriptDirectory.from_config(alembic_config(empty_url)).get_current_head()
    upgrade_to_head(empty_url)
    assert ready() == (200, {"status": "ready", "database": ready()[1]["database"], "schema": head})
    assert probe() == 0

    # One migration behind: not ready, and the problem says what to run.
    command.downgrade(alembic_config(empty_url), "-1")
    status, doc = ready()
    assert status == 503
    assert str(doc["type"]).endswith("/schema-not-at-head")
    assert "riskalert migrate" in str(doc["detail"])
    assert probe() == 1

    # A revision this release does not know is a later release's (rolling out): still ready.
    engine = create_engine(empty_url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'from_the_future'")
    engine.dispose()
    assert ready()[0] == 200
    assert probe() == 0
