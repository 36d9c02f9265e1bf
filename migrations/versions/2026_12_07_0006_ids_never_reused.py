"""Ids are never reused: every SQLite table with a surrogate integer id becomes AUTOINCREMENT.

SQLite gives a new row the highest id + 1, so the id of a deleted newest row comes back: a
re-created subscription's alerts then met the dedupe keys of the deleted one's deliveries, and
every tenant's alerts stopped. AUTOINCREMENT keeps the highest id ever used (sqlite_sequence),
as PostgreSQL's sequences already do; nothing changes there.

SQLite cannot alter a table into AUTOINCREMENT: each is recreated (copied, dropped, renamed,
its indexes made again) with foreign keys off, so dropping a table cascades into nothing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every table of revision 0005 whose primary key is a surrogate integer id.
TABLES = (
    "tenant",
    "api_key",
    "audit_entry",
    "idempotency_record",
    "target",
    "score_change",
    "model_version",
    "endpoint",
    "incident_change",
    "endpoint_secret",
    "subscription",
    "rule",
    "alert",
    "alert_event",
    "delivery",
    "delivery_attempt",
    "digest_item",
    "incident",
    "import_run",
)


def _recreate(autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    # A no-op inside a transaction: then it must already be off (alembic's own connection
    # never turns it on), or dropping the old tables would cascade into their children.
    op.execute("PRAGMA foreign_keys=OFF")
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("foreign keys must be off to recreate tables; run riskalert migrate")
    for name in TABLES:
        with op.batch_alter_table(
            name, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass
    if not autoincrement:
        op.execute(
            sa.text("DELETE FROM sqlite_sequence WHERE name IN :names").bindparams(
                sa.bindparam("names", list(TABLES), expanding=True)
            )
        )


def upgrade() -> None:
    _recreate(autoincrement=True)


def downgrade() -> None:
    _recreate(autoincrement=False)
