"""User files: which loader reads which format/task, and the options they accept."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpo.data.base import TASKS, DataError, Dataset
from hpo.data.forecast import DEFAULT_HORIZON, DEFAULT_LOOKBACK, ForecastDataset, Series, parse_series
from hpo.data.readers import DEFAULT_MAX_UNCOMPRESSED, DELIMITERS, read_utf8
from hpo.data.sequences import sequences_from_npz
from hpo.data.text import DEFAULT_MAX_LENGTH, MAX_LENGTH_BOUNDS, text_from_table

FORMATS = ("npz", "csv", "tsv")
OPTION_NAMES = ("target_column", "text_column", "label_column", "max_length", "time_column", "feature_columns")
SERIES_OPTIONS = ("time_column", "feature_columns")  # column roles only a forecasting series has


def resolve_format(filename: str, format: str | None, task: str) -> str:
    """The file format (given, else the filename's suffix), checked against the task.

    Raises:
        DataError: for an unknown task or format, or npz for forecasting.
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
    fmt = (format or Path(filename).suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise DataError(f"cannot read format {fmt or '(none)'!r} of {filename!r}; accepted: {', '.join(FORMATS)}")
    if fmt == "npz" and task == "forecasting":
        raise DataError("forecasting reads a csv (or tsv) series; got npz")
    return fmt


def check_options(options: Mapping[str, Any] | None, task: str | None = None) -> dict[str, Any]:
    """Validate loader options (``target_column``, ``text_column``, ``label_column``,
    ``max_length``; for a forecasting series ``time_column`` and ``feature_columns``).

    Args:
        options: the options; ``feature_columns`` is a list of column names or one string
            of names separated by commas (as a form sends it).
        task: the dataset's task, when known: series options are refused for another task.

    Returns:
        The options as a plain dict, without the ones set to None (``feature_columns`` as a list).

    Raises:
        DataError: for an unknown option, a column name that is not a non-empty string, a
            max_length outside the accepted range, or a series option for another task.
    """
    checked: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key not in OPTION_NAMES:
            raise DataError(f"unknown option {key!r}; accepted: {', '.join(OPTION_NAMES)}")
        if value is None:
            continue
        if key in SERIES_OPTIONS and task is not None and task != "forecasting":
            raise DataError(f"{key} is a column role of a forecasting series; task {task} has none (leave it out)",
                            key)
        if key == "feature_columns":
            names = [n.strip() for n in value.split(",")] if isinstance(value, str) else value
            if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
                raise DataError(f"feature_columns must be a list of column names (or one string of names "
                                f"separated by commas); got {value!r}", key)
            if len(set(names)) != len(names):
                raise DataError(f"feature_columns names a column twice: {names}", key)
            checked[key] = names
            continue
        if key == "max_length":
            low, high = MAX_LENGTH_BOUNDS
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise DataError(f"max_length must be an integer in [{low}, {high}]; got {value!r}")
        elif not isinstance(value, str) or not value.strip():
            raise DataError(f"{key} must be a non-empty column name; got {value!r}")
        checked[key] = value
    return checked


def open_file(
    path: str | Path,
    *,
    format: str | None,
    task: str,
    options: Mapping[str, Any] | None = None,
    lookback: int | None = DEFAULT_LOOKBACK,
    horizon: int = DEFAULT_HORIZON,
    forecast_target: str = "level",
    max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
) -> Dataset:
    """Load and validate a user file.

    Args:
        path: the file.
        format: ``npz`` (numeric sequences), ``csv`` or ``tsv`` (text table, or a series
            for forecasting); None: from the file's suffix.
        task: ``classification``, ``regression`` or ``forecasting``.
        options: see ``check_options``.
        lookback: input steps per forecasting window.
        horizon: forecast steps per forecasting window.
        forecast_target: ``level`` or ``difference`` (see ``ForecastDataset``).
        max_uncompressed: most bytes an NPZ archive may unpack to.

    Returns:
        The dataset.

    Raises:
        DataError: whenever the file, the format/task pair or an option is refused.
    """
    fmt = resolve_format(str(path), format, task)
    opts = check_options(options, task)
    if fmt == "npz":
        return sequences_from_npz(path, task, max_uncompressed)
    if task == "forecasting":
        return ForecastDataset(_read_series(path, fmt, opts), lookback, horizon, forecast_target)
    return text_from_table(
        read_utf8(path),
        DELIMITERS[fmt],
        task,
        opts.get("max_length", DEFAULT_MAX_LENGTH),
        opts.get("text_column"),
        opts.get("label_column"),
    )


def inspect_file(
    path: str | Path,
    *,
    format: str | None,
    task: str,
    options: Mapping[str, Any] | None = None,
    max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
) -> dict[str, Any]:
    """Fully load and validate a user file and summarize it.

    A forecasting series is summarized as a series (its windows depend on the study's
    lookback and horizon); see ``open_file`` for the arguments.

    Returns:
        A JSON-able summary.

    Raises:
        DataError: as ``open_file``.
    """
    fmt = resolve_format(str(path), format, task)
    if task == "forecasting":
        return _read_series(path, fmt, check_options(options, task)).describe()
    return open_file(path, format=fmt, task=task, options=options, max_uncompressed=max_uncompressed).describe()


def _read_series(path: str | Path, fmt: str, opts: dict[str, Any]) -> Series:
    """The series in a csv/tsv file."""
    return parse_series(read_utf8(path), DELIMITERS[fmt], opts.get("target_column"),
                        feature_columns=opts.get("feature_columns"), time_column=opts.get("time_column"))
