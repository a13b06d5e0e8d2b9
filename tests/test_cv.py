"""Fold splitters: stratification, shuffling, and time order (never validate on the past)."""

import numpy as np
import pytest

from hpo.cv import fold_indices, run_folds
from hpo.data import load_dataset
from hpo.spec import parse_spec


def test_stratified_folds_keep_class_proportions_and_cover_every_row():
    spec = parse_spec({"name": "t", "dataset": {"builtin": "digits"}, "cv": {"folds": 5}})
    dataset = load_dataset(spec)
    folds = fold_indices(dataset, spec)
    overall = np.bincount(dataset.labels) / dataset.n_samples
    seen = np.concatenate([val for _, val in folds])
    assert sorted(seen.tolist()) == list(range(dataset.n_samples))
    for train, val in folds:
        assert not set(train) & set(val)
        share = np.bincount(dataset.labels[val], minlength=10) / len(val)
        assert np.abs(share - overall).max() < 0.01


@pytest.mark.parametrize("horizon", [1, 3])
def test_time_ordered_folds_never_validate_on_the_past(horizon):
    spec = parse_spec({"name": "f", "task": "forecasting", "dataset": {"builtin": "airline"},
                       "cv": {"folds": 4}, "training": {"lookback": 12, "horizon": horizon}})
    dataset = load_dataset(spec)
    folds = fold_indices(dataset, spec)
    assert len(folds) == 4
    for train, val in folds:
        assert train.max() < val.min()
        # Window i predicts rows [i + lookback, i + lookback + horizon): no shared target row.
        train_targets = {i + 12 + h for i in train for h in range(horizon)}
        val_targets = {i + 12 + h for i in val for h in range(horizon)}
        assert not train_targets & val_targets


def test_stratified_refuses_more_folds_than_the_smallest_class():
    spec = parse_spec({"name": "t", "dataset": {"builtin": "digits"}, "cv": {"folds": 5}})
    dataset = load_dataset(spec)
    dataset.labels = np.array([0] * (dataset.n_samples - 3) + [1, 1, 1])
    with pytest.raises(ValueError, match="cv.folds"):
        fold_indices(dataset, spec)


class CountingTrainer:
    """A trainer of one fold whose scores are given."""

    def __init__(self, scores, stop_after=None, number=0):
        self.scores, self.stop_after, self.epochs, self.stopped, self.number = scores, stop_after, 0, False, number
        self.progress = [self]

    @property
    def score(self):
        return self.scores[self.epochs - 1]

    def step(self):
        self.epochs += 1
        self.stopped = self.stop_after is not None and self.epochs >= self.stop_after


def test_fold_runner_lockstep_reports_mean_per_epoch_and_honours_early_stops():
    trainers = [CountingTrainer([0.1, 0.2, 0.3]), CountingTrainer([0.5, 0.6, 0.7], stop_after=1)]
    reports = []
    run_folds(trainers, 3, on_epoch=lambda e, v: reports.append((e, round(v, 6))))
    assert reports == [(0, 0.3), (1, 0.35), (2, 0.4)]
    assert [t.epochs for t in trainers] == [3, 1]


def test_fold_runner_per_fold_runs_folds_in_turn_and_stops_on_request():
    reports = []
    run_folds([CountingTrainer([0.1, 0.2], number=0), CountingTrainer([0.3, 0.4], number=1)], 2, per_fold=True,
              on_fold=lambda i, v: reports.append((i, v)))
    assert reports == [(0, 0.2), (1, 0.4)]
    from hpo.cv import Interrupted

    with pytest.raises(Interrupted):
        run_folds([CountingTrainer([0.1])], 1, should_stop=lambda: True)
