"""Data layer: builtins, per-fold preprocessing without leakage, safe loading of user files, the store."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.model_selection import TimeSeriesSplit

from hpo.data import DataError, DatasetStore, load_dataset
from hpo.data.builtins import _digits
from hpo.data.forecast import DEFAULT_HORIZON, DEFAULT_LOOKBACK, parse_series
from hpo.data.readers import MAX_COLUMNS, parse_table
from hpo.data.sequences import sequences_from_npz
from hpo.data.text import DEFAULT_MAX_LENGTH, MAX_LENGTH_BOUNDS
from hpo.data.formats import open_file
from hpo.spec import DatasetSpec, SpecError, TrainingSpec, parse_spec

UNPICKLED: list[str] = []


class _Payload:
    """Records its own unpickling: loading an uploaded NPZ must never get that far."""

    def __reduce__(self):
        return (UNPICKLED.append, ("unpickled",))


def spec(task: str = "classification", lookback: int = 12, horizon: int = 1, forecast_target: str | None = None,
         **dataset):
    training = {"lookback": lookback, "horizon": horizon}
    if forecast_target is not None:
        training["forecast_target"] = forecast_target
    return parse_spec({"name": "t", "task": task, "dataset": dataset, "training": training})


def npz(tmp_path: Path, name: str = "d.npz", **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(n)
    return idx[: n // 2], idx[n // 2 :]


# --- builtins ---------------------------------------------------------------------------


def test_digits_builtin():
    ds = load_dataset(spec(builtin="digits"))
    assert (ds.task, ds.n_samples, ds.class_names) == ("classification", 1797, [str(d) for d in range(10)])
    assert ds.labels is not None and ds.labels.shape == (1797,) and set(ds.labels) == set(range(10))
    fold = ds.fold(*halves(1797))
    assert fold.train.x.shape == (898, 8, 8) and fold.train.x.dtype == torch.float32
    assert fold.val.y.dtype == torch.int64 and fold.train.lengths is None
    assert (fold.n_features, fold.vocab_size, fold.out_dim, fold.target_scale) == (8, None, 10, None)
    load_dataset(spec(builtin="digits"))
    assert _digits.cache_info().hits >= 1  # raw arrays are read once per process


def test_sms_spam_builtin():
    ds = load_dataset(spec(builtin="sms_spam", max_length=32))
    assert ds.n_samples == 5574 and ds.class_names == ["ham", "spam"]
    assert ds.describe()["class_counts"] == {"ham": 4827, "spam": 747}
    fold = ds.fold(*halves(5574))
    assert fold.train.x.shape == (2787, 32) and fold.train.x.dtype == torch.int64
    assert fold.train.lengths is not None and 1 <= int(fold.train.lengths.min()) <= int(fold.train.lengths.max()) <= 32
    assert int(fold.train.x.max()) < fold.vocab_size and fold.out_dim == 2 and fold.n_features is None


def test_airline_builtin():
    ds = load_dataset(spec("forecasting", lookback=12, horizon=3, forecast_target="level", builtin="airline"))
    assert ds.n_samples == 144 - 12 - 3 + 1 and ds.labels is None and ds.class_names is None
    assert ds.describe()["dropped_columns"] == ["month"]
    fold = ds.fold(np.arange(100), np.arange(102, 130))
    assert fold.train.x.shape == (100, 12, 1) and fold.train.y.shape == (100, 3)
    assert (fold.n_features, fold.out_dim) == (1, 3) and fold.target_scale is not None
    mean, std = fold.target_scale
    assert float(fold.train.y[0, 0]) * std + mean == pytest.approx(115.0)  # 1950-01, the row after the lookback


def test_defaults_agree_with_the_spec():
    field = DatasetSpec.model_fields["max_length"]
    bounds = (field.metadata[0].ge, field.metadata[1].le)
    assert (field.default, bounds) == (DEFAULT_MAX_LENGTH, MAX_LENGTH_BOUNDS)
    assert (TrainingSpec().lookback, TrainingSpec().horizon) == (DEFAULT_LOOKBACK, DEFAULT_HORIZON)


# --- numeric sequences ------------------------------------------------------------------


def test_scaler_fitted_on_training_rows_only(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, size=(40, 6, 3))
    y = np.arange(40) % 2
    train, val = halves(40)
    outlier = x.copy()
    outlier[val] = 1e6
    clean = sequences_from_npz(npz(tmp_path, "a.npz", X=x, y=y), "classification").fold(train, val)
    dirty = sequences_from_npz(npz(tmp_path, "b.npz", X=outlier, y=y), "classification").fold(train, val)
    assert torch.equal(clean.train.x, dirty.train.x)
    mean, std = x[train].reshape(-1, 3).mean(0), x[train].reshape(-1, 3).std(0)
    expected = (x[train] - mean) / std
    np.testing.assert_allclose(dirty.train.x.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert float(dirty.val.x.min()) > 1e4  # validation is scaled with the training statistics


def test_variable_length_npz_pads_with_zeros(tmp_path):
    lengths = np.array([3, 1, 4, 2, 4, 1])
    values = np.arange(lengths.sum() * 2, dtype=np.float64).reshape(-1, 2) + 100.0
    ds = sequences_from_npz(npz(tmp_path, values=values, lengths=lengths, y=np.array([0, 1] * 3)), "classification")
    assert ds.describe()["steps"] == {"min": 1, "max": 4, "mean": 2.5}
    train, val = np.array([0, 1, 2, 3]), np.array([4, 5])
    fold = ds.fold(train, val)
    assert fold.train.x.shape == (4, 4, 2) and fold.train.lengths.tolist() == [3, 1, 4, 2]
    for split, idx in ((fold.train, train), (fold.val, val)):
        for row, n in enumerate(lengths[idx]):
            assert torch.all(split.x[row, n:] == 0)
    valid = torch.cat([fold.train.x[r, :n] for r, n in enumerate(lengths[train])])
    np.testing.assert_allclose(valid.mean(0).numpy(), 0.0, atol=1e-5)  # stats ignore padding
    np.testing.assert_allclose(valid.std(0, unbiased=False).numpy(), 1.0, atol=1e-5)


def test_fixed_length_2d_x_and_regression_targets(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.normal(50.0, 10.0, size=(30, 2))
    ds = sequences_from_npz(npz(tmp_path, X=rng.normal(size=(30, 7)), y=y), "regression")
    train, val = halves(30)
    fold = ds.fold(train, val)
    assert fold.train.x.shape == (15, 7, 1) and fold.out_dim == 2 and ds.labels is None
    mean, std = fold.target_scale
    assert (mean, std) == pytest.approx((y[train].mean(), y[train].std()))
    np.testing.assert_allclose(fold.val.y.numpy() * std + mean, y[val], rtol=1e-5)


def test_class_labels_are_sorted_and_named(tmp_path):
    x = np.zeros((6, 2, 1))
    ints = sequences_from_npz(npz(tmp_path, "i.npz", X=x, y=np.array([10, 2, 2, 10, 7, 7])), "classification")
    assert ints.class_names == ["2", "7", "10"] and ints.labels.tolist() == [2, 0, 0, 2, 1, 1]
    strs = sequences_from_npz(npz(tmp_path, "s.npz", X=x, y=np.array(["b", "a"] * 3)), "classification")
    assert strs.class_names == ["a", "b"] and strs.labels.tolist() == [1, 0] * 3


def test_fold_indices_are_checked(tmp_path):
    ds = sequences_from_npz(npz(tmp_path, X=np.zeros((8, 2, 1)), y=np.arange(8) % 2), "classification")
    with pytest.raises(DataError, match=r"train_idx holds indices outside \[0, 8\)"):
        ds.fold(np.array([0, 8]), np.array([1]))
    with pytest.raises(DataError, match="val_idx must be a non-empty"):
        ds.fold(np.array([0]), np.array([], dtype=int))


# --- malformed NPZ files ----------------------------------------------------------------

GOOD_X = np.zeros((8, 3, 2))
GOOD_Y = np.arange(8) % 2


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"X": np.where(np.arange(48).reshape(8, 3, 2) < 3, np.nan, 0.0), "y": GOOD_Y}, r"X contains NaN \(3 values\)"),
        ({"X": np.full((8, 3, 2), np.inf), "y": GOOD_Y}, r"X contains infinite values \(48 values\)"),
        ({"X": GOOD_X, "y": GOOD_Y[:7]}, "y has 7 entries but there are 8 sequences"),
        ({"X": GOOD_X, "y": np.full(8, 7)}, r"y has a single class \(7\); classification needs at least 2"),
        ({"X": GOOD_X, "y": GOOD_Y + 0.5}, "non-integer class labels such as 0.5"),
        ({"X": GOOD_X}, "NPZ members found: X; accepted layouts: X .* or values"),
        ({"X": np.zeros((0, 3, 2)), "y": np.zeros(0)}, r"X is empty \(shape \(0, 3, 2\)\)"),
        ({"X": GOOD_X.astype(complex), "y": GOOD_Y}, "'X' has dtype complex128; only arrays of numbers"),
        ({"X": np.zeros((8, 3, 2, 1)), "y": GOOD_Y}, r"X must have shape \[n, T, F\] or \[n, T\]"),
        ({"values": np.zeros(9), "lengths": np.array([4, 4]), "y": GOOD_Y[:4]}, r"sum\(lengths\) is 8 but values"),
        ({"values": np.zeros(4), "lengths": np.array([4, 0]), "y": GOOD_Y[:2]}, "lengths must all be >= 1"),
        ({"values": np.zeros(8), "y": GOOD_Y}, "'values' needs a 'lengths' member"),
        ({"X": GOOD_X, "values": np.zeros(8), "y": GOOD_Y}, "NPZ members found: X, values, y; accepted layouts"),
        ({"X": np.zeros((4, 1, 10_001)), "y": GOOD_Y[:4]}, "sequences have 10001 features; at most 10000"),
    ],
)
def test_malformed_npz_refused(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message):
        sequences_from_npz(npz(tmp_path, **arrays), "classification")


def test_object_array_npz_is_refused_without_unpickling(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.zeros(3), _Payload()]
    path = npz(tmp_path, X=ragged, y=np.array([0, 1]))
    with pytest.raises(DataError, match="NPZ member 'X' holds Python objects; only numeric arrays are accepted"):
        sequences_from_npz(path, "classification")
    assert UNPICKLED == []


def test_zip_bomb_refused_from_declared_size(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, X=np.zeros((64, 128, 16)), y=np.arange(64) % 2)  # 1 MiB of zeros
    assert path.stat().st_size < 20_000
    with pytest.raises(DataError, match=r"NPZ member 'X' would unpack to \d+ bytes; at most 100000 are accepted"):
        sequences_from_npz(path, "classification", max_uncompressed=100_000)
    assert sequences_from_npz(path, "classification").n_samples == 64  # fine under the default limit


def test_npy_header_larger_than_its_data_refused(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("X.npy", header.getvalue() + bytes(64))
        zf.writestr("y.npy", npy_bytes(GOOD_Y))
    with pytest.raises(DataError, match=r"'X' declares shape \(1000000000000,\), larger than its stored data"):
        sequences_from_npz(path, "classification")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "file is empty"), (b"PK\x03\x04 not really a zip", "not an NPZ archive")],
)
def test_empty_or_non_zip_npz_refused(tmp_path, content, message):
    with pytest.raises(DataError, match=message):
        sequences_from_npz(write(tmp_path, "d.npz", content), "classification")


# --- text tables ------------------------------------------------------------------------


def test_text_vocabulary_from_training_fold_only(tmp_path):
    rows = ["label,text", 'a,"Hello, world"', "b,hello there", "a,WORLD hello", "b,", "a,unicorn magic", "b,hello"]
    ds = load_dataset(spec(path=str(write(tmp_path, "t.csv", "\n".join(rows))), max_length=4))
    train, val = np.array([0, 1, 2, 3]), np.array([4, 5])
    fold = ds.fold(train, val)
    assert fold.vocab_size == 2 + 3  # pad, OOV, then hello / world / there from training rows
    assert fold.train.x[0].tolist() == [2, 3, 0, 0]  # "hello" is the most frequent training word
    assert fold.val.x[0].tolist() == [1, 1, 0, 0]  # unicorn, magic: validation only -> OOV
    assert fold.train.x[3].tolist() == [1, 0, 0, 0] and fold.train.lengths[3] == 1  # empty text
    assert ds.class_names == ["a", "b"]


def test_text_truncated_to_max_length_and_tsv(tmp_path):
    body = "text\tlabel\n" + "\n".join(f"{' '.join(['w'] * n)}\t{n % 2}" for n in range(1, 9))
    ds = load_dataset(spec(path=str(write(tmp_path, "t.tsv", body)), max_length=5))
    fold = ds.fold(*halves(8))
    assert fold.val.lengths.tolist() == [5, 5, 5, 5] and fold.val.x.shape == (4, 5)
    assert ds.describe()["truncated_texts"] == 3


def test_text_regression_labels(tmp_path):
    body = "text,label\n" + "\n".join(f"t{i},{i * 1.5}" for i in range(6))
    fold = load_dataset(spec("regression", path=str(write(tmp_path, "r.csv", body)))).fold(*halves(6))
    assert fold.out_dim == 1 and fold.train.y.shape == (3, 1)
    assert fold.target_scale == pytest.approx((1.5, np.std([0, 1.5, 3])))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"text,label\nok,a\n\xff\xfe,b\n", r"not UTF-8 text \(byte 0xff at offset 16\)"),
        ("body,class\nx,a\ny,b\n", "no text column 'text'; columns found: body, class"),
        ("text,label\nx,a\ny,a\nz,a\nw,a\n", r"label has a single class \(a\)"),
        ("text,label\nx,a\ny\n", "line 3 has 1 fields; the header has 2"),
        ("text,label\nx,a\ny, \n", "line 3: column 'label' is empty"),
        ("text,label\n", "the table has a header row but no data rows"),
        ("", "file is empty"),
    ],
)
def test_malformed_text_table_refused(tmp_path, content, message):
    path = write(tmp_path, "bad.csv", content)
    with pytest.raises(DataError, match=f"{re.escape(str(path))}: {message}"):
        load_dataset(spec(path=str(path)))


# --- forecasting ------------------------------------------------------------------------


def series_csv(tmp_path: Path, rows: int, name: str = "s.csv", outlier_from: int | None = None) -> Path:
    lines = ["date,temp,sales"]
    for r in range(rows):
        sales = 1e6 if outlier_from is not None and r >= outlier_from else float(r * r % 17)
        lines.append(f"2020-{r},{r * 0.5},{sales}")
    return write(tmp_path, name, "\n".join(lines))


def test_forecast_windows_and_training_only_scaler(tmp_path):
    lookback, horizon, rows = 5, 3, 60
    ds = load_dataset(spec("forecasting", lookback, horizon, "level", path=str(series_csv(tmp_path, rows))))
    assert ds.n_samples == rows - lookback - horizon + 1
    train, val = np.arange(0, 30), np.arange(32, 52)
    fold = ds.fold(train, val)
    end = 29 + lookback + horizon  # rows training windows touch
    sales = np.array([r * r % 17 for r in range(rows)], dtype=float)
    mean, std = fold.target_scale
    assert (mean, std) == pytest.approx((sales[:end].mean(), sales[:end].std()))
    original = fold.train.y.numpy() * std + mean
    for k, i in enumerate(train):
        np.testing.assert_allclose(original[k], sales[i + lookback : i + lookback + horizon], atol=1e-4)
    assert fold.train.x.shape == (30, lookback, 2) and fold.n_features == 2  # temp + sales; date dropped
    leaky = load_dataset(spec("forecasting", lookback, horizon, "level",
                              path=str(series_csv(tmp_path, rows, "o.csv", end))))
    leaky_fold = leaky.fold(train, val)
    assert torch.equal(fold.train.x, leaky_fold.train.x) and leaky_fold.target_scale == fold.target_scale


@pytest.mark.parametrize("horizon", [1, 4])
def test_timeseries_split_keeps_validation_targets_out_of_training(horizon):
    ds = load_dataset(spec("forecasting", 12, horizon, builtin="airline"))
    for train, val in TimeSeriesSplit(n_splits=4, gap=horizon - 1).split(np.arange(ds.n_samples)):
        train_rows = {int(i) + 12 + h for i in train for h in range(horizon)}
        val_rows = {int(j) + 12 + h for j in val for h in range(horizon)}
        assert not train_rows & val_rows
        ds.fold(train, val)


@pytest.mark.parametrize(
    ("content", "target", "message"),
    [
        ("t,v\n1,2\n2,nan\n3,4\n", None, "column 'v' holds 'nan' at line 3; only finite numbers"),
        ("t,v\n1,2\n2,\n3,4\n", None, "column 'v' is empty at line 3"),
        ("t,v\n1,2\n2,3\n", "sales", "no target column 'sales'; columns found: t, v"),
        ("t,v\n1,x\n2,3\n", "v", r"target column 'v' is not numeric \(line 2: 'x'\)"),
        ("t,v\n" + "".join(f"{i},{i}\n" for i in range(14)), None, "giving 2 windows .* at least 16 rows"),
    ],
)
def test_malformed_series_refused(tmp_path, content, target, message):
    path = write(tmp_path, "s.csv", content)
    with pytest.raises(DataError, match=message):
        load_dataset(spec("forecasting", 12, 1, path=str(path), target_column=target))


# --- dataset store ----------------------------------------------------------------------


def digits_npz_bytes(tmp_path: Path) -> bytes:
    return npz(tmp_path, "up.npz", X=np.random.default_rng(2).normal(size=(20, 4, 3)), y=np.arange(20) % 4).read_bytes()


def test_store_roundtrip(tmp_path, dataset_store):
    store = dataset_store
    first = store.save("dir/seqs.npz", digits_npz_bytes(tmp_path), task="classification")
    texts = "text,label\n" + "\n".join(f"word{i},{i % 2}" for i in range(8))
    second = store.save("t.csv", texts.encode(), task="classification", options={"max_length": 8})
    assert re.fullmatch(r"[A-Za-z0-9_-]+", first.id) and first.name == "seqs.npz" and first.format == "npz"
    assert first.summary["n_samples"] == 20 and first.summary["n_classes"] == 4
    assert store.get(first.id) == first
    assert {i.id for i in store.list()} == {first.id, second.id}
    assert store.path_of(first.id).read_bytes() == digits_npz_bytes(tmp_path)
    ds = load_dataset(spec(id=second.id), store)
    assert ds.describe()["max_length"] == 8  # stored option
    assert load_dataset(spec(id=second.id, max_length=16), store).describe()["max_length"] == 16
    with pytest.raises(DataError, match="was uploaded for classification; the spec's task is regression"):
        load_dataset(spec("regression", id=second.id), store)
    store.delete(first.id)
    assert [i.id for i in store.list()] == [second.id]
    for call in (store.get, store.delete, store.path_of):
        with pytest.raises(KeyError):
            call(first.id)
    with pytest.raises(KeyError):
        store.get("../etc")
    with pytest.raises(DataError, match="unknown dataset id"):
        load_dataset(spec(id=first.id), store)


def test_store_forecasting_series(tmp_path, dataset_store):
    info = dataset_store.save("s.csv", series_csv(tmp_path, 30).read_bytes(), task="forecasting")
    assert info.summary == {
        "task": "forecasting",
        "rows": 30,
        "columns": ["temp", "sales"],
        "target": "sales",
        "feature_columns": ["temp"],
        "time_column": None,
        "dropped_columns": ["date"],
    }
    assert load_dataset(spec("forecasting", 4, 2, id=info.id), dataset_store).n_samples == 30 - 4 - 2 + 1


@pytest.mark.parametrize(
    ("filename", "content", "kwargs", "message"),
    [
        ("bad.csv", b"text,label\nx,a\n\xff,b\n", {}, "bad.csv: not UTF-8 text"),
        ("big.npz", b"x" * 2000, {}, "big.npz: upload is larger than 1000 bytes, the most accepted"),
        ("s.npz", b"", {"task": "forecasting"}, "forecasting reads a csv"),
        ("notes.txt", b"text,label\n", {}, "cannot read format 'txt'"),
        ("t.csv", b"text,label\nx,a\n", {"options": {"colour": "red"}}, "unknown option 'colour'"),
    ],
)
def test_refused_upload_leaves_nothing(tmp_path, dataset_store, filename, content, kwargs, message):
    store = DatasetStore(dataset_store.engine, tmp_path / "data", max_bytes=1000)
    with pytest.raises(DataError, match=message):
        store.save(filename, content, **{"task": "classification", **kwargs})
    assert store.list() == []
    assert [p for p in (tmp_path / "data").rglob("*") if p.is_file()] == []


def test_a_table_wider_than_the_column_limit_is_refused_naming_it():
    header = ",".join(f"c{i}" for i in range(40_000))
    text = "\n".join([header] + [",".join(["1.5"] * 40_000)] * 3)

    with pytest.raises(DataError, match=f"the header row has 40000 columns; at most {MAX_COLUMNS} are accepted"):
        parse_series(text, ",")


def test_a_series_at_the_column_limit_keeps_its_columns_in_order():
    header = ["when", *(f"c{i}" for i in range(MAX_COLUMNS - 1))]
    rows = [",".join([f"2024-01-0{r + 1}", *["1.5"] * (MAX_COLUMNS - 1)]) for r in range(3)]

    series = parse_series("\n".join([",".join(header), *rows]), ",")

    assert series.columns == header[1:] and series.dropped == ["when"] and series.values.shape == (3, MAX_COLUMNS - 1)


def test_a_table_with_too_many_values_is_refused_at_the_line_that_passes_the_limit():
    text = "a,b\n" + "1,2\n" * 6

    with pytest.raises(DataError, match=r"more than 10 values \(rows x columns\) by line 7; at most 10"):
        parse_table(text, ",", max_cells=10)


# --- forecasting column roles -------------------------------------------------------------


YEARLY = "year,temp,sales\n" + "".join(f"{1900 + r},{r % 7},{100 + 3 * r}\n" for r in range(30))


def test_a_time_column_orders_the_rows_and_is_never_an_input():
    default = parse_series(YEARLY, ",")
    assert default.columns == ["year", "temp", "sales"]  # unchanged without roles: every numeric column

    series = parse_series(YEARLY, ",", time_column="year")

    assert series.columns == ["temp", "sales"] and series.target == "sales" and series.time == "year"
    assert series.describe()["time_column"] == "year" and series.describe()["feature_columns"] == ["temp"]
    assert "year" in series.describe()["dropped_columns"]
    only_target = parse_series(YEARLY, ",", "sales", feature_columns=[], time_column="year")
    assert only_target.columns == ["sales"] and only_target.describe()["feature_columns"] == []
    assert parse_series(YEARLY, ",", feature_columns=["sales"], time_column="year").columns == ["sales"]


@pytest.mark.parametrize("text, message", [
    ("year,v\n1901,1\n1900,2\n1902,3\n", "time column 'year' goes back in time at line 3 \\('1900' after '1901' "
                                         "at line 2\\)"),
    ("year,v\n1900,1\n1900,2\n1902,3\n", "time column 'year' repeats time at line 3"),
    ("month,v\n2020-01,1\n2020-03,2\n2020-02,3\n", "goes back in time at line 4"),
    ("month,v\n2020-01,1\nMarch,2\n", "time column 'month' holds 'March' at line 3; times must be numbers or "
                                      "ISO 8601 dates"),
    ("year,v\n1900,1\n,2\n", "time column 'year' is empty at line 3"),
])
def test_times_out_of_order_are_refused_with_their_lines(text, message):
    with pytest.raises(DataError, match=message):
        parse_series(text, ",", time_column=text.split(",")[0])


def test_iso_dates_order_a_series():
    text = "day,v\n" + "".join(f"2020-01-{d:02d},{d}\n" for d in range(1, 11)) + "2020-02-01T00:00,11\n"
    assert parse_series(text, ",", time_column="day").columns == ["v"]


@pytest.mark.parametrize("options, message", [
    ({"time_column": "when"}, "no time column 'when'; columns found: year, temp, sales"),
    ({"feature_columns": ["rain"]}, "no feature column 'rain'"),
    ({"time_column": "year", "target_column": "year"}, "time column 'year' orders the rows and is never an input"),
    ({"time_column": "year", "feature_columns": ["year"]}, "time column 'year' orders the rows"),
])
def test_column_roles_that_do_not_fit_the_table_are_refused(tmp_path, options, message):
    path = write(tmp_path, "y.csv", YEARLY)
    with pytest.raises(DataError, match=message):
        open_file(path, format=None, task="forecasting", options=options)


def test_feature_columns_must_be_numeric_and_roles_belong_to_series(tmp_path):
    path = write(tmp_path, "n.csv", "note,sales\n" + "".join(f"x{r},{r}\n" for r in range(20)))
    with pytest.raises(DataError, match="feature column 'note' is not numeric \\(line 2: 'x0'\\)"):
        open_file(path, format=None, task="forecasting", options={"feature_columns": "note"})
    with pytest.raises(DataError, match="time_column is a column role of a forecasting series; task classification"):
        open_file(path, format=None, task="classification", options={"time_column": "note"})
    with pytest.raises(DataError, match="feature_columns names a column twice"):
        open_file(path, format=None, task="forecasting", options={"feature_columns": "sales, sales"})


def test_a_spec_gives_column_roles_to_a_series_file(tmp_path):
    path = write(tmp_path, "y.csv", YEARLY)
    base = {"name": "t", "task": "forecasting", "training": {"lookback": 4}}
    with_year = load_dataset(parse_spec({**base, "dataset": {"path": str(path)}}))
    without = load_dataset(parse_spec({**base, "dataset": {"path": str(path), "time_column": "year",
                                                           "feature_columns": []}}))
    assert with_year.fold(np.arange(10), np.arange(12, 20)).n_features == 3
    assert without.fold(np.arange(10), np.arange(12, 20)).n_features == 1
    with pytest.raises(SpecError, match="dataset.time_column"):
        parse_spec({"name": "c", "dataset": {"builtin": "digits", "time_column": "t"}})
