"""Studies as the service sees them: a row of ours (public id, owner) plus Optuna's study.

Submitting creates the Optuna study at once, with the spec stored on it: that is all a
worker needs to find it and start running trials.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Sequence

import optuna
from optuna.storages import BaseStorage
from sqlalchemy.orm import Session

from hpo.db.models import StudyRecord
from hpo.export import remove_models
from hpo.spec import SpecError, StudySpec, parse_spec
from hpo.studies import ERROR_ATTR, Progress, clear_failure, create_study, set_cancelled, study_states
from service import records
from service.errors import problem
from service.trial_cache import LoadedStudy, StudyNotFound, TrialCache

ID_ALPHABET = string.ascii_lowercase + string.digits  # url-safe and never mistaken for a CLI flag
ID_LENGTH = 10
FINISHED_STATES = ("completed", "failed", "cancelled")


class TooManyQueued(Exception):
    """The owner already has as many unfinished studies as the server allows."""

    def __init__(self, owner: str | None, limit: int):
        self.limit = limit
        who = f"owner {owner!r} has" if owner else "there are"
        super().__init__(
            f"{who} {limit} unfinished (queued or running) studies, this server's limit "
            "(HPO_MAX_QUEUED_STUDIES_PER_OWNER); wait for one to finish, or cancel one, then try again"
        )


def new_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def check_dataset(session: Session, spec: StudySpec) -> None:
    """Refuse data the service cannot give its workers; an uploaded dataset's row stays
    locked (:func:`records.lock_dataset`) until the session's transaction ends.

    Raises:
        SpecError: for a server-side ``dataset.path``, an unknown ``dataset.id``, or a
            dataset uploaded for another task.
    """
    if spec.dataset.path is not None:
        raise SpecError([{
            "field": "dataset.path",
            "message": "the service does not read files by server path; upload the file with "
                       "POST /api/v1/datasets and give dataset.id, or use dataset.builtin",
        }])
    if spec.dataset.id is None:
        return
    # Locked until the caller commits: a delete deciding at the same time waits, then sees the study.
    dataset = records.get_dataset(session, spec.dataset.id) if records.lock_dataset(session, spec.dataset.id) else None
    if dataset is None:
        raise SpecError([{
            "field": "dataset.id",
            "message": f"no uploaded dataset with id {spec.dataset.id!r}; upload one with POST /api/v1/datasets",
        }])
    if dataset.task != spec.task:
        raise SpecError([{
            "field": "task",
            "message": f"dataset {dataset.id!r} was uploaded for {dataset.task}; got task {spec.task}",
        }])


class DatasetDeleted(Exception):
    """A study's uploaded dataset was deleted: the study cannot run (again)."""

    def __init__(self, study_id: str, dataset_id: str):
        super().__init__(f"study {study_id!r} reads dataset {dataset_id!r}, which was deleted; the study cannot "
                         "run again (upload the data again and submit a new study)")


def dataset_still_exists(session: Session, dataset_id: str) -> bool:
    """Whether an uploaded dataset still exists, decided against a concurrent delete.

    :func:`submit` calls it once the new study is visible to workers: a delete that decided
    first has removed the row (the study is then taken back), and one that decides after
    this sees the study queued and is refused.
    """
    exists = records.lock_dataset(session, dataset_id)
    session.commit()  # the lock only waits out a delete deciding now; later ones see the study
    return exists


def submit(session: Session, storage: BaseStorage, spec: StudySpec, *, owner: str | None = None) -> LoadedStudy:
    """Record a study and create its Optuna study (workers pick it up from there).

    Submitting races with deleting the study's dataset; one transaction decides (see
    :func:`dataset_still_exists`): either the study exists and the delete is refused, or
    the dataset is gone and the submission is refused, leaving no study behind.

    Raises:
        SpecError: when the spec's dataset cannot be used (see :func:`check_dataset`), or
            was deleted while the study was being submitted.
    """
    check_dataset(session, spec)
    study_id = new_id()
    record = StudyRecord(
        id=study_id,
        optuna_study_name=f"{spec.name}-{study_id}",
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        dataset_id=spec.dataset.id,
        owner=owner,
    )
    # Committed before Optuna hears of the study: SQLite has one writer at a time, and a
    # crash in between leaves a harmless row rather than a study nobody can see.
    session.add(record)
    session.commit()
    try:
        study = create_study(storage, spec, study_name=record.optuna_study_name)
        if spec.dataset.id is not None and not dataset_still_exists(session, spec.dataset.id):
            raise SpecError([{
                "field": "dataset.id",
                "message": f"dataset {spec.dataset.id!r} was deleted while the study was being submitted; "
                           "upload the data again",
            }])
    except BaseException:
        _delete_optuna_study(storage, record.optuna_study_name)
        session.delete(record)
        session.commit()
        raise
    return LoadedStudy(record, spec, study, storage)


def get_record(session: Session, study_id: str) -> StudyRecord:
    """The row of a study the session may see.

    Raises:
        StudyNotFound: no such study (or another owner's).
    """
    record = records.get_study(session, study_id) if records.is_valid_id(study_id) else None
    if record is None:
        raise StudyNotFound(study_id)
    return record


def load(session: Session, cache: TrialCache, study_id: str) -> LoadedStudy:
    """A study the session may see, its trials read through the cache.

    Raises:
        StudyNotFound: no such study (or another owner's), or its Optuna study is gone.
    """
    return cache.open(get_record(session, study_id))


def with_progress(cache: TrialCache, rows: Sequence[StudyRecord]) -> list[tuple[LoadedStudy, Progress]]:
    """Each study with its current progress (studies whose Optuna study is gone are left out)."""
    out = []
    for record in rows:
        try:
            loaded = cache.open(record)
        except StudyNotFound:
            continue
        out.append((loaded, loaded.progress()))
    return out


# Parsed specs by Optuna study name (unique: it holds the study's random id). A study's stored
# spec never changes after submit, and parsing 1,000 of them took 0.2-0.4 s of each filtered listing.
_parsed_specs: dict[str, StudySpec] = {}
_PARSED_SPECS_KEPT = 10_000


def _spec_of(record: StudyRecord) -> StudySpec:
    spec = _parsed_specs.get(record.optuna_study_name)
    if spec is None:
        if len(_parsed_specs) >= _PARSED_SPECS_KEPT:
            _parsed_specs.clear()
        spec = _parsed_specs[record.optuna_study_name] = parse_spec(record.spec)
    return spec


def states_of(cache: TrialCache, rows: Sequence[StudyRecord]) -> dict[str, str]:
    """Each study's state, by Optuna study name (studies gone from Optuna left out), from
    counts of their trials in SQL (``hpo.studies.study_states``): no study's trials are read."""
    return study_states(cache.backend, {record.optuna_study_name: _spec_of(record) for record in rows})


def list_page(session: Session, cache: TrialCache, *, limit: int, offset: int, state: str | None = None
              ) -> tuple[list[tuple[LoadedStudy, Progress]], int]:
    """One page of studies, newest first, with their progress, and how many there are in all
    (the REST listing and the studies page both list through here).

    Args:
        session: the (possibly owner-restricted) session.
        cache: the trial cache studies are read through.
        limit: studies per page.
        offset: studies skipped.
        state: only studies in this state (every study's state is then derived: :func:`states_of`).
    """
    if state is None:
        rows, total = records.page_of(session, StudyRecord, limit, offset)
        return with_progress(cache, rows), total
    rows = records.all_studies(session)
    states = states_of(cache, rows)
    matching = [record for record in rows if states.get(record.optuna_study_name) == state]
    return with_progress(cache, matching[offset:offset + limit]), len(matching)


def check_queue(session: Session, cache: TrialCache, owner: str | None, limit: int) -> None:
    """Refuse one more unfinished study for ``owner`` when it has ``limit`` already (their
    states: :func:`states_of`).

    Raises:
        TooManyQueued: when the owner is at the limit.
    """
    rows = records.studies_of_owner(session, owner)
    states = states_of(cache, rows)
    if sum(state in ("queued", "running") for state in states.values()) >= limit:
        raise TooManyQueued(owner, limit)


def cancel(storage: BaseStorage, loaded: LoadedStudy) -> None:
    set_cancelled(storage, loaded.record.optuna_study_name, True)


def resume(session: Session, storage: BaseStorage, loaded: LoadedStudy) -> None:
    """Resume a cancelled study, or retry one that failed because it could not run (e.g. its
    dataset was missing on the workers): they try it again.

    A delete of its dataset deciding at the same moment may still win (the check and the
    resume are two transactions): the workers then fail the study with that reason before
    any trial starts (``hpo.data.check_dataset_exists``).

    Raises:
        DatasetDeleted: the study's uploaded dataset was deleted (the study is left as it was).
        HTTPException: 409 for a study that failed on its own trials (every one failed, or its
            timeout passed): a retry would repeat them, so it is refused with the reason.
    """
    name, dataset_id = loaded.record.optuna_study_name, loaded.record.dataset_id
    if dataset_id is not None and not dataset_still_exists(session, dataset_id):
        raise DatasetDeleted(loaded.record.id, dataset_id)
    prog = loaded.progress()
    if prog.state == "failed":
        if not loaded.study.user_attrs.get(ERROR_ATTR):
            raise problem(409, f"study {loaded.record.id!r} failed on its own trials ({prog.reason}); a retry would "
                               "run the same spec again: fix the cause, then submit it as a new study")
        clear_failure(storage, name)
    set_cancelled(storage, name, False)


def delete(session: Session, cache: TrialCache, loaded: LoadedStudy) -> None:
    """Delete the study's row, its Optuna study (cancelled first, so running trials stop)
    and its models and model jobs."""
    name = loaded.record.optuna_study_name
    _delete_optuna_study(cache.backend, name)
    cache.forget(name)
    remove_models(cache.backend, name)
    session.delete(loaded.record)
    session.commit()


def _delete_optuna_study(storage: BaseStorage, name: str) -> None:
    """Delete an Optuna study, cancelled first so that its running trials stop."""
    try:
        set_cancelled(storage, name, True)
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass  # already gone from Optuna's tables (or never created)
