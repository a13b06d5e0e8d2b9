"""Tuning on this machine: ``hpo run`` and ``hpo best --storage``.

``hpo run`` is the same worker loop the service uses, pointed at one study: trials run
in ``jobs`` workers (one per core by default; the first one in this process, the others in
processes of their own) that coordinate through the storage.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.console import console, follow
from hpo.settings import DEFAULT_DATA_DIR, DEFAULT_GRACE_S, DEFAULT_HEARTBEAT_S
from hpo.spec import StudySpec
from hpo.storage import open_storage
from hpo.studies import FAIL_REASON_ATTR, best_of, create_study, is_surplus, progress, study_spec
from hpo.worker import WorkerOptions, start_worker_processes, stop_worker_processes, worker_loop


def best_trial(study: optuna.Study, spec: StudySpec) -> dict[str, Any] | None:
    """The best complete trial as plain data, or ``None`` while none has completed."""
    trial = best_of(study.get_trials(deepcopy=False), spec.direction)
    if trial is None:
        return None
    return {
        "study": study.study_name,
        "number": trial.number,
        "value": trial.value,
        "metric": spec.training.metric,
        "direction": spec.direction,
        "params": trial.params,
        "fold_scores": trial.user_attrs.get("fold_scores"),
        "fold_std": trial.user_attrs.get("fold_std"),
    }


def best(study_name: str, storage_url: str) -> tuple[dict[str, Any], str]:
    """The best trial of a stored study, and the metric it was scored with.

    Raises:
        KeyError: no such study in the storage.
        ValueError: no trial has completed yet.
    """
    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in storage.get_all_studies()) or "none"
        raise KeyError(f"no study {study_name!r} in {storage_url} (studies: {names})") from None
    spec = study_spec(study)
    found = best_trial(study, spec)
    if found is None:
        raise ValueError(f"study {study_name!r} has no completed trial yet")
    return found, spec.training.metric


def _start_method() -> str:
    """Fork the worker processes where that is safe: on Linux, from a process that runs no
    other thread and has not imported PyTorch (as ``hpo run`` has not, when it starts them).
    A forked worker skips the interpreter's start and the imports this process already made
    (~0.6 s of CPU each: docs/performance.md); anywhere else they are spawned."""
    safe = sys.platform == "linux" and threading.active_count() == 1 and "torch" not in sys.modules
    return "fork" if safe else "spawn"


def run(spec: StudySpec, storage_url: str, jobs: int | None = None, data_dir: str = DEFAULT_DATA_DIR,
        show_progress: bool = True) -> dict[str, Any] | None:
    """Run (or resume) the spec's study until its budget is spent; print each trial that failed
    in this run (one line on stderr, with its reason).

    Args:
        spec: the study spec (``spec.name`` names the study: running it again resumes it).
        storage_url: Optuna storage URL.
        jobs: trials in parallel (this process and ``jobs - 1`` worker processes, one
            PyTorch thread each); by default one per CPU core.
        data_dir: this machine's cache of uploaded datasets (fetched from the database).
        show_progress: draw the live progress bar.

    Returns:
        The best trial as data, or ``None`` when no trial completed.
    """
    storage = open_storage(storage_url, heartbeat_interval=DEFAULT_HEARTBEAT_S, grace_period=DEFAULT_GRACE_S)
    study = create_study(storage, spec)
    jobs = jobs or os.cpu_count() or 1
    options = WorkerOptions(database_url=storage_url, data_dir=data_dir, study_name=spec.name, until_idle=True)

    # Worker 0 runs in this process; the others get processes of their own, started before
    # this one imports PyTorch and the data libraries (in worker_loop), so that their
    # start-up overlaps its own.
    storage.engine.dispose()  # no connection of this process may be shared with a forked worker
    procs = start_worker_processes(jobs - 1, storage_url, data_dir=data_dir, study_name=spec.name,
                                   until_idle=True, threads=options.threads, first_index=1,
                                   start_method=_start_method()) if jobs > 1 else []
    stop = threading.Event()
    thread = threading.Thread(target=worker_loop, args=(options, 0, stop), daemon=True)
    thread.start()

    def alive() -> bool:
        return thread.is_alive() or any(p.is_alive() for p in procs)

    def shutdown() -> None:
        stop.set()
        stop_worker_processes(procs)
        thread.join()
    already_failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    try:
        if show_progress:
            follow(lambda: progress(study, spec).as_dict(), keep_going=alive)
            if spec.final_model.kind == "refit" and alive():
                console.print(f"study {progress(study, spec).state}: refitting the best trial on all the data "
                              f"({spec.final_model.seeds} seeds) for the final model...", highlight=False)
        # The workers return once the study has no work left, its final refit included.
        thread.join()
        for p in procs:
            p.join()
    finally:
        shutdown()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.number not in already_failed and not is_surplus(trial):
            console.print(f"trial {trial.number} failed: {trial.user_attrs.get(FAIL_REASON_ATTR, 'no reason recorded')}",
                          markup=False, highlight=False)
    found = best_trial(study, spec)
    if found is not None:
        console.print(final_model_line(storage, spec.name), markup=False, highlight=False)
    return found


def final_model_line(storage: Any, study_name: str) -> str:
    """One line on the study's final model: the kind served, and its refit's state."""
    from hpo.export.commands import describe
    from hpo.export.jobs import model_status

    status = model_status(storage, study_name)
    if status is None:
        return "final model: none stored"
    return f"final model: {describe(status)} (hpo model download {study_name} --database URL)"
