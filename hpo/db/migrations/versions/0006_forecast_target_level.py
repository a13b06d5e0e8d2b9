"""Forecasting studies stored before ``training.forecast_target`` existed keep ``level``.

The option's default is ``difference``; a stored spec that leaves it out was written when
every forecasting model learned levels, so it is written out as ``level`` in both places a
spec is kept (``hpo_studies.spec`` and Optuna's study attribute ``hpo:spec``): a study
that runs on across the upgrade, or is refitted later, does not change what it learns.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SPEC_ATTR = "hpo:spec"


def _with_level(spec: Any) -> dict[str, Any] | None:
    """The spec with ``forecast_target: level`` written out, or None when nothing changes."""
    if not isinstance(spec, dict) or spec.get("task") != "forecasting":
        return None
    training = spec.get("training")
    if training is not None and not isinstance(training, dict):
        return None
    if (training or {}).get("forecast_target") is not None:
        return None
    return {**spec, "training": {**(training or {}), "forecast_target": "level"}}


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    studies = sa.table("hpo_studies", sa.column("id"), sa.column("spec", sa.JSON))
    for study_id, spec in bind.execute(sa.select(studies.c.id, studies.c.spec)).all():
        changed = _with_level(spec)
        if changed is not None:
            bind.execute(sa.update(studies).where(studies.c.id == study_id).values(spec=changed))
    if not inspector.has_table("study_user_attributes"):
        return  # Optuna's tables come later: no study of its own yet
    attrs = sa.table("study_user_attributes", sa.column("study_user_attribute_id"), sa.column("key"),
                     sa.column("value_json"))
    rows = bind.execute(sa.select(attrs.c.study_user_attribute_id, attrs.c.value_json)
                        .where(attrs.c.key == SPEC_ATTR)).all()
    for row_id, value_json in rows:
        changed = _with_level(json.loads(value_json))
        if changed is not None:
            bind.execute(sa.update(attrs).where(attrs.c.study_user_attribute_id == row_id)
                         .values(value_json=json.dumps(changed)))


def downgrade() -> None:
    """Nothing to undo: ``level`` written out means what the older version did by default."""
