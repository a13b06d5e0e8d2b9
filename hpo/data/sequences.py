"""Numeric sequence datasets: fixed-length ``X [n, T, F]`` or variable-length ``values + lengths``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpo.data.base import (
    DataError, Dataset, FoldData, Split, Targets, check_finite, check_indices, fit_standardizer, sha256_of,
)
from hpo.data.readers import DEFAULT_MAX_UNCOMPRESSED, read_npz

MAX_STEPS = 100_000
MAX_FEATURES = 10_000
MAX_PADDED_VALUES = 2**28  # n * T * F after padding (1 GiB of float32)
NPZ_LAYOUTS = "X [n, T, F] (or [n, T]) + y, or values [sum(lengths), F] (or 1-D) + lengths [n] + y"


class SequenceDataset(Dataset):
    """Numeric sequences with one target each.

    Args:
        x: float32 ``[n, T, F]``; steps at or past a sequence's length must be 0.
        lengths: int64 ``[n]`` true lengths (1..T), or None when every sequence has T steps.
        targets: one target per sequence.
    """

    def __init__(self, x: np.ndarray, lengths: np.ndarray | None, targets: Targets):
        self.x = x
        self.lengths = lengths
        self.targets = targets
        self.task = targets.task
        self.n_samples = len(x)
        self.labels = targets.values if targets.class_names is not None else None
        self.class_names = targets.class_names
        self.classes = targets.classes

    def fold(self, train_idx: np.ndarray, val_idx: np.ndarray) -> FoldData:
        """Standardize each feature with the mean/std of the training rows' valid steps.

        See ``Dataset.fold``.
        """
        train_idx = check_indices("train_idx", train_idx, self.n_samples)
        val_idx = check_indices("val_idx", val_idx, self.n_samples)
        n_features = self.x.shape[2]
        train_x = self.x[train_idx]
        lengths = self.lengths
        scaling = SequenceScaling.fit(train_x, None if lengths is None else lengths[train_idx])

        def split(idx: np.ndarray, x: np.ndarray, y: torch.Tensor) -> Split:
            if lengths is None:
                return Split(torch.from_numpy(scaling.transform(x, None)), y, None)
            return Split(torch.from_numpy(scaling.transform(x, lengths[idx])), y, torch.from_numpy(lengths[idx]))

        y_train, y_val, target_scale = self.targets.split(train_idx, val_idx)
        return FoldData(
            train=split(train_idx, train_x, y_train),
            val=split(val_idx, self.x[val_idx], y_val),
            n_features=n_features,
            vocab_size=None,
            out_dim=self.targets.out_dim,
            target_scale=target_scale,
            preprocessing=scaling,
        )

    def fingerprint(self) -> str:
        """See ``Dataset.fingerprint``."""
        return sha256_of(self.x, self.lengths, self.targets.values, self.class_names)

    def describe(self) -> dict[str, Any]:
        """See ``Dataset.describe``."""
        n, steps, n_features = self.x.shape
        info: dict[str, Any] = {
            "task": self.task,
            "input": "numeric",
            "n_samples": n,
            "n_features": n_features,
            "variable_length": self.lengths is not None,
        }
        if self.lengths is None:
            info["steps"] = steps
        else:
            info["steps"] = {
                "min": int(self.lengths.min()),
                "max": int(self.lengths.max()),
                "mean": round(float(self.lengths.mean()), 2),
            }
        return {**info, **self.targets.describe()}


def sequences_from_npz(
    path: str | Path, task: str, max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED
) -> SequenceDataset:
    """Load a sequence dataset from an NPZ file in one of the layouts in ``NPZ_LAYOUTS``.

    Args:
        path: the ``.npz`` file.
        task: ``"classification"`` or ``"regression"``.
        max_uncompressed: most bytes the archive may unpack to.

    Returns:
        The validated dataset.

    Raises:
        DataError: for missing members, object arrays, NaN/inf, shape mismatches, empty or
            oversized inputs, a single class, or an oversized archive.
    """
    arrays = read_npz(path, ["X", "values", "lengths", "y"], max_uncompressed)
    if "y" not in arrays:
        found = ", ".join(arrays) or "none of X, values, lengths, y"
        raise DataError(f"NPZ members found: {found}; accepted layouts: {NPZ_LAYOUTS}")
    x, lengths = sequence_arrays(arrays)
    y = arrays["y"]
    if y.ndim == 0 or len(y) != len(x):
        raise DataError(f"y has {y.size if y.ndim == 0 else len(y)} entries but there are {len(x)} sequences")
    return SequenceDataset(x, lengths, Targets.from_array(task, y))


def sequence_arrays(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """The sequences in an NPZ's members: ``X``, or ``values`` + ``lengths`` (``y`` is not read).

    Returns:
        float32 ``x`` ``[n, T, F]`` (zero-padded) and int64 ``lengths`` ``[n]``, or None
        when every sequence has ``T`` steps.

    Raises:
        DataError: for a missing or doubled layout, a wrong shape, NaN/inf or oversized input.
    """
    if ("X" in arrays) == ("values" in arrays):
        found = ", ".join(arrays) or "none of X, values, lengths, y"
        raise DataError(f"NPZ members found: {found}; accepted layouts: {NPZ_LAYOUTS}")
    if "X" in arrays:
        return _fixed(arrays["X"])
    if "lengths" not in arrays:
        raise DataError(f"NPZ member 'values' needs a 'lengths' member; accepted layouts: {NPZ_LAYOUTS}")
    return _variable(arrays["values"], arrays["lengths"])


def _fixed(x: np.ndarray) -> tuple[np.ndarray, None]:
    """Validate ``X`` ``[n, T, F]`` or ``[n, T]``."""
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise DataError(f"X must have shape [n, T, F] or [n, T]; got shape {x.shape}")
    if x.size == 0:
        raise DataError(f"X is empty (shape {x.shape})")
    _check_dims(x.shape[1], x.shape[2])
    x = x.astype(np.float32, copy=False)
    check_finite("X", x)  # after the cast, so values beyond float32's range count as infinite
    return x, None


def _variable(values: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate flat ``values`` + ``lengths`` and zero-pad them into ``[n, max(lengths), F]``."""
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.size == 0:
        raise DataError(f"values must have shape [sum(lengths), F] or [sum(lengths)]; got shape {values.shape}")
    if lengths.ndim != 1 or lengths.size == 0 or lengths.dtype.kind not in "iu":
        raise DataError(f"lengths must be a non-empty 1-D integer array; got {lengths.dtype} {lengths.shape}")
    lengths = lengths.astype(np.int64)
    if lengths.min() <= 0:
        raise DataError(f"lengths must all be >= 1; got {int((lengths <= 0).sum())} sequences of length <= 0")
    if int(lengths.sum()) != len(values):
        raise DataError(f"sum(lengths) is {int(lengths.sum())} but values has {len(values)} rows")
    steps, n_features = int(lengths.max()), values.shape[1]
    _check_dims(steps, n_features)
    if len(lengths) * steps * n_features > MAX_PADDED_VALUES:
        raise DataError(
            f"{len(lengths)} sequences padded to {steps} steps x {n_features} features exceed "
            f"{MAX_PADDED_VALUES} values; shorten the longest sequences"
        )
    values = values.astype(np.float32, copy=False)
    check_finite("values", values)
    x = np.zeros((len(lengths), steps, n_features), dtype=np.float32)
    x[_valid_steps(lengths, steps)] = values
    return x, (None if lengths.min() == steps else lengths)


def _check_dims(steps: int, n_features: int) -> None:
    """Refuse absurd sequence lengths or feature counts."""
    if steps > MAX_STEPS:
        raise DataError(f"sequences have {steps} steps; at most {MAX_STEPS} are accepted")
    if n_features > MAX_FEATURES:
        raise DataError(f"sequences have {n_features} features; at most {MAX_FEATURES} are accepted")


def _valid_steps(lengths: np.ndarray, steps: int) -> np.ndarray:
    """``[len(lengths), steps]`` mask, True at each sequence's real (unpadded) steps."""
    return np.arange(steps) < lengths[:, None]


@dataclass(frozen=True)
class SequenceScaling:
    """Fitted per-feature standardization of numeric sequences, as data.

    ``fold`` fits it on the training rows and transforms both sides with it; an exported
    model stores it (``to_dict``) and standardizes new sequences with the same ``transform``.

    Attributes:
        mean: float32 ``[F]`` per-feature means of the training rows' valid steps.
        std: float32 ``[F]`` per-feature standard deviations (1 for a constant feature).
        steps: the steps every training sequence had, or None when their lengths vary.
    """

    mean: np.ndarray
    std: np.ndarray
    steps: int | None

    kind = "numeric"

    @classmethod
    def fit(cls, x: np.ndarray, lengths: np.ndarray | None) -> SequenceScaling:
        """Fit on training sequences ``x`` ``[m, T, F]`` (``lengths`` ``[m]`` when they vary)."""
        valid = x if lengths is None else x[_valid_steps(lengths, x.shape[1])]
        mean, std = (s.astype(np.float32) for s in fit_standardizer(valid.reshape(-1, x.shape[2])))
        return cls(mean, std, x.shape[1] if lengths is None else None)

    @property
    def n_features(self) -> int:
        return len(self.mean)

    def transform(self, x: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        """Standardized float32 copy of ``x`` ``[n, T, F]``; steps past a sequence's length stay 0."""
        scaled = (x - self.mean) / self.std
        if lengths is not None:
            scaled[~_valid_steps(lengths, x.shape[1])] = 0.0
        return scaled

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean.tolist(), "std": self.std.tolist(), "steps": self.steps}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> SequenceScaling:
        mean, std = (np.asarray(state[k], dtype=np.float32) for k in ("mean", "std"))
        if mean.ndim != 1 or mean.shape != std.shape or not (np.isfinite([mean, std]).all() and (std > 0).all()):
            raise DataError("numeric scaling: mean and std must be equal-length lists of finite numbers, std > 0")
        return cls(mean, std, None if state["steps"] is None else int(state["steps"]))

