"""A study's life on Optuna's storage: create, read its spec back, derive its state, cancel, resume.

Everything here is stored in Optuna's own tables (the spec and the cancel flag are study
user attributes), so the database is the only state that the CLI, the HTTP service and
any number of workers share.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import groupby
from operator import attrgetter
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from hpo.jsonable import finite, utc_time
from hpo.spec import StudySpec, parse_spec
from hpo.storage import (
    Settled, StateAggregate, aggregate_trials, best_numbers, count_trials, read_trials, study_flags, trial_id_of,
    trial_ids_sorted, trials_by_score,
)

SPEC_ATTR = "hpo:spec"
CANCELLED_ATTR = "hpo:cancelled"
ERROR_ATTR = "hpo:error"  # why the study cannot run (set by a worker); the study is failed
ENQUEUED_ATTR = "hpo:enqueued"
FAIL_REASON_ATTR = "fail_reason"
SURPLUS_ATTR = "surplus"
CV_LOSS_ATTR = "cv_loss"
FOLD_BEST_EPOCHS_ATTR = "fold_best_epochs"
STATES = ("queued", "running", "completed", "cancelled", "failed")
# A study whose first trials all fail stops after this many (a broken dataset, say).
FAILURES_BEFORE_GIVING_UP = 3
# Cost model of a trial (see trial_cost): gate matrices per recurrent cell, and a training
# step's fixed cost (Python, kernel launches) in multiply-adds, fitted to the engine's
# times of bench_speed.py's six configurations on one CPU core (docs/performance.md).
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
STEP_OVERHEAD_MACS = 5e5


def create_study(storage: BaseStorage, spec: StudySpec, study_name: str | None = None) -> optuna.Study:
    """Create the study of ``spec``, or load it when one of that name exists (resume).

    The spec is stored with the study; ``enqueue_trials`` are queued once, on creation, the
    costliest first (see :func:`trial_cost`): workers take queued trials in order, so the
    longest ones start first and several workers finish together.

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
    if study.user_attrs.get(ERROR_ATTR):
        study.set_user_attr(ERROR_ATTR, None)  # a new spec: a new chance
    if not study.user_attrs.get(ENQUEUED_ATTR):
        for params in sorted(spec.enqueue_trials, key=lambda params: -trial_cost(params, spec)):
            study.enqueue_trial(params)
        study.set_user_attr(ENQUEUED_ATTR, True)
    return study


def trial_cost(params: dict[str, Any], spec: StudySpec) -> float:
    """A trial's training cost relative to the other trials of its study (arbitrary units).

    A trial trains ``folds x epochs x rows / batch_size`` steps; a step costs a fixed
    overhead plus its recurrent matrix products, ``batch_size x gates x hidden_size^2``
    multiply-adds per layer and direction. Per row and epoch of a fold that is
    ``layers x directions x (STEP_OVERHEAD_MACS / batch_size + gates x hidden_size^2)``.
    The dataset's rows, the folds and the epochs multiply every trial of a study alike, so
    they are left out. A parameter that ``params`` leaves to the sampler counts at the
    middle of its search range (or its fixed value).

    Args:
        params: an entry of ``enqueue_trials`` (parameter name -> value).
        spec: the study's spec.
    """
    def value(name: str, default: Any) -> Any:
        if name in params:
            return params[name]
        param = getattr(spec.search_space, name)
        if param is None:
            return default
        if param.value is not None:
            return param.value
        if param.choices is not None:
            return sorted(param.choices)[len(param.choices) // 2]
        return math.sqrt(param.low * param.high) if param.log else (param.low + param.high) / 2

    batch, hidden = float(value("batch_size", None)), float(value("hidden_size", None))
    layers, cell = float(value("num_layers", spec.model.num_layers)), value("cell", spec.model.cell)
    directions = 2 if spec.model.bidirectional else 1
    return layers * directions * (STEP_OVERHEAD_MACS / batch + GATES[cell] * hidden**2)


def study_spec(study: optuna.Study) -> StudySpec:
    """The spec stored with a study.

    Raises:
        KeyError: when the study was not created by hpo.
    """
    return parse_spec(study.user_attrs[SPEC_ATTR])


def set_cancelled(storage: BaseStorage, study_name: str, cancelled: bool) -> None:
    """Cancel a study (running trials stop at their next epoch) or resume it."""
    storage.set_study_user_attr(storage.get_study_id_from_name(study_name), CANCELLED_ATTR, cancelled)


def fail_study(storage: BaseStorage, study_name: str, reason: str) -> None:
    """Mark a study failed for ``reason`` (it cannot run; workers leave it and go on).

    By name: a deleted study's id may already belong to a new study (SQLite reuses ids).

    Raises:
        KeyError: no study has that name (any more).
    """
    storage.set_study_user_attr(storage.get_study_id_from_name(study_name), ERROR_ATTR, reason)


def clear_failure(storage: BaseStorage, study_name: str) -> None:
    """Forget why a study could not run (a worker's ``fail_study``): workers try it again.

    Raises:
        KeyError: no study has that name (any more).
    """
    storage.set_study_user_attr(storage.get_study_id_from_name(study_name), ERROR_ATTR, None)


def is_cancelled(storage: BaseStorage, study_id: int) -> bool:
    return bool(storage.get_study_user_attrs(study_id).get(CANCELLED_ATTR))


def is_surplus(trial: FrozenTrial) -> bool:
    """A trial started by one worker while others had already used up the budget."""
    return bool(trial.user_attrs.get(SURPLUS_ATTR))


def _finite_or_worst(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.inf
    return number if math.isfinite(number) else math.inf


def _score(trial: FrozenTrial, direction: str) -> float:
    """The first part of :func:`rank_key`: the trial's value, negated when the study maximizes."""
    score = _finite_or_worst(trial.value)
    return -score if direction == "maximize" and score != math.inf else score


def rank_key(trial: FrozenTrial, direction: str) -> tuple[float, float, float, int]:
    """The order of complete trials, best first: the one ranking of ``/best``, the sorted
    trial list, ``hpo best``, the study page and the model fit.

    A higher score (lower, when the study minimizes) wins; on equal scores the lower mean
    validation loss (user attribute ``cv_loss``), then fewer epochs (the mean of
    ``fold_best_epochs``), then the earlier trial. Whatever is missing or not finite ranks
    worst (trials older than those attributes lack them).

    Args:
        trial: a complete trial.
        direction: the study's ``maximize`` or ``minimize``.

    Returns:
        A key for ``sorted``/``min``: smaller is better.
    """
    epochs = trial.user_attrs.get(FOLD_BEST_EPOCHS_ATTR)
    try:
        mean_epochs = statistics.fmean(epochs) if epochs else math.inf
    except (TypeError, ValueError):
        mean_epochs = math.inf
    return (_score(trial, direction), _finite_or_worst(trial.user_attrs.get(CV_LOSS_ATTR)),
            _finite_or_worst(mean_epochs), trial.number)


def ranked(trials: Iterable[FrozenTrial], direction: str) -> list[FrozenTrial]:
    """The complete trials among ``trials``, best first (see :func:`rank_key`).

    Sorted by score first, and by the whole key only where scores tie: the same order, without
    working out the key of each of tens of thousands of trials."""
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: _score(t, direction))
    out: list[FrozenTrial] = []
    for _, group in groupby(complete, key=lambda t: _score(t, direction)):
        tied = list(group)
        out.extend(sorted(tied, key=lambda t: rank_key(t, direction)) if len(tied) > 1 else tied)
    return out


def best_of(trials: Iterable[FrozenTrial], direction: str) -> FrozenTrial | None:
    """The best complete trial (see :func:`rank_key`), or ``None`` when none has completed."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    scores = [_score(t, direction) for t in complete]
    top = min(scores)
    return min((t for t, score in zip(complete, scores) if score == top), key=lambda t: rank_key(t, direction))


# What breaks ties between equal scores (rank_key), read for the trials tied on a page.
RANK_ATTRS = frozenset({CV_LOSS_ATTR, FOLD_BEST_EPOCHS_ATTR})


def trial_page(storage: RDBStorage, study_id: int, direction: str, sort: str, *,
               states: Iterable[TrialState] | None = None, limit: int, offset: int) -> tuple[list[int], int]:
    """One page of a study's trials in the order ``sort`` names, ordered and cut in SQL (no
    read of every trial): ``number``, ``value``, ``duration_s`` or ``started_at``, ``-``
    first for descending (``hpo.storage.trial_ids_sorted``: trials without the quantity
    last); or ``best``: the complete trials ranked as :func:`ranked` ranks them (only
    trials tied on the page have their ranking attributes read), then the others by number.

    Args:
        storage: the study's RDB storage.
        study_id: the study's id in it.
        direction: the study's ``maximize`` or ``minimize``.
        sort: the order.
        states: only trials in these states (all when not given).
        limit: trials per page.
        offset: trials skipped.

    Returns:
        The page's trial ids in order (``hpo.storage.trial_id_of`` tells a trial's), and how
        many trials match.

    Raises:
        ValueError: an unknown ``sort``.
    """
    descending, name = sort.startswith("-"), sort.lstrip("-")
    if name != "best":
        return trial_ids_sorted(storage, study_id, by=name, states=states, descending=descending, limit=limit,
                                offset=offset)
    wanted = set(TrialState) if states is None else set(states)
    ids: list[int] = []
    n_complete = count_trials(storage, study_id, [TrialState.COMPLETE]) if TrialState.COMPLETE in wanted else 0
    if offset < n_complete:
        candidates, before = trials_by_score(storage, study_id, maximize=direction == "maximize", limit=limit,
                                             offset=offset, attr_keys=RANK_ATTRS)
        ids = [trial_id_of(t) for t in ranked(candidates, direction)[offset - before:offset - before + limit]]
    others = wanted - {TrialState.COMPLETE}
    if not others:
        return ids, n_complete
    rest, n_others = trial_ids_sorted(storage, study_id, states=others, limit=limit - len(ids),
                                      offset=max(0, offset - n_complete))
    return ids + rest, n_complete + n_others


# Past this many trials tied for the best score, their ranking attributes are read by state.
_TIES_BY_NUMBER = 1000


def summary_trials(storage: RDBStorage, study_id: int, direction: str,
                   settled: Settled | None = None) -> list[FrozenTrial]:
    """Every trial of a study with what :func:`progress` and the best trial look at, and no
    more: number, state, value, times and system attributes; of the failed trials and of the
    complete trials tied for the best score, the user attributes :func:`progress` and
    :func:`rank_key` read. A study of 50,000 trials is read in a tenth of the time of a full
    read (no parameters, per-epoch values or other user attributes).

    The trials are for :func:`progress` and :func:`best_of` (and anything else reading only
    those parts: :func:`ranked` would miss the attributes of trials not tied for the best).

    Args:
        storage: the study's RDB storage.
        study_id: the study's id in it.
        direction: the study's ``maximize`` or ``minimize``.
        settled: only the trials it names (all when not given).

    Raises:
        KeyError: no study has that id.
    """
    trials = read_trials(storage, study_id, settled=settled, parts={"values", "system_attrs"})
    by_number = {t.number: t for t in trials}
    keys = RANK_ATTRS | {SURPLUS_ATTR, FAIL_REASON_ATTR}

    def add_user_attrs(found: list[FrozenTrial]) -> None:
        for trial in found:
            by_number[trial.number].user_attrs.update(trial.user_attrs)

    if any(t.state is TrialState.FAIL for t in trials):
        add_user_attrs(read_trials(storage, study_id, states=[TrialState.FAIL], settled=settled, parts={"user_attrs"},
                                   attr_keys=keys))
    scores = [(_score(t, direction), t.number) for t in trials if t.state is TrialState.COMPLETE]
    if scores:
        top = min(scores)[0]
        tied = [number for score, number in scores if score == top]
        if len(tied) > _TIES_BY_NUMBER:
            add_user_attrs(read_trials(storage, study_id, states=[TrialState.COMPLETE], settled=settled,
                                       parts={"user_attrs"}, attr_keys=keys))
        elif len(tied) > 1:
            add_user_attrs(read_trials(storage, study_id, numbers=tied, parts={"user_attrs"}, attr_keys=keys))
    return trials


_MICROSECOND = dt.timedelta(microseconds=1)


@dataclass
class Tally:
    """A study's trials boiled down to what :func:`progress` derives its state from: the same
    from every trial (:meth:`of`) or from aggregates in the database (:func:`tally_trials`).
    Surplus trials (failed, started past the budget by a racing worker) are left out of all
    but ``last_event``.

    Attributes:
        counts: trials per state.
        started_at: the earliest start.
        finished_at: the latest finish.
        duration_us: the sum of the complete and pruned trials' durations, in microseconds.
        n_durations: how many complete and pruned trials have both times.
        best: ``(number, value)`` of the best complete trial (:func:`best_of`).
        best_rank: its :func:`rank_key` (what :meth:`merged` compares).
        last_event: when any trial last started or finished, surplus ones too (the event id
            of what was read).
        failures_not_retried: failed trials that no retry replaced, and
        last_failure_reason: the last failed trial's ``fail_reason``; both only while no
            trial has finished (the only time :func:`progress` looks at them).
    """

    counts: Counter[TrialState]
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    duration_us: int = 0
    n_durations: int = 0
    best: tuple[int, float] | None = None
    best_rank: tuple[float, float, float, int] | None = None
    last_event: dt.datetime | None = None
    failures_not_retried: int = 0
    last_failure_reason: str | None = None

    @property
    def finished(self) -> int:
        return self.counts[TrialState.COMPLETE] + self.counts[TrialState.PRUNED]

    @classmethod
    def of(cls, trials: list[FrozenTrial], direction: str, *, details: bool = True, times: bool = True) -> Tally:
        """The tally of ``trials``: counts and the failure rules' figures always; the start
        with ``times``; the best trial, the finish, the durations and the last event with
        ``details`` (what a person reads; a worker's check before each trial needs none)."""
        failed = TrialState.FAIL
        # Surplus trials have all failed: only failed trials need their attributes looked at.
        kept = [t for t in trials if t.state is not failed or not is_surplus(t)]
        tally = cls(Counter(map(attrgetter("state"), kept)))
        if times or details:
            tally.started_at = min((t.datetime_start for t in kept if t.datetime_start), default=None)
        if not tally.finished:
            tally.failures_not_retried = _failures_not_retried(kept)
            last_failure = max((t for t in kept if t.state is failed), key=attrgetter("number"), default=None)
            tally.last_failure_reason = last_failure.user_attrs.get(FAIL_REASON_ATTR) if last_failure else None
        if details:
            best = best_of(kept, direction)
            if best is not None:
                tally.best, tally.best_rank = (best.number, best.value), rank_key(best, direction)
            tally.finished_at = max((t.datetime_complete for t in kept if t.datetime_complete), default=None)
            timed = [t for t in kept if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                     and t.datetime_start and t.datetime_complete]
            tally.duration_us = sum((t.datetime_complete - t.datetime_start) // _MICROSECOND for t in timed)
            tally.n_durations = len(timed)
            tally.last_event = max((m for t in trials for m in (t.datetime_start, t.datetime_complete) if m),
                                   default=None)
        return tally

    def merged(self, other: Tally) -> Tally:
        """The tally of this tally's trials and ``other``'s (no trial in both), both tallied
        with details, once some trial has finished: the failure rules' figures, which need
        every trial and matter only before any trial finishes, are left at zero."""
        best = min((t for t in (self, other) if t.best is not None), key=attrgetter("best_rank"), default=None)
        return Tally(self.counts + other.counts,
                     started_at=min((t.started_at for t in (self, other) if t.started_at), default=None),
                     finished_at=max((t.finished_at for t in (self, other) if t.finished_at), default=None),
                     duration_us=self.duration_us + other.duration_us, n_durations=self.n_durations + other.n_durations,
                     best=best and best.best, best_rank=best and best.best_rank,
                     last_event=max((t.last_event for t in (self, other) if t.last_event), default=None))

    @classmethod
    def aggregated(cls, groups: Iterable[StateAggregate]) -> Tally:
        """The tally of a study's trials aggregated in SQL (``hpo.storage.aggregate_trials``,
        flagged by :data:`SURPLUS_ATTR`): counts and times; no best trial, and the failure
        rules' figures left at zero (they need the trials: :meth:`of`)."""
        groups = list(groups)
        kept = [g for g in groups if g.state is not TrialState.FAIL or not g.flag]  # as is_surplus
        finished = [g for g in kept if g.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        counts: Counter[TrialState] = Counter()
        for g in kept:
            counts[g.state] += g.count
        return cls(counts,
                   started_at=min((g.first_start for g in kept if g.first_start), default=None),
                   finished_at=max((g.last_complete for g in kept if g.last_complete), default=None),
                   duration_us=sum(g.duration_us for g in finished),
                   n_durations=sum(g.n_durations for g in finished),
                   last_event=max((m for g in groups for m in (g.last_start, g.last_complete) if m), default=None))


def tally_trials(storage: RDBStorage, study_id: int, direction: str, *, settled: Settled | None = None,
                 plus: Sequence[FrozenTrial] = ()) -> Tally:
    """:meth:`Tally.of` every trial of a study, worked out in the database: counts and times
    in one aggregate query (``hpo.storage.aggregate_trials``, surplus failed trials told
    apart by their flag), the candidates for the best trial (its ties' ranking attributes)
    read narrowly. A study of 50,000 trials is tallied without reading them. While no trial
    has finished, the failure rules look at every trial: then from :func:`summary_trials`.

    Args:
        storage: the study's RDB storage.
        study_id: the study's id in it.
        direction: the study's ``maximize`` or ``minimize``.
        settled: only the trials it names (all when not given)...
        plus: ... and these trials, read by the caller (none of them among those).

    Raises:
        KeyError: no study has that id.
    """
    tally = Tally.aggregated(aggregate_trials(storage, SURPLUS_ATTR, study_id, settled).get(study_id, ()))
    read = Tally.of(list(plus), direction)
    if not tally.finished and not read.finished:
        return Tally.of(summary_trials(storage, study_id, direction, settled) + list(plus), direction)
    best = _best_in_database(storage, study_id, direction, settled)
    if best is not None:
        tally.best, tally.best_rank = (best.number, best.value), rank_key(best, direction)
    return tally.merged(read) if plus else tally


def _best_in_database(storage: RDBStorage, study_id: int, direction: str,
                      settled: Settled | None = None) -> FrozenTrial | None:
    """The best complete trial (with its value and ranking attributes only): the trials of
    the best value found in SQL, ranked by their attributes where they tie."""
    numbers = best_numbers(storage, study_id, maximize=direction == "maximize", limit=1, settled=settled)
    by_state = len(numbers) > _TIES_BY_NUMBER
    candidates = read_trials(storage, study_id, numbers=None if by_state else numbers, states=[TrialState.COMPLETE],
                             parts={"values", "user_attrs"}, attr_keys=RANK_ATTRS) if numbers else []
    if by_state:
        wanted = set(numbers)
        candidates = [t for t in candidates if t.number in wanted]
    return best_of(candidates, direction)


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
    timed_out: bool = False

    @property
    def finished(self) -> int:
        """Trials that count against the budget: complete or pruned."""
        return self.complete + self.pruned

    @property
    def runnable(self) -> bool:
        """Whether a worker may start another trial now."""
        return (self.state in ("queued", "running") and not self.timed_out
                and self.finished + self.running < self.n_trials)

    def as_dict(self) -> dict[str, Any]:
        """The progress as JSON-ready data: what ``hpo run`` prints and every API answer about a
        study carries (non-finite numbers become ``None``, times ISO 8601 in UTC)."""
        return {
            "state": self.state,
            "n_trials": self.n_trials,
            "trials": {"complete": self.complete, "pruned": self.pruned, "failed": self.failed,
                       "running": self.running, "waiting": self.waiting},
            "best_value": finite(self.best_value),
            "best_trial": self.best_trial,
            "started_at": utc_time(self.started_at),
            "finished_at": utc_time(self.finished_at),
            "eta_s": finite(self.eta_s),
            "reason": self.reason,
        }


def _failures_not_retried(trials: list[FrozenTrial]) -> int:
    """Failed trials that no retry replaced: a dead worker's trial, failed and queued again
    (``RetryHeartbeatStaleTrialCallback``), says nothing about whether the study can run."""
    failed = [t for t in trials if t.state is TrialState.FAIL]
    if not failed:
        return 0
    retried = {RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials} - {None}
    return sum(1 for t in failed if t.number not in retried)


def study_states(storage: RDBStorage, specs: Mapping[str, StudySpec],
                 now: dt.datetime | None = None) -> dict[str, str]:
    """The state of each study of ``specs`` (Optuna study name -> its spec), as
    :func:`progress` derives it (over a :class:`Tally`), from one aggregate of every study's
    trials by state in SQL (``hpo.storage.aggregate_trials``) and one read of the studies'
    flags: a filter over thousands of studies without reading their trials. A study none of
    whose trials has finished, and enough of them failed, is read (its
    :func:`summary_trials`): whether it gave up depends on which failures were retried.

    Args:
        storage: the RDB storage.
        specs: the studies, by Optuna study name.
        now: the moment ``budget.timeout_s`` is measured to (default: now).

    Returns:
        Optuna study name -> state (studies not in the storage are left out).
    """
    now = now or dt.datetime.now()
    flags = study_flags(storage, (CANCELLED_ATTR, ERROR_ATTR))
    aggregates = aggregate_trials(storage, SURPLUS_ATTR)
    out = {}
    for name, spec in specs.items():
        if name not in flags:
            continue
        study_id, attrs = flags[name]
        tally = Tally.aggregated(aggregates.get(study_id, ()))
        if not tally.finished and tally.counts[TrialState.FAIL] >= min(spec.n_trials, FAILURES_BEFORE_GIVING_UP):
            # whether it gave up depends on which failures were retried
            tally = Tally.of(summary_trials(storage, study_id, spec.direction), spec.direction, details=False)
        out[name] = progress(None, spec, now, tally=tally, cancelled=bool(attrs.get(CANCELLED_ATTR)),
                             error=attrs.get(ERROR_ATTR), details=False).state
    return out


def progress(study: optuna.Study | None, spec: StudySpec, now: dt.datetime | None = None, *,
             trials: list[FrozenTrial] | None = None, tally: Tally | None = None, cancelled: bool | None = None,
             error: str | None = None, details: bool = True) -> Progress:
    """Derive a study's state from its trials (and its cancel flag; nothing else is consulted).

    ``failed`` trials exclude surplus ones (started past the budget by a racing worker).

    Args:
        study: the study (not read when ``trials`` or ``tally`` and the flags are given).
        spec: its spec.
        now: the moment ``budget.timeout_s`` is measured to (default: now).
        trials: the study's trials, when the caller has just read them (a worker's one read
            per trial serves its study pick, this and its budget check); read here otherwise.
        tally: the study's trials already tallied (:func:`tally_trials`, worked out in the
            database): then ``trials`` are not read.
        cancelled: the study's cancel flag, when the caller has it (from a study listing);
            read from the study otherwise, with its error.
        error: why the study cannot run (see :func:`fail_study`), when the caller has read
            its flags; read with the cancel flag otherwise.
        details: also the best trial, the start and finish times and the ETA (what a person
            reads). Without them only the state, its reason and the counts are derived: what
            a worker needs before each trial, at a fraction of the cost on a large study.
    """
    if tally is None:
        if trials is None:
            trials = study.get_trials(deepcopy=False)
        tally = Tally.of(trials, spec.direction, details=details, times=bool(spec.budget.timeout_s))
    if cancelled is None:
        attrs = study.user_attrs
        cancelled, error = bool(attrs.get(CANCELLED_ATTR)), attrs.get(ERROR_ATTR)
    counts = tally.counts
    prog = Progress(
        state="queued",
        n_trials=spec.n_trials,
        complete=counts[TrialState.COMPLETE],
        pruned=counts[TrialState.PRUNED],
        failed=counts[TrialState.FAIL],
        running=counts[TrialState.RUNNING],
        waiting=counts[TrialState.WAITING],
    )
    started_at = tally.started_at
    now = now or dt.datetime.now()

    prog.started_at = started_at
    # Past the timeout no trial starts, and the running ones stop at their next epoch: the
    # study ends when the last of them has.
    prog.timed_out = timed_out = bool(
        spec.budget.timeout_s and started_at and (now - started_at).total_seconds() > spec.budget.timeout_s
    )
    gave_up = prog.finished == 0 and tally.failures_not_retried >= min(prog.n_trials, FAILURES_BEFORE_GIVING_UP)
    if cancelled:
        prog.state = "cancelled"
    elif error:
        prog.state, prog.reason = "failed", error
    elif prog.finished >= prog.n_trials or (timed_out and prog.finished > 0 and not prog.running):
        prog.state = "completed"
        prog.reason = None if prog.finished >= prog.n_trials else f"budget.timeout_s ({spec.budget.timeout_s:g}) reached"
    elif gave_up or (timed_out and prog.finished == 0 and not prog.running):
        prog.state = "failed"
        prog.reason = tally.last_failure_reason or "timed out"
    elif counts.total():
        prog.state = "running"
    if not details:
        return prog

    if tally.best is not None:
        prog.best_trial, prog.best_value = tally.best
    if prog.state in ("completed", "failed", "cancelled") and not prog.running:
        prog.finished_at = tally.finished_at
    elif prog.state in ("queued", "running") and tally.n_durations:
        remaining = prog.n_trials - prog.finished
        prog.eta_s = tally.duration_us / (1_000_000 * tally.n_durations) * remaining / max(1, prog.running)
        if spec.budget.timeout_s and started_at:  # no trial starts after the budget's end
            left = spec.budget.timeout_s - (now - started_at).total_seconds()
            prog.eta_s = min(prog.eta_s, max(0.0, left))
    return prog
