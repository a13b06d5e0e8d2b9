"""Uploaded datasets' bytes in the database: hpo_dataset_chunks, and hpo_datasets.sha256.

Workers then need only the database URL. The files earlier versions kept in the API's data
folder (``DATA_DIR/datasets/<id>/``) are not read here: a migration runs in whichever process
reaches the database first (``hpo db upgrade`` on an operator's laptop, a worker's machine),
which may not hold that folder, and Alembic would record the revision as done all the same;
it also runs inside the schema lock, which would hold every other process's start for as
long as gigabytes take to copy. The import is ``DatasetStore.import_folder`` instead: ``hpo
serve`` runs it on its own data folder at every start, and ``hpo datasets import-folder DIR``
on any other; until then such a dataset's row has no sha256 and its studies say so.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hpo_datasets") as batch:
        batch.add_column(sa.Column("sha256", sa.String(64), nullable=True))
    op.create_table(
        "hpo_dataset_chunks",
        sa.Column("dataset_id", sa.String(64), sa.ForeignKey("hpo_datasets.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hpo_dataset_chunks")
    with op.batch_alter_table("hpo_datasets") as batch:
        batch.drop_column("sha256")
