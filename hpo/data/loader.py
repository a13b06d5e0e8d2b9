"""``load_dataset``: from a study spec's ``dataset`` section to a ``Dataset``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hpo.data.base import DataError, Dataset
from hpo.data.builtins import load_builtin
from hpo.data.formats import OPTION_NAMES, open_file
from hpo.data.store import DatasetStore

if TYPE_CHECKING:
    from hpo.spec import StudySpec


def load_dataset(spec: StudySpec, store: DatasetStore | None = None) -> Dataset:
    """Load the dataset a study spec names: a builtin, a file path, or an uploaded id.

    For an uploaded id the stored format, task and options apply; ``target_column``,
    ``text_column``, ``label_column`` and ``max_length`` given in the spec override them.

    Args:
        spec: the validated study spec.
        store: the uploaded datasets (needed for ``dataset.id``; the file is fetched from
            the database into its cache when not there yet).

    Returns:
        The dataset, ready to build folds.

    Raises:
        DataError: when the file is missing or refused, the id is unknown or was uploaded
            for another task, or no store is given for an id.
    """
    ds = spec.dataset
    fmt: str | None
    horizon = spec.training.horizon
    # Left out of the spec, a series' lookback is fitted to its length (ForecastDataset).
    lookback = None if "training.lookback" in (spec.fit_to_data or ()) else spec.training.lookback
    window = {"lookback": lookback, "horizon": horizon, "forecast_target": spec.training.forecast_target or "level"}
    if ds.builtin is not None:
        return load_builtin(ds.builtin, max_length=ds.max_length, **window)
    overrides = {k: getattr(ds, k) for k in OPTION_NAMES if k in ds.model_fields_set and getattr(ds, k) is not None}
    if ds.path is not None:
        source, path, fmt, options = ds.path, Path(ds.path), ds.format, overrides
        if not path.is_file():
            raise DataError(f"{ds.path}: no such file")
    else:
        if store is None:
            raise DataError(f"dataset.id {ds.id!r} needs the database of uploaded datasets: a worker behind "
                            "`hpo storage-proxy` cannot fetch uploads; run this study's workers with the database URL")
        try:
            info = store.get(ds.id or "")
            path = store.path_of(info.id)
        except KeyError:
            raise DataError(
                f"unknown dataset id {ds.id!r}: no such upload in the database "
                f"{store.engine.url.render_as_string(hide_password=True)}; "
                "upload it first (hpo datasets upload), to the server whose database the workers use"
            ) from None
        source, fmt, options = f"dataset {info.id} ({info.name})", info.format, {**info.options, **overrides}
        if info.task != spec.task:
            raise DataError(f"{source} was uploaded for {info.task}; the spec's task is {spec.task}")
    try:
        return open_file(path, format=fmt, task=spec.task, options=options, **window)
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None


def check_dataset_exists(spec: StudySpec, store: DatasetStore | None) -> None:
    """Refuse a study whose uploaded dataset was deleted (a worker checks before each trial,
    since it keeps the data in memory from the study's first trial).

    Args:
        spec: the validated study spec (only ``dataset.id`` is checked: builtins cannot go,
            and a missing ``dataset.path`` fails its trials as it loads).
        store: the uploaded datasets.

    Raises:
        DataError: when ``dataset.id`` names no stored dataset any more.
    """
    dataset_id = spec.dataset.id
    if dataset_id is None or store is None:
        return
    try:
        store.get(dataset_id)
    except KeyError:
        raise DataError(f"dataset.id: dataset {dataset_id!r} was deleted; it is never trained on again "
                        "(upload the data again and submit a new study)") from None
