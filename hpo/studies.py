"""A study's life on Optuna's storage: create, read its spec back, derive its state, cancel, resume.

Everything here is stored in Optuna's own tables (the spec and the cancel flag are study
user attributes), so the database is the only state that the CLI, the HTTP service and
any number of workers share.
"""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from hpo.spec import StudySpec, parse_spec

SPEC_ATTR = "hpo:spec"
CANCELLED_ATTR = "hpo:cancelled"
ENQUEUED_ATTR = "hpo:enqueued"
FAIL_REASON_ATTR = "fail_reason"
SURPLUS_ATTR = "surplus"
STATES = ("queued", "running", "completed", "cancelled", "failed")
# A study whose first trials all fail stops after this many (a broken dataset, say).
FAILURES_BEFORE_GIVING_UP = 3


def create_study(storage: BaseStorage, spec: StudySpec, study_name: str | None = None) -> optuna.Study:
    """Create the study of ``spec``, or load it when one of that name exists (resume).

    The spec is stored with the study; ``enqueue_trials`` are queued once, on creation.

    Args:
        storage: the Optuna storage.
        spec: the validated spec.
        study_name: the Optuna study name; ``spec.name`` when not given (the HTTP service
            gives a unique one, since many users may pick the same spec name).

    Raises:
        ValueError: when a study of that name exists with another direction.
    """
    study = optuna.create_study(
        study_name=study_name or spec.name, storage=storage, direction=spec.direction, load_if_exists=True
    )
    if study.direction.name.lower() != spec.direction:
        raise ValueError(
            f"name: study {spec.name!r} exists and {study.direction.name.lower()}s; this spec "
            f"{spec.direction}s ({spec.training.metric}). Pick another name."
        )
    study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
    if not study.user_attrs.get(ENQUEUED_ATTR):
        for params in spec.enqueue_trials:
            study.enqueue_trial(params)
        study.set_user_attr(ENQUEUED_ATTR, True)
    return study


def study_spec(study: optuna.Study) -> StudySpec:
    """The spec stored with a study.

    Raises:
        KeyError: when the study was not created by hpo.
    """
    return parse_spec(study.user_attrs[SPEC_ATTR])


def set_cancelled(storage: BaseStorage, study_name: str, cancelled: bool) -> None:
    """Cancel a study (running trials stop at their next epoch) or resume it."""
    storage.set_study_user_attr(storage.get_study_id_from_name(study_name), CANCELLED_ATTR, cancelled)


def is_cancelled(storage: BaseStorage, study_id: int) -> bool:
    return bool(storage.get_study_user_attrs(study_id).get(CANCELLED_ATTR))


def is_surplus(trial: FrozenTrial) -> bool:
    """A trial started by one worker while others had already used up the budget."""
    return bool(trial.user_attrs.get(SURPLUS_ATTR))


@dataclass
class Progress:
    """What a person (or a scheduler) wants to know about a study right now."""

    state: str
    n_trials: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    eta_s: float | None = None
    reason: str | None = None

    @property
    def finished(self) -> int:
        """Trials that count against the budget: complete or pruned."""
        return self.complete + self.pruned

    @property
    def runnable(self) -> bool:
        """Whether a worker may start another trial now."""
        return self.state in ("queued", "running") and self.finished + self.running < self.n_trials

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "n_trials": self.n_trials,
            "trials": {"complete": self.complete, "pruned": self.pruned, "failed": self.failed,
                       "running": self.running, "waiting": self.waiting},
            "best_value": self.best_value,
            "best_trial": self.best_trial,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "eta_s": self.eta_s,
            "reason": self.reason,
        }


def progress(study: optuna.Study, spec: StudySpec, now: dt.datetime | None = None) -> Progress:
    """Derive a study's state from its trials (nothing else is consulted).

    ``failed`` trials exclude surplus ones (started past the budget by a racing worker).
    """
    trials = [t for t in study.get_trials(deepcopy=False) if not is_surplus(t)]
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    prog = Progress(
        state="queued",
        n_trials=spec.n_trials,
        complete=len(by_state[TrialState.COMPLETE]),
        pruned=len(by_state[TrialState.PRUNED]),
        failed=len(by_state[TrialState.FAIL]),
        running=len(by_state[TrialState.RUNNING]),
        waiting=len(by_state[TrialState.WAITING]),
    )
    complete = by_state[TrialState.COMPLETE]
    if complete:
        pick = max if spec.direction == "maximize" else min
        best = pick(complete, key=lambda t: t.value)
        prog.best_value, prog.best_trial = best.value, best.number
    starts = [t.datetime_start for t in trials if t.datetime_start]
    prog.started_at = min(starts) if starts else None
    now = now or dt.datetime.now()

    timed_out = bool(
        spec.budget.timeout_s and prog.started_at
        and (now - prog.started_at).total_seconds() > spec.budget.timeout_s
    )
    last_failure = max(by_state[TrialState.FAIL], key=lambda t: t.number, default=None)
    gave_up = prog.finished == 0 and prog.failed >= min(spec.n_trials, FAILURES_BEFORE_GIVING_UP)
    if study.user_attrs.get(CANCELLED_ATTR):
        prog.state = "cancelled"
    elif prog.finished >= spec.n_trials or (timed_out and prog.finished > 0):
        prog.state = "completed"
        prog.reason = None if prog.finished >= spec.n_trials else f"budget.timeout_s ({spec.budget.timeout_s:g}) reached"
    elif gave_up or (timed_out and prog.finished == 0):
        prog.state = "failed"
        prog.reason = (last_failure.user_attrs.get(FAIL_REASON_ATTR) if last_failure else None) or "timed out"
    elif trials:
        prog.state = "running"

    if prog.state in ("completed", "failed", "cancelled") and not prog.running:
        ends = [t.datetime_complete for t in trials if t.datetime_complete]
        prog.finished_at = max(ends) if ends else None
    elif prog.state in ("queued", "running"):
        durations = [
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in complete + by_state[TrialState.PRUNED]
            if t.datetime_start and t.datetime_complete
        ]
        if durations:
            remaining = spec.n_trials - prog.finished
            prog.eta_s = statistics.mean(durations) * remaining / max(1, prog.running)
    return prog
