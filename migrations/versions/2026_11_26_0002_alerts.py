"""Alerts: endpoints, subscriptions and rules, alert states, the delivery outbox, the incident feed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "feed_cursor",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_feed_cursor"),
    )
    op.create_table(
        "endpoint",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("address", sa.String(length=2048), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.String(length=200), nullable=True),
        sa.Column("disabled_at", UTC_TIME, nullable=True),
        sa.Column("failing_since", UTC_TIME, nullable=True),
        sa.Column("last_success_at", UTC_TIME, nullable=True),
        sa.Column("unsubscribe_token", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name="fk_endpoint_tenant_id_tenant", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_endpoint"),
        sa.UniqueConstraint("unsubscribe_token", name="uq_endpoint_unsubscribe_token"),
    )
    op.create_index("ix_endpoint_tenant_id_kind", "endpoint", ["tenant_id", "kind"])

    op.create_table(
        "incident_change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=12), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incident.id"],
            name="fk_incident_change_incident_id_incident",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_incident_change"),
    )
    op.create_index("ix_incident_change_incident_id", "incident_change", ["incident_id"])

    op.create_table(
        "endpoint_secret",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("endpoint_id", sa.Integer(), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("expires_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["endpoint.id"],
            name="fk_endpoint_secret_endpoint_id_endpoint",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_endpoint_secret"),
    )
    op.create_index("ix_endpoint_secret_endpoint_id", "endpoint_secret", ["endpoint_id"])

    op.create_table(
        "subscription",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=True),
        sa.Column("tag", sa.String(length=64), nullable=True),
        sa.Column("endpoint_ids", sa.JSON(), nullable=False),
        sa.Column("digest_bands", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["target.id"],
            name="fk_subscription_target_id_target",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name="fk_subscription_tenant_id_tenant",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_subscription"),
    )
    op.create_index("ix_subscription_tenant_id", "subscription", ["tenant_id"])

    op.create_table(
        "rule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("seeded", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscription.id"],
            name="fk_rule_subscription_id_subscription",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rule"),
    )
    op.create_index("ix_rule_subscription_id", "rule", ["subscription_id"])
    op.create_index("ix_rule_tenant_id", "rule", ["tenant_id"])

    op.create_table(
        "alert",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.Integer(), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("since", UTC_TIME, nullable=False),
        sa.Column("condition_since", UTC_TIME, nullable=True),
        sa.Column("cleared_since", UTC_TIME, nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("band", sa.String(length=12), nullable=True),
        sa.Column("transitions", sa.JSON(), nullable=False),
        sa.Column("last_notified_at", UTC_TIME, nullable=True),
        sa.Column("last_notified_band", sa.String(length=12), nullable=True),
        sa.Column("last_notified_state", sa.String(length=12), nullable=True),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("next_check_at", UTC_TIME, nullable=True),
        sa.Column("acknowledged_at", UTC_TIME, nullable=True),
        sa.Column("acknowledged_by", sa.Integer(), nullable=True),
        sa.Column("snoozed_until", UTC_TIME, nullable=True),
        sa.Column("snoozed_band", sa.String(length=12), nullable=True),
        sa.Column("change", sa.JSON(), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["rule.id"], name="fk_alert_rule_id_rule", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscription.id"],
            name="fk_alert_subscription_id_subscription",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["target_id"], ["target.id"], name="fk_alert_target_id_target", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_alert"),
        sa.UniqueConstraint(
            "rule_id", "target_id", "incident_id", name="uq_alert_rule_id_target_id_incident_id"
        ),
    )
    op.create_index("ix_alert_next_check_at", "alert", ["next_check_at"])
    op.create_index("ix_alert_subscription_id", "alert", ["subscription_id"])
    op.create_index("ix_alert_tenant_id_state", "alert", ["tenant_id", "state"])
    op.create_index("ix_alert_updated_at", "alert", ["updated_at"])

    op.create_table(
        "alert_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("at", UTC_TIME, nullable=False),
        sa.Column("from_state", sa.String(length=12), nullable=False),
        sa.Column("to_state", sa.String(length=12), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("band", sa.String(length=12), nullable=True),
        sa.Column("notified", sa.String(length=12), nullable=False),
        sa.Column("reason", sa.String(length=300), nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alert.id"], name="fk_alert_event_alert_id_alert", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_alert_event"),
    )
    op.create_index("ix_alert_event_alert_id", "alert_event", ["alert_id"])

    op.create_table(
        "delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("endpoint_id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=True),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("dedupe_key", sa.String(length=128), nullable=True),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("schedule_offset", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC_TIME, nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_token", sa.String(length=32), nullable=True),
        sa.Column("lease_expires_at", UTC_TIME, nullable=True),
        sa.Column("last_error", sa.String(length=300), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.Column("settled_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alert.id"], name="fk_delivery_alert_id_alert", ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["endpoint.id"],
            name="fk_delivery_endpoint_id_endpoint",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_delivery"),
        sa.UniqueConstraint("dedupe_key", name="uq_delivery_dedupe_key"),
        sa.UniqueConstraint("message_id", name="uq_delivery_message_id"),
    )
    op.create_index("ix_delivery_alert_id_endpoint_id", "delivery", ["alert_id", "endpoint_id"])
    op.create_index("ix_delivery_created_at", "delivery", ["created_at"])
    op.create_index("ix_delivery_endpoint_id", "delivery", ["endpoint_id"])
    op.create_index("ix_delivery_status_next_attempt_at", "delivery", ["status", "next_attempt_at"])
    op.create_index("ix_delivery_tenant_id_status", "delivery", ["tenant_id", "status"])

    op.create_table(
        "delivery_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", UTC_TIME, nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(length=12), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error_class", sa.String(length=64), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["delivery.id"],
            name="fk_delivery_attempt_delivery_id_delivery",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_delivery_attempt"),
    )
    op.create_index("ix_delivery_attempt_delivery_id", "delivery_attempt", ["delivery_id"])

    op.create_table(
        "digest_item",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("endpoint_id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alert.id"], name="fk_digest_item_alert_id_alert", ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["delivery.id"],
            name="fk_digest_item_delivery_id_delivery",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["endpoint.id"],
            name="fk_digest_item_endpoint_id_endpoint",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_digest_item"),
    )
    op.create_index(
        "ix_digest_item_endpoint_id_delivery_id", "digest_item", ["endpoint_id", "delivery_id"]
    )
    # Start consuming at the feeds' ends: history written before the alerts service existed is
    # not news (rules are evaluated against current scores when they are created instead).
    op.execute(
        "INSERT INTO feed_cursor (name, position, updated_at) "
        "SELECT 'score_change', COALESCE(MAX(id), 0), CURRENT_TIMESTAMP FROM score_change"
    )
    op.execute(
        "INSERT INTO feed_cursor (name, position, updated_at) "
        "SELECT 'incident_change', COALESCE(MAX(id), 0), CURRENT_TIMESTAMP FROM incident_change"
    )


def downgrade() -> None:
    op.drop_index("ix_digest_item_endpoint_id_delivery_id", table_name="digest_item")

    op.drop_table("digest_item")
    op.drop_index("ix_delivery_attempt_delivery_id", table_name="delivery_attempt")

    op.drop_table("delivery_attempt")
    op.drop_index("ix_delivery_tenant_id_status", table_name="delivery")
    op.drop_index("ix_delivery_status_next_attempt_at", table_name="delivery")
    op.drop_index("ix_delivery_endpoint_id", table_name="delivery")
    op.drop_index("ix_delivery_created_at", table_name="delivery")
    op.drop_index("ix_delivery_alert_id_endpoint_id", table_name="delivery")

    op.drop_table("delivery")
    op.drop_index("ix_alert_event_alert_id", table_name="alert_event")

    op.drop_table("alert_event")
    op.drop_index("ix_alert_updated_at", table_name="alert")
    op.drop_index("ix_alert_tenant_id_state", table_name="alert")
    op.drop_index("ix_alert_subscription_id", table_name="alert")
    op.drop_index("ix_alert_next_check_at", table_name="alert")

    op.drop_table("alert")
    op.drop_index("ix_rule_tenant_id", table_name="rule")
    op.drop_index("ix_rule_subscription_id", table_name="rule")

    op.drop_table("rule")
    op.drop_index("ix_subscription_tenant_id", table_name="subscription")

    op.drop_table("subscription")
    op.drop_index("ix_endpoint_secret_endpoint_id", table_name="endpoint_secret")

    op.drop_table("endpoint_secret")
    op.drop_index("ix_incident_change_incident_id", table_name="incident_change")

    op.drop_table("incident_change")
    op.drop_index("ix_endpoint_tenant_id_kind", table_name="endpoint")

    op.drop_table("endpoint")
    op.drop_table("feed_cursor")
