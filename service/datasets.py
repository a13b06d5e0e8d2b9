"""Uploaded datasets: kept by ``hpo.data.DatasetStore`` (row and bytes in the database, in one
transaction), deleted here against the studies that read them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import IO, Any

from optuna.storages import RDBStorage
from sqlalchemy.orm import Session

from hpo.data import DatasetStore
from hpo.export import models_of
from hpo.studies import Progress
from service import catalog, records
from hpo.db.models import DatasetRecord
from service.trial_cache import TrialCache


class DatasetInUse(Exception):
    """The dataset feeds studies that are still queued or running."""

    def __init__(self, dataset_id: str, study_ids: Sequence[str]):
        self.study_ids = list(study_ids)
        super().__init__(
            f"dataset {dataset_id!r} is used by unfinished studies ({', '.join(self.study_ids)}); "
            "cancel or delete them first"
        )


class DatasetNeededForModels(Exception):
    """Finished studies still need the dataset to make their model (a refit reads it)."""

    def __init__(self, dataset_id: str, reasons: dict[str, str]):
        self.study_ids = list(reasons)
        needs = "; ".join(f"{study_id}: {why}" for study_id, why in reasons.items())
        super().__init__(
            f"dataset {dataset_id!r} is still needed for the models of finished studies ({needs}); "
            "delete it with ?force=true (hpo datasets delete --force) to go ahead anyway: those studies "
            "can then not be refitted"
        )


def needed_for_models(storage: RDBStorage, users: Sequence[tuple[catalog.LoadedStudy, Progress]]) -> dict[str, str]:
    """Which finished studies still need their data for a model, and why: a refit queued or
    running reads it, and a study with a complete trial but no stored model can only get one
    from a refit. A stored archive (the kept fold ensemble, or a refit) needs no data."""
    kept = models_of(storage, [loaded.record.optuna_study_name for loaded, _ in users])
    reasons = {}
    for loaded, prog in users:
        job_state, archived = kept.get(loaded.record.optuna_study_name, (None, False))
        if job_state in ("queued", "running"):
            reasons[loaded.record.id] = f"its refit is {job_state}"
        elif prog.best_trial is not None and not archived:
            reasons[loaded.record.id] = "no model is stored yet, and a refit reads the data"
    return reasons

def safe_filename(filename: str | None) -> str:
    """The last component of a client's file name (never a path on the server)."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    return name or "upload"


def upload(session: Session, store: DatasetStore, filename: str | None, content: IO[bytes], *, task: str,
           format: str | None = None, options: dict[str, Any] | None = None,
           owner: str | None = None) -> DatasetRecord:
    """Validate and keep an uploaded file (read in chunks) with its row.

    Raises:
        hpo.data.DataError: the file was refused (nothing is kept).
    """
    info = store.save(safe_filename(filename), content, task=task, format=format, options=options or {},
                      owner=owner)
    record = records.get_dataset(session, info.id)
    assert record is not None  # committed by the store, owned by the caller
    return record


def delete(session: Session, cache: TrialCache, store: DatasetStore, record: DatasetRecord, *,
           force: bool = False) -> None:
    """Delete a dataset's row and bytes (one transaction), then the API's cached copy.

    The row is locked (:func:`records.lock_dataset`) before its studies are looked at, so
    one transaction decides between this and a study submitted or resumed at the same
    moment (see :func:`catalog.submit`).

    Args:
        force: delete it although finished studies still need it for a model (a running
            refit then fails, saying why).

    Raises:
        DatasetInUse: when a queued or running study reads it (``force`` or not).
        DatasetNeededForModels: without ``force``, when finished studies need it for a model
            (:func:`needed_for_models`).
        KeyError: when another request deleted it first.
    """
    dataset_id = record.id
    if not records.lock_dataset(session, dataset_id):
        session.rollback()
        raise KeyError(dataset_id)
    users = catalog.with_progress(cache, records.studies_using_dataset(session, dataset_id))
    unfinished = [loaded.record.id for loaded, prog in users if prog.state not in catalog.FINISHED_STATES]
    if unfinished:
        session.rollback()  # the lock goes at once, not when the answer has been sent
        raise DatasetInUse(dataset_id, unfinished)
    needed = {} if force else needed_for_models(cache.backend, users)
    if needed:
        session.rollback()
        raise DatasetNeededForModels(dataset_id, needed)
    sha256 = store.delete_rows(session.connection(), dataset_id)
    session.commit()
    store.forget(sha256)
