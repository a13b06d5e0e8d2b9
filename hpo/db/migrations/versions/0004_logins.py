"""Browser sign-ins: hpo_logins (server-side sessions; the cookie holds a random token, not the key).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hpo_logins",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_hpo_logins_key_id", "hpo_logins", ["key_id"])
    op.create_index("ix_hpo_logins_expires_at", "hpo_logins", ["expires_at"])


def downgrade() -> None:
    op.drop_table("hpo_logins")
