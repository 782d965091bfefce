"""sftp staging: registration requests, admin tokens, client version, staged identity

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 20:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("hint", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "registration_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uploader_id", sa.Integer(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("box_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["box_id"], ["storage_boxes.id"]),
        sa.ForeignKeyConstraint(["uploader_id"], ["uploaders.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("uploader_id", "fingerprint"),
    )
    op.create_index(
        "ix_registration_requests_uploader_id", "registration_requests", ["uploader_id"]
    )
    with op.batch_alter_table("uploaders") as batch:
        batch.add_column(
            sa.Column("client_version", sa.String(length=64), nullable=False, server_default="")
        )
    with op.batch_alter_table("replicas") as batch:
        batch.add_column(sa.Column("staged_identity", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("staged_identity")
    with op.batch_alter_table("uploaders") as batch:
        batch.drop_column("client_version")
    op.drop_index("ix_registration_requests_uploader_id", "registration_requests")
    op.drop_table("registration_requests")
    op.drop_table("admin_tokens")
