"""Incident feeds: merged reports, source edit times, codes and row fingerprints, feed poll
state, import runs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("incident") as batch:
        batch.add_column(sa.Column("merged_into_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("source_updated_at", UTC_TIME, nullable=True))
        batch.add_column(
            sa.Column("source_fields", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )
        batch.add_column(sa.Column("source_hash", sa.String(32), nullable=True))
        batch.create_foreign_key(
            "fk_incident_merged_into_id_incident",
            "incident",
            ["merged_into_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index("ix_incident_merged_into_id", ["merged_into_id"])
    with op.batch_alter_table("incident") as batch:
        batch.alter_column("source_fields", server_default=None)
    op.create_table(
        "feed_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("watermark", UTC_TIME, nullable=True),
        sa.Column("last_attempt_at", UTC_TIME, nullable=True),
        sa.Column("last_success_at", UTC_TIME, nullable=True),
        sa.Column("last_error_at", UTC_TIME, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("circuit_open_until", UTC_TIME, nullable=True),
        sa.Column("next_poll_at", UTC_TIME, nullable=True),
        sa.Column("last_summary", sa.JSON(), nullable=True),
        sa.Column("lease_until", UTC_TIME, nullable=True),
        sa.Column("updated_at", UTC_TIME, nullable=False),
    )
    op.create_table(
        "import_run",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("origin", sa.String(300), nullable=False),
        sa.Column("started_at", UTC_TIME, nullable=False),
        sa.Column("heartbeat_at", UTC_TIME, nullable=False),
        sa.Column("finished_at", UTC_TIME, nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
    )
    op.create_index("ix_import_run_heartbeat_at", "import_run", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_import_run_heartbeat_at", table_name="import_run")
    op.drop_table("import_run")
    op.drop_table("feed_state")
    with op.batch_alter_table("incident") as batch:
        batch.drop_index("ix_incident_merged_into_id")
        batch.drop_constraint("fk_incident_merged_into_id_incident", type_="foreignkey")
        batch.drop_column("source_hash")
        batch.drop_column("source_fields")
        batch.drop_column("source_updated_at")
        batch.drop_column("merged_into_id")
