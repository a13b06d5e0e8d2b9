"""New data for a fitted model: raw arrays, JSON bodies or uploaded files -> network inputs.

Checks name the field and what the model accepts (``x has 3 features per step; the model
was trained on 8``); the transform itself is the training-time one, read from the
preprocessing state stored with the model (``SequenceScaling``, ``TextVocabulary``,
``SeriesScaling``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpo.data.base import DataError
from hpo.data.forecast import SeriesScaling, parse_series
from hpo.data.readers import DELIMITERS, decode_utf8, parse_table, read_npz
from hpo.data.sequences import SequenceScaling, sequence_arrays
from hpo.data.text import DEFAULT_TEXT_COLUMN, TextVocabulary, tokenize

MAX_PREDICT_ROWS = 1_000_000


class InputError(DataError):
    """New data that a model cannot read; ``field`` names where (``x``, ``texts``, ``series``, ``file``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}", field)


@dataclass
class PredictInput:
    """Raw inputs: ``values`` (sequences, texts or one series) and, for zero-padded numeric
    sequences, their true ``lengths``. ``rolling`` (series only): forecast from every
    window of the series, not only from its last one."""

    values: Any
    lengths: Any = None
    rolling: bool = False


@dataclass
class Prepared:
    """Network inputs: ``x``, ``lengths`` (None for fixed-length input) and, for a series,
    ``base`` float64 ``[n]``: what each window adds to its scaled-back outputs
    (``SeriesScaling.base``)."""

    x: torch.Tensor
    lengths: torch.Tensor | None = None
    base: np.ndarray | None = None


def input_field(preprocessing: Any) -> str:
    """The JSON field a model reads: ``x`` (numeric), ``texts`` or ``series``."""
    return {"numeric": "x", "text": "texts", "series": "series"}[preprocessing.kind]


def prepare(preprocessing: Any, data: PredictInput) -> Prepared:
    """Check raw inputs against the model and apply its training-time preprocessing.

    A series gives one window, its last ``lookback`` rows; with ``data.rolling``, every
    window: rows ``[s, s + lookback)`` for each ``s`` from 0 to ``rows - lookback``.

    Raises:
        InputError: naming the field and the problem.
    """
    if data.lengths is not None and not isinstance(preprocessing, SequenceScaling):
        raise InputError("lengths", "only numeric sequence models take lengths; "
                                    f"this one reads {input_field(preprocessing)}")
    if data.rolling and not isinstance(preprocessing, SeriesScaling):
        raise InputError("rolling", f"only forecasting models roll over a series; this one reads "
                                    f"{input_field(preprocessing)}")
    if isinstance(preprocessing, SequenceScaling):
        x, lengths = _sequences(preprocessing, data.values, data.lengths)
        scaled = _finite_after_scaling("x", preprocessing.transform(x, lengths))
        return Prepared(torch.from_numpy(scaled), None if lengths is None else torch.from_numpy(lengths))
    if isinstance(preprocessing, TextVocabulary):
        ids, lengths = preprocessing.encode([tokenize(t) for t in _texts(data.values)])
        return Prepared(torch.from_numpy(ids), torch.from_numpy(lengths))
    values = _series(preprocessing, data.values)
    last = len(values) - preprocessing.lookback
    starts = np.arange(last + 1) if data.rolling else np.array([last])
    scaled = _finite_after_scaling("series", preprocessing.inputs(values, starts))
    return Prepared(torch.from_numpy(scaled), None, preprocessing.base(values, starts))


def _finite_after_scaling(field: str, scaled: np.ndarray) -> np.ndarray:
    """The scaled float32 inputs, refused when a value overflowed (e.g. 3.4e38 divided by a std below 1).

    Raises:
        InputError: naming ``field``.
    """
    if not np.isfinite(scaled).all():
        raise InputError(field, "values too large: after the training-time scaling some exceed float32's range; "
                                "send finite values on the scale of the training data")
    return scaled


def _sequences(scaling: SequenceScaling, x: Any, lengths: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Numeric sequences as float32 ``[n, T, F]`` (zero-padded) and lengths (None when all are full)."""
    n_features = scaling.n_features
    shape = f"[n, T, {n_features}]" + (" or [n, T]" if n_features == 1 else "")
    try:
        array = np.asarray(x, dtype=np.float64) if not isinstance(x, np.ndarray) else x
    except OverflowError:
        raise InputError("x", "holds an integer beyond float64's range; only finite numbers are accepted") from None
    except (ValueError, TypeError):  # ragged: sequences of different lengths, or non-numbers
        if lengths is not None or not isinstance(x, (list, tuple)):
            raise InputError("x", f"must be numbers of shape {shape}") from None
        return _ragged(scaling, list(x))
    if array.dtype.kind not in "biuf":
        raise InputError("x", f"must hold numbers; got {array.dtype}")
    if array.ndim == 2 and n_features != 1:
        raise InputError("x", f"has shape {list(array.shape)}; sequences need shape {shape} "
                              f"(sequences, steps, {n_features} features per step)")
    if array.ndim == 3 and array.shape[2] != n_features:
        raise InputError("x", f"has {array.shape[2]} features per step; the model was trained on {n_features} "
                              f"(shape {list(array.shape)}, expected {shape})")
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise InputError("x", f"must have shape {shape}; got {list(array.shape)}")
    if len(array) > MAX_PREDICT_ROWS:
        raise InputError("x", f"has {len(array)} sequences; at most {MAX_PREDICT_ROWS} per call")
    try:
        x3, _ = sequence_arrays({"X": array})
    except DataError as exc:
        raise InputError("x", str(exc)) from None
    lengths_array = None
    if lengths is not None:
        lengths_array = _lengths(lengths, len(x3), x3.shape[1])
        if lengths_array.min() == x3.shape[1]:  # all full: as training data of one length
            lengths_array = None
    elif scaling.steps is None and not x3[:, -1].any(axis=-1).all():
        # Zero steps at the end read as padding: the network would run over them as data.
        raise InputError("lengths", f"required: this model was trained on sequences of different lengths and x is "
                                    f"one array whose sequences end in all-zero steps (padding?); give each "
                                    f"sequence's true length in lengths ({len(x3)} integers, {x3.shape[1]} for "
                                    "one that is not padded), or x as a list of sequences of their own lengths")
    return _check_steps(scaling, x3, lengths_array)


def _lengths(lengths: Any, n: int, steps: int) -> np.ndarray:
    try:
        array = np.asarray(lengths)
    except (ValueError, TypeError):
        raise InputError("lengths", "must be a list of integers") from None
    if array.shape != (n,) or array.dtype.kind not in "iu":
        raise InputError("lengths", f"must be {n} integers (one per sequence); "
                                    f"got {array.dtype} {list(array.shape)}")
    if array.min() < 1 or array.max() > steps:
        raise InputError("lengths", f"must lie in 1..{steps} (the padded steps); "
                                    f"got {int(array.min())}..{int(array.max())}")
    return array.astype(np.int64)


def _ragged(scaling: SequenceScaling, sequences: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Sequences of different lengths, each ``[T_i, F]`` (``[T_i]`` for one feature), padded."""
    n_features = scaling.n_features
    if not sequences:
        raise InputError("x", "is empty; give at least one sequence")
    steps = []
    for i, seq in enumerate(sequences):
        try:
            seq = np.asarray(seq, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            raise InputError(f"x.{i}", f"must be numbers of shape [T, {n_features}] (steps, features)") from None
        if seq.ndim == 1 and n_features == 1:
            seq = seq[:, None]
        if seq.ndim != 2 or len(seq) == 0 or seq.shape[1] != n_features:
            raise InputError(f"x.{i}", f"must have shape [T, {n_features}] (steps, features); got {list(seq.shape)}")
        steps.append(seq)
    try:
        x, lengths = sequence_arrays({"values": np.concatenate(steps),
                                      "lengths": np.array([len(s) for s in steps], dtype=np.int64)})
    except DataError as exc:
        raise InputError("x", str(exc)) from None
    return _check_steps(scaling, x, lengths)


def _check_steps(
    scaling: SequenceScaling, x: np.ndarray, lengths: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A model trained on sequences of one length reads only that length."""
    if scaling.steps is not None and (lengths is not None or x.shape[1] != scaling.steps):
        got = f"{x.shape[1]} steps" if lengths is None else f"lengths {int(lengths.min())}..{int(lengths.max())}"
        raise InputError("x", f"every sequence must have {scaling.steps} steps, as in training; got {got}")
    return x, lengths


def _texts(texts: Any) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple, np.ndarray)):
        raise InputError("texts", f"must be a list of strings; got {type(texts).__name__}")
    if len(texts) == 0:
        raise InputError("texts", "is empty; give at least one text")
    if len(texts) > MAX_PREDICT_ROWS:
        raise InputError("texts", f"has {len(texts)} texts; at most {MAX_PREDICT_ROWS} per call")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"texts.{i}", f"must be a string; got {type(text).__name__}")
    return [str(t) for t in texts]


def _series(scaling: SeriesScaling, series: Any) -> np.ndarray:
    """One series ``[rows, C]`` in the training columns' order, at least ``lookback`` rows."""
    columns = scaling.columns
    named = f"{len(columns)} column{'s' if len(columns) > 1 else ''} ({', '.join(columns)})"
    try:
        values = np.asarray(series, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise InputError("series", f"must be rows of {named} numbers") from None
    if values.ndim == 1 and len(columns) == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise InputError("series", f"must be one series [rows, {len(columns)}]; got shape {list(values.shape)}")
    if values.shape[1] != len(columns):
        raise InputError("series", f"rows have {values.shape[1]} values; the model reads {named}, "
                                   "one row per time step")
    if len(values) < scaling.lookback:
        raise InputError("series", f"has {len(values)} rows; the model reads the last {scaling.lookback} (lookback)")
    if len(values) > MAX_PREDICT_ROWS:
        raise InputError("series", f"has {len(values)} rows; at most {MAX_PREDICT_ROWS} per call")
    if not np.isfinite(values).all():
        raise InputError("series", "contains NaN or infinite values; only finite numbers are accepted")
    return values


def inputs_from_json(preprocessing: Any, body: Any) -> PredictInput:
    """The inputs in a JSON body: ``{"x": [...], "lengths": [...]}``, ``{"texts": [...]}`` or
    ``{"series": [...], "rolling": false}``.

    Raises:
        InputError: for a missing or unexpected field, or a ``rolling`` that is not a boolean.
    """
    field = input_field(preprocessing)
    if not isinstance(body, Mapping):
        raise InputError("body", f"must be a JSON object with {field!r}; got {type(body).__name__}")
    allowed = {field, "lengths"} if field == "x" else {field, "rolling"} if field == "series" else {field}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InputError(unknown[0], f"unknown field; this model reads {' and '.join(sorted(allowed))}")
    if field not in body:
        raise InputError(field, f"required: this {preprocessing.kind} model reads {field!r}")
    return PredictInput(body[field], body.get("lengths"), rolling=check_rolling(body.get("rolling", False)))


def check_rolling(rolling: Any) -> bool:
    """``rolling`` as given: true or false.

    Raises:
        InputError: for anything else (``"true"``, 1, null).
    """
    if not isinstance(rolling, (bool, np.bool_)):
        raise InputError("rolling", f"must be true or false; got {rolling!r}")
    return bool(rolling)


def inputs_from_file(preprocessing: Any, filename: str, content: bytes, *, format: str | None = None,
                     column: str | None = None, rolling: bool = False) -> PredictInput:
    """The inputs in a file of the dataset upload formats (targets, if present, are ignored).

    Numeric models read an ``.npz`` (``X``, or ``values`` + ``lengths``); text models a
    csv/tsv table's ``column`` (default ``text``, or the only column); forecasting models
    a csv/tsv series with the training columns (by name; other columns are ignored), one
    forecast after its end or, with ``rolling``, one from every window.

    Raises:
        InputError: naming the problem (``field`` is ``file``).
    """
    fmt = (format or Path(filename).suffix.lstrip(".")).lower()
    expected = ("npz",) if isinstance(preprocessing, SequenceScaling) else ("csv", "tsv")
    if fmt not in expected:
        raise InputError("file", f"this {preprocessing.kind} model reads {' or '.join(expected)} files; "
                                 f"got {fmt or 'no suffix'} ({filename})")
    try:
        if fmt == "npz":
            with tempfile.NamedTemporaryFile(suffix=".npz") as temp:
                temp.write(content)
                temp.flush()
                x, lengths = sequence_arrays(read_npz(temp.name, ["X", "values", "lengths"]))
            return PredictInput(x, lengths)
        text = decode_utf8(content)
        if isinstance(preprocessing, TextVocabulary):
            header, rows = parse_table(text, DELIMITERS[fmt])
            name = column or (header[0] if len(header) == 1 else DEFAULT_TEXT_COLUMN)
            if name not in header:
                raise DataError(f"no text column {name!r}; columns found: {', '.join(header)} "
                                "(set text_column to one of them)")
            at = header.index(name)
            return PredictInput([fields[at] for _, fields in rows])
        series = parse_series(text, DELIMITERS[fmt])
        missing = [c for c in preprocessing.columns if c not in series.columns]
        if missing:
            raise DataError(f"the series lacks the model's column(s) {', '.join(missing)}; numeric columns found: "
                            f"{', '.join(series.columns)}")
        return PredictInput(series.values[:, [series.columns.index(c) for c in preprocessing.columns]],
                            rolling=rolling)
    except InputError:
        raise
    except DataError as exc:
        raise InputError("file", f"{filename}: {exc}") from None
