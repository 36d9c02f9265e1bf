"""Engine, session factory, the declarative base and migrations."""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg.types.json import Json
from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    MetaData,
    Table,
    create_engine,
    event,
    insert,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

READ_ONLY_OPTION = "riskalert_read_only"
SQLITE_POOL = 64
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every table, with one constraint naming convention.

    Every table is AUTOINCREMENT on SQLite: ids outlive their rows (in deliveries' dedupe keys,
    change feeds, audit entries, links sent to receivers), and SQLite would otherwise hand a
    deleted row's id to the next row. PostgreSQL's sequences never reuse one.
    """

    metadata = MetaData(naming_convention=NAMING_CONVENTION)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table = cls.__dict__.get("__table__")
        if isinstance(table, Table):
            table.dialect_kwargs["sqlite_autoincrement"] = True


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every engine (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite compares timestamps as text: store them naive so ordering holds.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def is_sqlite(url: str) -> bool:
    """Tell whether a database URL names SQLite."""
    return url.startswith("sqlite")


def storage_full(exc: BaseException) -> bool:
    """Whether a database error says its storage is full: SQLite's SQLITE_FULL ("database or
    disk is full"), PostgreSQL's disk_full (53100)."""
    orig = getattr(exc, "orig", exc)
    if isinstance(orig, psycopg.errors.DiskFull):
        return True
    return getattr(orig, "sqlite_errorname", None) == "SQLITE_FULL"


def sqlite_free_bytes(url: str) -> int | None:
    """Free space on the file system of a SQLite database file (None for other engines or an
    in-memory database)."""
    database = make_url(url).database
    if not is_sqlite(url) or not database or database == ":memory:":
        return None
    return shutil.disk_usage(Path(database).resolve().parent).free


def make_engine(url: str, *, busy_timeout_ms: int = 30_000, pool_size: int = 10) -> Engine:
    """Build an engine; SQLite gets WAL, a busy timeout, foreign keys and IMMEDIATE writes.

    Errors never show a statement's parameters (they hold reports, addresses and hashes of
    keys): logs carry the SQL, not the data.
    """
    if is_sqlite(url):
        engine = create_engine(
            url,
            hide_parameters=True,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
            # SQLite connections are cheap (a file handle, no server): enough for every
            # request thread (40) and worker thread at once, so threads queued for the write
            # lock never starve the pool, and all kept open. An overflow connection is closed
            # when returned, and reopening one re-runs the PRAGMAs below: at 64 concurrent
            # readers that churn was a tenth of the server's time.
            pool_size=max(pool_size, SQLITE_POOL),
            max_overflow=pool_size,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            # Let SQLAlchemy issue BEGIN itself, so every transaction takes the write lock at
            # once (BEGIN IMMEDIATE) instead of failing with "database is locked" on upgrade.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Read-only sessions run each statement on its own (no transaction to open or
            # close); writers take the write lock up front.
            if not conn.get_execution_options().get(READ_ONLY_OPTION, False):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # No pre-ping: it costs a round trip per request. A connection found dead raises a
    # disconnect error (a 503 to the client) and SQLAlchemy then discards the whole pool.
    return create_engine(
        url,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
    )


def make_sessionmaker(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """Build a session factory; read-only ones run in autocommit and never take a write lock."""
    bind = engine
    if read_only:
        options: dict[str, Any] = {READ_ONLY_OPTION: True}
        if engine.dialect.name == "postgresql":
            # No BEGIN/COMMIT round trips around reads; every read route makes one query.
            options["isolation_level"] = "AUTOCOMMIT"
        bind = engine.execution_options(**options)
    return sessionmaker(bind, expire_on_commit=False, autoflush=True)


def alembic_config(url: str) -> Config:
    """Build an Alembic configuration for `url` without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str | None:
    """The newest migration this release ships."""
    return _scripts().get_current_head()


class SchemaState(StrEnum):
    """Where a database's schema stands against this release's migrations."""

    CURRENT = "current"
    # Lacks migrations this release needs (or has none): `riskalert migrate` first.
    BEHIND = "behind"
    # At a revision this release does not know: a later release's (rolling out, or rolled back).
    AHEAD = "ahead"


@functools.cache
def _known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _scripts().walk_revisions())


def schema_state(revision: str | None) -> SchemaState:
    """Where a database at `revision` stands against this release's migrations.

    A revision this release does not know is a later release's: migrations add before they
    remove, so this release still runs on it (while a newer one rolls out, or after a rollback).
    """
    if revision == head_revision():
        return SchemaState.CURRENT
    if revision is None or revision in _known_revisions():
        return SchemaState.BEHIND
    return SchemaState.AHEAD


def schema_note(revision: str | None) -> str:
    """One sentence for people on where a database at `revision` stands against this release."""
    head = head_revision()
    state = schema_state(revision)
    if state is SchemaState.BEHIND:
        return (
            f"the database schema is at {revision or 'no migration'}; "
            f"this release needs {head}: run `riskalert migrate`"
        )
    if state is SchemaState.AHEAD:
        return (
            f"the database schema is at {revision}, a later release's (this release's newest "
            f"migration is {head}): served as it is, not migrated, as migrations add before "
            "they remove"
        )
    return f"the database schema is at {revision}, this release's newest migration"


def schema_revision(connection: Connection) -> str | None:
    """The migration the database is at; None before the first one."""
    return MigrationContext.configure(connection).get_current_revision()


def schema_revision_at(url: str) -> str | None:
    """The migration the database at `url` is at, read on a connection of its own."""
    # Read-only: on SQLite no write lock is taken (another process may be migrating).
    engine = make_engine(url, pool_size=1)
    try:
        with engine.execution_options(**{READ_ONLY_OPTION: True}).connect() as conn:
            return schema_revision(conn)
    finally:
        engine.dispose()


def prepare_schema(url: str, *, migrate: bool) -> SchemaState | None:
    """At a process's start: upgrade a schema behind this release when `migrate` says so, and
    return where the schema then stands (None when the database does not answer).

    Never migrates a schema ahead of this release (Alembic would stop on the revision it does
    not know) nor, without `migrate`, one behind it: both are logged. Without `migrate`, a
    database that does not answer is logged too, so the process starts and reports it on
    /readyz; with it, the error is raised, as the migration could not run.
    """
    try:
        revision = schema_revision_at(url)
    except SQLAlchemyError as exc:
        if migrate:
            raise
        log.warning("database unavailable at start-up, schema not checked: %s", exc)
        return None
    state = schema_state(revision)
    if state is SchemaState.BEHIND and migrate:
        upgrade_to_head(url)
        return SchemaState.CURRENT
    if state is SchemaState.BEHIND:
        log.warning("auto-migrate is off and %s; not ready until then", schema_note(revision))
    elif state is SchemaState.AHEAD:
        log.warning("%s", schema_note(revision))
    return state


def upgrade_to_head(url: str) -> None:
    """Apply every migration not yet applied."""
    command.upgrade(alembic_config(url), "head")


def downgrade_to_base(url: str) -> None:
    """Revert every migration."""
    command.downgrade(alembic_config(url), "base")


# Fewer rows than this go in as one executemany INSERT: COPY pays off for bulk imports.
COPY_FROM_ROWS = 100


def insert_ignoring_conflicts(
    session: Session, table: Table, values: Mapping[str, Any], keys: Sequence[str]
) -> bool:
    """INSERT `values` unless a row with the same `keys` exists; whether this one went in.

    One statement on both engines (`ON CONFLICT DO NOTHING`): of several processes racing on
    the same key, exactly one sees True, and no transaction is aborted by the conflict.
    """
    dialect = session.get_bind().dialect.name
    statement = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    # RETURNING tells what went in: the drivers' rowcount is not reliable here (-1 on psycopg).
    inserted = session.execute(
        statement.values(**values)
        .on_conflict_do_nothing(index_elements=list(keys))
        .returning(table.c[keys[0]])
    ).first()
    return inserted is not None


def bulk_insert(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert many rows (all with the same keys) in this session's transaction: COPY on
    PostgreSQL (far less work for the server than as many INSERTs), executemany elsewhere.

    Values go in as given: no column defaults, and UTC datetimes must already be aware.
    """
    if not rows:
        return
    if session.get_bind().dialect.name != "postgresql" or len(rows) < COPY_FROM_ROWS:
        session.execute(insert(table), list(rows))
        return
    columns = [c for c in table.c if c.name in rows[0]]
    dbapi = cast(psycopg.Connection[Any], session.connection().connection.dbapi_connection)
    names = ", ".join(f'"{c.name}"' for c in columns)
    kinds = [(c.name, isinstance(c.type, JSON)) for c in columns]
    statement = f'COPY "{table.name}" ({names}) FROM STDIN'
    try:
        with dbapi.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([Json(row[n]) if json else row[n] for n, json in kinds])
    except psycopg.Error as exc:
        # As SQLAlchemy would raise it (IntegrityError, OperationalError, ...), so callers and
        # the API's problem handlers see the same errors whichever way rows went in.
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc


# A table that grows fast (a bulk load into a new database) keeps the planner statistics of
# its former, smaller self until autovacuum's next round, a minute or more later: PostgreSQL
# then reads a range of it by scanning all of it, and each batch costs more than the last.
STALE_GROWTH = 1.2  # analyzed again once its pages grow by a fifth since the last analysis
STALE_MIN_PAGES = 32  # and past 256 KiB (8 KiB pages; about 1,000 incidents): below, no matter


def refresh_statistics(factory: sessionmaker[Session], table: str) -> bool:
    """Analyze `table` on PostgreSQL when it has grown by a fifth since it was last analyzed
    (its size now against the size the last analysis recorded: exact, no counters that lag).
    Skipped at once while another process analyzes it. Whether it analyzed; nothing to do on
    SQLite, whose planner takes an index on a range without statistics.

    Never raises: it only helps the planner, and the write before it has committed already.
    """
    try:
        with factory() as session:
            if session.get_bind().dialect.name != "postgresql":
                return False
            pages, analyzed = session.execute(
                text(
                    "SELECT pg_relation_size(c.oid) / current_setting('block_size')::int, "
                    "c.relpages FROM pg_class c WHERE c.oid = CAST(:name AS regclass)"
                ),
                {"name": table},
            ).one()
            if pages < max(STALE_MIN_PAGES, STALE_GROWTH * analyzed):
                return False
            session.execute(text("SET LOCAL lock_timeout = '100ms'"))
            session.execute(text(f'ANALYZE "{table}"'))
            session.commit()
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None)
        if not isinstance(cause, psycopg.errors.LockNotAvailable):
            log.warning("could not analyze %s: %s", table, exc)
        return False
    log.info("analyzed %s (%d pages, %d at its last analysis)", table, pages, analyzed)
    return True
