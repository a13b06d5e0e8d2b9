"""Defaults fitted to the data, and the searchable dimensions' validation."""

import numpy as np
import pytest
import torch

from hpo.data import FoldData, Split, load_dataset
from hpo.fitting import fit_spec_to_data, fitted_folds
from hpo.spec import SpecError, parse_spec


def _folds(rows, steps=8, k=3):
    split = Split(torch.zeros(rows, steps, 1), torch.zeros(rows, dtype=torch.long), None)
    return [FoldData(train=split, val=split, n_features=1, vocab_size=None, out_dim=2, target_scale=None)] * k


def _spec(**fields):
    return parse_spec({"name": "t", "dataset": {"id": "d"}, **fields})


def test_a_small_training_set_gets_small_batches_and_more_epochs_and_patience():
    fitted = fit_spec_to_data(_spec(), _folds(23))
    assert fitted.search_space.batch_size.choices == [8]
    assert (fitted.training.max_epochs, fitted.training.patience) == (150, 20)
    large = fit_spec_to_data(_spec(), _folds(5000))
    assert large.search_space.batch_size.choices == [8, 16, 32, 64, 128, 256]
    assert (large.training.max_epochs, large.training.patience) == (20, 4)
    middle = fit_spec_to_data(_spec(), _folds(100))
    assert middle.search_space.batch_size.choices == [8, 16, 32]
    assert 20 < middle.training.max_epochs < 150


def test_what_the_spec_gives_is_kept_and_the_spec_round_trips_its_fitted_fields():
    spec = _spec(search_space={"batch_size": {"choices": [256]}}, training={"max_epochs": 7, "patience": None})
    assert spec.fit_to_data == ["search_space.frontend", "cv.folds", "training.lookback", "pruner.n_warmup_steps"]
    fitted = fit_spec_to_data(spec, _folds(23, steps=400))
    assert fitted.search_space.batch_size.choices == [256]
    assert (fitted.training.max_epochs, fitted.training.patience) == (7, None)
    again = parse_spec(_spec().model_dump(mode="json"))  # as a worker reads it back from the study
    assert fit_spec_to_data(again, _folds(23)).search_space.batch_size.choices == [8]


def test_long_sequences_search_a_frontend_that_shortens_them():
    fitted = fit_spec_to_data(_spec(), _folds(100, steps=1460))
    assert fitted.search_space.frontend.choices == ["conv", "pool"]
    assert fitted.search_space.frontend_stride.choices == [15, 29]
    assert fit_spec_to_data(_spec(), _folds(100, steps=150)).search_space.frontend is None


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"task": "regression", "search_space": {"class_weighting": "balanced"}}, "search_space.class_weighting",
     "regression has none"),
    ({"search_space": {"frontend_stride": 4}}, "search_space.frontend_stride", "give search_space.frontend"),
    ({"search_space": {"summary": "median"}}, "search_space.summary", "not one of last, mean, max, attention"),
    ({"search_space": {"bidirectional": {"choices": [1, 0]}}}, "search_space.bidirectional", "not one of False"),
    ({"search_space": {"optimizer": {"choices": ["adam", "lbfgs"]}}}, "search_space.optimizer", "'lbfgs'"),
    ({"fit_to_data": ["training.seed"]}, "fit_to_data.0", "training.max_epochs"),
])
def test_the_new_dimensions_are_validated_with_the_field_and_what_is_accepted(fields, field, message):
    with pytest.raises(SpecError) as caught:
        _spec(**fields)
    assert any(e["field"] == field and message in e["message"] for e in caught.value.errors), caught.value.errors


def test_left_out_cv_folds_shrink_until_a_short_series_can_be_split(tmp_path):
    # 30 monthly values, lookback 12: five time-ordered folds leave too few training windows for an inner split.
    # (The lookback is given: fitted, it would be shorter, see the next test.)
    path = tmp_path / "short.csv"
    path.write_text("sales\n" + "\n".join(str(100 + 7 * i + (i % 3)) for i in range(30)) + "\n")
    spec = parse_spec({"name": "short", "task": "forecasting", "dataset": {"path": str(path)},
                       "training": {"lookback": 12}})
    dataset = load_dataset(spec)
    with pytest.raises(ValueError, match="inner"):
        fitted_folds(parse_spec({**spec.model_dump(mode="json", exclude={"fit_to_data"}),
                                 "cv": {"folds": 5, "strategy": "timeseries"}}), dataset)
    fitted, folds = fitted_folds(spec, dataset)
    assert 2 <= fitted.cv.folds < 5 and len(folds) == fitted.cv.folds
    assert all(fold.holdout is not None for fold in folds)


def test_a_short_series_left_without_lookback_gets_a_shorter_one_and_can_be_cross_validated(tmp_path):
    # ShampooSales' shape: 24 monthly values; with the default lookback 12 even two nested folds cannot be built.
    path = tmp_path / "shampoo.csv"
    path.write_text("sales\n" + "\n".join(str(100 + 7 * i + (i % 3)) for i in range(24)) + "\n")
    given = parse_spec({"name": "s", "task": "forecasting", "dataset": {"path": str(path)}, "training": {"lookback": 12}})
    with pytest.raises(ValueError, match="inner"):
        fitted_folds(given, load_dataset(given))
    spec = parse_spec({"name": "s", "task": "forecasting", "dataset": {"path": str(path)}})
    dataset = load_dataset(spec)
    assert dataset.lookback == 6
    fitted, folds = fitted_folds(spec, dataset)
    assert fitted.cv.folds >= 2 and all(fold.preprocessing.lookback == 6 for fold in folds)


def _series_file(path, n, steps=10, classes=3):
    y = np.arange(n) % classes
    np.savez(path, X=(np.random.default_rng(0).normal(size=(n, steps, 1)) + y[:, None, None]).astype(np.float32), y=y)
    return str(path)


def test_small_data_is_not_repeated_unless_the_spec_says_so(tmp_path):
    """``cv.repeats`` is not fitted: at a 180 s budget, low load, 5 repeats on ArrowHead (36
    series) and 4 on PickupGestureWiimoteZ (50) bought 6-12 trials instead of 95-96 and a worse
    model (docs/quality.md); a given value is kept."""
    small = _spec(dataset={"path": _series_file(tmp_path / "small.npz", 36)})
    fitted, folds = fitted_folds(small, load_dataset(small))
    assert (fitted.cv.folds, fitted.cv.repeats, len(folds)) == (5, 1, 5)
    given = _spec(dataset={"path": str(tmp_path / "small.npz")}, cv={"repeats": 2})
    fitted, folds = fitted_folds(given, load_dataset(given))
    assert (fitted.cv.repeats, len(folds)) == (2, 10)


def test_the_median_pruners_warm_up_is_fitted_to_the_patience_unless_given():
    fitted = fit_spec_to_data(_spec(), _folds(23))
    assert fitted.pruner.n_warmup_steps == fitted.training.patience == 20
    assert fit_spec_to_data(_spec(training={"patience": 6}), _folds(23)).pruner.n_warmup_steps == 6
    assert fit_spec_to_data(_spec(training={"max_epochs": 30, "patience": None}), _folds(23)).pruner.n_warmup_steps == 6
    assert fit_spec_to_data(_spec(pruner={"name": "median", "n_warmup_steps": 1}), _folds(23)).pruner.n_warmup_steps == 1
