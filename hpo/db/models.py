"""The project's own tables. Optuna keeps its tables (studies, trials, ...) in the same database;
these only add what Optuna does not know: public ids, owners, uploaded datasets, API keys."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy import JSON, BigInteger, Boolean, DateTime, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TABLE_PREFIX = "hpo_"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class StudyRecord(Base):
    """A study submitted over HTTP; its trials live in Optuna's study ``optuna_study_name``."""

    __tablename__ = "hpo_studies"
    __table_args__ = (UniqueConstraint("optuna_study_name", name="uq_hpo_studies_optuna_study_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    optuna_study_name: Mapped[str] = mapped_column(String(512))
    name: Mapped[str] = mapped_column(String(128), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Copied out of the spec so that "which studies use this dataset" is one indexed query.
    dataset_id: Mapped[str | None] = mapped_column(String(64), index=True)
    owner: Mapped[str | None] = mapped_column(String(128), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class DatasetRecord(Base):
    """An uploaded dataset; its bytes live in ``hpo_dataset_chunks`` (``hpo.data.DatasetStore``)."""

    __tablename__ = "hpo_datasets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(32))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    owner: Mapped[str | None] = mapped_column(String(128), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    # SHA-256 of the file's bytes (hex); None only for a dataset uploaded before the bytes
    # moved into the database and not imported yet (``hpo datasets import-folder``).
    sha256: Mapped[str | None] = mapped_column(String(64))


# An uploaded file's bytes, in rows of at most ``hpo.data.store.CHUNK_BYTES``, in ``idx`` order.
dataset_chunks = sa.Table(
    "hpo_dataset_chunks",
    Base.metadata,
    sa.Column("dataset_id", sa.String(64), sa.ForeignKey("hpo_datasets.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)


class ApiKeyRecord(Base):
    """An API key: only the SHA-256 of the token is kept (the token is shown once, on creation).

    ``name`` is the owner the key's studies and datasets are recorded under, so keys of the
    same name share them (create the new key, then revoke the old one, to rotate). A revoked
    key keeps its row: once any key was ever created, the service never falls back to open.
    """

    __tablename__ = "hpo_api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class LoginRecord(Base):
    """A browser's sign-in (``/login``): its cookie holds a random token, of which only the
    SHA-256 is kept; it is valid while its key is unrevoked and until ``expires_at``."""

    __tablename__ = "hpo_logins"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


# Core tables of the final models (used by hpo.export.store; the workers write them).
model_archives = sa.Table(
    "hpo_model_archives",
    Base.metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("trial_number", sa.Integer, nullable=False),
    # The archive's rank (ensembles): higher rank_score first (the score, negated when the
    # study minimizes), then lower cv_loss, then fewer mean fold epochs.
    sa.Column("rank_score", sa.Float, nullable=False),
    sa.Column("cv_loss", sa.Float, nullable=False),
    sa.Column("mean_epochs", sa.Float, nullable=False),
    sa.Column("archive", sa.LargeBinary, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("summary", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),  # naive UTC
)

model_jobs = sa.Table(
    "hpo_model_jobs",
    Base.metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    # A fresh id per request: a worker's writes name it, so a job deleted (or requested
    # again) under a running fit is never written by that fit again.
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("trial_number", sa.Integer, nullable=False),
    sa.Column("cv_score", sa.Float),
    sa.Column("holdout", sa.Float, nullable=False),
    sa.Column("seeds", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("worker", sa.String(200)),
    sa.Column("requested_at", sa.DateTime, nullable=False),  # naive UTC, as every time here
    sa.Column("started_at", sa.DateTime),
    sa.Column("heartbeat_at", sa.DateTime),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("epoch", sa.Integer),
    sa.Column("epochs", sa.Integer),
    sa.Column("score", sa.Float),
    sa.Column("reason", sa.Text),
    sa.Index("ix_hpo_model_jobs_state", "state"),
)

# The refit a study queued for itself when it ended (spec ``final_model.kind: refit``): one
# row per study, inserted once with the job, so that a refit the user deleted or replaced is
# never queued again (hpo.export.jobs.queue_final_refit).
auto_refits = sa.Table(
    "hpo_auto_refits",
    Base.metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("trial_number", sa.Integer, nullable=False),
    sa.Column("queued_at", sa.DateTime, nullable=False),  # naive UTC
)
