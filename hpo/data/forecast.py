"""Forecasting: sliding windows over a numeric series, scaled on the rows training sees."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hpo.data.base import (
    MIN_SAMPLES, DataError, Dataset, FoldData, Split, check_indices, check_target_range, fit_standardizer,
    sha256_of,
)
from hpo.data.readers import missing_column, parse_table

DEFAULT_LOOKBACK = 12  # as hpo.spec.TrainingSpec.lookback
DEFAULT_HORIZON = 1  # as hpo.spec.TrainingSpec.horizon


@dataclass(frozen=True)
class Series:
    """A validated multivariate series: float64 ``values [T, C]``, one column the target."""

    values: np.ndarray
    columns: list[str]
    target: str
    dropped: list[str]

    def describe(self) -> dict[str, Any]:
        """JSON-able summary of the series (rows, columns, target, dropped columns)."""
        return {
            "task": "forecasting",
            "rows": len(self.values),
            "columns": self.columns,
            "target": self.target,
            "dropped_columns": self.dropped,
        }


def parse_series(text: str, delimiter: str, target_column: str | None = None) -> Series:
    """Read a series from CSV/TSV text with a header row.

    Columns whose non-empty values are all numbers are kept, the rest (e.g. dates) dropped.

    Args:
        text: the decoded file.
        delimiter: ``","`` (csv) or ``"\\t"`` (tsv).
        target_column: the column to forecast (default: the last numeric column).

    Returns:
        The validated series.

    Raises:
        DataError: for a missing or non-numeric target column, no numeric column, an
            empty, NaN or infinite value (naming its column and line), or a target too large
            to be scored.
    """
    header, rows = parse_table(text, delimiter)
    if target_column is not None and target_column not in header:
        raise missing_column("target", target_column, header)
    numeric = [j for j in range(len(header)) if _numeric_column([f[j].strip() for _, f in rows])]
    if not numeric:
        raise DataError(f"no numeric column to forecast; columns found: {', '.join(header)}")
    target = target_column or header[numeric[-1]]
    if header.index(target) not in numeric:
        j = header.index(target)
        line, value = next((line, f[j]) for line, f in rows if not _is_number(f[j]))
        raise DataError(f"target column {target!r} is not numeric (line {line}: {value!r})")
    values = np.empty((len(rows), len(numeric)), dtype=np.float64)
    for r, (line, fields) in enumerate(rows):
        for c, j in enumerate(numeric):
            raw = fields[j].strip()
            if not raw:
                raise DataError(f"column {header[j]!r} is empty at line {line}; every value must be a number")
            values[r, c] = float(raw)
            if not math.isfinite(values[r, c]):
                raise DataError(f"column {header[j]!r} holds {raw!r} at line {line}; only finite numbers are accepted")
    kept = [header[j] for j in numeric]
    numeric_at = set(numeric)  # a set: a list here made wide tables quadratic
    check_target_range(f"target column {target!r}", values[:, kept.index(target)])
    dropped = [h for j, h in enumerate(header) if j not in numeric_at]
    return Series(values, kept, target, dropped)


def _numeric_column(values: list[str]) -> bool:
    """True when the column has a value and every non-empty value is a number."""
    present = [v for v in values if v]
    return bool(present) and all(_is_number(v) for v in present)


def _is_number(raw: str) -> bool:
    """True when ``float`` accepts ``raw`` (including nan/inf, refused later with their line)."""
    try:
        float(raw)
    except ValueError:
        return False
    return True


class ForecastDataset(Dataset):
    """Windows over a series: input rows ``[i, i+lookback)`` (all columns), target the next
    ``horizon`` values of the target column. Window ``i`` is sample ``i``.

    Args:
        series: the validated series.
        lookback: input steps per window.
        horizon: forecast steps per window.

    Raises:
        DataError: when the series gives fewer than ``MIN_SAMPLES`` windows.
    """

    task = "forecasting"
    labels = None
    class_names = None
    classes = None

    def __init__(self, series: Series, lookback: int | None, horizon: int):
        rows = len(series.values)
        if lookback is None:  # fitted: the default, shortened for a short series so that windows stay many
            lookback = min(DEFAULT_LOOKBACK, max(1, (rows - horizon + 1) // 4))
        n_windows = rows - lookback - horizon + 1
        if n_windows < MIN_SAMPLES:
            raise DataError(
                f"the series has {rows} rows, giving {max(n_windows, 0)} windows with lookback {lookback} and "
                f"horizon {horizon}; at least {MIN_SAMPLES} windows are needed, i.e. at least "
                f"{lookback + horizon + MIN_SAMPLES - 1} rows (or a shorter lookback/horizon)"
            )
        self.series = series
        self.lookback = lookback
        self.horizon = horizon
        self.target_col = series.columns.index(series.target)
        self.n_samples = n_windows

    def fold(self, train_idx: np.ndarray, val_idx: np.ndarray) -> FoldData:
        """Scale each column with the mean/std of the rows that training windows touch.

        See ``Dataset.fold``.
        """
        train_idx = check_indices("train_idx", train_idx, self.n_samples)
        val_idx = check_indices("val_idx", val_idx, self.n_samples)
        span = self.lookback + self.horizon
        # Rows covered by [i, i + span) for some training window i: count starts minus ends.
        delta = np.zeros(len(self.series.values) + 1, dtype=np.int64)
        np.add.at(delta, train_idx, 1)
        np.add.at(delta, train_idx + span, -1)
        seen = np.cumsum(delta[:-1]) > 0
        scaling = SeriesScaling.fit(self.series.values[seen], self.series, self.lookback, self.horizon)
        scaled = scaling.transform(self.series.values)
        t = self.target_col

        def split(idx: np.ndarray) -> Split:
            steps = idx[:, None] + np.arange(self.lookback)
            targets = idx[:, None] + self.lookback + np.arange(self.horizon)
            return Split(torch.from_numpy(scaled[steps]), torch.from_numpy(scaled[targets, t]), None)

        return FoldData(
            train=split(train_idx),
            val=split(val_idx),
            n_features=len(self.series.columns),
            vocab_size=None,
            out_dim=self.horizon,
            target_scale=scaling.target_scale,
            preprocessing=scaling,
        )

    def fingerprint(self) -> str:
        """See ``Dataset.fingerprint``."""
        series = self.series
        return sha256_of(series.values, series.columns, series.target, self.lookback, self.horizon)

    def describe(self) -> dict[str, Any]:
        """See ``Dataset.describe``."""
        return {
            **self.series.describe(),
            "input": "numeric",
            "n_samples": self.n_samples,
            "n_features": len(self.series.columns),
            "lookback": self.lookback,
            "horizon": self.horizon,
        }


@dataclass(frozen=True)
class SeriesScaling:
    """Fitted per-column standardization of a series, and the window it feeds, as data.

    ``fold`` fits it on the rows training windows touch; an exported model stores it
    (``to_dict``) and scales a new series with the same ``transform``.

    Attributes:
        columns: the series' columns, in the model's feature order.
        target: the forecast column.
        lookback: input rows per window.
        horizon: forecast steps per window.
        mean: float64 ``[C]`` column means.
        std: float64 ``[C]`` column standard deviations (1 for a constant column).
    """

    columns: list[str]
    target: str
    lookback: int
    horizon: int
    mean: np.ndarray
    std: np.ndarray

    kind = "series"

    @classmethod
    def fit(cls, rows: np.ndarray, series: Series, lookback: int, horizon: int) -> SeriesScaling:
        """Fit on ``rows`` ``[m, C]`` of ``series`` (the rows training windows touch)."""
        mean, std = fit_standardizer(rows)
        return cls(list(series.columns), series.target, lookback, horizon, mean, std)

    @property
    def target_scale(self) -> tuple[float, float]:
        """``(mean, std)`` of the target column: ``original = scaled * std + mean``."""
        t = self.columns.index(self.target)
        return float(self.mean[t]), float(self.std[t])

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Standardized float32 copy of ``values`` ``[T, C]``."""
        return ((values - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "columns": self.columns, "target": self.target, "lookback": self.lookback,
                "horizon": self.horizon, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> SeriesScaling:
        mean, std = (np.asarray(state[k], dtype=np.float64) for k in ("mean", "std"))
        columns = state["columns"]
        if mean.shape != (len(columns),) or std.shape != mean.shape or not (np.isfinite([mean, std]).all()
                                                                          and (std > 0).all()):
            raise DataError("series scaling: mean and std need one finite number per column, std > 0")
        if state["target"] not in columns:
            raise DataError(f"series scaling: target {state['target']!r} is not one of the columns {columns}")
        return cls(list(columns), state["target"], int(state["lookback"]), int(state["horizon"]), mean, std)
