"""Built-in datasets shipped with the package (never downloaded): digits, sms_spam, airline."""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

from hpo.data.base import DataError, Dataset, Targets
from hpo.data.forecast import DEFAULT_HORIZON, DEFAULT_LOOKBACK, ForecastDataset, Series, parse_series
from hpo.data.readers import decode_utf8
from hpo.data.sequences import SequenceDataset
from hpo.data.text import DEFAULT_MAX_LENGTH, TextDataset
from hpo.spec import BUILTIN_DATASETS


def load_builtin(
    name: str,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    lookback: int | None = DEFAULT_LOOKBACK,
    horizon: int = DEFAULT_HORIZON,
    forecast_target: str = "level",
) -> Dataset:
    """Load a built-in dataset (raw arrays are cached in-process).

    Args:
        name: ``digits`` (8x8 images as 8 steps of 8 features, 10 classes), ``sms_spam``
            (ham/spam text classification) or ``airline`` (monthly passengers, forecasting).
        max_length: tokens kept per text (sms_spam).
        lookback: input steps per window (airline).
        horizon: forecast steps per window (airline).
        forecast_target: ``level`` or ``difference`` (airline; see ``ForecastDataset``).

    Returns:
        The dataset.

    Raises:
        DataError: for an unknown name, or a lookback/horizon too long for the airline series.
    """
    if name == "digits":
        x, y = _digits()
        return SequenceDataset(x, None, Targets.from_array("classification", y))
    if name == "sms_spam":
        texts, labels = _sms_spam()
        return TextDataset(list(texts), Targets.from_array("classification", labels), max_length)
    if name == "airline":
        return ForecastDataset(_airline(), lookback, horizon, forecast_target)
    raise DataError(f"unknown builtin dataset {name!r}; accepted: {', '.join(BUILTIN_DATASETS)}")


def _read_file(filename: str) -> str:
    """Text of a file shipped in ``hpo/data/files``."""
    return decode_utf8(resources.files(__package__).joinpath("files", filename).read_bytes())


def _readonly(a: np.ndarray) -> np.ndarray:
    """Protect a cached array from being changed in place by a caller."""
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """``x`` float32 ``[1797, 8, 8]`` (pixel rows as steps), ``y`` int64 ``[1797]``."""
    from sklearn.datasets import load_digits  # imported lazily: only this builtin needs sklearn

    bunch = load_digits()
    return _readonly(bunch.images.astype(np.float32)), _readonly(bunch.target.astype(np.int64))


@functools.lru_cache(maxsize=1)
def _sms_spam() -> tuple[tuple[str, ...], np.ndarray]:
    """Texts and ``ham``/``spam`` labels; each line is split at its first tab (no quoting)."""
    texts: list[str] = []
    labels: list[str] = []
    for line in _read_file("sms_spam.tsv").split("\n"):
        line = line.removesuffix("\r")
        if line.strip():
            label, _, text = line.partition("\t")
            labels.append(label.strip())
            texts.append(text)
    return tuple(texts), _readonly(np.array(labels))


@functools.lru_cache(maxsize=1)
def _airline() -> Series:
    """Monthly passengers 1949-1960 (144 rows); the ``month`` column is dropped."""
    series = parse_series(_read_file("airline_passengers.csv"), ",", "passengers")
    _readonly(series.values)
    return series
