"""Fold splitters (stratification, shuffling, time order: never validate on the past), the
inner split that keeps each fold's validation rows out of every decision, the epoch loop."""

import dataclasses
import math

import numpy as np
import optuna
import pytest
import torch

from hpo.cv import fold_indices, holdout_rows, nested_fold, run_folds
from hpo.data import Dataset, FoldData, Split, load_dataset
from hpo.lockstep import FoldStack, lockstep_trainers
from hpo.model import predict_in_chunks
from hpo.objective import Objective
from hpo.spec import ModelSpec, parse_spec
from hpo.studies import FAIL_REASON_ATTR
from hpo.train import FoldTrainer, fold_models, score_outputs


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

    def score_holdout(self):
        self.holdout_scored = True


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


def test_holdout_rows_hold_out_the_latest_windows_after_a_gap_or_a_stratified_share():
    kept, held = holdout_rows("forecasting", 20, 0.2, gap=2)
    assert kept.tolist() == list(range(14)) and held.tolist() == [16, 17, 18, 19]
    labels = np.array([0] * 30 + [1] * 10)
    kept, held = holdout_rows("classification", 40, 0.25, labels=labels, seed=3)
    assert sorted(kept.tolist() + held.tolist()) == list(range(40))
    assert np.bincount(labels[held]).tolist() == [8, 2]


def _noisy_fold(n=240, seed=0):
    """A small fold whose labels are 30 % noise, so that training soon overfits."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, 3, generator=gen)
    flip = torch.rand(n, generator=gen) < 0.3
    y = ((x[:, -1, 0] > 0) ^ flip).long()
    split = lambda rows: Split(x=x[rows], y=y[rows], lengths=None)  # noqa: E731
    return FoldData(train=split(slice(0, n - 60)), val=split(slice(n - 60, None)), n_features=3,
                    vocab_size=None, out_dim=2, target_scale=None)


def test_nested_fold_trains_and_stops_on_the_training_rows_and_holds_the_validation_rows_out():
    fold = _noisy_fold()
    spec = parse_spec({"name": "t", "dataset": {"builtin": "digits"}})
    nested = nested_fold(fold, spec)
    assert nested.holdout is fold.val
    assert len(nested.train.y) + len(nested.val.y) == len(fold.train.y) == 180
    assert len(nested.val.y) == 36
    inner_rows = torch.cat([nested.train.x, nested.val.x]).flatten(1)
    assert torch.equal(inner_rows.sort(0).values, fold.train.x.flatten(1).sort(0).values)


PARAMS = {"lr": 0.05, "batch_size": 32, "hidden_size": 16, "dropout": 0.0, "clip_norm": 1.0}


def test_the_outer_fold_cannot_influence_the_chosen_epoch_and_is_scored_with_its_weights():
    spec = parse_spec({"name": "t", "dataset": {"builtin": "digits"}})
    nested = nested_fold(_noisy_fold(), spec)
    holdout = nested.holdout
    flipped = Split(holdout.x.flip(0), 1 - holdout.y, None)
    runs = []
    for fold in (nested, dataclasses.replace(nested, holdout=flipped)):
        trainer = FoldTrainer(fold, PARAMS, ModelSpec(), "accuracy", 2, torch.device("cpu"), 0)
        run_folds([trainer], 40)
        runs.append(trainer.progress[0])
    honest, other = runs
    assert honest.stopped and honest.chosen_epoch < honest.epochs  # the kept epoch is not the last one
    assert other.chosen_epoch == honest.chosen_epoch and other.epochs == honest.epochs
    for name, tensor in honest.best_state.items():
        assert torch.equal(other.best_state[name], tensor)
    assert other.holdout.score != honest.holdout.score  # each scored on its own labels
    # The outer rows were scored with the chosen epoch's weights, not the last epoch's.
    chosen = score_outputs(predict_in_chunks(trainer.chosen_network(0), flipped.x, None), flipped.y, "accuracy")
    last = score_outputs(predict_in_chunks(trainer.network(0), flipped.x, None), flipped.y, "accuracy")
    assert other.holdout.loss == pytest.approx(chosen.loss) and other.holdout.loss != pytest.approx(last.loss)


def test_a_stack_keeps_each_folds_chosen_epoch_as_a_fold_trainer_does():
    spec = parse_spec({"name": "t", "dataset": {"builtin": "digits"}})
    nested = nested_fold(_noisy_fold(), spec)
    stack = lockstep_trainers([nested, nested], PARAMS, ModelSpec(), "accuracy", 2, torch.device("cpu"), [0, 1])
    alone = FoldTrainer(nested, PARAMS, ModelSpec(), "accuracy", 2, torch.device("cpu"), 1)
    assert isinstance(stack[0], FoldStack)
    run_folds(stack + [alone], 40)
    stacked, single = stack[0].progress[1], alone.progress[0]
    assert stacked.stopped and stacked.chosen_epoch == single.chosen_epoch
    assert stacked.holdout.loss == pytest.approx(single.holdout.loss, rel=1e-3)
    [(network, fold), _] = fold_models(stack)
    assert fold is nested and network(nested.holdout.x[:3]).shape == (3, 2)


def test_a_trial_is_scored_on_its_held_out_folds_and_records_how(tmp_path):
    spec = parse_spec({"name": "t", "dataset": {"builtin": "digits"}, "cv": {"folds": 3},
                       "search_space": {"hidden_size": 16, "batch_size": 64, "lr": 0.03},
                       "training": {"max_epochs": 4, "patience": 1}, "pruner": {"name": "none"}})
    objective = Objective(spec, load_dataset(spec), torch.device("cpu"))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    attrs = trial.user_attrs
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert attrs["scoring"] == "inner_split"
    assert trial.value == pytest.approx(np.mean(attrs["fold_scores"])) and len(attrs["fold_scores"]) == 3
    assert 0 < attrs["cv_loss"] < 3 and len(attrs["fold_best_epochs"]) == 3
    # Epoch-wise pruners saw the inner validation score, which is not the held-out one.
    assert trial.intermediate_values and max(trial.intermediate_values) <= 3


class ScaledTargets(Dataset):
    """A regression dataset whose targets are so large that the RMSE overflows to infinity."""

    task, n_samples, labels, class_names = "regression", 40, None, None

    def fold(self, train_idx, val_idx):
        split = lambda rows: Split(torch.ones(len(rows), 3, 1), torch.zeros(len(rows), 1), None)  # noqa: E731
        return FoldData(train=split(train_idx), val=split(val_idx), n_features=1, vocab_size=None, out_dim=1,
                        target_scale=(0.0, 1e300))

    def describe(self):
        return {}


def test_a_trial_whose_score_is_not_finite_fails_with_its_reason(tmp_path):
    spec = parse_spec({"name": "t", "task": "regression", "dataset": {"path": "x.npz"}, "cv": {"folds": 2},
                       "search_space": {"hidden_size": 4, "batch_size": 8, "lr": 0.01},
                       "training": {"max_epochs": 1}, "pruner": {"name": "none"}})
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    study.optimize(Objective(spec, ScaledTargets(), torch.device("cpu")), n_trials=1, catch=(ValueError,))
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "rmse is inf, not a finite number" in trial.user_attrs[FAIL_REASON_ATTR]


def _small_series_file(path, n=36, steps=10, classes=3, seed=0):
    """An npz of ``n`` short labelled series (ArrowHead's size): the class is in the level."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, steps, 1)) + y[:, None, None]
    np.savez(path, X=x.astype(np.float32), y=y)
    return path


def test_repeated_folds_partition_the_rows_each_repeat_stratified_and_reproducible():
    spec = parse_spec({"name": "t", "dataset": {"builtin": "digits"}, "cv": {"folds": 3, "repeats": 3, "seed": 4}})
    dataset = load_dataset(spec)
    runs = fold_indices(dataset, spec)
    assert len(runs) == 9
    overall = np.bincount(dataset.labels) / dataset.n_samples
    for repeat in range(3):
        folds = runs[3 * repeat : 3 * repeat + 3]
        assert sorted(np.concatenate([val for _, val in folds]).tolist()) == list(range(dataset.n_samples))
        for train, val in folds:
            assert not set(train) & set(val) and len(train) + len(val) == dataset.n_samples
            assert np.abs(np.bincount(dataset.labels[val], minlength=10) / len(val) - overall).max() < 0.01
    assert not np.array_equal(runs[0][1], runs[3][1])  # each repeat shuffles anew
    again = fold_indices(dataset, spec)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(runs, again))  # cv.seed reproduces them
    other = fold_indices(dataset, parse_spec({**spec.model_dump(mode="json"), "cv": {"folds": 3, "repeats": 3}}))
    assert not np.array_equal(runs[0][1], other[0][1])
    # The first repeat is the unrepeated folds: cv.repeats 1 is the code before repeats existed.
    single = fold_indices(dataset, parse_spec({**spec.model_dump(mode="json"), "cv": {"folds": 3, "seed": 4}}))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(runs[:3], single))


def test_a_trial_over_repeated_folds_scores_every_fold_run_and_its_models_load_and_predict(tmp_path):
    from hpo import local
    from hpo.export import fit_study_model, load_model
    from hpo.export.jobs import model_archive
    from hpo.storage import open_storage

    path = _small_series_file(tmp_path / "small.npz")
    url = f"sqlite:///{tmp_path}/s.db"
    spec = parse_spec({"name": "repeated", "dataset": {"path": str(path)}, "cv": {"folds": 3, "repeats": 2},
                       "search_space": {"hidden_size": 8, "batch_size": 8, "lr": 0.03},
                       "training": {"max_epochs": 3, "patience": None}, "budget": {"n_trials": 1}})
    assert local.run(spec, url, jobs=1, show_progress=False) is not None
    trial = optuna.load_study(study_name="repeated", storage=url).trials[0]
    attrs = trial.user_attrs
    assert len(attrs["fold_scores"]) == 6 and len(attrs["fold_best_epochs"]) == 6
    assert trial.value == pytest.approx(np.mean(attrs["fold_scores"]))
    x = np.load(path)["X"][:5]

    blob, _ = model_archive(open_storage(url), "repeated", "ensemble")
    ensemble = load_model(blob)
    assert ensemble.manifest.kind == "ensemble" and len(ensemble.manifest.members) == 3  # the first repeat's folds
    assert [m.fold for m in ensemble.manifest.members] == [0, 1, 2]
    assert ensemble.predict(x).shape == (5,)

    refit = fit_study_model(url, "repeated")
    assert refit.manifest.training["epochs_source"].startswith("median of trial 0's fold_best_epochs")
    assert load_model(refit.to_bytes()[0]).predict(x).shape == (5,)
