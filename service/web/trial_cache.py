"""Studies read through a per-process cache of their finished trials.

``optuna.load_study`` on a plain ``RDBStorage`` reads every trial (with every per-epoch
value) on each call: seconds for a study of thousands of trials. The browser pages poll
and stream, so they load studies through Optuna's own ``_CachedStorage`` instead: a
finished trial never changes, so after the first read only new and unfinished trials
are fetched again. The database stays the only state; the cache only saves re-reading it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import optuna
from optuna.storages import RDBStorage, _CachedStorage
from sqlalchemy.orm import Session

from hpo.spec import parse_spec
from service import records
from service.catalog import LoadedStudy, StudyNotFound
from service.models import StudyRecord

DEFAULT_MAX_CACHED_TRIALS = 200_000


class TrialCache:
    """Loads studies so that their finished trials are read from the database only once.

    Each study gets its own ``_CachedStorage`` (keyed by its unique Optuna study name, so
    a deleted study's trials can never be mistaken for a new study's). When the cached
    studies hold more than ``max_cached_trials`` trials in all, the least recently used
    studies are forgotten (they are read again in full if asked for).

    Args:
        storage: the app's Optuna storage.
        max_cached_trials: how many trials, over all studies, the cache may hold.
    """

    def __init__(self, storage: RDBStorage, max_cached_trials: int = DEFAULT_MAX_CACHED_TRIALS):
        self._backend = storage
        self.max_cached_trials = max_cached_trials
        self._entries: OrderedDict[str, tuple[_CachedStorage, int]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def backend(self) -> RDBStorage:
        return self._backend

    def load(self, session: Session, study_id: str) -> LoadedStudy:
        """The study with public id ``study_id``.

        Raises:
            StudyNotFound: no such study (or its Optuna study was deleted).
        """
        record = records.get_study(session, study_id) if records.is_valid_id(study_id) else None
        if record is None:
            raise StudyNotFound(study_id)
        return self.open(record)

    def open(self, record: StudyRecord) -> LoadedStudy:
        """The study of a row; its trials come from the cache.

        Raises:
            StudyNotFound: the Optuna study is gone.
        """
        name = record.optuna_study_name
        cached = self._storage_for(name)
        try:
            study = optuna.load_study(study_name=name, storage=cached)
        except KeyError:
            self.forget(name)
            raise StudyNotFound(record.id) from None
        return LoadedStudy(record, parse_spec(record.spec), study)

    def note_size(self, loaded: LoadedStudy, n_trials: int) -> None:
        """Record how many trials a study holds, and forget old studies past the limit."""
        name = loaded.record.optuna_study_name
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

    def forget(self, optuna_study_name: str) -> None:
        with self._lock:
            self._entries.pop(optuna_study_name, None)

    def _storage_for(self, name: str) -> _CachedStorage:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                entry = (_CachedStorage(self._backend), 0)
                self._entries[name] = entry
            self._entries.move_to_end(name)
            return entry[0]
