"""dataset identity with the owner, numbered datafile versions, fixity audits

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 21:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# SQLite reflects the unnamed unique constraints of 0001 without a name; this
# convention names them so the batch copy of the table can drop them.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}


def _unique_name(table: str, columns: list[str]) -> str:
    for found in sa.inspect(op.get_bind()).get_unique_constraints(table):
        if found["column_names"] == columns and found["name"]:
            return str(found["name"])
    return f"uq_{table}_{'_'.join(columns)}"


def upgrade() -> None:
    old = _unique_name("datasets", ["uploader_id", "experiment", "name"])
    with op.batch_alter_table("datasets", naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(old, type_="unique")
        batch_op.create_unique_constraint(
            "uq_datasets_identity", ["uploader_id", "owner", "experiment", "name"]
        )

    old = _unique_name("datafiles", ["dataset_id", "directory", "filename"])
    with op.batch_alter_table("datafiles", naming_convention=NAMING) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch_op.drop_constraint(old, type_="unique")
        batch_op.create_unique_constraint(
            "uq_datafiles_version", ["dataset_id", "directory", "filename", "version"]
        )

    with op.batch_alter_table("replicas") as batch_op:
        batch_op.add_column(sa.Column("fixity", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("audited_at", sa.DateTime(), nullable=True))
        batch_op.create_index("ix_replicas_audit", ["state", "audited_at"], unique=False)

    op.create_table(
        "audits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("replica_id", sa.Integer(), nullable=True),
        sa.Column("ingest_file_id", sa.Integer(), nullable=True),
        sa.Column("box_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("checked_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["replica_id"], ["replicas.id"]),
        sa.ForeignKeyConstraint(["ingest_file_id"], ["ingest_files.id"]),
        sa.ForeignKeyConstraint(["box_id"], ["storage_boxes.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audits_replica_id", "audits", ["replica_id"])
    op.create_index("ix_audits_ingest_file_id", "audits", ["ingest_file_id"])

    with op.batch_alter_table("ingest_files") as batch_op:
        batch_op.add_column(sa.Column("fixity", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("audited_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("0004 cannot be undone: versions would collide")
