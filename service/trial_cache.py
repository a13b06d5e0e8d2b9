"""Studies read through a per-process cache of their finished trials.

``optuna.load_study`` on a plain ``RDBStorage`` reads every trial (with every per-epoch
value) on each call: seconds for a study of thousands of trials. Every route of the
service that reads a study (the REST resources, the pages' views, the event streams)
loads it through Optuna's own cache (``hpo.storage.CachedStudyStorage``) instead: a finished trial never changes,
so after the first read only new and unfinished trials are fetched again. The database
stays the only state; the cache only saves re-reading it. The service warms the cache in
the background when it starts, so the first visitor of a large study does not pay for
its first read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session

from hpo.db.models import StudyRecord
from hpo.spec import StudySpec, parse_spec
from hpo.storage import (
    CachedStudyStorage, complete_numbers_by_finish, complete_values, count_trials, read_trials, study_storage,
    trial_id_of,
)
from hpo.studies import Progress, Tally, progress, tally_trials, trial_page
from service import records

log = logging.getLogger("service")


class StudyNotFound(LookupError):
    """No study has this id (or its Optuna study was removed behind the service's back)."""

    def __init__(self, study_id: str):
        self.study_id = study_id
        super().__init__(f"no study with id {study_id!r}")


@dataclass
class LoadedStudy:
    """A study's row, its validated spec, its Optuna study (trials read through the cache) and
    the database storage under it (for narrow reads that bypass the cache).

    ``held``: the cache holds the study's trials (read in full before): :meth:`tally`,
    :meth:`complete_values` and :meth:`read` by number or state then answer from the cache,
    which costs a fraction of a narrow read of a large study; a study not held is read
    narrowly and stays out of the cache."""

    record: StudyRecord
    spec: StudySpec
    study: optuna.Study
    storage: RDBStorage
    held: bool = False

    def progress(self, trials: list[FrozenTrial] | None = None, tally: Tally | None = None) -> Progress:
        """The study's progress, derived from ``trials`` or their ``tally`` when the caller has
        just read them (so that counts and trials shown together come from one read)."""
        return progress(self.study, self.spec, trials=trials, tally=tally)

    def tally(self) -> Tally:
        """What :meth:`progress` derives the study's state from, worked out in the database
        (``hpo.studies.tally_trials``): what a page's first view of a large study is drawn
        from, without reading its trials. From the cached trials when the cache holds the
        study."""
        if self.held:
            return Tally.of(self.study.get_trials(deepcopy=False), self.spec.direction)
        return tally_trials(self.storage, self.study_id, self.spec.direction)

    def complete_values(self) -> list[tuple[int, float]]:
        """``(number, value)`` of each complete trial, in number order (one narrow query, or
        the cache when it holds the study)."""
        if self.held:
            return [(t.number, t.value) for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        return complete_values(self.storage, self.study_id)

    def complete_by_finish(self) -> list[int]:
        """The numbers of the complete trials in the order they completed (then by number)."""
        if self.held:
            complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            complete.sort(key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))
            return [t.number for t in complete]
        return complete_numbers_by_finish(self.storage, self.study_id)

    def read(self, *, numbers: Iterable[int] | None = None, states: Iterable[TrialState] | None = None,
             **selection: Any) -> list[FrozenTrial]:
        """Some trials, or some parts of them, from the database (``hpo.storage.read_trials``:
        ``trial_ids``, ``numbers``, ``states``, ``parts``, ``attr_keys``), in number order. By
        number or state from the cache when it holds the study (the trials in full)."""
        if self.held and "trial_ids" not in selection:
            wanted = None if numbers is None else set(numbers)
            return [t for t in self.study.get_trials(deepcopy=False, states=None if states is None else tuple(states))
                    if wanted is None or t.number in wanted]
        return read_trials(self.storage, self.study_id, numbers=numbers, states=states, **selection)

    def count(self, states: Iterable[TrialState] | None = None) -> int:
        """How many trials the study has (in ``states``, when given), counted in the database."""
        return count_trials(self.storage, self.study_id, states)

    def page(self, sort: str, *, states: Iterable[TrialState] | None, limit: int,
             offset: int) -> tuple[list[FrozenTrial], int]:
        """One page of trials in the order ``sort`` names, ordered and cut in the database
        (``hpo.studies.trial_page``) and read in full, and how many trials match."""
        ids, total = trial_page(self.storage, self.study_id, self.spec.direction, sort, states=states, limit=limit,
                                offset=offset)
        by_id = {trial_id_of(t): t for t in self.read(trial_ids=ids)} if ids else {}
        return [by_id[i] for i in ids if i in by_id], total

    @property
    def study_id(self) -> int:
        """The study's id in the storage."""
        return study_storage(self.study)[1]


class TrialCache:
    """Loads studies so that their finished trials are read from the database only once.

    Each study gets its own ``CachedStudyStorage`` (keyed by its unique Optuna study name, so
    a deleted study's trials can never be mistaken for a new study's). When the cached
    studies hold more than ``max_cached_trials`` trials in all, the least recently used
    studies are forgotten (they are read again in full if asked for). Writes (cancel,
    resume, delete) go to :attr:`backend`; study attributes are never cached.

    Args:
        storage: the app's Optuna storage.
        max_cached_trials: how many trials, over all studies, the cache may hold (the one
            study read last is kept even past it).
    """

    def __init__(self, storage: RDBStorage, max_cached_trials: int):
        self._backend = storage
        self.max_cached_trials = max_cached_trials
        self._entries: OrderedDict[str, tuple[CachedStudyStorage, int]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def backend(self) -> RDBStorage:
        return self._backend

    def study(self, optuna_study_name: str) -> optuna.Study:
        """An Optuna study whose trials come from the cache.

        Raises:
            KeyError: no study of that name.
        """
        try:
            return optuna.load_study(study_name=optuna_study_name, storage=self._storage_for(optuna_study_name))
        except KeyError:
            self.forget(optuna_study_name)
            raise

    def open(self, record: StudyRecord) -> LoadedStudy:
        """The study of a row; its trials come from the cache.

        Raises:
            StudyNotFound: the Optuna study is gone.
        """
        try:
            study = self.study(record.optuna_study_name)
        except KeyError:
            raise StudyNotFound(record.id) from None
        return LoadedStudy(record, parse_spec(record.spec), study, self._backend,
                           held=self.holds(record.optuna_study_name))

    def holds(self, optuna_study_name: str) -> bool:
        """Whether the study's trials were read into the cache (and not forgotten since)."""
        with self._lock:
            entry = self._entries.get(optuna_study_name)
            return entry is not None and entry[1] > 0

    @property
    def size(self) -> int:
        """Trials held, over all studies (as of each study's last read)."""
        with self._lock:
            return sum(size for _, size in self._entries.values())

    def forget(self, optuna_study_name: str) -> None:
        with self._lock:
            self._entries.pop(optuna_study_name, None)

    def warm(self, sessions: Callable[[], Session], before_each: Callable[[], None] = lambda: None) -> None:
        """Read every study into the cache, newest first, while it has room (run in the
        background at start-up; a request for a study being read waits for that read).

        Args:
            sessions: the service's database sessions.
            before_each: called before each study is read (the service waits there for a
                moment without requests).
        """
        started, cached = time.perf_counter(), 0
        with sessions() as session:
            rows = records.all_studies(session)
        for record in rows:
            before_each()
            try:
                cached += len(self.open(record).study.get_trials(deepcopy=False))
            except StudyNotFound:
                continue
            if cached >= self.max_cached_trials:
                break
        log.info("trial cache: read %d trials of %d studies in %.1f s", cached, len(rows),
                 time.perf_counter() - started)

    def _note_size(self, name: str, n_trials: int) -> None:
        """Record how many trials a study holds, and forget old studies past the limit."""
        with self._lock:
            if name not in self._entries:
                return
            self._entries[name] = (self._entries[name][0], n_trials)
            self._entries.move_to_end(name)
            total = sum(size for _, size in self._entries.values())
            while total > self.max_cached_trials and len(self._entries) > 1:
                oldest, (_, size) = next(iter(self._entries.items()))
                if oldest == name:
                    break
                del self._entries[oldest]
                total -= size

    def _storage_for(self, name: str) -> CachedStudyStorage:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                entry = (CachedStudyStorage(self._backend, lambda n_trials: self._note_size(name, n_trials)), 0)
                self._entries[name] = entry
            self._entries.move_to_end(name)
            return entry[0]

