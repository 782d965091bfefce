"""bag ingest: ingest jobs and their files

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 21:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bag", sa.String(length=1024), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("etag", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("receiving_box_id", sa.Integer(), nullable=False),
        sa.Column("staging_box_id", sa.Integer(), nullable=False),
        sa.Column("permanent_box_id", sa.Integer(), nullable=False),
        sa.Column("profile", sa.JSON(), nullable=True),
        sa.Column("delete_received", sa.Boolean(), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("bytes_read", sa.BigInteger(), nullable=False),
        sa.Column("bytes_staged", sa.BigInteger(), nullable=False),
        sa.Column("problems", sa.JSON(), nullable=False),
        sa.Column("payload_dir", sa.Boolean(), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.Column("superseded_by", sa.Integer(), nullable=True),
        sa.Column("lease_owner", sa.String(length=255), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["receiving_box_id"], ["storage_boxes.id"]),
        sa.ForeignKeyConstraint(["staging_box_id"], ["storage_boxes.id"]),
        sa.ForeignKeyConstraint(["permanent_box_id"], ["storage_boxes.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("receiving_box_id", "bag", "etag"),
    )
    op.create_index("ix_ingest_jobs_name", "ingest_jobs", ["name"])
    op.create_index("ix_ingest_jobs_status", "ingest_jobs", ["status", "next_attempt_at"])
    op.create_table(
        "ingest_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("is_tag", sa.Boolean(), nullable=False),
        sa.Column("md5", sa.String(length=32), nullable=False),
        sa.Column("sha1", sa.String(length=40), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("sha512", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("stored_box_id", sa.Integer(), nullable=True),
        sa.Column("stored_key", sa.Text(), nullable=True),
        sa.Column("staged_at", sa.DateTime(), nullable=False),
        sa.Column("verified_at", sa.DateTime(), nullable=True),
        sa.Column("stored_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["ingest_jobs.id"]),
        sa.ForeignKeyConstraint(["stored_box_id"], ["storage_boxes.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "path"),
    )
    op.create_index("ix_ingest_files_job_id", "ingest_files", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_ingest_files_job_id", table_name="ingest_files")
    op.drop_table("ingest_files")
    op.drop_index("ix_ingest_jobs_status", table_name="ingest_jobs")
    op.drop_index("ix_ingest_jobs_name", table_name="ingest_jobs")
    op.drop_table("ingest_jobs")
