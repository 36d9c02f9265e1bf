"""Fitted model versions: the fit report stored with a version, and fit jobs.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)
# A table SQLite has to recreate keeps its AUTOINCREMENT (revision 0006): reflection loses it.
KEEP = {"sqlite_autoincrement": True}


def upgrade() -> None:
    # Nullable: the previous release keeps writing versions during a rollout.
    with op.batch_alter_table("model_version", table_kwargs=KEEP) as batch:
        batch.add_column(sa.Column("report", sa.JSON(), nullable=True))
    op.create_table(
        "model_fit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("requested_key_id", sa.Integer(), nullable=True),
        sa.Column("requested_at", UTC_TIME, nullable=False),
        sa.Column("started_at", UTC_TIME, nullable=True),
        sa.Column("lease_until", UTC_TIME, nullable=True),
        sa.Column("finished_at", UTC_TIME, nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("error", sa.String(1000), nullable=True),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_model_fit"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_model_fit_status", "model_fit", ["status"])


def downgrade() -> None:
    op.drop_index("ix_model_fit_status", table_name="model_fit")
    op.drop_table("model_fit")
    with op.batch_alter_table("model_version", table_kwargs=KEEP) as batch:
        batch.drop_column("report")
