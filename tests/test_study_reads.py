"""The narrow reads a page of a large study is drawn from (``hpo.storage.read_trials``,
``hpo.studies.trial_page``, ``summary_trials``, ``tally_trials``, ``study_states``) give what
the full read of every trial gives, on SQLite and PostgreSQL: the same progress (counts,
state and reason, best trial with its ties, times, ETA), the same trials, the same pages in
every order, and the same study states."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo.spec import parse_spec
from hpo.storage import best_numbers, latest_reported_numbers, read_trials, study_storage, trials_by_score
from hpo.studies import (
    CANCELLED_ATTR, CV_LOSS_ATTR, ERROR_ATTR, FAIL_REASON_ATTR, FOLD_BEST_EPOCHS_ATTR, SURPLUS_ATTR, Tally, progress,
    ranked, study_states, summary_trials, tally_trials, trial_page,
)

DISTRIBUTIONS = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "cell": CategoricalDistribution(["lstm", "gru"])}


def spec(n_trials: int, timeout_s: float | None = None, metric: str = "accuracy"):
    return parse_spec({"name": "s", "dataset": {"builtin": "digits"}, "training": {"metric": metric},
                       "budget": {"n_trials": n_trials, "timeout_s": timeout_s}})


def random_study(storage, name: str, rng: random.Random, direction: str, n_trials: int = 12,
                 failing: bool = False) -> optuna.Study:
    """Trials in every state (none finished when ``failing``), scores from a few values (ties,
    also at the best), with and without the ranking attributes, surplus and reasoned
    failures, retried trials."""
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    start = dt.datetime(2026, 11, 29, 12, 0, 0)
    states = [TrialState.FAIL] * 3 + [TrialState.RUNNING, TrialState.WAITING]
    if not failing:
        states += [TrialState.COMPLETE] * 6 + [TrialState.PRUNED] * 2
    for number in range(n_trials):
        state = rng.choice(states)
        attrs: dict = {"fold_scores": [0.1, 0.2]}
        if state == TrialState.COMPLETE:
            if rng.random() < 0.7:
                attrs[CV_LOSS_ATTR] = rng.choice([0.3, 0.2, None, "nan"])
            if rng.random() < 0.7:
                attrs[FOLD_BEST_EPOCHS_ATTR] = rng.choice([[3, 4], [2], [], None])
        if state == TrialState.FAIL:
            if rng.random() < 0.4:
                attrs[SURPLUS_ATTR] = True
            if rng.random() < 0.6:
                attrs[FAIL_REASON_ATTR] = f"boom {number}"
        system = {"failed_trial": rng.randrange(number)} if number and rng.random() < 0.2 else {}
        started = start + dt.timedelta(seconds=10 * number) if state != TrialState.WAITING else None
        trial = create_trial(
            state=state,
            value=rng.choice([0.5, 0.75, 0.75, 0.9, 0.9, math.inf]) if state == TrialState.COMPLETE else None,
            params={"lr": 10 ** -rng.uniform(1, 4), "cell": rng.choice(["lstm", "gru"])}, distributions=DISTRIBUTIONS,
            intermediate_values={e: rng.random() for e in range(rng.randrange(4))},
            user_attrs=attrs, system_attrs=system)
        trial.datetime_start = started
        trial.datetime_complete = started + dt.timedelta(seconds=rng.uniform(1, 9)) if state.is_finished() else None
        study.add_trial(trial)
    return study


@pytest.mark.slow
def test_summary_trials_and_the_tally_give_the_progress_of_the_full_read(storage):
    rng = random.Random(7)
    specs = [spec(3), spec(10), spec(40), spec(10, timeout_s=60),
             spec(40, metric="loss"), spec(3, metric="loss"), spec(10, timeout_s=60, metric="loss")]
    nows = [dt.datetime(2026, 11, 29, 12, 1), dt.datetime(2026, 11, 29, 14, 0)]
    seen_states: set[str] = set()
    for index, direction in itertools.product(range(6), ("maximize", "minimize")):
        study = random_study(storage, f"s{index}-{direction}", rng, direction, n_trials=[0, 4, 12][index % 3],
                             failing=index == 1)
        backend, study_id = storage, study_storage(study)[1]
        light = summary_trials(backend, study_id, direction)
        full = study.get_trials(deepcopy=False)
        assert [(t.number, t.state, t.values, t.datetime_start, t.datetime_complete) for t in light] == \
            [(t.number, t.state, t.values, t.datetime_start, t.datetime_complete) for t in full]
        tally = tally_trials(backend, study_id, direction)  # in SQL
        assert tally == Tally.of(full, direction), index
        for s, now, cancelled in itertools.product(specs, nows, (False, True)):
            if s.direction != direction:
                continue
            expected = progress(study, s, now, cancelled=cancelled)
            assert progress(study, s, now, trials=light, cancelled=cancelled) == expected, (index, s.budget, now)
            assert progress(study, s, now, tally=tally, cancelled=cancelled) == expected, (index, s.budget, now)
            seen_states.add(expected.state)
    assert seen_states == {"queued", "running", "completed", "failed", "cancelled"}


@pytest.mark.slow
def test_study_states_are_the_states_progress_derives(storage):
    """The studies list's filter: every study's state from counts in SQL (``study_states``),
    for many studies at once, is what ``progress`` derives from the full read; with timeouts,
    cancel and error flags, surplus and retried failures, and studies that gave up."""
    rng = random.Random(11)
    specs = [spec(3), spec(10), spec(40), spec(10, timeout_s=60), spec(40, timeout_s=60),
             spec(10, metric="loss"), spec(3, timeout_s=60, metric="loss")]
    nows = [dt.datetime(2026, 11, 29, 12, 0, 30), dt.datetime(2026, 11, 29, 12, 1), dt.datetime(2026, 11, 29, 14, 0)]
    studies = [random_study(storage, f"st{index}-{direction}", rng, direction, n_trials=[0, 4, 12, 3][index % 4],
                            failing=index in (1, 5))
               for index, direction in itertools.product(range(8), ("maximize", "minimize"))]
    optuna.create_study(study_name="not-listed", storage=storage)
    trials = {study.study_name: study.get_trials(deepcopy=False) for study in studies}
    seen: set[str] = set()
    for flags in ({}, {CANCELLED_ATTR: True}, {ERROR_ATTR: "no data"}, {CANCELLED_ATTR: False}):
        for study in studies:
            for key in (CANCELLED_ATTR, ERROR_ATTR):
                study.set_user_attr(key, flags.get(key))
        cancelled, error = bool(flags.get(CANCELLED_ATTR)), flags.get(ERROR_ATTR)
        for now, shift in itertools.product(nows if not flags else nows[-1:], range(5)):
            by_name = {}  # each study with each spec of its direction in turn, beside others' specs
            for k, study in enumerate(studies):
                pool = [s for s in specs if s.direction == study.direction.name.lower()]
                by_name[study.study_name] = pool[(k + shift) % len(pool)]
            expected = {name: progress(None, by_name[name], now, trials=trials[name], cancelled=cancelled,
                                       error=error).state for name in trials}
            assert study_states(storage, {**by_name, "gone": specs[0]}, now) == expected, (flags, now, shift)
            seen |= set(expected.values())
    assert seen == {"queued", "running", "completed", "failed", "cancelled"}


def test_summary_trials_and_the_tally_break_ties_for_the_best_as_the_full_read(storage):
    """Three trials share the best score: the ranking attributes decide, read for them only."""
    study = optuna.create_study(study_name="ties", storage=storage, direction="maximize")
    for number, (value, cv_loss, epochs) in enumerate([(0.9, 0.3, [5]), (0.8, 0.1, [1]), (0.9, 0.2, [6]),
                                                       (0.9, 0.2, [4]), (0.5, None, None)]):
        study.add_trial(create_trial(value=value, user_attrs={CV_LOSS_ATTR: cv_loss, FOLD_BEST_EPOCHS_ATTR: epochs}))
    backend, study_id = storage, study_storage(study)[1]
    light = summary_trials(backend, study_id, "maximize")
    assert progress(study, spec(5), trials=light).best_trial == progress(study, spec(5)).best_trial == 3
    assert tally_trials(backend, study_id, "maximize").best == (3, 0.9)
    assert [t.user_attrs for t in light if t.number in (1, 4)] == [{}, {}]  # not tied: not read


def test_read_trials_by_id_number_state_and_part(storage):
    study = random_study(storage, "parts", random.Random(3), "maximize")
    backend, study_id = storage, study_storage(study)[1]
    full = study.get_trials(deepcopy=False)
    assert read_trials(backend, study_id) == full
    some = [full[1], full[4], full[7]]
    assert read_trials(backend, study_id, trial_ids=[t._trial_id for t in some]) == some
    assert read_trials(backend, study_id, numbers=[7, 1, 4]) == some
    pruned = [t for t in full if t.state == TrialState.PRUNED]
    assert read_trials(backend, study_id, states=[TrialState.PRUNED]) == pruned
    values_only = read_trials(backend, study_id, parts={"values"})
    assert [(t.number, t.values) for t in values_only] == [(t.number, t.values) for t in full]
    assert all(not t.params and not t.user_attrs and not t.intermediate_values for t in values_only)
    attrs = read_trials(backend, study_id, parts={"user_attrs"}, attr_keys={CV_LOSS_ATTR})
    assert [t.user_attrs for t in attrs] == [{k: v for k, v in t.user_attrs.items() if k == CV_LOSS_ATTR}
                                             for t in full]
    with pytest.raises(KeyError):
        read_trials(backend, study_id + 1000)


def sorted_like_the_full_read(trials: list, sort: str, direction: str) -> list:
    """The order the trial list had when it sorted the full read in Python (the reference):
    ``best``: the complete trials ranked, then the others by number; otherwise by the
    quantity and then the number (both reversed for ``-``), trials without it last by number."""
    if sort == "best":
        best_first = ranked(trials, direction)
        chosen = {t.number for t in best_first}
        return best_first + sorted((t for t in trials if t.number not in chosen), key=lambda t: t.number)
    descending, name = sort.startswith("-"), sort.lstrip("-")
    quantity = {
        "number": lambda t: t.number,
        "value": lambda t: t.value,
        "duration_s": lambda t: (t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_start and t.datetime_complete else None,
        "started_at": lambda t: t.datetime_start,
    }[name]
    present = [t for t in trials if quantity(t) is not None]
    absent = [t for t in trials if quantity(t) is None]
    return sorted(present, key=lambda t: (quantity(t), t.number), reverse=descending) + absent


def sortable_study(storage, name: str, rng: random.Random, direction: str, n_trials: int) -> optuna.Study:
    """Trials in every state with few distinct values (ties, at the best too; -inf and inf;
    pruned trials with and without a value), ranking attributes or not, and starts and
    durations that tie (to the microsecond) or differ by one."""
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    start = dt.datetime(2026, 11, 29, 12, 0, 0, 999_999)
    states = [TrialState.COMPLETE] * 5 + [TrialState.PRUNED] * 2 + [TrialState.FAIL, TrialState.RUNNING,
                                                                      TrialState.WAITING]
    for number in range(n_trials):
        state = rng.choice(states)
        attrs: dict = {}
        if rng.random() < 0.7:
            attrs[CV_LOSS_ATTR] = rng.choice([0.3, 0.2, None, "nan"])
        if rng.random() < 0.7:
            attrs[FOLD_BEST_EPOCHS_ATTR] = rng.choice([[3, 4], [2], [], None, [5, 2]])
        value = None
        if state == TrialState.COMPLETE or (state == TrialState.PRUNED and rng.random() < 0.5):
            value = rng.choice([0.5, 0.75, 0.75, 0.9, 0.9, 0.9, 1.0, math.inf, -math.inf])
        trial = create_trial(state=state, value=value, params={"lr": 10 ** -rng.uniform(1, 4)},
                             distributions={"lr": DISTRIBUTIONS["lr"]}, user_attrs=attrs)
        if state != TrialState.WAITING:
            trial.datetime_start = start + dt.timedelta(seconds=rng.choice([0, 1, 2]) * 10,
                                                        microseconds=rng.choice([0, 1]))
            trial.datetime_complete = trial.datetime_start + dt.timedelta(
                seconds=rng.choice([1, 2]), microseconds=rng.choice([0, 1, 999_999])) if state.is_finished() else None
        study.add_trial(trial)
    return study


SORTS = ["number", "-number", "value", "-value", "best", "duration_s", "-duration_s", "started_at", "-started_at"]


@pytest.mark.slow
def test_pages_in_sql_are_the_pages_of_the_full_read(storage):
    """Every order, filtered or not, every page size and offset: the same trials in the same
    order as sorting the full read, ties (equal scores, starts, durations) included."""
    for direction in ("maximize", "minimize"):
        study = sortable_study(storage, f"pages-{direction}", random.Random(5), direction, n_trials=40)
        backend, study_id = storage, study_storage(study)[1]
        full = study.get_trials(deepcopy=False)
        assert {t.state for t in full} == set(TrialState)
        for sort, states in itertools.product(SORTS, (None, [TrialState.COMPLETE], [TrialState.PRUNED],
                                                      [TrialState.RUNNING, TrialState.WAITING])):
            chosen = sorted_like_the_full_read([t for t in full if states is None or t.state in states], sort,
                                               direction)
            for limit, offset in itertools.product((1, 3, 25), (0, 2, 17, 39, 100)):
                ids, total = trial_page(backend, study_id, direction, sort, states=states, limit=limit, offset=offset)
                assert (ids, total) == ([t._trial_id for t in chosen[offset:offset + limit]], len(chosen)), \
                    (sort, states, limit, offset)


def test_a_page_by_best_reads_only_the_ties_it_needs(storage):
    """A page of distinct scores reads the ranking attributes of no other trial."""
    study = optuna.create_study(study_name="few", storage=storage, direction="minimize")
    for value in (0.4, 0.1, 0.3, 0.1, 0.2, 0.5):
        study.add_trial(create_trial(value=value, user_attrs={CV_LOSS_ATTR: value}))
    backend, study_id = storage, study_storage(study)[1]
    found, before = trials_by_score(backend, study_id, maximize=False, limit=2, offset=2, attr_keys={CV_LOSS_ATTR})
    assert ([t.number for t in found], before) == ([2, 4], 2)
    found, before = trials_by_score(backend, study_id, maximize=False, limit=1, offset=1, attr_keys={CV_LOSS_ATTR})
    assert ([t.number for t in found], before) == ([1, 3], 0)  # the page's score is tied: both read


def test_best_numbers_hold_the_best_trials_and_their_ties(storage):
    """For every ``limit``, the candidates ranked give the full read's best, reported or not;
    the latest reported trials likewise."""
    for direction in ("maximize", "minimize"):
        study = random_study(storage, f"best-{direction}", random.Random(9), direction, n_trials=40)
        backend, study_id = storage, study_storage(study)[1]
        full = study.get_trials(deepcopy=False)
        by_number = {t.number: t for t in full}
        for reported, limit in itertools.product((False, True), range(0, 30, 3)):
            pool = [t for t in full if t.intermediate_values or not reported]
            numbers = best_numbers(backend, study_id, maximize=direction == "maximize", limit=limit, reported=reported)
            assert ranked([by_number[n] for n in numbers], direction)[:limit] == ranked(pool, direction)[:limit]
            assert set(numbers) <= {t.number for t in pool if t.state == TrialState.COMPLETE}
        latest = [t.number for t in sorted(full, key=lambda t: -t.number) if t.intermediate_values]
        assert latest_reported_numbers(backend, study_id, 5) == latest[:5]
