"""Forecasting models: difference targets (the change from the last value, added back) and
rolling forecasts over a whole series, through fit, archive and ``hpo.load_model``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hpo.data import load_dataset
from hpo.data.base import DataError
from hpo.data.forecast import ForecastDataset, Series
from hpo.export import InputError, PredictInput, ensemble_model, fit_model, inputs_from_json, load_model
from hpo.export.archive import archive_bytes
from hpo.model import SequenceModel
from hpo.spec import SpecError, parse_spec

TINY = {"lr": 1e-2, "batch_size": 8, "hidden_size": 8, "dropout": 0.0, "clip_norm": 1.0}


def _spec(**training) -> object:
    return parse_spec({"name": "f", "task": "forecasting", "dataset": {"path": "s.csv"},
                       "model": {"cell": "gru"}, "training": {"lookback": 6, **training}})


def _series(values: np.ndarray) -> Series:
    return Series(np.asarray(values, dtype=np.float64).reshape(len(values), -1), ["y"], "y", [])


def _zero_network(horizon: int = 1) -> SequenceModel:
    network = SequenceModel(cell="gru", hidden_size=TINY["hidden_size"], out_dim=horizon, n_features=1)
    for tensor in network.parameters():
        torch.nn.init.zeros_(tensor)
    return network


def test_forecast_target_defaults_to_difference_for_forecasting_only():
    assert _spec().training.forecast_target == "difference"
    assert _spec(forecast_target="level").training.forecast_target == "level"
    with pytest.raises(SpecError) as refused:
        parse_spec({"name": "c", "dataset": {"builtin": "digits"}, "training": {"forecast_target": "difference"}})
    assert refused.value.errors[0]["field"] == "training.forecast_target"
    with pytest.raises(SpecError, match="training.forecast_target"):
        _spec(forecast_target="ratio")


def test_the_spec_reaches_the_dataset(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("y\n" + "\n".join(str(v) for v in range(30)))
    spec = parse_spec({"name": "f", "task": "forecasting", "dataset": {"path": str(path)}})
    assert load_dataset(spec).forecast_target == "difference"
    level = parse_spec({"name": "f", "task": "forecasting", "dataset": {"path": str(path)},
                        "training": {"forecast_target": "level"}})
    assert load_dataset(level).forecast_target == "level"


def test_difference_windows_are_relative_to_their_last_value_and_scaled_on_training_rows_only():
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(size=60)) + 100
    leaky = walk.copy()
    leaky[40:] += 1e4  # rows no training window touches: they must not move the scaling
    train, val = np.arange(0, 20), np.arange(25, 40)
    folds = [ForecastDataset(_series(v), 5, 2, "difference").fold(train, val) for v in (walk, leaky)]
    fold = folds[0]
    seen = walk[: 19 + 5 + 2]
    rms = np.sqrt(np.mean(np.diff(seen) ** 2))
    assert fold.target_scale == pytest.approx((0.0, rms))
    assert folds[1].target_scale == fold.target_scale and torch.equal(folds[1].train.x, fold.train.x)
    i = 7  # window 7: rows 7..11 in, rows 12..13 out, all relative to row 11
    np.testing.assert_allclose(fold.train.x[i, :, 0].numpy() * rms, walk[7:12] - walk[11], atol=1e-5)
    np.testing.assert_allclose(fold.train.y[i].numpy() * rms, walk[12:14] - walk[11], atol=1e-5)


def test_a_zero_difference_network_is_persistence_exactly():
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.normal(size=50)) * 10 + 500
    dataset = ForecastDataset(_series(walk), 6, 2, "difference")
    fold = dataset.fold(np.arange(30), np.arange(32, dataset.n_samples))
    model = load_model(ensemble_model(_spec(horizon=2), dataset, TINY, [_zero_network(2)], [fold]).to_bytes()[0])

    rolling = model.predict(walk, rolling=True)

    assert rolling.shape == (50 - 6 + 1, 2)
    np.testing.assert_array_equal(rolling, np.repeat(walk[5:, None], 2, axis=1))  # each window's last value
    np.testing.assert_array_equal(model.predict(walk[:20]), [walk[19], walk[19]])
    assert model.manifest.learning.score == pytest.approx(model.manifest.learning.baseline)  # persistence
    assert not model.manifest.learning.learned


def test_a_linear_trend_beyond_the_training_range_is_forecast_by_a_difference_model():
    trend = np.arange(80, dtype=np.float64) * 2.0 + 10.0
    train = _series(trend[:40])  # the test rows 40..79 lie above every training value
    errors = {}
    for target in ("level", "difference"):
        torch.manual_seed(0)
        model = fit_model(_spec(forecast_target=target), ForecastDataset(train, 6, 1, target),
                          {**TINY, "lr": 3e-2, "batch_size": 16}, epochs=12)
        forecasts = model.predict(trend, rolling=True)[:-1, 0]  # row t forecast from rows t-6..t-1
        errors[target] = float(np.sqrt(np.mean((forecasts[40 - 6:] - trend[40:]) ** 2)))

    assert errors["difference"] < 0.5  # the slope is 2 a step: persistence would be off by 2
    assert errors["level"] > 20  # standardized levels beyond the training range: the network cannot follow


def test_rolling_forecasts_equal_one_call_per_position(tmp_path):
    rng = np.random.default_rng(2)
    walk = np.cumsum(rng.normal(size=40))
    dataset = ForecastDataset(_series(walk), 6, 1, "difference")
    model = fit_model(_spec(), dataset, TINY, epochs=2)

    rolling = model.predict_dict(inputs_from_json(model.preprocessing, {"series": walk.tolist(), "rolling": True}))

    assert rolling["positions"] == list(range(6, 41)) and rolling["n"] == 35 and rolling["rolling"] is True
    one_by_one = [model.predict(walk[:t]).tolist() for t in rolling["positions"]]
    np.testing.assert_allclose(rolling["predictions"], one_by_one, rtol=1e-6, atol=1e-9)
    assert "positions" not in model.predict_dict(PredictInput(walk))
    with pytest.raises(InputError, match="rolling: must be true or false"):
        inputs_from_json(model.preprocessing, {"series": walk.tolist(), "rolling": "yes"})

    path = tmp_path / "m.hpo.zip"
    model.save(path)
    (tmp_path / "s.json").write_text(json.dumps({"series": walk.tolist()}))
    done = subprocess.run([sys.executable, "-m", "hpo", "model", "predict", str(path), str(tmp_path / "s.json"),
                           "--rolling"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(json.loads(done.stdout)["predictions"], rolling["predictions"], rtol=1e-6)


def test_rolling_is_refused_by_models_that_read_no_series():
    x = np.random.default_rng(3).normal(size=(40, 5, 2)).astype(np.float32)
    from hpo.data.base import Targets
    from hpo.data.sequences import SequenceDataset

    dataset = SequenceDataset(x, None, Targets.from_array("classification", (x.sum((1, 2)) > 0).astype(int)))
    model = fit_model(parse_spec({"name": "c", "dataset": {"builtin": "digits"}}), dataset, TINY, epochs=1)
    with pytest.raises(InputError, match="rolling: only forecasting models"):
        model.predict(x, rolling=True)


def test_an_archive_of_format_version_2_still_predicts_levels():
    walk = np.cumsum(np.random.default_rng(4).normal(size=40)) + 50
    dataset = ForecastDataset(_series(walk), 6, 1, "level")
    model = fit_model(_spec(forecast_target="level"), dataset, TINY, epochs=2)
    members = model.manifest.members
    assert "forecast_target" not in members[0].preprocessing  # as every version-2 archive wrote it
    old = model.manifest.model_copy(update={"format_version": 2, "weights": None})

    reloaded = load_model(archive_bytes(old, model._weights)[0])

    assert reloaded.manifest.format_version == 2
    np.testing.assert_array_equal(reloaded.predict(walk, rolling=True), model.predict(walk, rolling=True))
    assert model.manifest.format_version == 3


def test_an_unknown_forecast_target_in_an_archive_is_refused():
    walk = np.cumsum(np.random.default_rng(5).normal(size=40))
    model = fit_model(_spec(), ForecastDataset(_series(walk), 6, 1, "difference"), TINY, epochs=1)
    member = model.manifest.members[0]
    bad = member.model_copy(update={"preprocessing": {**member.preprocessing, "forecast_target": "ratio"}})
    manifest = model.manifest.model_copy(update={"members": [bad], "weights": None})
    with pytest.raises(ValueError, match="forecast_target must be one of level, difference"):
        load_model(archive_bytes(manifest, model._weights)[0])
    with pytest.raises(DataError, match="forecast_target must be one of"):
        ForecastDataset(_series(walk), 6, 1, "ratio")
