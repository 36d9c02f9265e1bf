"""Operations: periodic tick claims, and the request that caused an incident or a delivery.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tick_run",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("slot_at", UTC_TIME, nullable=False),
        sa.Column("process", sa.String(120), nullable=False),
        sa.Column("started_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", "slot_at", name="pk_tick_run"),
    )
    op.create_index("ix_tick_run_started_at", "tick_run", ["started_at"])
    # Nullable additions: old processes keep writing during a rolling upgrade.
    with op.batch_alter_table("incident") as batch:
        batch.add_column(sa.Column("request_id", sa.String(64), nullable=True))
    with op.batch_alter_table("delivery") as batch:
        batch.add_column(sa.Column("request_id", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.drop_column("request_id")
    with op.batch_alter_table("incident") as batch:
        batch.drop_column("request_id")
    op.drop_index("ix_tick_run_started_at", table_name="tick_run")
    op.drop_table("tick_run")
