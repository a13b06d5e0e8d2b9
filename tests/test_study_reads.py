"""The narrow reads a page of a large study is drawn from (``hpo.storage.read_trials``,
``trial_ids_by_number``, ``hpo.studies.summary_trials``, ``tally_trials``) give what the full
read of every trial gives, on SQLite and PostgreSQL: the same progress (counts, state and
reason, best trial with its ties, times, ETA), the same trials and the same pages."""

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
from hpo.storage import best_numbers, latest_reported_numbers, read_trials, study_storage, trial_ids_by_number
from hpo.studies import (
    CV_LOSS_ATTR, FAIL_REASON_ATTR, FOLD_BEST_EPOCHS_ATTR, SURPLUS_ATTR, Tally, progress, ranked, summary_trials,
    tally_trials,
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


def test_a_page_by_number_in_sql(storage):
    study = random_study(storage, "pages", random.Random(5), "minimize")
    backend, study_id = storage, study_storage(study)[1]
    full = study.get_trials(deepcopy=False)
    ids = {t.number: t._trial_id for t in full}
    for states, descending, limit, offset in itertools.product(
            (None, [TrialState.COMPLETE], [TrialState.PRUNED, TrialState.FAIL]), (False, True), (1, 5), (0, 3, 100)):
        chosen = sorted((t for t in full if states is None or t.state in states), key=lambda t: t.number,
                        reverse=descending)
        page, total = trial_ids_by_number(backend, study_id, states=states, descending=descending, limit=limit,
                                          offset=offset)
        assert (page, total) == ([ids[t.number] for t in chosen[offset:offset + limit]], len(chosen))


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
