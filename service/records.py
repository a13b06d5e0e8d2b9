"""Reading and writing the service's rows (``hpo_studies``, ``hpo_datasets``): the one place
that speaks SQL for the service."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import DatasetRecord, StudyRecord


# Every id the service hands out matches this; anything else cannot name a row (and a NUL
# byte, say, must not reach PostgreSQL, which refuses it with an error rather than no row).
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def is_valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def get_study(session: Session, study_id: str) -> StudyRecord | None:
    return session.get(StudyRecord, study_id)


def all_studies(session: Session) -> Sequence[StudyRecord]:
    """Every study, newest first."""
    return session.scalars(select(StudyRecord).order_by(StudyRecord.created_at.desc(), StudyRecord.id)).all()


def page_of_studies(session: Session, limit: int, offset: int) -> tuple[Sequence[StudyRecord], int]:
    """One page of studies, newest first, and how many there are in all."""
    total = session.scalar(select(func.count()).select_from(StudyRecord)) or 0
    rows = session.scalars(
        select(StudyRecord).order_by(StudyRecord.created_at.desc(), StudyRecord.id).limit(limit).offset(offset)
    ).all()
    return rows, total


def studies_using_dataset(session: Session, dataset_id: str) -> Sequence[StudyRecord]:
    return session.scalars(select(StudyRecord).where(StudyRecord.dataset_id == dataset_id)).all()


def get_dataset(session: Session, dataset_id: str) -> DatasetRecord | None:
    return session.get(DatasetRecord, dataset_id) if is_valid_id(dataset_id) else None


def page_of_datasets(session: Session, limit: int, offset: int) -> tuple[Sequence[DatasetRecord], int]:
    """One page of datasets, newest first, and how many there are in all."""
    total = session.scalar(select(func.count()).select_from(DatasetRecord)) or 0
    rows = session.scalars(
        select(DatasetRecord).order_by(DatasetRecord.created_at.desc(), DatasetRecord.id).limit(limit).offset(offset)
    ).all()
    return rows, total
