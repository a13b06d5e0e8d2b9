"""The final model: fit, archive, load elsewhere, predict with the training-time preprocessing."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from sklearn.model_selection import train_test_split

import hpo
from hpo.data.base import Targets
from hpo.data.builtins import _airline, _digits, _sms_spam, load_builtin
from hpo.data.sequences import SequenceDataset
from hpo.data.text import OOV_ID, TextDataset
from hpo.export import (
    InputError, PredictInput, ensemble_model, fit_model, inputs_from_file, inputs_from_json, load_model,
)
from hpo.export.fit import final_epochs, holdout_split, learning_check
from hpo.model import SequenceModel
from hpo.train import FoldTrainer, pick_device
from hpo.spec import parse_spec

TINY = {"lr": 1e-2, "batch_size": 64, "hidden_size": 8, "dropout": 0.0, "clip_norm": 1.0}


def _spec(builtin: str, task: str = "classification", **extra) -> object:
    return parse_spec({"name": f"{builtin}-export", "task": task, "dataset": {"builtin": builtin},
                       "model": {"cell": "gru", "embedding_dim": 8}, "training": {"lookback": 12}, **extra})


def _sms_subset(n: int = 400) -> TextDataset:
    """Enough sms_spam rows (both classes) to fit in a second; max_length 16."""
    texts, labels = _sms_spam()
    return TextDataset(list(texts[:n]), Targets.from_array("classification", labels[:n]), 16)


@pytest.fixture(scope="module")
def fitted() -> dict[str, tuple]:
    """A tiny model per input kind, with raw inputs to predict from."""
    x, _ = _digits()
    texts, _ = _sms_spam()
    series = _airline().values
    digits = fit_model(_spec("digits"), load_builtin("digits"), TINY, epochs=1)
    sms = fit_model(_spec("sms_spam"), _sms_subset(), TINY, epochs=1)
    airline = fit_model(_spec("airline", "forecasting"), load_builtin("airline"), TINY, epochs=2)
    return {
        "digits": (digits, x[:64]),
        "sms_spam": (sms, list(texts[400:440]) + ["zzz unseen-words only qqq", ""]),
        "airline": (airline, series[:-3]),
    }


def _outputs(model, inputs) -> np.ndarray:
    if model.classes is not None:
        return model.predict_proba(inputs)
    return np.atleast_1d(model.predict(inputs))


@pytest.fixture(scope="module")
def elsewhere(fitted, tmp_path_factory) -> dict[str, dict]:
    """Each archive loaded by ``hpo.load_model`` in a fresh interpreter, with its predictions."""
    folder = tmp_path_factory.mktemp("archives")
    jobs = {}
    for name, (model, inputs) in fitted.items():
        model.save(folder / f"{name}.hpo.zip")
        jobs[name] = [str(folder / f"{name}.hpo.zip"), inputs if isinstance(inputs, list) else inputs.tolist()]
    (folder / "jobs.json").write_text(json.dumps(jobs))
    script = (
        "import json, sys, numpy as np, hpo\n"
        "results = {}\n"
        "for name, (path, inputs) in json.load(open(sys.argv[1])).items():\n"
        "    model = hpo.load_model(path)\n"
        "    out = model.predict_proba(inputs) if model.classes else np.atleast_1d(model.predict(inputs))\n"
        "    results[name] = {'out': out.tolist(), 'labels': np.atleast_1d(model.predict(inputs)).tolist()}\n"
        "print(json.dumps(results))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(folder / "jobs.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {**json.loads(done.stdout), "folder": folder}


@pytest.mark.parametrize("name", ["digits", "sms_spam", "airline"])
def test_archive_loads_in_another_process_and_predicts_the_same(fitted, elsewhere, name):
    model, inputs = fitted[name]

    np.testing.assert_allclose(elsewhere[name]["out"], _outputs(model, inputs), rtol=1e-5, atol=1e-6)
    assert elsewhere[name]["labels"] == np.atleast_1d(model.predict(inputs)).tolist()
    reloaded = load_model(elsewhere["folder"] / f"{name}.hpo.zip")
    assert reloaded.manifest.model_dump(exclude={"weights"}) == model.manifest.model_dump(exclude={"weights"})


def test_digits_model_generalizes_to_held_out_rows():
    x, y = _digits()
    train, test = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=0)
    dataset = SequenceDataset(x[train], None, Targets.from_array("classification", y[train]))
    params = {**TINY, "hidden_size": 32}

    model = fit_model(_spec("digits"), dataset, params, epochs=8)

    accuracy = float((model.predict(x[test]) == y[test]).mean())
    assert accuracy > 0.9
    probabilities = model.predict_proba(x[test])
    assert probabilities.shape == (len(test), 10)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-6)


def test_prediction_preprocesses_exactly_as_training(fitted):
    digits, _ = fitted["digits"]
    dataset = load_builtin("digits")
    rows = np.arange(20)
    fold = dataset.fold(np.arange(dataset.n_samples), rows)  # the final fit's scaling: every row
    with torch.inference_mode():
        expected = torch.softmax(digits.members[0].network(fold.val.x).double(), 1).numpy()
    np.testing.assert_allclose(digits.predict_proba(_digits()[0][rows]), expected, rtol=1e-6)

    sms, _ = fitted["sms_spam"]
    vocabulary = sms.preprocessing
    ids, lengths = vocabulary.encode([["zzzunknownzzz", vocabulary.words[0]]])
    assert ids[0, :2].tolist() == [OOV_ID, 2] and lengths.tolist() == [2]


def test_manifest_records_where_the_model_came_from(fitted):
    manifest = fitted["airline"][0].manifest
    [member] = manifest.members
    assert manifest.kind == "refit" and manifest.training["seeds"] == 1
    assert member.preprocessing["kind"] == "series" and member.preprocessing["lookback"] == 12
    assert member.preprocessing["columns"] == ["passengers"]
    assert member.target.mean is not None and member.target.std > 0
    assert manifest.data_fingerprint == load_builtin("airline").fingerprint()
    assert manifest.data_fingerprint.startswith("sha256:")
    assert {"torch", "optuna", "hpo"} <= set(manifest.versions)
    assert fitted["sms_spam"][0].manifest.members[0].preprocessing["max_length"] == 16
    assert fitted["digits"][0].manifest.classes == list(range(10))


def test_final_epochs_are_the_median_of_the_best_epochs():
    spec = _spec("digits", training={"max_epochs": 17})
    trial = optuna.trial.create_trial(value=0.9, user_attrs={"fold_best_epochs": [3, 8, 4, 4]})
    assert final_epochs(trial, spec)[0] == 4
    trial = optuna.trial.create_trial(value=0.9, user_attrs={"fold_best_epochs": [3, 4]})
    assert final_epochs(trial, spec)[0] == 4  # 3.5 rounds up
    epochs, why = final_epochs(optuna.trial.create_trial(value=0.9), spec)
    assert epochs == 17 and "max_epochs" in why


def test_forecasting_holdout_is_the_end_of_the_series_after_a_gap():
    spec = _spec("airline", "forecasting", training={"lookback": 12, "horizon": 3})
    dataset = load_builtin("airline", lookback=12, horizon=3)
    train, val = holdout_split(dataset, spec, 0.1)
    assert val[0] - train[-1] == 3  # horizon - 1 windows skipped
    assert val[-1] == dataset.n_samples - 1


def _rewrite(path: Path, **members: bytes) -> None:
    with zipfile.ZipFile(path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    contents.update(members)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def test_damaged_or_altered_archives_are_refused(tmp_path, fitted):
    model, _ = fitted["digits"]
    good = tmp_path / "good.hpo.zip"
    model.save(good)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.hpo.zip"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or damaged"):
        load_model(truncated)

    with zipfile.ZipFile(good) as archive:
        weights = bytearray(archive.read("model.safetensors"))
        manifest = json.loads(archive.read("manifest.json"))
    weights[-4:] = b"\x00\x00\x80\x7f"  # one weight becomes +inf
    altered = tmp_path / "altered.hpo.zip"
    altered.write_bytes(data)
    _rewrite(altered, **{"model.safetensors": bytes(weights)})
    with pytest.raises(ValueError, match="sha256"):
        load_model(altered)

    manifest["members"][0]["architecture"]["hidden_size"] = 9
    edited = tmp_path / "edited.hpo.zip"
    edited.write_bytes(data)
    _rewrite(edited, **{"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(ValueError, match="do not fit the manifest's architecture"):
        load_model(edited)

    smuggled = tmp_path / "smuggled.hpo.zip"
    smuggled.write_bytes(data)
    _rewrite(smuggled, **{"model.pkl": b"\x80\x04K\x01."})
    with pytest.raises(ValueError, match="exactly manifest.json and model.safetensors"):
        load_model(smuggled)

    with pytest.raises(ValueError, match="not a readable hpo model archive"):
        load_model(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="no such file"):
        load_model(tmp_path / "missing.hpo.zip")
    assert load_model(data).predict(_digits()[0][:3]).shape == (3,)


def test_the_archive_stores_its_weights_and_deflates_its_manifest(fitted):
    """Float weights barely compress, and deflating them cost a fold ensemble's keeper more
    CPU than anything but its learning check: they are stored, as ``torch.save`` stores them."""
    blob, _ = fitted["digits"][0].to_bytes()
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        assert archive.getinfo("model.safetensors").compress_type == zipfile.ZIP_STORED
        assert archive.getinfo("manifest.json").compress_type == zipfile.ZIP_DEFLATED


@pytest.mark.parametrize(("name", "bad", "message"), [
    ("digits", np.zeros((2, 8, 5)), "x: has 5 features per step; the model was trained on 8"),
    ("digits", np.zeros((2, 6, 8)), "x: every sequence must have 8 steps"),
    ("digits", np.zeros((2, 8)), "x: has shape \\[2, 8\\]"),
    ("digits", [["a"] * 8] * 8, "x.0: must be numbers of shape \\[T, 8\\]"),
    ("digits", np.full((1, 8, 8), np.nan), "NaN"),
    ("sms_spam", "just one string", "texts: must be a list of strings"),
    ("sms_spam", ["fine", 3], "texts.1: must be a string"),
    ("airline", np.ones(5), "series: has 5 rows; the model reads the last 12"),
    ("airline", np.ones((20, 2)), "series: rows have 2 values; the model reads 1 column \\(passengers\\)"),
])
def test_malformed_inputs_are_refused_naming_the_problem(fitted, name, bad, message):
    model, _ = fitted[name]
    with pytest.raises(InputError, match=message):
        model.predict(bad)


def test_inputs_from_json_bodies_and_files(fitted):
    digits, sms, airline = (fitted[n][0] for n in ("digits", "sms_spam", "airline"))
    with pytest.raises(InputError, match="texts: unknown field; this model reads lengths and x"):
        inputs_from_json(digits.preprocessing, {"texts": ["a"]})
    with pytest.raises(InputError, match="series: required"):
        inputs_from_json(airline.preprocessing, {})

    buffer = io.BytesIO()
    np.savez(buffer, X=_digits()[0][:5], y=np.arange(5))
    from_file = inputs_from_file(digits.preprocessing, "new.npz", buffer.getvalue())
    assert digits.predict(from_file.values).tolist() == digits.predict(_digits()[0][:5]).tolist()
    with pytest.raises(InputError, match="reads npz files; got csv"):
        inputs_from_file(digits.preprocessing, "new.csv", b"a,b\n1,2\n")

    table = inputs_from_file(sms.preprocessing, "new.tsv", b"label\ttext\nham\thello there\n")
    assert table.values == ["hello there"]
    series = inputs_from_file(airline.preprocessing, "s.csv", b"month,passengers\n" + b"".join(
        f"1950-{i:02d},{100 + i}\n".encode() for i in range(1, 13)))
    assert series.values.shape == (12, 1)
    with pytest.raises(InputError, match="lacks the model's column\\(s\\) passengers"):
        inputs_from_file(airline.preprocessing, "s.csv", b"month,riders\n1950-01,3\n")


def test_load_model_is_reexported_lazily():
    done = subprocess.run([sys.executable, "-c", "import sys, hpo; assert 'torch' not in sys.modules; "
                           "print(hpo.load_model.__module__)"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "hpo.export.archive"
    assert hpo.load_model is load_model


def test_model_commands_fit_from_a_storage_and_predict_offline(tmp_path, capsys):
    from hpo.cli import main
    from hpo.local import run

    storage_url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = parse_spec({"name": "digits-cli", "dataset": {"builtin": "digits"}, "cv": {"folds": 2},
                       "search_space": {"hidden_size": 8, "lr": 0.01, "batch_size": 64},
                       "training": {"max_epochs": 2}, "budget": {"n_trials": 1}})
    assert run(spec, storage_url, jobs=1, show_progress=False) is not None
    archive = tmp_path / "digits.hpo.zip"
    main(["model", "fit", "digits-cli", "--storage", storage_url, "--out", str(archive)])
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["model"]["trial_number"] == 0 and fitted["model"]["epochs_source"].startswith("median")

    x = _digits()[0][:4]
    (tmp_path / "new.json").write_text(json.dumps({"x": x.tolist()}))
    main(["model", "predict", str(archive), str(tmp_path / "new.json")])
    predicted = json.loads(capsys.readouterr().out)
    assert predicted["labels"] == load_model(archive).predict(x).tolist()

    with pytest.raises(SystemExit) as refused:
        main(["model", "fit", "no-such-study", "--storage", storage_url])
    assert refused.value.code == 1
    assert "no study 'no-such-study'" in capsys.readouterr().err


def _trained_folds(dataset, params: dict, folds: list[tuple[np.ndarray, np.ndarray]], epochs: int = 1):
    """Fold networks trained as a trial trains them, with their FoldData."""
    spec = _spec("digits")
    built = [dataset.fold(train, val) for train, val in folds]
    networks = []
    for i, fold in enumerate(built):
        trainer = FoldTrainer(fold, params, spec.model, "accuracy", None, pick_device(), i, max_epochs=epochs)
        for _ in range(epochs):
            trainer.step()
        networks.append(trainer.network())
    return spec, networks, built


def test_ensemble_averages_its_fold_models_each_with_its_own_preprocessing():
    dataset = load_builtin("digits")
    rows = np.arange(dataset.n_samples)
    folds = [(rows[rows % 2 == 0], rows[rows % 2 == 1]), (rows[rows < 1200], rows[rows >= 1200])]
    spec, networks, built = _trained_folds(dataset, TINY, folds)
    assert not np.allclose(built[0].preprocessing.mean, built[1].preprocessing.mean)  # two different scalers

    model = load_model(ensemble_model(spec, dataset, TINY, networks, built, fold_epochs=[1, 1]).to_bytes()[0])

    x = _digits()[0][:30]
    with torch.inference_mode():
        each = [torch.softmax(net.eval()(torch.from_numpy(fold.preprocessing.transform(x, None)).float()).double(),
                              1).numpy() for net, fold in zip(networks, built)]
    np.testing.assert_allclose(model.predict_proba(x), np.mean(each, axis=0), rtol=1e-5, atol=1e-7)
    assert model.kind == "ensemble" and [m.fold for m in model.manifest.members] == [0, 1]
    assert model.predict(x).tolist() == np.mean(each, axis=0).argmax(1).tolist()


def test_refit_averages_one_network_per_seed():
    model = fit_model(_spec("digits"), load_builtin("digits"), TINY, epochs=1, seeds=2)
    x = _digits()[0][:10]

    assert model.kind == "refit" and [m.seed for m in model.manifest.members] == [0, 1]
    first, second = (m.network.state_dict()["head.weight"] for m in model.members)
    assert not torch.equal(first, second)
    each = [load_model(_single_member(model, i)).predict_proba(x) for i in range(2)]
    np.testing.assert_allclose(model.predict_proba(x), np.mean(each, axis=0), rtol=1e-6)


def _single_member(model, index: int) -> bytes:
    """An archive of one member of ``model`` (to compare the average with its parts)."""
    from hpo.export.archive import archive_bytes

    manifest = model.manifest.model_copy(update={"members": [model.manifest.members[index]], "weights": None})
    prefix = f"members.{index}."
    weights = {f"members.0.{k[len(prefix):]}": v for k, v in model._weights.items() if k.startswith(prefix)}
    return archive_bytes(manifest, weights)[0]


def test_a_model_that_did_not_learn_is_flagged(fitted):
    digits = load_builtin("digits")
    fold = digits.fold(np.arange(digits.n_samples), np.arange(10))
    silent = SequenceModel(cell="gru", hidden_size=8, out_dim=10, n_features=8, vocab_size=None, embedding_dim=8,
                           num_layers=1, bidirectional=False, dropout=0.0)
    for tensor in silent.parameters():  # every output 0: always class 0, no better than the majority class
        torch.nn.init.zeros_(tensor)
    check = learning_check("classification", [silent], [fold])
    assert not check.learned and check.baseline_name == "majority class"
    assert check.score <= check.baseline == pytest.approx(np.bincount(_digits()[1]).max() / len(_digits()[1]))
    assert fitted["digits"][0].manifest.learning.learned

    airline = load_builtin("airline", lookback=12, horizon=1)
    series_fold = airline.fold(np.arange(airline.n_samples), np.arange(5))
    flat = SequenceModel(cell="gru", hidden_size=8, out_dim=1, n_features=1, vocab_size=None, embedding_dim=8,
                         num_layers=1, bidirectional=False, dropout=0.0)
    for tensor in flat.parameters():  # always the training mean: a rising series' last value beats it
        torch.nn.init.zeros_(tensor)
    check = learning_check("forecasting", [flat], [series_fold])
    assert not check.learned and check.baseline_name == "persistence" and check.score > check.baseline


def test_class_labels_come_back_with_the_type_they_were_given(fitted):
    digits = load_model(fitted["digits"][0].to_bytes()[0])
    sms = load_model(fitted["sms_spam"][0].to_bytes()[0])
    x = _digits()[0][:5]

    assert digits.classes == list(range(10)) and all(type(c) is int for c in digits.classes)
    labels = digits.predict_dict(PredictInput(x))["labels"]
    assert all(type(label) is int for label in labels) and labels == digits.predict(x).tolist()
    assert sms.classes == ["ham", "spam"]


def test_a_variable_length_model_refuses_padded_x_without_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 11, size=80)
    x = rng.normal(size=(80, 10, 2)) * (np.arange(10)[None, :, None] < lengths[:, None, None])  # zero-padded
    labels = (x.sum(axis=(1, 2)) > 0).astype(np.int64)
    dataset = SequenceDataset(x.astype(np.float32), lengths, Targets.from_array("classification", labels))
    model = fit_model(_spec("digits"), dataset, TINY, epochs=1)

    with pytest.raises(InputError, match="lengths: required") as refused:
        model.predict(x)
    assert refused.value.field == "lengths"
    padded = model.predict(x, lengths)
    ragged = model.predict([row[:n] for row, n in zip(x, lengths)])
    assert padded.tolist() == ragged.tolist() and set(padded.tolist()) <= {0, 1}
    assert model.predict(rng.normal(size=(4, 10, 2))).shape == (4,)  # not padded: read as full length
