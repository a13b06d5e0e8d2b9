"""The service's first tables: hpo_studies and hpo_datasets.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hpo_studies",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("optuna_study_name", sa.String(512), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("dataset_id", sa.String(64), nullable=True),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("optuna_study_name", name="uq_hpo_studies_optuna_study_name"),
    )
    op.create_index("ix_hpo_studies_name", "hpo_studies", ["name"])
    op.create_index("ix_hpo_studies_dataset_id", "hpo_studies", ["dataset_id"])
    op.create_index("ix_hpo_studies_owner", "hpo_studies", ["owner"])
    op.create_index("ix_hpo_studies_created_at", "hpo_studies", ["created_at"])

    op.create_table(
        "hpo_datasets",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_hpo_datasets_owner", "hpo_datasets", ["owner"])
    op.create_index("ix_hpo_datasets_created_at", "hpo_datasets", ["created_at"])


def downgrade() -> None:
    op.drop_table("hpo_datasets")
    op.drop_table("hpo_studies")
