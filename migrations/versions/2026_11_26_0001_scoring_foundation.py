"""Scoring foundation: tenants, keys, audit, idempotency, incidents, targets, scores, feed.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenant",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenant"),
        sa.UniqueConstraint("name", name="uq_tenant_name"),
    )
    op.create_table(
        "api_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("revoked_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name="fk_api_key_tenant_id_tenant", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_api_key"),
        sa.UniqueConstraint("key_hash", name="uq_api_key_key_hash"),
    )
    op.create_index("ix_api_key_tenant_id", "api_key", ["tenant_id"])
    op.create_table(
        "audit_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(200), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name="fk_audit_entry_tenant_id_tenant",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_audit_entry"),
    )
    op.create_index("ix_audit_entry_tenant_id", "audit_entry", ["tenant_id"])
    op.create_index("ix_audit_entry_at", "audit_entry", ["at"])
    op.create_table(
        "idempotency_record",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("principal", sa.String(64), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_idempotency_record"),
        sa.UniqueConstraint("principal", "key", name="uq_idempotency_record_principal_key"),
    )
    op.create_index("ix_idempotency_record_created_at", "idempotency_record", ["created_at"])
    op.create_table(
        "incident",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("source_id", sa.String(128), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("occurred_at", UTC_TIME, nullable=False),
        sa.Column("occurred_precision", sa.String(8), nullable=False),
        sa.Column("reported_at", UTC_TIME, nullable=False),
        sa.Column("reported_at_estimated", sa.Boolean(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=True),
        sa.Column("lon", sa.Float(), nullable=True),
        sa.Column("location_precision", sa.String(8), nullable=False),
        sa.Column("scope_countries", sa.JSON(), nullable=False),
        sa.Column("scope_admin1", sa.JSON(), nullable=False),
        sa.Column("country", sa.String(3), nullable=True),
        sa.Column("admin1", sa.String(100), nullable=True),
        sa.Column("admin2", sa.String(100), nullable=True),
        sa.Column("location_name", sa.String(200), nullable=True),
        sa.Column("actors", sa.JSON(), nullable=False),
        sa.Column("target_type", sa.String(16), nullable=True),
        sa.Column("target_foreign_owned_only", sa.Boolean(), nullable=False),
        sa.Column("target_sectors", sa.JSON(), nullable=False),
        sa.Column("victim_expatriate", sa.Boolean(), nullable=False),
        sa.Column("victim_nationality", sa.String(64), nullable=True),
        sa.Column("victim_sector", sa.String(16), nullable=True),
        sa.Column("fatalities_claimed", sa.Integer(), nullable=True),
        sa.Column("fatalities_low", sa.Integer(), nullable=True),
        sa.Column("fatalities_best", sa.Integer(), nullable=True),
        sa.Column("fatalities_high", sa.Integer(), nullable=True),
        sa.Column("source_reliability", sa.Float(), nullable=False),
        sa.Column("lifecycle", sa.String(12), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_incident"),
        sa.UniqueConstraint("source", "source_id", name="uq_incident_source_source_id"),
    )
    op.create_index("ix_incident_category", "incident", ["category"])
    op.create_index("ix_incident_occurred_at", "incident", ["occurred_at"])
    op.create_index("ix_incident_reported_at", "incident", ["reported_at"])
    op.create_index("ix_incident_country", "incident", ["country"])
    op.create_index("ix_incident_lat_lon", "incident", ["lat", "lon"])
    op.create_index("ix_incident_updated_at", "incident", ["updated_at"])
    op.create_table(
        "target",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("coordinates", sa.JSON(), nullable=False),
        sa.Column("radius_km", sa.Float(), nullable=False),
        sa.Column("mode", sa.String(8), nullable=True),
        sa.Column("sector", sa.String(16), nullable=True),
        sa.Column("foreign_owned", sa.Boolean(), nullable=False),
        sa.Column("expat_staff", sa.Boolean(), nullable=False),
        sa.Column("countries", sa.JSON(), nullable=False),
        sa.Column("admin1", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("box_min_lat", sa.Float(), nullable=False),
        sa.Column("box_max_lat", sa.Float(), nullable=False),
        sa.Column("box_min_lon", sa.Float(), nullable=False),
        sa.Column("box_max_lon", sa.Float(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name="fk_target_tenant_id_tenant", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_target"),
    )
    op.create_index("ix_target_tenant_id_kind", "target", ["tenant_id", "kind"])
    op.create_index("ix_target_box", "target", ["box_min_lat", "box_max_lat"])
    op.create_table(
        "current_score",
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("band", sa.String(12), nullable=False),
        sa.Column("as_of", UTC_TIME, nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("fed_value", sa.Float(), nullable=False),
        sa.Column("fed_band", sa.String(12), nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["target.id"],
            name="fk_current_score_target_id_target",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("target_id", name="pk_current_score"),
    )
    op.create_table(
        "score_change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("target_kind", sa.String(16), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("as_of", UTC_TIME, nullable=False),
        sa.Column("previous_value", sa.Float(), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("previous_band", sa.String(12), nullable=True),
        sa.Column("band", sa.String(12), nullable=False),
        sa.Column("components", sa.JSON(), nullable=False),
        sa.Column("top_incidents", sa.JSON(), nullable=False),
        sa.Column("cause", sa.String(32), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_score_change"),
    )
    op.create_index("ix_score_change_tenant_id_id", "score_change", ["tenant_id", "id"])
    op.create_index("ix_score_change_target_id_as_of", "score_change", ["target_id", "as_of"])
    op.create_table(
        "rescore_mark",
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("cause", sa.String(32), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("marked_at", UTC_TIME, nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["target.id"],
            name="fk_rescore_mark_target_id_target",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("target_id", name="pk_rescore_mark"),
    )
    op.create_index("ix_rescore_mark_priority_marked_at", "rescore_mark", ["priority", "marked_at"])
    op.create_table(
        "model_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("note", sa.String(500), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_version"),
    )
    # Exactly one active version: processes racing to create the first one cannot both win.
    op.create_index(
        "uq_model_version_active",
        "model_version",
        ["active"],
        unique=True,
        sqlite_where=sa.text("active"),
        postgresql_where=sa.text("active"),
    )


def downgrade() -> None:
    op.drop_table("model_version")
    op.drop_table("rescore_mark")
    op.drop_table("score_change")
    op.drop_table("current_score")
    op.drop_table("target")
    op.drop_table("incident")
    op.drop_table("idempotency_record")
    op.drop_table("audit_entry")
    op.drop_table("api_key")
    op.drop_table("tenant")
