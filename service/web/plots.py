"""What the study page plots, aggregated on the server and shaped as compact arrays.

A study may hold tens of thousands of trials with tens of per-epoch values each: the page
gets column arrays of the complete trials (history and parallel coordinates; sampled past
``HISTORY_MAX_POINTS``, the best-so-far line and the best trials kept exact), the learning
curves of a few trials only (downsampled), and parameter importances computed once per
number of complete trials.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
import copy
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any

import optuna
from optuna.importance import BaseImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import FrozenTrial, TrialState

from hpo.jsonable import finite
from hpo.spec import TUNED_PARAMS, StudySpec
from hpo.storage import study_storage
from hpo.studies import ranked
from service.views import TRIAL_STATE_NAMES

# PED-ANOVA contrasts the best 10 % of the complete trials (its default target quantile) with
# all of them: below 11 trials that best group is one trial, and the shares only say where
# that one point lies (4 trials gave every parameter about 20 %), so none are shown.
MIN_TRIALS_FOR_IMPORTANCE = 11
DEFAULT_CURVE_POINTS = 200
# The history sends at most this many complete trials (and a few more that must be exact):
# a plotted scatter of 50,000 points takes the browser seconds, and says no more.
HISTORY_MAX_POINTS = 2000
PARALLEL_LINES = 300  # the best trials the page's parallel coordinates draw (study.js: PARALLEL_MAX_LINES)
# The importances are computed over at most this many complete trials (a sample past it).
IMPORTANCE_MAX_TRIALS = 2000


def search_space_view(spec: StudySpec) -> list[dict[str, Any]]:
    """The searched parameters (the five tuned ones first), with their bounds or choices.

    ``fixed`` holds the value of a parameter that is not searched (``None`` otherwise).
    """
    names = [n for n, _ in spec.search_space.items()]
    ordered = [n for n in TUNED_PARAMS if n in names] + [n for n in names if n not in TUNED_PARAMS]
    out = []
    for name in ordered:
        param = getattr(spec.search_space, name)
        out.append({
            "name": name,
            "kind": "categorical" if param.choices is not None else spec.search_space.kind(name),
            "low": param.low,
            "high": param.high,
            "log": bool(param.log),
            "choices": param.choices,
            "fixed": param.value,
        })
    return out


def complete_columns(values: Sequence[tuple[int, float | None]], param_names: Sequence[str], direction: str,
                     read_params: Callable[[list[int]], Sequence[FrozenTrial]],
                     max_points: int = HISTORY_MAX_POINTS) -> dict[str, Any]:
    """The complete trials as columns: ``number``, ``value`` and one list per parameter,
    plus ``total``, how many trials are complete.

    Enough for the optimization history (value and best so far by trial number) and the
    parallel-coordinates view, at a few numbers per trial. Past ``max_points`` complete
    trials, a sample (in number order; see :func:`history_sample`) keeps what the page draws
    exact: the best-so-far line and the best trials' parallel coordinates.

    Args:
        values: ``(number, value)`` of each complete trial, in number order
            (``hpo.storage.complete_values``).
        param_names: the parameters to send.
        direction: the study's ``maximize`` or ``minimize``.
        read_params: the trials of the given numbers with their parameters (only the
            sampled ones are read).
        max_points: the size of the sample.
    """
    shown = [finite(value) for _, value in values]
    picked = history_sample(shown, direction, max_points)
    numbers = [values[i][0] for i in picked]
    params = {t.number: t.params for t in read_params(numbers)} if param_names and numbers else {}
    return {
        "number": numbers,
        "value": [shown[i] for i in picked],
        "params": {name: [finite(params.get(n, {}).get(name)) for n in numbers] for name in param_names},
        "total": len(values),
    }


def pruned_columns(last_values: Sequence[tuple[int, float]], max_points: int = HISTORY_MAX_POINTS) -> dict[str, Any]:
    """The pruned trials that reported an epoch: ``number`` and ``value``, the last score they
    reported (an inner-validation score where they were stopped, not a CV score), plus
    ``total``; past ``max_points``, evenly spaced ones in number order (they draw no line).

    Args:
        last_values: ``(number, last reported score)`` of each, in number order
            (``hpo.storage.last_reported``).
        max_points: the size of the sample.
    """
    n = len(last_values)
    picked = range(n) if n <= max_points else sorted({round(k * (n - 1) / (max_points - 1)) for k in range(max_points)})
    return {
        "number": [last_values[i][0] for i in picked],
        "value": [finite(last_values[i][1]) for i in picked],
        "total": n,
    }


def history_sample(values: Sequence[float | None], direction: str, max_points: int) -> list[int]:
    """Which of the complete trials' values (in trial-number order) the history sends: all
    of them up to ``max_points``; past it, every trial that set a new best (so the
    best-so-far line drawn from the sample is the exact one), every trial whose value is
    among the best ``PARALLEL_LINES`` (ties included: the parallel coordinates show those),
    the last one, and evenly spaced others up to ``max_points`` in all.

    Returns:
        Indexes into ``values``, ascending.
    """
    n = len(values)
    if n <= max_points:
        return list(range(n))
    sign = -1 if direction == "maximize" else 1
    keep = {n - 1}
    best = None
    for i, value in enumerate(values):
        if value is not None and (best is None or sign * value < sign * best):
            best = value
            keep.add(i)
    ranked_values = sorted((sign * v for v in values if v is not None))
    if ranked_values:
        cutoff = ranked_values[min(PARALLEL_LINES, len(ranked_values)) - 1]
        keep.update(i for i, v in enumerate(values) if v is not None and sign * v <= cutoff)
    spare = max_points - len(keep)
    if spare > 0:
        keep.update(round(k * (n - 1) / spare) for k in range(spare))
    return sorted(keep)


def downsample(steps: Sequence[int], values: Sequence[float | None], max_points: int
               ) -> tuple[list[int], list[float | None]]:
    """At most ``max_points`` evenly spread points of a curve, always keeping its last one
    (where a pruned trial was stopped)."""
    n = len(steps)
    if n <= max_points:
        return list(steps), list(values)
    if max_points < 2:
        return [steps[-1]], [values[-1]]
    picks = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return [steps[i] for i in picks], [values[i] for i in picks]


def curve_view(trial: FrozenTrial, max_points: int = DEFAULT_CURVE_POINTS) -> dict[str, Any]:
    items = sorted(trial.intermediate_values.items())
    steps, values = downsample([s for s, _ in items], [finite(v) for _, v in items], max_points)
    return {
        "number": trial.number,
        "state": TRIAL_STATE_NAMES[trial.state],
        "value": finite(trial.value) if trial.state == TrialState.COMPLETE else None,
        "steps": steps,
        "values": values,
        "n_steps": len(items),
    }


def pick_curves(direction: str, top: int, best: Iterable[FrozenTrial], latest: Iterable[FrozenTrial],
                asked: Iterable[FrozenTrial] = ()) -> list[FrozenTrial]:
    """The trials whose learning curves the page shows, in number order: the ``top`` best
    complete ones that reported an epoch, the ``latest`` ones that did (pruned and running
    included), and those ``asked`` for that did.

    Args:
        direction: the study's ``maximize`` or ``minimize``.
        top: how many of the best.
        best: every trial that may be among the ``top`` best (each complete trial that
            reported and scores at least as well as the ``top``-th, ties included:
            ``hpo.storage.best_numbers``), which :func:`~hpo.studies.ranked` orders.
        latest: the latest trials that reported.
        asked: trials asked for by number.
    """
    reported = [t for t in best if t.intermediate_values]
    chosen = {t.number: t for t in [*ranked(reported, direction)[:top], *latest,
                                    *(t for t in asked if t.intermediate_values)]}
    return [chosen[n] for n in sorted(chosen)]


class ImportanceCache:
    """Parameter importances, computed once per study and number of complete trials, over at
    most ``max_trials`` of them.

    Past ``max_trials`` complete trials the importances are computed over a sample: evenly
    spaced in the order the trials completed (early and late trials alike, as the search
    moved), the same trials for the same count. The answer says so (``sample``) and the page
    shows it. PED-ANOVA's shares over 2,000 trials read the same ranking as over all of
    them, and reading and evaluating 30,000 trials took 2-3 s of CPU on a study's first view.

    Args:
        evaluator: Optuna's importance evaluator. PED-ANOVA by default: it answers in a
            tenth of a second for thousands of trials, where fANOVA's forest takes minutes.
        max_studies: how many studies' results are kept.
        max_trials: the most complete trials evaluated; a sample past it.
    """

    def __init__(self, evaluator: BaseImportanceEvaluator | None = None, max_studies: int = 64,
                 max_trials: int = IMPORTANCE_MAX_TRIALS):
        self.evaluator = evaluator or PedAnovaImportanceEvaluator()
        self.max_studies = max_studies
        self.max_trials = max_trials
        self._results: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, study: optuna.Study, spec: StudySpec, total_complete: int,
            finish_order: Callable[[], list[int]], read: Callable[[list[int]], Sequence[FrozenTrial]],
            n_complete: int | None = None) -> dict[str, Any]:
        """``{"status": "ok", "importances": {name: share}, ...}``, or ``"not_enough"`` /
        ``"no_params"`` / ``"error"`` with a ``message`` saying why there is none; ``sample``
        is ``{"size": evaluated, "of": complete}`` when a sample was evaluated, else ``None``.

        Args:
            study: the study.
            spec: its spec.
            total_complete: how many of its trials are complete now.
            finish_order: the numbers of its complete trials in the order they completed
                (read only when the answer is not cached).
            read: the trials of the given numbers with their parameters and values.
            n_complete: over the first this many complete trials (in the order they
                completed) only: the ones a page counted, so that its counts and the
                importances agree while the study goes on. Default: all of them.
        """
        n_complete = total_complete if n_complete is None else min(n_complete, total_complete)
        key = study.study_name
        with self._lock:
            hit = self._results.get(key)
            if hit is not None and hit[0] == n_complete:
                self._results.move_to_end(key)
                return hit[1]
        result = self._compute(spec, n_complete, finish_order, read, study.directions)
        with self._lock:
            self._results[key] = (n_complete, result)
            self._results.move_to_end(key)
            while len(self._results) > self.max_studies:
                self._results.popitem(last=False)
        return result

    def _compute(self, spec: StudySpec, n_complete: int, finish_order: Callable[[], list[int]],
                 read: Callable[[list[int]], Sequence[FrozenTrial]],
                 directions: Sequence[optuna.study.StudyDirection]) -> dict[str, Any]:
        searched = [p["name"] for p in search_space_view(spec) if p["fixed"] is None]
        fixed = {p["name"]: p["fixed"] for p in search_space_view(spec) if p["fixed"] is not None}
        base = {"evaluator": type(self.evaluator).__name__, "n_complete": n_complete, "fixed": fixed, "sample": None}
        if not searched:
            return {**base, "status": "no_params", "message": "every parameter is fixed; nothing is searched"}
        if n_complete < MIN_TRIALS_FOR_IMPORTANCE:
            return {**base, "status": "not_enough",
                    "message": f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials ({n_complete} so far): "
                               f"it compares the best 10 % of them with the rest, and below "
                               f"{MIN_TRIALS_FOR_IMPORTANCE} that is a single trial"}
        counted = finish_order()[:n_complete]
        chosen = spread(counted, self.max_trials)
        if len(chosen) < len(counted):
            base["sample"] = {"size": len(chosen), "of": len(counted)}
        complete = [t for t in read(sorted(chosen)) if t.state == TrialState.COMPLETE]
        try:
            importances = get_param_importances(TrialsStudy(complete, directions), evaluator=self.evaluator,
                                                params=searched)
        except (ValueError, RuntimeError) as exc:
            return {**base, "status": "error", "message": str(exc)}
        return {**base, "status": "ok", "importances": {k: finite(float(v)) for k, v in importances.items()}}


def spread(items: Sequence[int], size: int) -> list[int]:
    """``size`` evenly spaced items of ``items``, the first and the last included (all of them
    when there are no more than ``size``)."""
    n = len(items)
    if n <= size:
        return list(items)
    return [items[round(k * (n - 1) / (size - 1))] for k in range(size)]


class TrialsStudy(optuna.Study):
    """An in-memory study whose trials are the given ones, as they are: what Optuna's
    functions over a study's trials (the importance evaluators) read, without adding the
    trials to a storage one by one (seconds for 30,000 trials).

    Args:
        trials: its trials.
        directions: its directions.
    """

    def __init__(self, trials: Sequence[FrozenTrial], directions: Sequence[optuna.study.StudyDirection]):
        empty = optuna.create_study(directions=list(directions))
        super().__init__(study_name=empty.study_name, storage=study_storage(empty)[0])
        self._given_trials = list(trials)

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = [t for t in self._given_trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials
