"""Rescoring reads the incident feed: the revision an update replaced, and the rescorer's cursor.

Ingest no longer queues the targets an incident can affect; the rescoring worker reads them off
the incident feed, so an ingest never waits on the queue's rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("incident_change") as batch:
        batch.add_column(sa.Column("previous", sa.JSON(), nullable=True))
    # Everything already in the feed was queued by ingest when it was written.
    op.execute(
        "INSERT INTO feed_cursor (name, position, updated_at) "
        "SELECT 'rescore', COALESCE(MAX(id), 0), CURRENT_TIMESTAMP FROM incident_change"
    )


def downgrade() -> None:
    op.execute("DELETE FROM feed_cursor WHERE name = 'rescore'")
    with op.batch_alter_table("incident_change") as batch:
        batch.drop_column("previous")
