"""Optuna RDB storage from a URL, and the ONE module that uses Optuna's private API.

The rest of ``hpo`` and ``service`` call the public functions here. Each private use below
says why it is needed; all were checked against Optuna 5.0.0 (``pyproject.toml`` pins
``optuna>=5.0,<5.1``; check them again before widening the pin). Each override has a test
of the public behaviour it preserves in ``tests/test_storage.py``:

- ``RDBStorage._get_trials`` (override): a bulk read without ORM objects (seconds -> tens
  of milliseconds on large studies); same trials as Optuna's read, checked trial by trial.
  The same read serves :func:`read_trials` (some trials, or some of what they hold: what a
  page of a 50,000-trial study needs) and :func:`read_trials_after` (what may have changed
  since an earlier read: the live stream's polls); :func:`trial_ids_sorted` and
  :func:`trials_by_score` order and cut a page in SQL.
- ``RDBStorage.set_trial_state_values`` (public, but its WAITING -> RUNNING claim relies on
  ``SELECT ... FOR UPDATE``, which SQLite ignores): one conditional UPDATE.
- ``RDBStorage._get_stale_trial_ids`` (override): also trials that never beat.
- An index of Optuna's ``trials`` table, ``(study_id, trial_id)`` (:data:`TRIALS_BY_STUDY_INDEX`),
  made by :func:`open_storage`: the range Optuna's cache polls.
- ``optuna.storages._rdb.models``: the table definitions the two reads above query, and
  that :func:`write_trials` (many finished trials in one transaction: benchmarks, tests)
  writes.
- ``optuna.storages._CachedStorage``: Optuna's cache of finished trials, used by the service.
- ``optuna.study._frozen.FrozenStudy`` and its ``_study_id``; ``Study._storage`` and
  ``Study._study_id``; ``FrozenTrial._trial_id``: a listed study's, a loaded study's and a
  trial's storage id (Optuna has no public accessor for them).
- The gRPC storage proxy (``hpo storage-proxy``, ``grpc://HOST:PORT`` URLs): Optuna's
  ``make_server`` (what the public ``run_grpc_proxy_server`` runs, but returning the server,
  so that the heartbeat methods Optuna's proxy lacks can be added to it);
  ``GrpcStorageProxy._setup``, ``_stub``, ``_channel`` and ``_cache.grpc_client`` (its
  stub, wrapped so that an unreachable proxy is an outage the worker waits out); and
  ``optuna.storages._heartbeat.BaseHeartbeat``, which makes Optuna beat and fail stale
  trials through the proxy. ``tests/test_proxy.py`` checks them.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Collection, Container, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import grpc
import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.exceptions import StorageInternalError
from optuna.storages import BaseStorage, GrpcStorageProxy, RDBStorage, RetryHeartbeatStaleTrialCallback

# Private (checked against Optuna 5.0.0): not re-exported by Optuna; see the module docstring.
from optuna.storages import _CachedStorage
from optuna.storages._grpc.server import make_server
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from hpo.db import PG_CONNECT_ARGS, SQLITE_BUSY_TIMEOUT_S, normalize_url, prepare_sqlite, schema_lock
from hpo.settings import DEFAULT_DATABASE_URL

__all__ = ["PROXY_SCHEME", "TRIALS_BY_STUDY_INDEX", "BulkReadRDBStorage", "CachedStudyStorage", "FrozenStudy",
           "ProxiedStorage", "ProxyUnavailable", "SORTABLE", "Settled", "StateAggregate", "aggregate_trials",
           "best_numbers", "complete_numbers_by_finish", "complete_values", "count_trials", "last_reported",
           "last_trial_id", "latest_reported_numbers", "normalize_url", "open_storage", "read_trials",
           "read_trials_after", "serve_proxy", "study_flags",
           "study_id_of", "study_storage", "trial_id_of", "trial_ids_sorted", "trials_by_score",
           "write_trials"]

PROXY_SCHEME = "grpc://"
_STATES = {state.name: state for state in TrialState}  # as stored (SQLAlchemy's Enum stores names)
# Optuna indexes ``trials`` by ``study_id`` alone: its cache's poll of a study (the unfinished
# and newer trials: ``study_id = ? AND (trial_id IN (...) OR trial_id > ?)``) then visits every
# trial of the study on PostgreSQL. Created by :func:`open_storage`, after Optuna's tables
# (the project's Alembic migrations run before Optuna creates them on a new database).
TRIALS_BY_STUDY_INDEX = "ix_trials_study_id_trial_id"
_EXTRAS = "hpo.StorageExtras"  # the gRPC service the proxy adds to Optuna's: heartbeats


def study_id_of(frozen: FrozenStudy) -> int:
    """The storage's id of a study from ``storage.get_all_studies()``.

    Args:
        frozen: a listed study.

    Returns:
        Its id in the storage (``FrozenStudy`` has no public accessor; Optuna 5.0).
    """
    return frozen._study_id


def trial_id_of(trial: FrozenTrial) -> int:
    """A trial's id in its storage (what :func:`trial_ids_sorted` answers with).

    Args:
        trial: a trial read from an RDB storage.

    Returns:
        Its id (``FrozenTrial`` has no public accessor; Optuna 5.0).
    """
    return trial._trial_id


def study_storage(study: optuna.Study) -> tuple[BaseStorage, int]:
    """The storage a loaded study reads and writes, and the study's id in it.

    Args:
        study: a study from ``optuna.load_study`` / ``create_study``.

    Returns:
        ``(storage, study_id)`` (``Study`` has no public accessor for either; Optuna 5.0).
    """
    return study._storage, study._study_id


@lru_cache(maxsize=4096)
def _distribution(distribution_json: str) -> BaseDistribution:
    return json_to_distribution(distribution_json)


def _utc_now() -> dt.datetime:
    """Now as naive UTC: how Optuna's RDB models store trial times (whatever the process's TZ)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _stored_time(local: dt.datetime | None) -> dt.datetime | None:
    """A trial time as Optuna's RDB models store it: naive UTC (a naive time is local)."""
    return None if local is None else local.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _local_time(utc: dt.datetime | None) -> dt.datetime | None:
    """Optuna's stored naive UTC as naive local time (what ``RDBStorage`` hands out)."""
    return None if utc is None else utc.replace(tzinfo=dt.timezone.utc).astimezone().replace(tzinfo=None)


def _fetch_all(connection: sa.Connection, query: sa.Executable) -> list[tuple]:
    """All rows of ``query`` as the driver's plain tuples (no SQLAlchemy ``Row`` per row: a
    large study's read fetches a million rows)."""
    return connection.execute(query).cursor.fetchall()


def _raw(column: sa.ColumnElement) -> sa.ColumnElement:
    """A column read as the database driver hands it over, without SQLAlchemy's conversion."""
    return sa.type_coerce(column, sa.types.NullType()).label(column.name)


def _time_reader(dialect: str) -> Callable[[Any], dt.datetime | None]:
    """Stored naive UTC (SQLite: ISO text; PostgreSQL: a datetime) -> naive local time, as
    ``RDBStorage`` hands it out; no conversion at all when local time is UTC."""
    parse = dt.datetime.fromisoformat if dialect == "sqlite" else (lambda value: value)
    if time.timezone == 0 and not time.daylight:
        return lambda value: None if value is None else parse(value)
    return lambda value: None if value is None else _local_time(parse(value))


class BulkReadRDBStorage(RDBStorage):
    """Optuna's ``RDBStorage`` whose bulk trial read (``_get_trials``, behind
    ``get_all_trials`` and Optuna's ``_CachedStorage``) runs six plain SQL selects and builds
    the trials from rows, instead of loading ORM objects with their relationships.

    Same trials, same order: on a study of 5,000 trials with 20 epochs each the ORM read
    takes seconds, most of it building and then expiring ~100,000 ORM instances and
    parsing every parameter's distribution JSON again. Everything else is Optuna's own.
    ``tests/test_storage.py`` compares both reads trial by trial on SQLite and PostgreSQL.

    Two more departures, both for workers sharing a study: claiming a queued trial is one
    atomic update (:meth:`set_trial_state_values`), and the stale trials
    (:meth:`_get_stale_trial_ids`) include those that never beat.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # study id -> {trial id: database time it was first seen RUNNING without a heartbeat}
        self._silent_since: dict[int, dict[int, dt.datetime]] = {}

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """Optuna's, except that claiming a queued trial (WAITING -> RUNNING, what ``ask``
        does to an enqueued or retried trial) is one conditional UPDATE, so exactly one of
        several workers asking at the same moment gets it. Optuna guards that transition
        with ``SELECT ... FOR UPDATE``, which SQLite ignores: there, racing workers could
        all claim, and train, the same trial."""
        if state != TrialState.RUNNING or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        trials_t = models.TrialModel.__table__
        with self.engine.begin() as connection:
            claimed = connection.execute(
                sa.update(trials_t)
                .where(trials_t.c.trial_id == trial_id, trials_t.c.state == TrialState.WAITING)
                .values(state=TrialState.RUNNING, datetime_start=_utc_now())
            ).rowcount
        # Not waiting (any more): Optuna's own answer, False or its error for a finished or unknown trial.
        return bool(claimed) or super().set_trial_state_values(trial_id, state)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Running trials whose worker died: their last heartbeat is older than the grace
        period (Optuna's rule), or they have none and this storage has seen them without one
        for longer than the grace period. Optuna skips the latter for ever, yet a worker
        killed between creating a trial and its first beat leaves one, holding a slot of the
        budget. Both are timed on the database's clock, as Optuna's heartbeats are.
        Overrides Optuna's private hook behind ``fail_stale_trials`` (Optuna 5.0.0)."""
        assert self.heartbeat_interval is not None
        grace = dt.timedelta(seconds=2 * self.heartbeat_interval if self.grace_period is None else self.grace_period)
        trials_t, beats_t = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
        with self.engine.connect() as connection:
            running = connection.execute(
                sa.select(trials_t.c.trial_id, beats_t.c.heartbeat, sa.func.now())
                .select_from(trials_t.outerjoin(beats_t, beats_t.c.trial_id == trials_t.c.trial_id))
                .where(trials_t.c.study_id == study_id, trials_t.c.state == TrialState.RUNNING)
            ).all()
        if not running:
            self._silent_since.pop(study_id, None)
            return []
        now = running[0][2].replace(tzinfo=None)
        seen = self._silent_since.get(study_id, {})
        silent = {trial_id: seen.get(trial_id, now) for trial_id, beat, _ in running if beat is None}
        self._silent_since[study_id] = silent
        return [trial_id for trial_id, beat, _ in running if now - (silent[trial_id] if beat is None else beat) > grace]

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        """Optuna's private hook behind ``get_all_trials`` and ``_CachedStorage`` (same
        arguments and answer as Optuna 5.0.0's), read with plain selects: see the class."""
        if trial_id_greater_than < 0:
            return _read_trials(self, study_id, None, states)
        included = [i for i in included_trial_ids if i <= trial_id_greater_than]
        return _read_trials(self, study_id, _newer_than(study_id, trial_id_greater_than, included), states, own=True)


ALL_PARTS = frozenset({"params", "values", "user_attrs", "system_attrs", "intermediate"})


def read_trials(storage: RDBStorage, study_id: int, *, trial_ids: Iterable[int] | None = None,
                numbers: Iterable[int] | None = None, states: Iterable[TrialState] | None = None,
                settled: Settled | None = None, changed_since: dt.datetime | None = None,
                parts: Container[str] = ALL_PARTS,
                attr_keys: Container[str] | None = None) -> list[FrozenTrial]:
    """Some of a study's trials, or some of what they hold, in number order: what a page of a
    study of tens of thousands of trials needs without reading all of them in full.

    Each part left out is empty in the trials returned (no parameters, no values, ...): such
    trials serve what reads only the parts given, never Optuna's samplers or caches.

    Args:
        storage: the study's RDB storage.
        study_id: the study's id in it.
        trial_ids: only these trials (all when not given).
        numbers: only the trials of these numbers (all when not given).
        states: only trials in these states (all when not given).
        settled: only the trials it names (all when not given).
        changed_since: only the unfinished trials and those that started or finished at or
            after this moment (naive local time, as trials hand it out; all when not given).
        parts: what to read of each trial besides its number, state and times:
            ``params``, ``values``, ``user_attrs``, ``system_attrs``, ``intermediate``.
        attr_keys: only these user and system attributes (all when not given).

    Returns:
        The trials, in number order (the order they were created, as Optuna reads them).

    Raises:
        KeyError: no study has that id.
    """
    trials_t = models.TrialModel.__table__
    where = []
    if trial_ids is not None:
        where.append(trials_t.c.trial_id.in_(list(trial_ids)))
    if numbers is not None:
        where.append(trials_t.c.number.in_(list(numbers)))
    if settled is not None:
        where.append(settled.condition())
    if changed_since is not None:
        since = _stored_time(changed_since)
        where.append(sa.or_(trials_t.c.state.in_([TrialState.RUNNING, TrialState.WAITING]),
                            trials_t.c.datetime_start >= since, trials_t.c.datetime_complete >= since))
    return _read_trials(storage, study_id, sa.and_(*where) if where else None, states, parts, attr_keys)


def read_trials_after(storage: RDBStorage, study_id: int, last_trial_id: int,
                      trial_ids: Collection[int] = ()) -> list[FrozenTrial]:
    """The trials of a study newer than ``last_trial_id`` and those of ``trial_ids``, in full
    and in number order: what may have changed since a read that saw the trials up to
    ``last_trial_id``, ``trial_ids`` among them unfinished (finished trials never change).

    Each part is a range of the ``(study_id, trial_id)`` index (:data:`TRIALS_BY_STUDY_INDEX`),
    so the database visits these trials only, whatever the size of the study.

    Args:
        storage: the study's RDB storage.
        study_id: the study's id in it.
        last_trial_id: the newest trial id that read saw.
        trial_ids: the trials it saw unfinished.

    Raises:
        KeyError: no study has that id.
    """
    return _read_trials(storage, study_id, _newer_than(study_id, last_trial_id, trial_ids), None, own=True)


def _newer_than(study_id: int, trial_id: int, trial_ids: Collection[int] = ()) -> sa.ColumnElement:
    """The condition on ``trials`` rows: the trials of ``study_id`` newer than ``trial_id``,
    and those of ``trial_ids`` (some of its trials). It selects the study's trials by itself,
    as a range of the ``(study_id, trial_id)`` index (trial ids are positive, so ``(study_id
    + 1, 0)`` is below the next study's), and is meant to stand without ``study_id = ?``:
    with that equality beside it, or with ``trial_id > ?`` alone, PostgreSQL 15 walks every
    trial of the study, or takes the trials of every newer study from the primary key for
    candidates (it cannot know that an old study's trials all have low ids)."""
    trials_t = models.TrialModel.__table__
    key = sa.tuple_(trials_t.c.study_id, trials_t.c.trial_id)
    newer = sa.and_(key > sa.tuple_(study_id, trial_id), key < sa.tuple_(study_id + 1, 0))
    return sa.or_(trials_t.c.trial_id.in_(list(trial_ids)), newer) if trial_ids else newer


def last_trial_id(storage: RDBStorage, study_id: int) -> int:
    """The id of a study's newest trial (0 for none)."""
    trials_t = models.TrialModel.__table__
    with storage.engine.connect() as connection:
        return connection.execute(sa.select(sa.func.max(trials_t.c.trial_id))
                                  .where(trials_t.c.study_id == study_id)).scalar() or 0


@dataclass(frozen=True)
class Settled:
    """The trials a read of a study found finished: every trial up to ``last_trial_id`` but the
    ``unfinished`` ones. Finished trials never change, so whatever reads these later (an
    aggregate, say) finds what that read found, however the study changed since.

    Attributes:
        last_trial_id: the newest trial id the read saw.
        unfinished: the ids of the trials it found running or waiting.
    """

    last_trial_id: int
    unfinished: frozenset[int] = frozenset()

    def condition(self) -> sa.ColumnElement:
        """The condition on ``trials`` rows."""
        trial_id = models.TrialModel.__table__.c.trial_id
        condition = trial_id <= self.last_trial_id
        return sa.and_(condition, trial_id.not_in(list(self.unfinished))) if self.unfinished else condition


# What a study's trials can be ordered by in SQL (:func:`trial_ids_sorted`).
SORTABLE = ("number", "value", "duration_s", "started_at")


def trial_ids_sorted(storage: RDBStorage, study_id: int, *, by: str = "number",
                     states: Iterable[TrialState] | None = None, descending: bool = False, limit: int,
                     offset: int) -> tuple[list[int], int]:
    """One page of a study's trials ordered by ``by`` and cut in SQL.

    ``by``: ``number``; ``value`` (the first objective's: -inf, the finite values, inf);
    ``duration_s`` (from start to completion, to the microsecond); ``started_at``. Equal ones
    go by number, in the same direction; trials without the quantity (no value, not
    finished, not started) come after all others, by number, whatever the direction.

    Args:
        storage: the study's RDB storage.
        study_id: the study's id in it.
        by: one of :data:`SORTABLE`.
        states: only trials in these states (all when not given).
        descending: the largest (latest) first.
        limit: trials per page.
        offset: trials skipped.

    Returns:
        The page's trial ids, in order (read them with :func:`read_trials`, and order them
        with :func:`trial_id_of`), and how many trials match.

    Raises:
        ValueError: ``by`` is not one of :data:`SORTABLE`.
    """
    trials_t = models.TrialModel.__table__
    start, complete = trials_t.c.datetime_start, trials_t.c.datetime_complete
    source: sa.FromClause = trials_t
    if by == "number":
        present, keys = sa.true(), []
    elif by == "value":
        values_t = models.TrialValueModel.__table__
        source = trials_t.outerjoin(values_t, sa.and_(values_t.c.trial_id == trials_t.c.trial_id,
                                                      values_t.c.objective == 0))
        kind, value_type = values_t.c.value_type, models.TrialValueModel.TrialValueType
        present = kind.is_not(None)
        keys = [sa.case((kind == value_type.INF_NEG, -1), (kind == value_type.INF_POS, 1), else_=0), values_t.c.value]
    elif by == "duration_s":
        present, keys = sa.and_(start.is_not(None), complete.is_not(None)), [
            _microseconds_between(storage.engine.dialect.name, start, complete)]
    elif by == "started_at":
        present, keys = start.is_not(None), [start]
    else:
        raise ValueError(f"trials are sorted by one of {', '.join(SORTABLE)}; got {by!r}")
    condition = _trials_of(study_id, states)
    order = [key.desc() if descending else key for key in [*keys, trials_t.c.number]]
    with storage.engine.connect() as connection:
        total, n_present = connection.execute(
            sa.select(sa.func.count(), sa.func.count(sa.case((present, 1)))).select_from(source).where(condition)
        ).one()
        ids = list(connection.execute(sa.select(trials_t.c.trial_id).select_from(source).where(condition, present)
                                      .order_by(*order).limit(limit).offset(offset)).scalars()) \
            if offset < n_present else []
        if len(ids) < limit and offset + limit > n_present:  # the page reaches the trials without it
            ids += connection.execute(sa.select(trials_t.c.trial_id).select_from(source).where(condition, ~present)
                                      .order_by(trials_t.c.number).limit(limit - len(ids))
                                      .offset(max(0, offset - n_present))).scalars()
    return ids, total


def _microseconds_between(dialect: str, start: sa.ColumnElement, end: sa.ColumnElement) -> sa.ColumnElement:
    """``end - start`` in whole microseconds, exactly (a trial's duration, to sort and to sum by).
    On SQLite times are stored as text, ``YYYY-MM-DD HH:MM:SS.ffffff`` (SQLAlchemy's format),
    and its date functions keep milliseconds only (they would also round ``.999999`` up to
    the next second): whole seconds and microseconds are taken apart. On PostgreSQL the
    interval's epoch is exact (numeric)."""
    if dialect != "sqlite":
        return sa.cast(sa.extract("epoch", end - start) * 1_000_000, sa.BigInteger)

    def seconds(column: sa.ColumnElement) -> sa.ColumnElement:
        return sa.cast(sa.func.strftime("%s", sa.func.substr(column, 1, 19)), sa.Integer)

    def microseconds(column: sa.ColumnElement) -> sa.ColumnElement:
        return sa.cast(sa.func.substr(column, 21), sa.Integer)

    return (seconds(end) - seconds(start)) * 1_000_000 + microseconds(end) - microseconds(start)


def trials_by_score(storage: RDBStorage, study_id: int, *, maximize: bool, limit: int, offset: int,
                    attr_keys: Container[str]) -> tuple[list[FrozenTrial], int]:
    """The complete trials that a page of them ranked best first can hold, found in SQL: of
    the complete trials ordered by value (best first, every non-finite value last and
    tied), the page's ``limit`` from ``offset`` and every trial with a value tied with its
    first or last one; read with their values and the user attributes ``attr_keys``
    (what breaks ties: ``hpo.studies.ranked`` orders them).

    Args:
        storage: the study's RDB storage.
        study_id: the study's id in it.
        maximize: whether higher values are better.
        limit: trials per page.
        offset: trials skipped.
        attr_keys: the user attributes read.

    Returns:
        The trials (in number order; none past the last complete trial), and how many
        complete trials rank before all of them (a value strictly better).
    """
    trials_t, values_t = models.TrialModel.__table__, models.TrialValueModel.__table__
    is_finite = sa.and_(values_t.c.value_type == models.TrialValueModel.TrialValueType.FINITE,
                        values_t.c.value.is_not(None))
    flag = sa.case((is_finite, 0), else_=1)  # missing, NaN stored as NULL, or infinite: all last
    joined = trials_t.outerjoin(values_t, sa.and_(values_t.c.trial_id == trials_t.c.trial_id,
                                                  values_t.c.objective == 0))
    complete = _trials_of(study_id, [TrialState.COMPLETE])
    with storage.engine.connect() as connection:
        # The ranks up to the page's end (the trials before it tied with its first are among them)...
        ranks = _fetch_all(connection, sa.select(trials_t.c.trial_id, flag, values_t.c.value).select_from(joined)
                           .where(complete).order_by(flag, values_t.c.value.desc() if maximize else values_t.c.value,
                                                     trials_t.c.number).limit(offset + limit))
        if len(ranks) <= offset:
            return [], offset
        first, last = ranks[offset][1:], ranks[-1][1:]
        before = offset
        while before > 0 and ranks[before - 1][1:] == first:
            before -= 1
        # ... and the trials after it tied with its last.
        tied = sa.true() if last[0] else sa.and_(is_finite, values_t.c.value == last[1])
        ids = {trial_id for trial_id, *_ in ranks[before:]} | set(connection.execute(
            sa.select(trials_t.c.trial_id).select_from(joined).where(complete, flag == last[0], tied)).scalars())
    return read_trials(storage, study_id, trial_ids=ids, states=[TrialState.COMPLETE], parts={"values", "user_attrs"},
                       attr_keys=attr_keys), before


def best_numbers(storage: RDBStorage, study_id: int, *, maximize: bool, limit: int,
                 reported: bool = False, settled: Settled | None = None) -> list[int]:
    """The numbers of a study's complete trials with the ``limit`` best values, and of every
    trial tied with the last of them (non-finite values rank last, all tied), found in SQL:
    the candidates for the best trials (``hpo.studies.ranked`` orders them).

    Args:
        storage: the study's RDB storage.
        study_id: the study's id in it.
        maximize: whether higher values are better.
        limit: how many best trials are wanted.
        reported: only trials that reported a per-epoch value.
        settled: only among the trials it names.
    """
    if limit == 0:
        return []
    trials_t, values_t = models.TrialModel.__table__, models.TrialValueModel.__table__
    steps_t = models.TrialIntermediateValueModel.__table__
    condition = sa.and_(_trials_of(study_id, [TrialState.COMPLETE], settled), values_t.c.objective == 0)
    if reported:
        condition = sa.and_(condition, sa.exists().where(steps_t.c.trial_id == trials_t.c.trial_id))
    joined = trials_t.join(values_t, values_t.c.trial_id == trials_t.c.trial_id)
    finite = values_t.c.value_type == models.TrialValueModel.TrialValueType.FINITE
    order = values_t.c.value.desc() if maximize else values_t.c.value
    with storage.engine.connect() as connection:
        best = connection.execute(sa.select(values_t.c.value).select_from(joined).where(condition, finite)
                                  .order_by(order).limit(limit)).scalars().all()
        if len(best) == limit:
            bound = values_t.c.value >= best[-1] if maximize else values_t.c.value <= best[-1]
            chosen = sa.and_(finite, bound)
        else:  # fewer finite ones: the non-finite ones, tied last, are candidates too
            chosen = sa.true()
        return list(connection.execute(sa.select(trials_t.c.number).select_from(joined).where(condition, chosen)
                                       .order_by(trials_t.c.number)).scalars().all())


def latest_reported_numbers(storage: RDBStorage, study_id: int, limit: int) -> list[int]:
    """The numbers of a study's ``limit`` latest trials that reported a per-epoch value, latest first."""
    trials_t, steps_t = models.TrialModel.__table__, models.TrialIntermediateValueModel.__table__
    reported = sa.exists().where(steps_t.c.trial_id == trials_t.c.trial_id)
    with storage.engine.connect() as connection:
        return list(connection.execute(sa.select(trials_t.c.number).where(_trials_of(study_id, None), reported)
                                       .order_by(trials_t.c.number.desc()).limit(limit)).scalars().all())


def last_reported(storage: RDBStorage, study_id: int, states: Iterable[TrialState]) -> list[tuple[int, float]]:
    """``(number, value)`` of the last per-epoch value each of a study's trials in ``states``
    reported (those that reported one), in number order, picked in SQL.

    Args:
        storage: the study's RDB storage.
        study_id: the study's id in it.
        states: the trials' states.
    """
    trials_t, steps_t = models.TrialModel.__table__, models.TrialIntermediateValueModel.__table__
    other_steps = steps_t.alias("other_steps")
    # Each trial's last step from the (trial_id, step) index: half the time of a GROUP BY on SQLite.
    last_step = sa.select(sa.func.max(other_steps.c.step)).where(other_steps.c.trial_id == trials_t.c.trial_id)
    condition = sa.and_(_trials_of(study_id, states), steps_t.c.step == last_step.scalar_subquery())
    joined = trials_t.join(steps_t, steps_t.c.trial_id == trials_t.c.trial_id)
    to_float = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
    step_type = models.TrialIntermediateValueModel.TrialIntermediateValueType
    with storage.engine.connect() as connection:
        rows = _fetch_all(connection, sa.select(
            trials_t.c.number, _raw(steps_t.c.intermediate_value), _raw(steps_t.c.intermediate_value_type)
        ).select_from(joined).where(condition).order_by(trials_t.c.number))
    # only NaN and infinities are stored as None (and a type saying which)
    return [(number, value if value is not None else to_float(value, step_type[kind])) for number, value, kind in rows]


def study_flags(storage: RDBStorage, keys: Iterable[str]) -> dict[str, tuple[int, dict[str, Any]]]:
    """Every study's id and the user attributes ``keys`` it has, by study name: one narrow
    read (``get_all_studies`` would read and parse every attribute of every study).

    Args:
        storage: the RDB storage.
        keys: the user attributes wanted.
    """
    studies_t, attrs_t = models.StudyModel.__table__, models.StudyUserAttributeModel.__table__
    with storage.engine.connect() as connection:
        out: dict[str, tuple[int, dict[str, Any]]] = {
            name: (study_id, {}) for study_id, name in connection.execute(
                sa.select(studies_t.c.study_id, studies_t.c.study_name))}
        by_id = {study_id: attrs for study_id, attrs in out.values()}
        wanted = sa.select(attrs_t.c.study_id, attrs_t.c.key, attrs_t.c.value_json).where(attrs_t.c.key.in_(list(keys)))
        for study_id, key, value_json in connection.execute(wanted):
            if study_id in by_id:
                by_id[study_id][key] = json.loads(value_json)
    return out


def count_trials(storage: RDBStorage, study_id: int, states: Iterable[TrialState] | None = None) -> int:
    """How many trials a study has (in ``states``, when given), counted in SQL."""
    with storage.engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).where(_trials_of(study_id, states))).scalar_one()


@dataclass(frozen=True)
class StateAggregate:
    """A study's trials in one state (and, failed ones, with one value of a flag), aggregated
    in SQL (times naive local, as ``RDBStorage`` hands them out).

    Attributes:
        state: their state.
        flag: the value of the flag attribute (:func:`aggregate_trials`) of these failed
            trials; None for the failed trials without it and for the other states.
        count: how many trials.
        first_start: the earliest start.
        last_start: the latest start.
        last_complete: the latest finish.
        duration_us: the sum of their durations (finish - start), in microseconds, over
            those with both times.
        n_durations: how many have both times.
    """

    state: TrialState
    flag: Any
    count: int
    first_start: dt.datetime | None
    last_start: dt.datetime | None
    last_complete: dt.datetime | None
    duration_us: int
    n_durations: int


def aggregate_trials(storage: RDBStorage, flag_key: str, study_id: int | None = None,
                     settled: Settled | None = None) -> dict[int, list[StateAggregate]]:
    """Studies' trials counted and timed in one aggregate query, by state and, for the failed
    ones, by the value of their user attribute ``flag_key``: what a study's state and
    progress are derived from without reading its trials (``hpo.studies.tally_trials`` for
    one study of 50,000 trials, ``hpo.studies.study_states`` for all studies at once).

    Args:
        storage: the RDB storage.
        flag_key: the failed trials' user attribute they are told apart by.
        study_id: only this study's trials (every study's when not given).
        settled: only the trials it names.

    Returns:
        Study id -> the aggregate of each group of its trials (studies without trials are
        left out).
    """
    trials_t, attrs_t = models.TrialModel.__table__, models.TrialUserAttributeModel.__table__
    start, complete = trials_t.c.datetime_start, trials_t.c.datetime_complete
    flagged = trials_t.outerjoin(attrs_t, sa.and_(attrs_t.c.trial_id == trials_t.c.trial_id,
                                                  attrs_t.c.key == flag_key, trials_t.c.state == TrialState.FAIL))
    out: dict[int, list[StateAggregate]] = defaultdict(list)
    with storage.engine.connect() as connection:
        duration = _microseconds_between(connection.dialect.name, start, complete)
        query = (sa.select(trials_t.c.study_id, trials_t.c.state, attrs_t.c.value_json, sa.func.count(),
                           sa.func.min(start), sa.func.max(start), sa.func.max(complete), sa.func.sum(duration),
                           sa.func.count(duration)).select_from(flagged)
                 .group_by(trials_t.c.study_id, trials_t.c.state, attrs_t.c.value_json))
        if study_id is not None:
            query = query.where(trials_t.c.study_id == study_id)
        if settled is not None:
            query = query.where(settled.condition())
        rows = connection.execute(query).all()
    for study, state, value_json, count, first, last, done, total, timed in rows:
        out[study].append(StateAggregate(state, None if value_json is None else json.loads(value_json), count,
                                         _local_time(first), _local_time(last), _local_time(done), int(total or 0),
                                         timed))
    return dict(out)


def complete_values(storage: RDBStorage, study_id: int) -> list[tuple[int, float]]:
    """``(number, value)`` of each of a study's complete trials, in number order: what its
    optimization history plots, in one narrow query.

    Args:
        storage: the study's RDB storage.
        study_id: the study's id in it.
    """
    trials_t, values_t = models.TrialModel.__table__, models.TrialValueModel.__table__
    value_type = models.TrialValueModel.TrialValueType
    with storage.engine.connect() as connection:
        rows = _fetch_all(connection, sa.select(trials_t.c.number, _raw(values_t.c.value), _raw(values_t.c.value_type))
                          .select_from(trials_t.join(values_t, values_t.c.trial_id == trials_t.c.trial_id))
                          .where(_trials_of(study_id, [TrialState.COMPLETE]), values_t.c.objective == 0)
                          .order_by(trials_t.c.number))
    # only infinities are stored as None (and a type saying which)
    return [(number, value if kind == "FINITE" else models.TrialValueModel.stored_repr_to_value(value, value_type[kind]))
            for number, value, kind in rows]


def complete_numbers_by_finish(storage: RDBStorage, study_id: int) -> list[int]:
    """The numbers of a study's complete trials in the order they completed (then by number;
    trials without a finish time last), in one narrow query.

    Args:
        storage: the study's RDB storage.
        study_id: the study's id in it.
    """
    trials_t = models.TrialModel.__table__
    finish = trials_t.c.datetime_complete
    with storage.engine.connect() as connection:
        return list(connection.execute(sa.select(trials_t.c.number).where(_trials_of(study_id, [TrialState.COMPLETE]))
                                       .order_by(finish.is_(None), finish, trials_t.c.number)).scalars().all())


def _trials_of(study_id: int, states: Iterable[TrialState] | None, settled: Settled | None = None) -> sa.ColumnElement:
    """The condition on ``trials`` rows: of this study (and in ``states``, and among the
    ``settled`` trials, when given)."""
    condition = _in_states(models.TrialModel.__table__.c.study_id == study_id, states)
    return condition if settled is None else sa.and_(condition, settled.condition())


def _in_states(condition: sa.ColumnElement, states: Iterable[TrialState] | None) -> sa.ColumnElement:
    """``condition`` on ``trials`` rows, and in ``states`` when given."""
    return condition if states is None else sa.and_(condition, models.TrialModel.__table__.c.state.in_(list(states)))


# Up to this many trials, :func:`_read_trials` reads their parameters, values, ... by id:
# PostgreSQL may answer the trials' condition, again for each table, by visiting every
# trial of the study (a poll of a few changed trials among 50,000 then reads 50,000 rows).
_IDS_LISTED = 1000


def _read_trials(storage: RDBStorage, study_id: int, where: sa.ColumnElement | None,
                 states: Iterable[TrialState] | None, parts: Container[str] = ALL_PARTS,
                 attr_keys: Container[str] | None = None, *, own: bool = False) -> list[FrozenTrial]:
    """The trials of a study matching ``where`` and ``states`` (see :func:`read_trials`), read
    with plain selects and built from rows: no ORM objects, no type conversion per row.
    ``own``: ``where`` selects trials of this study only (:func:`_newer_than`) and stands for
    the study's own condition."""
    trials_t = models.TrialModel.__table__
    if own:
        condition = _in_states(where, states)
    else:
        condition = _trials_of(study_id, states)
        if where is not None:
            condition = sa.and_(condition, where)
    chosen: Any = sa.select(trials_t.c.trial_id).where(condition).scalar_subquery()

    def rows_of(model: Any, *columns: str, keys: Container[str] | None = None) -> Sequence[Any]:
        # Fetched at once, and with no type conversion per row (enums come back as their
        # names, SQLite's times as text): a large study has a million of these rows.
        table = model.__table__
        query = sa.select(table.c.trial_id, *(_raw(table.c[c]) for c in columns)).where(table.c.trial_id.in_(chosen))
        if keys is not None:
            query = query.where(table.c.key.in_(list(keys)))
        return _fetch_all(connection, query)

    params: dict[int, list[tuple[int, str, float, str]]] = defaultdict(list)
    values: dict[int, dict[int, float]] = defaultdict(dict)
    user_attrs: dict[int, dict[str, Any]] = defaultdict(dict)
    system_attrs: dict[int, dict[str, Any]] = defaultdict(dict)
    intermediate: dict[int, dict[int, float]] = defaultdict(dict)
    with storage.engine.connect() as connection:
        studies_t = models.StudyModel.__table__
        if connection.execute(sa.select(studies_t.c.study_id).where(studies_t.c.study_id == study_id)).first() is None:
            raise KeyError(models.NOT_FOUND_MSG)
        rows = _fetch_all(connection, sa.select(
            trials_t.c.trial_id, trials_t.c.number, _raw(trials_t.c.state), _raw(trials_t.c.datetime_start),
            _raw(trials_t.c.datetime_complete)).where(condition).order_by(trials_t.c.trial_id))
        if not rows:  # nothing new: what Optuna's cache asks before most trials
            return []
        if len(rows) <= _IDS_LISTED:  # the other tables by these ids, not by the trials' condition again
            chosen = [trial_id for trial_id, *_ in rows]
        if "params" in parts:
            for trial_id, param_id, name, value, distribution in rows_of(
                models.TrialParamModel, "param_id", "param_name", "param_value", "distribution_json"
            ):
                params[trial_id].append((param_id, name, value, distribution))
        if "values" in parts:
            value_type = models.TrialValueModel.TrialValueType
            for trial_id, objective, value, kind in rows_of(models.TrialValueModel, "objective", "value", "value_type"):
                values[trial_id][objective] = value if kind == "FINITE" else \
                    models.TrialValueModel.stored_repr_to_value(value, value_type[kind])
        if "user_attrs" in parts:
            for trial_id, key, value_json in rows_of(models.TrialUserAttributeModel, "key", "value_json",
                                                     keys=attr_keys):
                user_attrs[trial_id][key] = json.loads(value_json)
        if "system_attrs" in parts:
            for trial_id, key, value_json in rows_of(models.TrialSystemAttributeModel, "key", "value_json",
                                                     keys=attr_keys):
                system_attrs[trial_id][key] = json.loads(value_json)
        if "intermediate" in parts:
            to_float = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
            step_type = models.TrialIntermediateValueModel.TrialIntermediateValueType
            for trial_id, step, value, kind in rows_of(
                models.TrialIntermediateValueModel, "step", "intermediate_value", "intermediate_value_type"
            ):  # only NaN and infinities are stored as None (and a type saying which)
                intermediate[trial_id][step] = value if value is not None else to_float(value, step_type[kind])

    trials = []
    to_time = _time_reader(connection.dialect.name)
    for trial_id, number, state, start, complete in rows:
        ordered = sorted(params.get(trial_id, ()))
        distributions = {name: _distribution(d) for _, name, _, d in ordered}
        objective_values = values.get(trial_id)
        trials.append(FrozenTrial(
            number=number,
            state=_STATES[state],
            value=None,
            values=[objective_values[i] for i in range(len(objective_values))] if objective_values else None,
            datetime_start=to_time(start),
            datetime_complete=to_time(complete),
            params={name: distributions[name].to_external_repr(value) for _, name, value, _ in ordered},
            distributions=distributions,
            user_attrs=user_attrs.get(trial_id, {}),
            system_attrs=system_attrs.get(trial_id, {}),
            intermediate_values=intermediate.get(trial_id, {}),
            trial_id=trial_id,
        ))
    return trials


def open_storage(
    url: str = DEFAULT_DATABASE_URL,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int = 3,
) -> BulkReadRDBStorage | ProxiedStorage:
    """Open (and create the tables of) an Optuna RDB storage; any number of processes may
    do so at once on a new database. A ``grpc://HOST:PORT`` URL opens a
    :class:`ProxiedStorage` instead (the proxy's own settings decide the grace period).

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path.db`` or ``postgresql://user@host/db``; or
            the address of an ``hpo storage-proxy``: ``grpc://HOST:PORT``.
        heartbeat_interval: seconds between a running trial's heartbeats; ``None`` disables
            heartbeats (and stale-trial recovery).
        grace_period: seconds without a heartbeat after which a running trial is failed and
            a copy of it is queued again (defaults to Optuna's 2 x interval).
        max_retry: how many times one stale trial is re-queued.

    Returns:
        The storage.
    """
    if url.startswith(PROXY_SCHEME):
        return ProxiedStorage(url, heartbeat_interval=heartbeat_interval, max_retry=max_retry)
    url = normalize_url(url)
    engine_kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        prepare_sqlite(url)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    elif url.startswith("postgresql"):
        engine_kwargs["connect_args"] = PG_CONNECT_ARGS
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and the retry callback are flagged experimental since Optuna 2.8/2.9; the
    # warning would greet every `hpo run` and worker start, once per process.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        heartbeat: dict = {}
        if heartbeat_interval:
            heartbeat = {
                "heartbeat_interval": heartbeat_interval,
                "grace_period": grace_period,
                "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            }
        with schema_lock(url):  # Optuna creates its tables check-then-create: one process at a time
            storage = BulkReadRDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
            with storage.engine.begin() as connection:
                connection.execute(sa.text(f"CREATE INDEX IF NOT EXISTS {TRIALS_BY_STUDY_INDEX} "
                                           "ON trials (study_id, trial_id)"))
            return storage


class CachedStudyStorage(_CachedStorage):
    """Optuna's cache of a study's finished trials over an RDB storage (``_CachedStorage``,
    private, checked against Optuna 5.0.0: a finished trial is read from the database once),
    which reports how many trials it holds after each full read.

    Args:
        backend: the RDB storage the cache reads through and writes to.
        on_read: called with the number of trials after each read of all of them.
    """

    def __init__(self, backend: RDBStorage, on_read: Callable[[int], None]):
        super().__init__(backend)
        self._on_read = on_read

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = super().get_all_trials(study_id, deepcopy=deepcopy, states=states)
        if states is None:
            self._on_read(len(trials))
        return trials


def _dump(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def _load(data: bytes) -> dict[str, Any]:
    return json.loads(data)


def proxy_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ``grpc://HOST:PORT`` URL.

    Raises:
        ValueError: naming the URL and the accepted form.
    """
    host, _, port = url[len(PROXY_SCHEME):].rstrip("/").rpartition(":")
    if not url.startswith(PROXY_SCHEME) or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"storage URL {url!r}: a storage proxy's URL is grpc://HOST:PORT with a port in "
                         "1-65535, e.g. grpc://127.0.0.1:13000")
    return host.strip("[]"), int(port)


class ProxyUnavailable(StorageInternalError):
    """The storage proxy cannot be reached, or its database failed: an outage the worker
    waits out (as it waits out its database's)."""


class _Calls:
    """A gRPC stub whose calls raise :class:`ProxyUnavailable` when the proxy is unreachable
    or its storage failed (Optuna's client re-raises those as bare ``grpc.RpcError``)."""

    OUTAGES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN,
               grpc.StatusCode.INTERNAL)

    def __init__(self, stub: Any, url: str):
        self._stub, self._url = stub, url

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except grpc.RpcError as exc:
                if exc.code() not in self.OUTAGES:
                    raise
                what = "is unreachable" if exc.code() == grpc.StatusCode.UNAVAILABLE else "failed"
                raise ProxyUnavailable(f"the storage proxy at {self._url} {what} ({name}: {exc.details()})") from exc

        return call


class ProxiedStorage(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC storage client for workers of an ``hpo storage-proxy``, with heartbeats.

    Optuna's proxy has no heartbeat methods, so through it no trial would beat and a dead
    worker's trial would stay running for ever. This client beats through two methods the
    proxy adds (``hpo.StorageExtras``), and asks the proxy for the stale trials, which it
    finds with :class:`BulkReadRDBStorage`'s rule; Optuna fails and retries them through
    the proxy as it does on a database. Claims reach :class:`BulkReadRDBStorage`'s
    conditional update unchanged, so a trial is claimed once whatever the client's cache
    shows. A proxy that cannot be reached raises :class:`ProxyUnavailable`.

    Args:
        url: ``grpc://HOST:PORT``.
        heartbeat_interval: seconds between a running trial's heartbeats; ``None``: none.
        max_retry: how many times one stale trial is re-queued.
        connect_timeout_s: how long to wait for the proxy to answer at first.

    Raises:
        ValueError: a malformed URL.
        ConnectionError: no proxy answered within ``connect_timeout_s``.
    """

    def __init__(self, url: str, *, heartbeat_interval: int | None = None, max_retry: int = 3,
                 connect_timeout_s: float = 10.0):
        host, port = proxy_address(url)
        self.url = url
        self._interval = heartbeat_interval
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._on_stale = RetryHeartbeatStaleTrialCallback(max_retry=max_retry) if heartbeat_interval else None
            super().__init__(host=host, port=port)
        try:
            socket.create_connection((host, port), timeout=connect_timeout_s).close()  # refused: at once
            self.wait_server_ready(timeout=connect_timeout_s)
        except OSError as exc:  # ConnectionError too: no gRPC answer within the timeout
            self.close()
            raise ConnectionError(f"no storage proxy answers at {url} ({exc.strerror or exc}); start one with: "
                                  f"hpo storage-proxy --database DATABASE_URL --port {port}") from None

    def _setup(self) -> None:
        super()._setup()
        self._stub = _Calls(self._stub, self.url)
        self._cache.grpc_client = self._stub
        extras = {name: self._channel.unary_unary(f"/{_EXTRAS}/{name}", request_serializer=_dump,
                                                  response_deserializer=_load)
                  for name in ("RecordHeartbeat", "StaleTrialIds")}
        self._extras = _Calls(SimpleNamespace(**extras), self.url)

    def record_heartbeat(self, trial_id: int) -> None:
        self._extras.RecordHeartbeat({"trial_id": trial_id})

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self._extras.StaleTrialIds({"study_id": study_id})["trial_ids"]

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._on_stale


def serve_proxy(database_url: str, host: str, port: int, *, heartbeat_interval: int, grace_period: int,
                threads: int = 10) -> grpc.Server:
    """Start Optuna's gRPC storage proxy over this project's storage (Optuna's cache of
    finished trials over :class:`BulkReadRDBStorage`: atomic claims, its stale-trial rule),
    plus the heartbeat methods :class:`ProxiedStorage` calls.

    Args:
        database_url: the database (SQLite or PostgreSQL URL).
        host, port: where to listen.
        heartbeat_interval, grace_period: the stale-trial rule's settings (as a worker's).
        threads: requests served at once (each may hold one database connection).

    Returns:
        The started server (``stop()`` it).

    Raises:
        OSError: the address cannot be listened on.
    """
    backend = _CachedStorage(open_storage(database_url, heartbeat_interval=heartbeat_interval,
                                          grace_period=grace_period))

    def record_heartbeat(request: dict[str, Any], context: Any) -> dict[str, Any]:
        backend.record_heartbeat(request["trial_id"])
        return {}

    def stale_trial_ids(request: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"trial_ids": backend._get_stale_trial_ids(request["study_id"])}

    try:
        server = make_server(backend, host, port, ThreadPoolExecutor(max_workers=threads))
    except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
        raise OSError(f"cannot listen on {host}:{port} ({exc}); is another proxy running there?") from None
    handlers = {name: grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_load, response_serializer=_dump)
                for name, fn in (("RecordHeartbeat", record_heartbeat), ("StaleTrialIds", stale_trial_ids))}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_EXTRAS, handlers),))
    server.start()
    return server


def write_trials(storage: RDBStorage, study_name: str, trials: Sequence[FrozenTrial]) -> None:
    """Add finished trials to a study in one transaction, a few multi-row inserts per table:
    what ``Study.add_trials`` stores (numbers after the study's last, times as given), at
    thousands of trials per second instead of tens. Not safe against workers adding trials to
the same study at the same moment (it numbers and ids them itself). For benchmarks and tests that need
    large studies; workers go through Optuna. ``tests/test_storage.py`` compares both.

    Args:
        storage: the study's RDB storage.
        study_name: the study.
        trials: finished trials (``optuna.trial.create_trial``), in the order they get numbers.
    """
    study_id = storage.get_study_id_from_name(study_name)
    trials_t = models.TrialModel.__table__
    with storage.engine.begin() as connection:
        connection.execute(sa.select(models.StudyModel.__table__.c.study_id)
                           .where(models.StudyModel.__table__.c.study_id == study_id).with_for_update())
        first = connection.execute(sa.select(sa.func.count()).where(trials_t.c.study_id == study_id)).scalar_one()
        next_id = (connection.execute(sa.select(sa.func.max(trials_t.c.trial_id))).scalar() or 0) + 1
        # Explicit ids, so that the child rows can be inserted without reading them back.
        ids = range(next_id, next_id + len(trials))
        rows: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for trial_id, number, trial in zip(ids, range(first, first + len(trials)), trials):
            assert trial.state.is_finished(), "write_trials stores finished trials"
            rows[trials_t].append({"trial_id": trial_id, "number": number, "study_id": study_id, "state": trial.state,
                                   "datetime_start": _stored_time(trial.datetime_start),
                                   "datetime_complete": _stored_time(trial.datetime_complete)})
            for objective, value in enumerate(trial.values or ()):
                stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                rows[models.TrialValueModel.__table__].append(
                    {"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind})
            for name, value in trial.params.items():
                distribution = trial.distributions[name]
                rows[models.TrialParamModel.__table__].append(
                    {"trial_id": trial_id, "param_name": name, "param_value": distribution.to_internal_repr(value),
                     "distribution_json": optuna.distributions.distribution_to_json(distribution)})
            for model, attrs in ((models.TrialUserAttributeModel, trial.user_attrs),
                                 (models.TrialSystemAttributeModel, trial.system_attrs)):
                for key, value in attrs.items():
                    rows[model.__table__].append({"trial_id": trial_id, "key": key, "value_json": json.dumps(value)})
            for step, value in trial.intermediate_values.items():
                stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
                rows[models.TrialIntermediateValueModel.__table__].append(
                    {"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": kind})
        for table, values in rows.items():  # the trials first: the others refer to them
            for start in range(0, len(values), 5000):
                connection.execute(sa.insert(table), values[start:start + 5000])
    if connection.dialect.name == "postgresql":  # the ids were given, so the sequence did not move
        with storage.engine.begin() as connection:
            connection.execute(sa.text("SELECT setval(pg_get_serial_sequence('trials', 'trial_id'), "
                                       "(SELECT max(trial_id) FROM trials))"))
