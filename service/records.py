"""Reading and writing the service's rows (``hpo_studies``, ``hpo_datasets``): the one place
that speaks SQL for the service.

A session can be restricted to one owner's rows (:func:`restrict_to_owner`, done per request
for a non-admin API key): every ORM query on it, in any route, then sees that owner's
studies and datasets only (SQLAlchemy's ``with_loader_criteria``), so another owner's row
is simply not found (404, its existence not leaked) and never listed or counted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TypeVar

from sqlalchemy import event, func, select, update
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from hpo.db.models import DatasetRecord, StudyRecord


# Every id the service hands out matches this; anything else cannot name a row (and a NUL
# byte, say, must not reach PostgreSQL, which refuses it with an error rather than no row).
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


Row = TypeVar("Row", StudyRecord, DatasetRecord)

_VISIBLE_OWNER = "hpo_visible_owner"
# A query that must see every owner's rows (is a dataset still used by anybody's study?).
ALL_OWNERS = {"hpo_all_owners": True}


def restrict_to_owner(session: Session, owner: str) -> None:
    """From now on ``session`` sees only the studies and datasets that ``owner`` created."""
    session.info[_VISIBLE_OWNER] = owner


@event.listens_for(Session, "do_orm_execute")
def _only_visible_rows(state: ORMExecuteState) -> None:
    if _VISIBLE_OWNER not in state.session.info or not state.is_select:
        return
    if state.execution_options.get("hpo_all_owners"):
        return
    owner = state.session.info[_VISIBLE_OWNER]
    state.statement = state.statement.options(
        with_loader_criteria(StudyRecord, StudyRecord.owner == owner, include_aliases=True),
        with_loader_criteria(DatasetRecord, DatasetRecord.owner == owner, include_aliases=True),
    )


def is_valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def get_study(session: Session, study_id: str) -> StudyRecord | None:
    return session.get(StudyRecord, study_id)


def all_studies(session: Session) -> Sequence[StudyRecord]:
    """Every study, newest first."""
    return session.scalars(select(StudyRecord).order_by(StudyRecord.created_at.desc(), StudyRecord.id)).all()


def studies_using_dataset(session: Session, dataset_id: str) -> Sequence[StudyRecord]:
    """Every owner's studies reading the dataset (an admin may have used someone's dataset)."""
    statement = select(StudyRecord).where(StudyRecord.dataset_id == dataset_id).execution_options(**ALL_OWNERS)
    return session.scalars(statement).all()


def studies_of_owner(session: Session, owner: str | None) -> Sequence[StudyRecord]:
    """The studies ``owner`` created (``None``: those created while the service ran open)."""
    condition = StudyRecord.owner.is_(None) if owner is None else StudyRecord.owner == owner
    return session.scalars(select(StudyRecord).where(condition).order_by(StudyRecord.created_at.desc())).all()


def get_dataset(session: Session, dataset_id: str) -> DatasetRecord | None:
    return session.get(DatasetRecord, dataset_id) if is_valid_id(dataset_id) else None


def dataset_names(session: Session, studies: Iterable[StudyRecord]) -> dict[str, str]:
    """The names of the uploaded datasets these studies read, by id, in one query (deleted
    datasets are left out; any owner's: the study's owner may read an admin's upload)."""
    ids = {record.dataset_id for record in studies if record.dataset_id}
    if not ids:
        return {}
    statement = select(DatasetRecord.id, DatasetRecord.name).where(DatasetRecord.id.in_(ids))
    return {row.id: row.name for row in session.execute(statement.execution_options(**ALL_OWNERS))}


def lock_dataset(session: Session, dataset_id: str) -> bool:
    """Lock a dataset's row until the session's transaction ends, and say whether it exists.

    Submitting a study, resuming one and deleting a dataset each take this lock before they
    decide, so one transaction decides between them. The lock is a write of the row (of
    nothing in it): SQLite ignores ``SELECT ... FOR UPDATE``, and a write is what both
    databases serialize (a row lock on PostgreSQL, the database's write lock on SQLite).
    Owners are not looked at: the caller checks that the session may see the dataset.

    Args:
        session: the session whose transaction holds the lock (commit or roll back soon).
        dataset_id: the dataset's id.

    Returns:
        Whether the dataset's row exists (it was not deleted by a transaction that committed first).
    """
    if not is_valid_id(dataset_id):
        return False
    statement = (update(DatasetRecord).where(DatasetRecord.id == dataset_id).values(name=DatasetRecord.name)
                 .execution_options(synchronize_session=False))
    return session.execute(statement).rowcount == 1


def page_of(session: Session, model: type[Row], limit: int, offset: int) -> tuple[Sequence[Row], int]:
    """One page of studies or datasets, newest first, and how many there are in all.

    Args:
        session: the (possibly owner-restricted) session.
        model: ``StudyRecord`` or ``DatasetRecord``.
        limit: rows per page.
        offset: rows skipped.
    """
    total = session.scalar(select(func.count()).select_from(model)) or 0
    rows = session.scalars(
        select(model).order_by(model.created_at.desc(), model.id).limit(limit).offset(offset)
    ).all()
    return rows, total
