"""The final model's spec section, and the table of refits that studies queue for themselves.

Specs gain ``final_model`` (default ``{kind: refit, seeds: 3}``: a study queues a refit of
its best trial when it ends). A spec stored before that section existed was written when a
study's model was its fold ensemble and nothing else, so it is written out as
``final_model: {kind: ensemble}`` in both places a spec is kept (``hpo_studies.spec`` and
Optuna's study attribute ``hpo:spec``): a study that runs on across the upgrade, or ended
before it, does not start a refit nobody asked for. ``hpo_auto_refits`` records each refit
a study queued for itself (the engine creates it on first use too,
``hpo.export.store.ensure_tables``, so either may come first).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SPEC_ATTR = "hpo:spec"


def _with_ensemble(spec: Any) -> dict[str, Any] | None:
    """The spec with ``final_model: {kind: ensemble}`` written out, or None when nothing changes."""
    if not isinstance(spec, dict) or spec.get("final_model") is not None:
        return None
    return {**spec, "final_model": {"kind": "ensemble"}}


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if not inspector.has_table("hpo_auto_refits"):
        op.create_table(
            "hpo_auto_refits",
            sa.Column("study_name", sa.String(512), primary_key=True),
            sa.Column("job_id", sa.String(32), nullable=False),
            sa.Column("trial_number", sa.Integer, nullable=False),
            sa.Column("queued_at", sa.DateTime, nullable=False),
        )
    studies = sa.table("hpo_studies", sa.column("id"), sa.column("spec", sa.JSON))
    for study_id, spec in bind.execute(sa.select(studies.c.id, studies.c.spec)).all():
        changed = _with_ensemble(spec)
        if changed is not None:
            bind.execute(sa.update(studies).where(studies.c.id == study_id).values(spec=changed))
    if not inspector.has_table("study_user_attributes"):
        return  # Optuna's tables come later: no study of its own yet
    attrs = sa.table("study_user_attributes", sa.column("study_user_attribute_id"), sa.column("key"),
                     sa.column("value_json"))
    rows = bind.execute(sa.select(attrs.c.study_user_attribute_id, attrs.c.value_json)
                        .where(attrs.c.key == SPEC_ATTR)).all()
    for row_id, value_json in rows:
        changed = _with_ensemble(json.loads(value_json))
        if changed is not None:
            bind.execute(sa.update(attrs).where(attrs.c.study_user_attribute_id == row_id)
                         .values(value_json=json.dumps(changed)))


def downgrade() -> None:
    """The table goes; ``final_model`` written out stays (an older version refuses the field,
    so a downgrade is only for a database whose studies are deleted or re-submitted)."""
    op.drop_table("hpo_auto_refits")
