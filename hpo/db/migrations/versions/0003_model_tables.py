"""Model tables: hpo_model_archives (archives in the database) and hpo_model_jobs (refit jobs).

Jobs that earlier versions kept in the study user attribute ``hpo:model`` (with the
``hpo:model:cancelled`` tombstone) move into hpo_model_jobs and the attributes go. Their
archives lived in the API's data folder, which a migration cannot reach: a job that was
queued, running or ready is queued again, so a worker refits it into the database; a
failed one stays failed with its reason.

The engine creates the same tables on first use (``hpo.export.store.ensure_tables``), so
either may come first.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import datetime as dt
import json
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OLD_JOB_ATTR = "hpo:model"
OLD_TOMBSTONE_ATTR = "hpo:model:cancelled"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("hpo_model_archives"):
        op.create_table(
            "hpo_model_archives",
            sa.Column("study_name", sa.String(512), primary_key=True),
            sa.Column("kind", sa.String(16), primary_key=True),
            sa.Column("trial_number", sa.Integer, nullable=False),
            sa.Column("rank_score", sa.Float, nullable=False),
            sa.Column("cv_loss", sa.Float, nullable=False),
            sa.Column("mean_epochs", sa.Float, nullable=False),
            sa.Column("archive", sa.LargeBinary, nullable=False),
            sa.Column("sha256", sa.String(64), nullable=False),
            sa.Column("summary", sa.JSON, nullable=False),
            sa.Column("created_at", sa.DateTime, nullable=False),
        )
    if not inspector.has_table("hpo_model_jobs"):
        op.create_table(
            "hpo_model_jobs",
            sa.Column("study_name", sa.String(512), primary_key=True),
            sa.Column("job_id", sa.String(32), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("trial_number", sa.Integer, nullable=False),
            sa.Column("cv_score", sa.Float),
            sa.Column("holdout", sa.Float, nullable=False),
            sa.Column("seeds", sa.Integer, nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("worker", sa.String(200)),
            sa.Column("requested_at", sa.DateTime, nullable=False),
            sa.Column("started_at", sa.DateTime),
            sa.Column("heartbeat_at", sa.DateTime),
            sa.Column("finished_at", sa.DateTime),
            sa.Column("epoch", sa.Integer),
            sa.Column("epochs", sa.Integer),
            sa.Column("score", sa.Float),
            sa.Column("reason", sa.Text),
        )
        op.create_index("ix_hpo_model_jobs_state", "hpo_model_jobs", ["state"])
    if inspector.has_table("study_user_attributes") and inspector.has_table("studies"):
        _move_attribute_jobs()


def _move_attribute_jobs() -> None:
    bind = op.get_bind()
    attrs = sa.table("study_user_attributes", sa.column("study_id"), sa.column("key"), sa.column("value_json"))
    studies = sa.table("studies", sa.column("study_id"), sa.column("study_name"))
    jobs = sa.table("hpo_model_jobs", *(sa.column(name) for name in (
        "study_name", "job_id", "state", "trial_number", "cv_score", "holdout", "seeds", "attempts",
        "requested_at", "finished_at", "reason")))
    rows = bind.execute(
        sa.select(studies.c.study_name, attrs.c.key, attrs.c.value_json)
        .select_from(attrs.join(studies, studies.c.study_id == attrs.c.study_id))
        .where(attrs.c.key.in_([OLD_JOB_ATTR, OLD_TOMBSTONE_ATTR]))
    ).all()
    by_study: dict[str, dict[str, object]] = {}
    for study_name, key, value_json in rows:
        by_study.setdefault(study_name, {})[key] = json.loads(value_json)
    existing = set(bind.execute(sa.select(jobs.c.study_name)).scalars())
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    for study_name, found in by_study.items():
        job = found.get(OLD_JOB_ATTR)
        if study_name in existing or not isinstance(job, dict) or not isinstance(job.get("trial_number"), int):
            continue
        if job.get("requested_at") is not None and found.get(OLD_TOMBSTONE_ATTR) == job.get("requested_at"):
            continue  # deleted
        failed = job.get("state") == "failed"
        if job.get("state") not in ("queued", "running", "ready", "failed"):
            continue
        bind.execute(sa.insert(jobs).values(
            study_name=study_name, job_id=secrets.token_hex(8), state="failed" if failed else "queued",
            trial_number=job["trial_number"], cv_score=job.get("cv_score"),
            holdout=float(job.get("holdout") or 0.0), seeds=1, attempts=0, requested_at=now,
            finished_at=now if failed else None, reason=str(job.get("reason"))[:2000] if failed else None,
        ))
    bind.execute(sa.delete(attrs).where(attrs.c.key.in_([OLD_JOB_ATTR, OLD_TOMBSTONE_ATTR])))


def downgrade() -> None:
    op.drop_table("hpo_model_jobs")
    op.drop_table("hpo_model_archives")
