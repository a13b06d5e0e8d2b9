"""Workers: processes that find runnable studies in the storage and run their trials.

The database is the only coordination. A worker loads a study's spec from Optuna's
storage, asks Optuna for a trial, trains it, tells the result, and goes back for more.
Heartbeats mark its running trial alive; a trial whose worker died is failed once its
heartbeat is older than the grace period, and Optuna's retry callback queues a copy of
it, so the study still ends with exactly ``n_trials`` complete-or-pruned trials.

Bookkeeping per trial is one read of the current study's trials (and of its cancel flag):
it decides whether the study is still runnable, gives its progress, and bounds its budget
check. The other studies (new ones, resumed ones, model jobs) are looked at every
``poll_interval_s``, and whenever the current study stops being runnable. PyTorch, the datasets and the model jobs
are imported when a worker starts working, not when this module is imported, so that
``hpo run`` can start its worker processes before it pays for those imports itself.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import functools
import gc
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import BaseStorage, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from hpo.samplers import make_pruner, make_sampler
from hpo.settings import DEFAULT_DATA_DIR, DEFAULT_GRACE_S, DEFAULT_HEARTBEAT_S
from hpo.spec import SpecError, StudySpec, parse_spec
from hpo.storage import FrozenStudy, ProxiedStorage, open_storage, study_id_of, study_storage
from hpo.studies import (
    CANCELLED_ATTR, ERROR_ATTR, FAIL_REASON_ATTR, SPEC_ATTR, SURPLUS_ATTR, Progress, best_of, fail_study,
    is_cancelled, is_surplus, progress,
)

if TYPE_CHECKING:
    from hpo.data import DatasetStore
    from hpo.objective import Objective

log = logging.getLogger("hpo.worker")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 1.0

MAX_OUTAGE_WAIT_S = 30.0
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 60.0
COUNTED_STATES = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
TERMINAL_STATES = ("completed", "failed")
OUTAGE_REASON = "the database became unreachable while the trial ran (its result could not be stored)"


def database_error(exc: BaseException) -> BaseException | None:
    """The database (or storage proxy) error ``exc`` is, or was raised while handling (Optuna can mask a failed
    ``tell`` with an ``UnboundLocalError`` when it cannot read the trial back); else ``None``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (SQLAlchemyError, StorageInternalError, ConnectionError)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@dataclass
class WorkerOptions:
    """How a worker process runs.

    Attributes:
        database_url: the storage URL shared by the API and all workers, or an
            ``hpo storage-proxy``'s ``grpc://HOST:PORT`` (trials only: fold models are not
            kept, final model fits are left to workers on the database, and uploaded
            datasets cannot be fetched through it).
        data_dir: this machine's cache of uploaded datasets (``{id: ...}`` datasets, fetched
            from the database when first needed; it may start empty).
        heartbeat_interval: seconds between heartbeats of a running trial.
        grace_period: seconds without a heartbeat before a trial counts as dead.
        study_name: only run this study (``hpo run``); ``None`` serves every study.
        until_idle: exit when no study has work instead of polling for more.
        poll_interval_s: how long an idle worker waits before looking again; a busy one
            looks at the other studies (new, cancelled, resumed, model jobs) this often
            between the trials of its current study.
        threads: PyTorch intra-op threads per process (one: see :func:`start_worker_processes`);
            ``None`` leaves PyTorch's default.
    """

    database_url: str
    data_dir: str = DEFAULT_DATA_DIR
    heartbeat_interval: int = DEFAULT_HEARTBEAT_S
    grace_period: int = DEFAULT_GRACE_S
    study_name: str | None = None
    until_idle: bool = False
    poll_interval_s: float = 1.0
    threads: int | None = 1


class _BudgetReached(RuntimeError):
    """Another worker started the study's last trial first."""


class SurplusTrialLog(logging.Filter):
    """Optuna logs every failed trial as a warning with its traceback; a surplus trial
    (:class:`_BudgetReached`) fails by design, so its record becomes one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], _BudgetReached):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def quiet_surplus_trials() -> None:
    """Install :class:`SurplusTrialLog` on Optuna's trial-running logger (once per process)."""
    logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, SurplusTrialLog) for f in logger.filters):
        logger.addFilter(SurplusTrialLog())


def counted_at_most(number: int, trials: list[FrozenTrial]) -> int:
    """An upper bound on the trials numbered below ``number`` that count against the
    budget, from a read of the study's ``trials`` taken at any earlier moment.

    Every trial numbered below ``number`` may count except the failed ones (surplus trials
    included), and a failed trial stays failed; so the bound holds however the trials
    moved on since the read, and whichever trials were created after it.
    """
    failed = TrialState.FAIL
    return number - sum(1 for t in trials if t.state is failed and t.number < number)


def _dataset_store(storage: BaseStorage, options: WorkerOptions) -> DatasetStore | None:
    """The uploaded datasets in the storage's database, cached under ``options.data_dir``
    (imported here: ``hpo.data`` imports PyTorch); ``None`` behind a storage proxy, which
    carries trials only (a study of an uploaded dataset then fails with the reason)."""
    from hpo.data import DatasetStore

    return None if isinstance(storage, ProxiedStorage) else DatasetStore(storage.engine, options.data_dir)


class StudyRunner:
    """One process's handle on one study: spec, sampler and pruner, and the dataset and
    folds (built at its first trial, once)."""

    def __init__(self, storage: BaseStorage, frozen: FrozenStudy, spec: StudySpec, options: WorkerOptions,
                 seed_offset: int, stop: threading.Event):
        self.spec = spec
        self.storage = storage  # the database's own storage (the study reads through Optuna's cache)
        self.stored_spec = frozen.user_attrs[SPEC_ATTR]  # as listed: a changed spec replaces the runner
        self.study = optuna.load_study(
            study_name=frozen.study_name, storage=storage,
            sampler=make_sampler(spec, seed_offset), pruner=make_pruner(spec),
        )
        self.trials: list[FrozenTrial] = []  # the latest read (see refresh)
        # When the study's first trial started (from the latest read); budget.timeout_s runs from it.
        self.started_at: dt.datetime | None = None
        self._options = options
        self._stop = stop
        self._datasets = _dataset_store(storage, options)
        self._objective: Objective | None = None
        self._load_error: Exception | None = None
        self._trial_number: int | None = None
        # Trials left RUNNING by a database outage, failed as soon as the database answers.
        self.orphaned: list[int] = []

    def refresh(self, cancelled: bool) -> Progress:
        """Read the study's trials (the one read per trial) and derive its progress.

        When running trials hold the budget's last slots, the stale ones (their worker
        died) are failed first, so that their retries can run.

        Args:
            cancelled: the study's cancel flag (as listed, or as just read).
        """
        self.trials = self.study.get_trials(deepcopy=False)
        prog = progress(self.study, self.spec, trials=self.trials, cancelled=cancelled, details=False)
        if prog.state in ("queued", "running") and not prog.runnable:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(self.study)
            self.trials = self.study.get_trials(deepcopy=False)
            prog = progress(self.study, self.spec, trials=self.trials, cancelled=cancelled, details=False)
        self.started_at = prog.started_at
        return prog

    def past_deadline(self) -> bool:
        """Whether the study's ``budget.timeout_s`` has passed (counted from its first trial's
        start, or from now when no trial has started yet)."""
        timeout = self.spec.budget.timeout_s
        if not timeout:
            return False
        if self.started_at is None:
            self.started_at = dt.datetime.now()  # the same clock as progress()
        return (dt.datetime.now() - self.started_at).total_seconds() > timeout

    def run_one(self) -> None:
        """Run one trial of the study (failures are stored on the trial, not raised).

        Raises:
            DataError: the study's uploaded dataset was deleted (no trial starts).
            Exception: a database outage (see :func:`database_error`); the trial it
                interrupted is kept in ``orphaned`` for :meth:`fail_orphaned`.
        """
        from hpo.data import check_dataset_exists

        check_dataset_exists(self.spec, self._datasets)  # not from memory once deleted: the study fails
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
        storage, study_id = study_storage(self.study)
        while self.orphaned:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.orphaned[0])
            if storage.get_trial(trial_id).state == TrialState.RUNNING:
                try:
                    storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, OUTAGE_REASON)
                    storage.set_trial_state_values(trial_id, TrialState.FAIL)
                except UpdateFinishedTrialError:
                    pass  # another worker's stale-trial check failed it first
            self.orphaned.pop(0)

    def _objective_or_error(self) -> Objective:
        """The study's objective, its dataset loaded at the first trial (a dataset that
        cannot be loaded fails every trial of the study with the reason; the worker goes on)."""
        if self._objective is None and self._load_error is None:
            from hpo.data import load_dataset
            from hpo.export.ensemble import keep_fold_models
            from hpo.objective import Objective

            (storage, study_id), stop = study_storage(self.study), self._stop
            try:
                dataset = load_dataset(self.spec, self._datasets)
                self._objective = Objective(
                    self.spec, dataset, should_stop=lambda: stop.is_set() or is_cancelled(storage, study_id),
                    past_deadline=self.past_deadline, on_fitted=self._use_fitted_pruner,
                    # Fold models go to the database's tables, which a proxy does not reach.
                    on_complete=None if isinstance(self.storage, ProxiedStorage)
                    else functools.partial(keep_fold_models, self.storage, self.spec, dataset),
                )
            except Exception as exc:
                self._load_error = exc
        if self._load_error is not None:
            raise self._load_error
        assert self._objective is not None
        return self._objective

    def _use_fitted_pruner(self, fitted: StudySpec) -> None:
        """The study's pruner made again from the spec fitted to the data (its warm-up, and
        Hyperband's ``max_resource``, follow the fitted epochs and patience)."""
        self.study.pruner = make_pruner(fitted)

    def _budgeted_objective(self, trial: optuna.Trial) -> float:
        self._trial_number = trial.number
        # The pre-trial read bounds what counts below this trial; read again only when the
        # bound leaves the budget in doubt (racing workers, or many failed trials).
        if counted_at_most(trial.number, self.trials) >= self.spec.n_trials:
            earlier = self.study.get_trials(deepcopy=False, states=COUNTED_STATES)
            taken = sum(1 for t in earlier if t.number < trial.number and not is_surplus(t))
            if taken >= self.spec.n_trials:
                trial.set_user_attr(SURPLUS_ATTR, True)
                trial.set_user_attr(FAIL_REASON_ATTR, "budget already used up by other workers")
                raise _BudgetReached("budget already used up by other workers")
        try:
            objective = self._objective_or_error()
        except Exception as exc:
            trial.set_user_attr(FAIL_REASON_ATTR, f"cannot load the dataset: {exc}")
            raise
        return objective(trial)


class StudyPicker:
    """Which study a worker runs next: its current one while that stays runnable, else the
    runnable study with the fewest running trials (the oldest first on ties).

    Studies seen completed or failed are remembered with the spec they ended under and
    not read again (a changed spec, e.g. a larger budget, makes them candidates again).
    """

    def __init__(self, storage: BaseStorage, options: WorkerOptions, worker_index: int, stop: threading.Event):
        self.storage = storage
        self.options = options
        self.worker_index = worker_index
        self.stop = stop
        self.runners: dict[int, StudyRunner] = {}  # by Optuna study id
        self.ended: dict[int, object] = {}  # study id -> the stored spec it ended (or failed to parse) under
        self.current: StudyRunner | None = None
        self.queued_refit = False  # the last pick queued a study's own refit
        self._next_listing = 0.0

    def keep_current(self) -> StudyRunner | None:
        """The current study when no listing is due and it is still runnable (and not
        cancelled); else None: the caller lists the studies and calls :meth:`pick`."""
        if self.current is None or time.monotonic() >= self._next_listing:
            return None
        study = self.current.study
        if self.current.refresh(cancelled=is_cancelled(*study_storage(study))).runnable:
            return self.current
        return None

    def pick(self, studies: list[FrozenStudy]) -> StudyRunner | None:
        """Pick from a fresh listing of the studies (each candidate's trials read once)."""
        self._next_listing = time.monotonic() + self.options.poll_interval_s
        self.queued_refit = False
        listed = {study_id_of(frozen) for frozen in studies}
        candidates = []
        for frozen in studies:
            stored = frozen.user_attrs.get(SPEC_ATTR)
            study_id = study_id_of(frozen)
            if (stored is None or frozen.user_attrs.get(CANCELLED_ATTR) or frozen.user_attrs.get(ERROR_ATTR)
                    or self.options.study_name not in (None, frozen.study_name)
                    or (study_id in self.ended and self.ended[study_id] == stored)):
                continue
            try:
                runner = self._runner(frozen, stored)
                prog = runner.refresh(cancelled=False) if runner is not None else None
            except Exception as exc:
                if database_error(exc) is not None:
                    raise
                self.fail_study(study_id, frozen.study_name, stored, exc)
                continue
            if prog is None:
                continue
            if prog.state in TERMINAL_STATES:
                if prog.state == "completed":
                    self.queue_final_refit(runner)
                self.ended[study_id] = stored
                del self.runners[study_id]
            elif prog.runnable:
                candidates.append((prog.running, study_id, runner))
        # Forget deleted studies (their trials went with them; orphans are failed before a pick).
        self.runners = {i: r for i, r in self.runners.items() if i in listed}
        self.ended = {i: stored for i, stored in self.ended.items() if i in listed}
        self.current = min(candidates, key=lambda c: c[:2])[2] if candidates else None
        return self.current

    def queue_final_refit(self, runner: StudyRunner) -> None:
        """A study seen completed whose spec asks for a refit (``final_model.kind: refit``)
        gets it queued, once per study whichever worker sees it first (``hpo.export.jobs.
        queue_final_refit``; ``queued_refit`` says this pick did); its ensemble is served
        meanwhile. Not behind a storage proxy, which does not reach the model tables: a
        worker on the database queues it.

        Raises:
            Exception: a database error.
        """
        final = runner.spec.final_model
        if final.kind != "refit" or isinstance(self.storage, ProxiedStorage):
            return
        best = best_of(runner.trials, runner.spec.direction)
        if best is None:  # only pruned trials: nothing to refit (and no ensemble either)
            return
        from hpo.export.jobs import queue_final_refit

        assert final.seeds is not None
        if queue_final_refit(self.storage, runner.study.study_name, best, final.seeds) is not None:
            self.queued_refit = True

    def _runner(self, frozen: FrozenStudy, stored: object) -> StudyRunner | None:
        """The study's runner, built (or rebuilt, when its stored spec changed) as needed;
        None for a spec that does not parse (not ours to run)."""
        study_id = study_id_of(frozen)
        runner = self.runners.get(study_id)
        if runner is not None and runner.stored_spec == stored:
            return runner
        self.runners.pop(study_id, None)
        try:
            spec = parse_spec(stored)
        except SpecError:
            self.ended[study_id] = stored
            return None
        runner = StudyRunner(self.storage, frozen, spec, self.options, self.worker_index, self.stop)
        self.runners[study_id] = runner
        return runner

    def fail_study(self, study_id: int, study_name: str, stored: object, exc: Exception) -> None:
        """Mark a study that cannot run failed, with the reason, and leave it (the worker goes on).

        Raises:
            Exception: a database error while storing the reason.
        """
        reason = f"the study cannot run: {type(exc).__name__}: {exc}"[:2000]
        log.error("study %s failed: %s", study_name, reason)
        self.runners.pop(study_id, None)
        self.ended[study_id] = stored
        if self.current is not None and study_storage(self.current.study)[1] == study_id:
            self.current = None
        try:
            fail_study(self.storage, study_name, reason)
        except KeyError:
            pass  # the study was deleted meanwhile

    def fail_orphaned(self) -> None:
        """Fail every runner's outage-orphaned trials (see :meth:`StudyRunner.fail_orphaned`)."""
        for runner in self.runners.values():
            runner.fail_orphaned()


@functools.cache
def import_training_libraries() -> None:
    """Import what trials and model fits run on (PyTorch, scikit-learn, the datasets, the
    objective, the model jobs), once per process, with the cyclic garbage collector paused,
    then freeze what the imports built.

    The imports create a few hundred thousand objects that live as long as the process:
    collecting while they are built is wasted work (~20 % of the imports' 3 s here), and
    once frozen no later collection walks them again, neither during training nor at the
    interpreter's exit (0.8 s -> 0.15 s). ``torch._dynamo`` is among them: ``torch.optim``
    imports it at a process's first optimizer step, which would bill ~1 s to the first
    trial (and hold a slot of the budget meanwhile).
    """
    gc.disable()
    try:
        import torch._dynamo  # noqa: F401

        import hpo.export.ensemble  # noqa: F401
        import hpo.export.jobs  # noqa: F401
        import hpo.objective  # noqa: F401
    finally:
        gc.enable()
    gc.freeze()


def worker_loop(options: WorkerOptions, worker_index: int = 0, stop: threading.Event | None = None) -> None:
    """Claim and run trials until stopped (or, with ``until_idle``, until there is no work).

    Args:
        options: how to run.
        worker_index: offsets the sampler seed so workers draw different configurations.
        stop: set it to stop after the current epoch's check.
    """
    import_training_libraries()
    quiet_surplus_trials()
    import torch

    from hpo.export.jobs import run_pending_model_jobs

    stop = stop or threading.Event()
    if options.threads:
        torch.set_num_threads(options.threads)
    picker: StudyPicker | None = None
    outage_s = 0.0
    while not stop.is_set():
        try:
            if picker is None:  # a database (or proxy) refusing connections at start is waited out too
                storage = open_storage(options.database_url, heartbeat_interval=options.heartbeat_interval,
                                       grace_period=options.grace_period)
                store = _dataset_store(storage, options)
                if store is not None:
                    store.clear_staging()  # what a killed fetch left behind
                if options.study_name is not None:  # hpo run: it prints each failed trial's reason in one line
                    optuna.logging.set_verbosity(optuna.logging.ERROR)
                picker = StudyPicker(storage, options, worker_index, stop)
            picker.fail_orphaned()
            runner = picker.keep_current()
            if runner is None:
                # A final model fit is stored in the database's tables, which a proxy does not reach.
                if not isinstance(storage, ProxiedStorage) and run_pending_model_jobs(
                        storage, options.data_dir, study_name=options.study_name, should_stop=stop.is_set):
                    continue  # a final model fit ran (a job the API queued); look for work again
                runner = picker.pick(storage.get_all_studies())
                # A worker with no trial to run takes the refit a study just queued as it ended.
                if runner is None and picker.queued_refit and run_pending_model_jobs(
                        storage, options.data_dir, study_name=options.study_name, should_stop=stop.is_set):
                    continue
            if runner is None:
                if options.until_idle:
                    return
                stop.wait(options.poll_interval_s)
                continue
            try:
                runner.run_one()
            except Exception as exc:
                if database_error(exc) is not None:
                    raise
                # Something about this study itself (its sampler, its rows deleted under it):
                # the study fails with the reason, the worker goes on to the others.
                picker.fail_study(study_storage(runner.study)[1], runner.study.study_name, runner.stored_spec, exc)
            outage_s = 0.0
        except Exception as exc:  # database restarting or unreachable: wait, then go on
            cause = database_error(exc)
            if cause is None:
                raise
            outage_s = min(MAX_OUTAGE_WAIT_S, max(1.0, outage_s * 2))
            log.warning("database unavailable (%s); retrying in %.0f s", type(cause).__name__, outage_s)
            stop.wait(outage_s)


def end_with_parent(parent_pid: int, stop: threading.Event, poll_s: float = PARENT_POLL_S) -> None:
    """Set ``stop`` when the process that started this one dies, even by SIGKILL (which
    gives it no chance to stop its children), so no worker trains on unsupervised.

    Linux: the kernel sends SIGTERM at the parent's death (``PR_SET_PDEATHSIG``; it fires
    when the parent *thread* that started this process ends, so start workers from a
    thread that lives as long as the supervisor). Everywhere, and for a parent that died
    before this ran: a thread that sees the parent pid change.

    Args:
        parent_pid: the supervisor's pid, as it saw it when starting this process.
        stop: the worker's stop event (its SIGTERM handler sets it too).
        poll_s: seconds between parent-pid checks.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d); watching the parent pid only", ctypes.get_errno())

    def watch() -> None:
        while not stop.wait(poll_s):
            if os.getppid() != parent_pid:
                log.warning("the supervisor (pid %d) is gone; stopping", parent_pid)
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _process_main(options: WorkerOptions, worker_index: int, parent_pid: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    end_with_parent(parent_pid, stop)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{worker_index} %(message)s")
    worker_loop(options, worker_index, stop)


def start_worker_processes(n: int, database_url: str, *, data_dir: str = DEFAULT_DATA_DIR,
                           heartbeat_interval: int = DEFAULT_HEARTBEAT_S, grace_period: int = DEFAULT_GRACE_S,
                           study_name: str | None = None, until_idle: bool = False,
                           threads: int | None = 1, first_index: int = 0,
                           start_method: str = "spawn") -> list[mp.Process]:
    """Start ``n`` worker processes (one PyTorch pool each).

    Args:
        threads: intra-op threads per process. One by default, whatever the worker count:
            these small networks gain little from a second thread, and lose 3-12x when
            another process takes a core the thread pool waits on (docs/performance.md).
            ``None`` leaves PyTorch's default (every core).
        first_index: worker index of the first process (seeds differ per index).
        start_method: ``"spawn"`` (fresh interpreters) or ``"fork"`` (copies of this
            process, spared the interpreter's start and the imports already made; only
            for a caller that runs no other thread, holds no database connection and has
            not imported PyTorch: see ``hpo.local``).

    Returns:
        The started processes.
    """
    options = WorkerOptions(
        database_url=database_url, data_dir=str(data_dir), heartbeat_interval=heartbeat_interval,
        grace_period=grace_period, study_name=study_name, until_idle=until_idle, threads=threads,
    )
    return [_start_process(options, first_index + i, start_method) for i in range(n)]


def _start_process(options: WorkerOptions, index: int, start_method: str = "spawn") -> mp.Process:
    proc = mp.get_context(start_method).Process(target=_process_main, args=(options, index, os.getpid()),
                                                name=f"hpo-worker-{index}")
    proc.start()
    return proc


class WorkerPool:
    """Worker processes kept running: :meth:`supervise` restarts any that died (a pause
    that doubles, up to ``MAX_RESTART_DELAY_S``, while a slot keeps dying at once).

    Args:
        n: worker processes.
        options: how they run.
    """

    def __init__(self, n: int, options: WorkerOptions):
        self.options = options
        self.procs: list[mp.Process] = []
        self._delay_s = [RESTART_DELAY_S] * n
        self._due = [0.0] * n
        self._started = [0.0] * n
        for index in range(n):
            self._start(index)

    def _start(self, index: int) -> None:
        proc = _start_process(self.options, index)
        if index < len(self.procs):
            self.procs[index] = proc
        else:
            self.procs.append(proc)
        self._started[index] = time.monotonic()

    def alive(self) -> int:
        """How many worker processes are alive now."""
        return sum(1 for p in self.procs if p.is_alive())

    def supervise(self) -> int:
        """Restart the workers that died (once each one's pause is over).

        Returns:
            How many were restarted.
        """
        restarted = 0
        now = time.monotonic()
        for index, proc in enumerate(self.procs):
            if proc.is_alive():
                continue
            if not self._due[index]:
                proc.join()
                lived_s = now - self._started[index]
                # One that ran a while died of something rare: restart at once; one that dies at start, slower.
                self._delay_s[index] = (RESTART_DELAY_S if lived_s > MAX_RESTART_DELAY_S
                                        else min(MAX_RESTART_DELAY_S, self._delay_s[index] * 2))
                self._due[index] = now + self._delay_s[index]
                log.warning("worker %d exited (code %s); restarting it in %.0f s", index, proc.exitcode,
                            self._delay_s[index])
            if now >= self._due[index]:
                self._due[index] = 0.0
                self._start(index)
                restarted += 1
        return restarted

    def run_supervisor(self, stop: threading.Event, interval_s: float = 1.0) -> threading.Thread:
        """Supervise in a daemon thread until ``stop`` is set."""
        def loop() -> None:
            while not stop.wait(interval_s):
                self.supervise()

        thread = threading.Thread(target=loop, name="hpo-worker-supervisor", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop every worker (see :func:`stop_worker_processes`)."""
        stop_worker_processes(self.procs)


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

