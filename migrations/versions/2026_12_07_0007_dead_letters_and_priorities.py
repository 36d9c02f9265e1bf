"""Dead letters; deliveries claimed by priority; a per-endpoint limit of deliveries in flight,
and an index to count them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)
# A table SQLite has to recreate keeps its AUTOINCREMENT (revision 0006): reflection loses it.
KEEP = {"sqlite_autoincrement": True}


def upgrade() -> None:
    op.create_table(
        "dead_letter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pipeline", sa.String(64), nullable=False),
        sa.Column("item", sa.String(200), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("error_class", sa.String(120), nullable=False),
        sa.Column("error", sa.String(1000), nullable=False),
        sa.Column("trace", sa.Text(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.Column("last_at", UTC_TIME, nullable=False),
        sa.Column("resolved_at", UTC_TIME, nullable=True),
        sa.Column("resolved_by", sa.Integer(), nullable=True),
        sa.Column("note", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letter"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_dead_letter_created_at", "dead_letter", ["created_at"])
    op.create_index(
        "ix_dead_letter_resolved_at_pipeline", "dead_letter", ["resolved_at", "pipeline"]
    )
    # Nullable or defaulted additions: the previous release keeps writing during a rollout.
    with op.batch_alter_table("endpoint", table_kwargs=KEEP) as batch:
        batch.add_column(sa.Column("max_in_flight", sa.Integer(), nullable=True))
    with op.batch_alter_table("delivery", table_kwargs=KEEP) as batch:
        batch.add_column(
            sa.Column("priority", sa.SmallInteger(), server_default="1", nullable=False)
        )
    # Event alerts written before this revision go first too.
    op.execute(
        "UPDATE delivery SET priority = 0 "
        "WHERE event_type IN ('alert.triggered', 'alert.updated', 'endpoint.test')"
    )
    op.execute("UPDATE delivery SET priority = 2 WHERE event_type = 'digest.daily'")
    op.create_index(
        "ix_delivery_status_priority_next_attempt_at",
        "delivery",
        ["status", "priority", "next_attempt_at"],
    )
    op.drop_index("ix_delivery_status_next_attempt_at", table_name="delivery")
    # Claiming counts what is in flight to each endpoint it picks for.
    op.create_index("ix_delivery_endpoint_id_status", "delivery", ["endpoint_id", "status"])
    op.drop_index("ix_delivery_endpoint_id", table_name="delivery")


def downgrade() -> None:
    op.create_index("ix_delivery_endpoint_id", "delivery", ["endpoint_id"])
    op.drop_index("ix_delivery_endpoint_id_status", table_name="delivery")
    op.create_index("ix_delivery_status_next_attempt_at", "delivery", ["status", "next_attempt_at"])
    op.drop_index("ix_delivery_status_priority_next_attempt_at", table_name="delivery")
    with op.batch_alter_table("delivery", table_kwargs=KEEP) as batch:
        batch.drop_column("priority")
    with op.batch_alter_table("endpoint", table_kwargs=KEEP) as batch:
        batch.drop_column("max_in_flight")
    op.drop_index("ix_dead_letter_resolved_at_pipeline", table_name="dead_letter")
    op.drop_index("ix_dead_letter_created_at", table_name="dead_letter")
    op.drop_table("dead_letter")
