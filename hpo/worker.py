"""Workers: processes that find runnable studies in the storage and run their trials.

The database is the only coordination. A worker loads a study's spec from Optuna's
storage, asks Optuna for a trial, trains it, tells the result, and goes back for more.
Heartbeats mark its running trial alive; a trial whose worker died is failed once its
heartbeat is older than the grace period, and Optuna's retry callback queues a copy of
it, so the study still ends with exactly ``n_trials`` complete-or-pruned trials.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
import torch
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import BaseStorage, fail_stale_trials
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from hpo.data import load_dataset
from hpo.export.jobs import run_pending_model_jobs
from hpo.objective import Objective
from hpo.samplers import make_pruner, make_sampler
from hpo.storage import open_storage
from hpo.studies import (
    FAIL_REASON_ATTR, SPEC_ATTR, SURPLUS_ATTR, CANCELLED_ATTR, is_cancelled, is_surplus, progress, study_spec,
)

if TYPE_CHECKING:  # Optuna 5 does not re-export FrozenStudy
    from optuna.study._frozen import FrozenStudy

log = logging.getLogger("hpo.worker")

DEFAULT_HEARTBEAT_S = 10
DEFAULT_GRACE_S = 30
MAX_OUTAGE_WAIT_S = 30.0
COUNTED_STATES = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
OUTAGE_REASON = "the database became unreachable while the trial ran (its result could not be stored)"


def database_error(exc: BaseException) -> BaseException | None:
    """The database error ``exc`` is, or was raised while handling (Optuna can mask a failed
    ``tell`` with an ``UnboundLocalError`` when it cannot read the trial back); else ``None``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (SQLAlchemyError, StorageInternalError)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@dataclass
class WorkerOptions:
    """How a worker process runs.

    Attributes:
        database_url: the storage URL shared by the API and all workers.
        data_dir: where uploaded datasets live (``{id: ...}`` datasets).
        heartbeat_interval: seconds between heartbeats of a running trial.
        grace_period: seconds without a heartbeat before a trial counts as dead.
        study_name: only run this study (``hpo run``); ``None`` serves every study.
        until_idle: exit when no study has work instead of polling for more.
        poll_interval_s: how long an idle worker waits before looking again.
        threads: PyTorch intra-op threads per process; ``None`` leaves PyTorch's default.
    """

    database_url: str
    data_dir: str = "hpo-data"
    heartbeat_interval: int = DEFAULT_HEARTBEAT_S
    grace_period: int = DEFAULT_GRACE_S
    study_name: str | None = None
    until_idle: bool = False
    poll_interval_s: float = 1.0
    threads: int | None = None


class _BudgetReached(RuntimeError):
    """Another worker started the study's last trial first."""


class StudyRunner:
    """One process's handle on one study: sampler, pruner, dataset and folds, built once."""

    def __init__(self, storage: BaseStorage, study_name: str, options: WorkerOptions,
                 seed_offset: int, stop: threading.Event):
        spec = study_spec(optuna.load_study(study_name=study_name, storage=storage))
        self.spec = spec
        self.study = optuna.load_study(
            study_name=study_name, storage=storage,
            sampler=make_sampler(spec, seed_offset), pruner=make_pruner(spec),
        )
        self._load_error: Exception | None = None
        self.objective: Objective | None = None
        self._trial_number: int | None = None
        # Trials left RUNNING by a database outage, failed as soon as the database answers.
        self.orphaned: list[int] = []
        study_id = self.study._study_id
        try:
            dataset = load_dataset(spec, options.data_dir)
            self.objective = Objective(
                spec, dataset, should_stop=lambda: stop.is_set() or is_cancelled(storage, study_id)
            )
        except Exception as exc:  # the study's trials fail with this reason; the worker goes on
            self._load_error = exc

    def run_one(self) -> None:
        """Run one trial of the study (failures are stored on the trial, not raised).

        Raises:
            Exception: a database outage (see :func:`database_error`); the trial it
                interrupted is kept in ``orphaned`` for :meth:`fail_orphaned`.
        """
        self._trial_number = None
        try:
            self.study.optimize(self._budgeted_objective, n_trials=1, catch=(Exception,))
        except Exception as exc:
            if database_error(exc) is not None and self._trial_number is not None:
                self.orphaned.append(self._trial_number)
            raise

    def fail_orphaned(self) -> None:
        """Fail the trials an outage left RUNNING (at once, rather than after the heartbeat's
        grace period: a RUNNING trial holds a slot of the budget). Raises database errors."""
        storage, study_id = self.study._storage, self.study._study_id
        while self.orphaned:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.orphaned[0])
            if storage.get_trial(trial_id).state == TrialState.RUNNING:
                try:
                    storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, OUTAGE_REASON)
                    storage.set_trial_state_values(trial_id, TrialState.FAIL)
                except UpdateFinishedTrialError:
                    pass  # another worker's stale-trial check failed it first
            self.orphaned.pop(0)

    def _budgeted_objective(self, trial: optuna.Trial) -> float:
        self._trial_number = trial.number
        earlier = self.study.get_trials(deepcopy=False, states=COUNTED_STATES)
        taken = sum(1 for t in earlier if t.number < trial.number and not is_surplus(t))
        if taken >= self.spec.n_trials:
            trial.set_user_attr(SURPLUS_ATTR, True)
            trial.set_user_attr(FAIL_REASON_ATTR, "budget already used up by other workers")
            raise _BudgetReached("budget already used up by other workers")
        if self._load_error is not None:
            trial.set_user_attr(FAIL_REASON_ATTR, f"cannot load the dataset: {self._load_error}")
            raise self._load_error
        assert self.objective is not None
        return self.objective(trial)


def _pick_study(storage: BaseStorage, studies: list[FrozenStudy], options: WorkerOptions, finished: set[str],
                runners: dict[str, StudyRunner]) -> str | None:
    """The runnable study with the fewest running trials (the oldest first on ties)."""
    candidates = []
    for frozen in studies:
        name = frozen.study_name
        if name in finished or SPEC_ATTR not in frozen.user_attrs or frozen.user_attrs.get(CANCELLED_ATTR):
            continue
        if options.study_name is not None and name != options.study_name:
            continue
        study = runners[name].study if name in runners else optuna.load_study(study_name=name, storage=storage)
        if any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(study)  # a dead worker's trial frees its slot for a retry
        try:
            prog = progress(study, study_spec(study))
        except Exception:  # a study whose stored spec no longer parses is not ours to run
            finished.add(name)
            continue
        if prog.state in ("completed", "failed"):
            finished.add(name)
        elif prog.runnable:
            candidates.append((prog.running, frozen._study_id, name))
    return min(candidates)[2] if candidates else None


def worker_loop(options: WorkerOptions, worker_index: int = 0, stop: threading.Event | None = None) -> None:
    """Claim and run trials until stopped (or, with ``until_idle``, until there is no work).

    Args:
        options: how to run.
        worker_index: offsets the sampler seed so workers draw different configurations.
        stop: set it to stop after the current epoch's check.
    """
    stop = stop or threading.Event()
    if options.threads:
        torch.set_num_threads(options.threads)
    storage = open_storage(
        options.database_url, heartbeat_interval=options.heartbeat_interval, grace_period=options.grace_period
    )
    runners: dict[str, StudyRunner] = {}
    finished: set[str] = set()
    outage_s = 0.0
    while not stop.is_set():
        try:
            for runner in runners.values():
                runner.fail_orphaned()
            studies = storage.get_all_studies()  # one listing serves the model-job hook and the picker
            if run_pending_model_jobs(storage, options.data_dir, study_name=options.study_name, studies=studies,
                                      should_stop=stop.is_set):
                continue  # a final model fit ran (a job the API queued); look for work again
            name = _pick_study(storage, studies, options, finished, runners)
            if name is None:
                if options.until_idle:
                    return
                stop.wait(options.poll_interval_s)
                continue
            if name not in runners:
                runners[name] = StudyRunner(storage, name, options, worker_index, stop)
            runners[name].run_one()
            outage_s = 0.0
        except Exception as exc:  # database restarting or unreachable: wait, then go on
            cause = database_error(exc)
            if cause is None:
                raise
            outage_s = min(MAX_OUTAGE_WAIT_S, max(1.0, outage_s * 2))
            log.warning("database unavailable (%s); retrying in %.0f s", type(cause).__name__, outage_s)
            stop.wait(outage_s)


def _process_main(options: WorkerOptions, worker_index: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{worker_index} %(message)s")
    worker_loop(options, worker_index, stop)


def start_worker_processes(n: int, database_url: str, *, data_dir: str = "hpo-data",
                           heartbeat_interval: int = DEFAULT_HEARTBEAT_S, grace_period: int = DEFAULT_GRACE_S,
                           study_name: str | None = None, until_idle: bool = False,
                           threads: int | None = None, first_index: int = 0) -> list[mp.Process]:
    """Start ``n`` worker processes (spawned: fresh interpreters, one PyTorch pool each).

    Args:
        threads: intra-op threads per process; by default the cores are shared out evenly.
        first_index: worker index of the first process (seeds differ per index).

    Returns:
        The started processes.
    """
    options = WorkerOptions(
        database_url=database_url, data_dir=str(data_dir), heartbeat_interval=heartbeat_interval,
        grace_period=grace_period, study_name=study_name, until_idle=until_idle,
        threads=threads or max(1, (os.cpu_count() or 1) // max(1, n)),
    )
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_process_main, args=(options, first_index + i), name=f"hpo-worker-{i}")
             for i in range(n)]
    for p in procs:
        p.start()
    return procs


def stop_worker_processes(procs: list[mp.Process], timeout_s: float = 30) -> None:
    """SIGTERM the workers (each fails its current trial cleanly), wait, then kill stragglers."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout_s)
        if p.is_alive():
            p.kill()
            p.join()


def run_worker(options: WorkerOptions, concurrency: int = 1) -> None:
    """Run ``concurrency`` worker processes until SIGTERM / Ctrl-C (or idle with ``until_idle``)."""
    procs = start_worker_processes(
        concurrency, options.database_url, data_dir=options.data_dir,
        heartbeat_interval=options.heartbeat_interval, grace_period=options.grace_period,
        study_name=options.study_name, until_idle=options.until_idle, threads=options.threads,
    )
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while any(p.is_alive() for p in procs) and not stopping.is_set():
            stopping.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_worker_processes(procs)

