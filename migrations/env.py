"""Alembic environment: runs the revisions in versions/ against the configured URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

# The models are imported only so that `alembic check` can compare them with the revisions;
# the revisions themselves are written with op/sa and never import them.
import services.alerts.models
import services.core.models
import services.feeds.models
import services.scoring.models  # noqa: F401  (registers the tables on Base.metadata)
from services.core.db import Base

config = context.config
LOCK_KEY = 0x5C0E_0A1E
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    """Emit SQL instead of running it."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the revisions in one transaction per revision."""
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Processes starting together all migrate: one does, the others wait here
                # and then find the database at head.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
