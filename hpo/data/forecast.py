"""Forecasting: sliding windows over a numeric series, scaled on the rows training sees."""

from __future__ import annotations

import datetime as dt
import math
import re
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
FORECAST_TARGETS = ("level", "difference")  # as hpo.spec.TrainingSpec.forecast_target
_MONTH = re.compile(r"^\d{4}-\d{2}$")


@dataclass(frozen=True)
class Series:
    """A validated multivariate series: float64 ``values [T, C]``, one column the target.

    ``columns`` are the model's inputs (the target's history among them), ``time`` the
    column that ordered the rows (never an input), ``dropped`` every other column.
    """

    values: np.ndarray
    columns: list[str]
    target: str
    dropped: list[str]
    time: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-able summary of the series: rows, columns and their roles."""
        return {
            "task": "forecasting",
            "rows": len(self.values),
            "columns": self.columns,
            "target": self.target,
            "feature_columns": [c for c in self.columns if c != self.target],
            "time_column": self.time,
            "dropped_columns": self.dropped,
        }


def parse_series(text: str, delimiter: str, target_column: str | None = None, *,
                 feature_columns: list[str] | None = None, time_column: str | None = None) -> Series:
    """Read a series from CSV/TSV text with a header row.

    Column roles: the ``target_column`` is forecast (its history is an input too); the
    ``feature_columns`` are the other inputs (default: every column whose non-empty values
    are all numbers); the ``time_column`` is never an input: the rows must be in strictly
    increasing time order (numbers or ISO 8601 dates). Other columns are dropped.

    Args:
        text: the decoded file.
        delimiter: ``","`` (csv) or ``"\\t"`` (tsv).
        target_column: the column to forecast (default: the last numeric column that is
            not the time column).
        feature_columns: the input columns besides the target (default: every other
            numeric column); ``[]``: the target's own history only.
        time_column: the column that orders the rows.

    Returns:
        The validated series.

    Raises:
        DataError: for a missing or non-numeric target or feature column, a time column
            that is also a target or feature, times that are not increasing (naming both
            lines) or not readable, no numeric column, an empty, NaN or infinite value
            (naming its column and line), or a target too large to be scored.
    """
    header, rows = parse_table(text, delimiter)
    for role, name in (("target", target_column), ("time", time_column)):
        if name is not None and name not in header:
            raise DataError(str(missing_column(role, name, header)), f"{role}_column")
    missing = [c for c in feature_columns or [] if c not in header]
    if missing:
        raise DataError(f"no feature column {missing[0]!r}; columns found: {', '.join(header)} "
                        "(set feature_columns to some of them)", "feature_columns")
    if time_column is not None and (time_column == target_column or time_column in (feature_columns or [])):
        raise DataError(f"time column {time_column!r} orders the rows and is never an input; it cannot also be "
                        "the target or a feature column", "time_column")
    numeric = [j for j in range(len(header)) if header[j] != time_column
               and _numeric_column([f[j].strip() for _, f in rows])]
    numeric_at = set(numeric)  # sets: lists here made wide tables quadratic
    if not numeric:
        raise DataError(f"no numeric column to forecast; columns found: {', '.join(header)}")
    target = target_column or header[numeric[-1]]
    chosen = numeric if feature_columns is None else sorted({header.index(c) for c in [*feature_columns, target]})
    for j in [header.index(target), *chosen]:
        if j not in numeric_at:
            line, value = next((line, f[j]) for line, f in rows if not _is_number(f[j]))
            role = "target" if header[j] == target else "feature"
            raise DataError(f"{role} column {header[j]!r} is not numeric (line {line}: {value!r})",
                            "target_column" if role == "target" else "feature_columns")
    values = np.empty((len(rows), len(chosen)), dtype=np.float64)
    for r, (line, fields) in enumerate(rows):
        for c, j in enumerate(chosen):
            raw = fields[j].strip()
            if not raw:
                raise DataError(f"column {header[j]!r} is empty at line {line}; every value must be a number")
            values[r, c] = float(raw)
            if not math.isfinite(values[r, c]):
                raise DataError(f"column {header[j]!r} holds {raw!r} at line {line}; only finite numbers are accepted")
    kept = [header[j] for j in chosen]
    if time_column is not None:
        _check_time_order(time_column, [(line, f[header.index(time_column)].strip()) for line, f in rows])
    chosen_at = set(chosen)
    check_target_range(f"target column {target!r}", values[:, kept.index(target)])
    dropped = [h for j, h in enumerate(header) if j not in chosen_at]
    return Series(values, kept, target, dropped, time_column)


def _check_time_order(name: str, times: list[tuple[int, str]]) -> None:
    """Refuse times that are not strictly increasing, or neither all numbers nor all ISO 8601 dates.

    Raises:
        DataError: naming the column, the line(s) and the values.
    """
    empty = next((line for line, raw in times if not raw), None)
    if empty is not None:
        raise DataError(f"time column {name!r} is empty at line {empty}; every row needs its time", "time_column")
    numbers = all(_is_number(raw) for _, raw in times)
    keys = [float(raw) if numbers else _iso_time(name, line, raw) for line, raw in times]
    for (line_a, raw_a), (line_b, raw_b), a, b in zip(times, times[1:], keys, keys[1:], strict=False):
        if not a < b:
            what = "repeats" if a == b else "goes back in"
            raise DataError(f"time column {name!r} {what} time at line {line_b} ({raw_b!r} after {raw_a!r} at line "
                            f"{line_a}); rows must be in increasing time order, each time once: sort the file",
                            "time_column")


def _iso_time(name: str, line: int, raw: str) -> dt.datetime:
    """An ISO 8601 date or date-time (``2020-01-31``, ``2020-01-31T12:00``, or a month ``2020-01``), UTC-naive."""
    try:
        parsed = dt.datetime.fromisoformat(raw if not _MONTH.fullmatch(raw) else f"{raw}-01")
    except ValueError:
        raise DataError(f"time column {name!r} holds {raw!r} at line {line}; times must be numbers or ISO 8601 "
                        "dates (2020-01-31, 2020-01-31T12:00, 2020-01)", "time_column") from None
    return parsed if parsed.tzinfo is None else parsed.astimezone(dt.UTC).replace(tzinfo=None)


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
        lookback: input steps per window (None: fitted to the series' length).
        horizon: forecast steps per window.
        forecast_target: what the network learns: ``level`` (the values, standardized) or
            ``difference`` (each window's target column relative to its last value, and the
            change from it; see :class:`SeriesScaling`).

    Raises:
        DataError: when the series gives fewer than ``MIN_SAMPLES`` windows, or for an
            unknown ``forecast_target``.
    """

    task = "forecasting"
    labels = None
    class_names = None
    classes = None

    def __init__(self, series: Series, lookback: int | None, horizon: int, forecast_target: str = "level"):
        if forecast_target not in FORECAST_TARGETS:
            raise DataError(f"forecast_target must be one of {', '.join(FORECAST_TARGETS)}; got {forecast_target!r}")
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
        self.forecast_target = forecast_target
        self.target_col = series.columns.index(series.target)
        self.n_samples = n_windows

    def fold(self, train_idx: np.ndarray, val_idx: np.ndarray) -> FoldData:
        """Scale each column with statistics of the rows that training windows touch.

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
        scaling = SeriesScaling.fit(self.series.values, seen, self.series, self.lookback, self.horizon,
                                   self.forecast_target)
        values = self.series.values

        def split(idx: np.ndarray) -> Split:
            return Split(torch.from_numpy(scaling.inputs(values, idx)), torch.from_numpy(scaling.targets(values, idx)),
                         None)

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
        # A level model's fingerprint is the one it had before difference targets existed.
        mode = [] if self.forecast_target == "level" else [self.forecast_target]
        return sha256_of(series.values, series.columns, series.target, self.lookback, self.horizon, *mode)

    def describe(self) -> dict[str, Any]:
        """See ``Dataset.describe``."""
        return {
            **self.series.describe(),
            "input": "numeric",
            "n_samples": self.n_samples,
            "n_features": len(self.series.columns),
            "lookback": self.lookback,
            "horizon": self.horizon,
            "forecast_target": self.forecast_target,
        }


@dataclass(frozen=True)
class SeriesScaling:
    """Fitted scaling of a series and the windows it feeds, as data.

    ``fold`` fits it on the rows training windows touch; an exported model stores it
    (``to_dict``) and reads a new series' windows with the same :meth:`inputs`.

    With ``forecast_target`` ``level``, every column is standardized and the network forecasts the
    target column's standardized values. With ``difference``, the target column of each
    window is read relative to the window's last value and the network forecasts the
    change from that value (both divided by ``std`` of the target column, here the root
    mean square of its one-step changes, without centering): a network that answers 0 is
    persistence, and a series that leaves the training range (a trend) gives windows the
    network has seen. The other columns are standardized either way.

    Attributes:
        columns: the series' columns, in the model's feature order.
        target: the forecast column.
        lookback: input rows per window.
        horizon: forecast steps per window.
        mean: float64 ``[C]`` column means (0 for the target column with ``difference``).
        std: float64 ``[C]`` column scales (1 for a constant column).
        forecast_target: ``level`` or ``difference``.
    """

    columns: list[str]
    target: str
    lookback: int
    horizon: int
    mean: np.ndarray
    std: np.ndarray
    forecast_target: str = "level"

    kind = "series"

    @classmethod
    def fit(cls, values: np.ndarray, seen: np.ndarray, series: Series, lookback: int, horizon: int,
            forecast_target: str = "level") -> SeriesScaling:
        """Fit on the rows of ``values`` ``[T, C]`` where ``seen`` (bool ``[T]``) is true (the
        rows training windows touch)."""
        mean, std = fit_standardizer(values[seen])
        t = series.columns.index(series.target)
        if forecast_target == "difference":
            both_seen = seen[1:] & seen[:-1]
            changes = np.diff(values[:, t])[both_seen]
            rms = float(np.sqrt(np.mean(changes ** 2))) if changes.size else 0.0
            mean[t] = 0.0
            std[t] = rms if rms > 1e-10 * (float(np.abs(values[seen, t]).max(initial=0.0)) + 1.0) else 1.0
        return cls(list(series.columns), series.target, lookback, horizon, mean, std, forecast_target)

    @property
    def target_index(self) -> int:
        return self.columns.index(self.target)

    @property
    def target_scale(self) -> tuple[float, float]:
        """``(mean, std)`` of the network's outputs: ``original = output * std + mean + base``
        (:meth:`base`: 0 for ``level``, the window's last value for ``difference``)."""
        t = self.target_index
        return float(self.mean[t]), float(self.std[t])

    def base(self, values: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """What the windows starting at ``starts`` add to their scaled-back outputs: float64 ``[n]``."""
        if self.forecast_target == "level":
            return np.zeros(len(starts))
        return values[np.asarray(starts) + self.lookback - 1, self.target_index].astype(np.float64)

    def inputs(self, values: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The scaled float32 windows ``[n, lookback, C]`` of ``values`` ``[T, C]`` starting at ``starts``."""
        steps = np.asarray(starts)[:, None] + np.arange(self.lookback)
        windows = values[steps] - self.mean
        if self.forecast_target == "difference":
            t = self.target_index
            windows[..., t] = values[steps, t] - self.base(values, starts)[:, None]
        return (windows / self.std).astype(np.float32)

    def targets(self, values: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The scaled float32 targets ``[n, horizon]`` of the windows starting at ``starts``."""
        mean, std = self.target_scale
        future = values[np.asarray(starts)[:, None] + self.lookback + np.arange(self.horizon), self.target_index]
        return ((future - self.base(values, starts)[:, None] - mean) / std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        state = {"kind": self.kind, "columns": self.columns, "target": self.target, "lookback": self.lookback,
                 "horizon": self.horizon, "mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.forecast_target != "level":  # absent: level, as every archive before format version 3
            state["forecast_target"] = self.forecast_target
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> SeriesScaling:
        mean, std = (np.asarray(state[k], dtype=np.float64) for k in ("mean", "std"))
        columns = state["columns"]
        if mean.shape != (len(columns),) or std.shape != mean.shape or not (np.isfinite([mean, std]).all()
                                                                          and (std > 0).all()):
            raise DataError("series scaling: mean and std need one finite number per column, std > 0")
        if state["target"] not in columns:
            raise DataError(f"series scaling: target {state['target']!r} is not one of the columns {columns}")
        forecast_target = state.get("forecast_target", "level")
        if forecast_target not in FORECAST_TARGETS:
            raise DataError(f"series scaling: forecast_target must be one of {', '.join(FORECAST_TARGETS)}; "
                            f"got {forecast_target!r}")
        return cls(list(columns), state["target"], int(state["lookback"]), int(state["horizon"]), mean, std,
                   forecast_target)
