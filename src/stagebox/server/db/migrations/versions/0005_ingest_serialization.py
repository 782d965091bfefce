"""the serialization an ingest job's tar was found in (tar, tar.gz), for its profile

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: a job staged before this revision is judged as a plain tar, as it was.
    with op.batch_alter_table("ingest_jobs") as batch_op:
        batch_op.add_column(sa.Column("serialization", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ingest_jobs") as batch_op:
        batch_op.drop_column("serialization")
