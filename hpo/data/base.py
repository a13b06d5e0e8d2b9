"""Core types of the data layer: errors, fold tensors, the ``Dataset`` contract, targets.

Every preprocessing statistic (feature scaling, target scaling, text vocabulary) is fitted
inside ``Dataset.fold`` on the training rows only, so validation rows never leak into it.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

TASKS = ("classification", "regression", "forecasting")
MIN_SAMPLES = 4  # fewer rows (or forecasting windows) cannot be cross-validated meaningfully
# Scores square errors in 32-bit floats (max ~3.4e38): larger targets would score inf in every trial.
MAX_ABS_TARGET = 1e15
_INT_LABEL = re.compile(r"^[+-]?\d+$")


class DataError(ValueError):
    """A dataset was refused; the message names the problem and what is accepted, ``field``
    the upload option it concerns (e.g. ``time_column``), when it is one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass
class Split:
    """Tensors for one side of a fold (CPU tensors; the trainer moves them).

    ``x`` is float32 ``[n, T, F]`` (numeric) or int64 ``[n, T]`` token ids (0 = padding);
    ``y`` is int64 ``[n]`` class indices or float32 ``[n, out_dim]`` scaled targets;
    ``lengths`` is int64 ``[n]`` when sequences vary in length, else None.
    """

    x: torch.Tensor
    y: torch.Tensor
    lengths: torch.Tensor | None


@dataclass
class FoldData:
    """A training/validation pair with everything a model needs to size itself.

    ``target_scale`` is ``(mean, std)`` such that ``original = scaled * std + mean``
    (regression and forecasting), None for classification. ``preprocessing`` is the input
    transform fitted on the training rows (a ``SequenceScaling``, ``TextVocabulary`` or
    ``SeriesScaling``), kept so that a final model can apply it to new inputs.
    ``holdout``, when set, holds rows that neither train nor choose the epoch: they are
    scored once, at the end (a CV fold's outer validation rows, see ``hpo.cv.nested_fold``).
    """

    train: Split
    val: Split
    n_features: int | None
    vocab_size: int | None
    out_dim: int
    target_scale: tuple[float, float] | None
    preprocessing: Any = None
    holdout: Split | None = None


class Dataset(ABC):
    """A loaded, validated dataset that builds preprocessed folds from row indices."""

    task: str
    n_samples: int
    labels: np.ndarray | None
    class_names: list[str] | None
    classes: list[int] | list[str] | None  # class_names with the labels' own type (ints stay ints)

    @abstractmethod
    def fold(self, train_idx: np.ndarray, val_idx: np.ndarray) -> FoldData:
        """Build one fold, fitting all preprocessing on the training rows only.

        Args:
            train_idx: row indices (0 <= i < n_samples) used for training.
            val_idx: row indices used for validation.

        Returns:
            The fold's tensors and sizes.

        Raises:
            DataError: when an index array is empty, not integer or out of range.
        """

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Return a JSON-able summary (sample count, input shape, classes or targets)."""

    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the loaded arrays (inputs and targets): names the exact training data."""
        raise NotImplementedError(f"{type(self).__name__} has no fingerprint")


def sha256_of(*parts: Any) -> str:
    """``sha256:<hex>`` over arrays (dtype, shape and bytes) and JSON-able values, in order."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(f"{part.dtype.str}{part.shape}".encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True).encode())
        digest.update(b"\0")
    return f"sha256:{digest.hexdigest()}"


def check_finite(name: str, values: np.ndarray) -> None:
    """Refuse NaN or infinite values in a float array.

    Raises:
        DataError: e.g. ``"X contains NaN (3 values)"``.
    """
    if values.dtype.kind != "f":
        return
    n_nan = int(np.isnan(values).sum())
    if n_nan:
        raise DataError(f"{name} contains NaN ({n_nan} values); only finite numbers are accepted")
    n_inf = int(np.isinf(values).sum())
    if n_inf:
        raise DataError(f"{name} contains infinite values ({n_inf} values); only finite numbers are accepted")


def check_target_range(name: str, values: np.ndarray) -> None:
    """Refuse real-valued targets too large in magnitude to be scored.

    Raises:
        DataError: e.g. ``"y holds values up to 1e+200 in magnitude; targets must lie within
            +-1e+15 ..."``.
    """
    largest = float(np.abs(values).max(initial=0.0))
    if largest > MAX_ABS_TARGET:
        raise DataError(
            f"{name} holds values up to {largest:.3g} in magnitude; targets must lie within "
            f"+-{MAX_ABS_TARGET:g} (larger errors overflow when scored): rescale them, e.g. divide by a power of ten"
        )


def check_indices(name: str, idx: np.ndarray, n: int) -> np.ndarray:
    """Validate fold indices and return them as an int64 array.

    Raises:
        DataError: when ``idx`` is empty, not 1-D integers, or outside ``[0, n)``.
    """
    idx = np.asarray(idx)
    if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
        raise DataError(f"{name} must be a non-empty 1-D array of integer row indices; got {idx.dtype} {idx.shape}")
    if idx.min() < 0 or idx.max() >= n:
        raise DataError(f"{name} holds indices outside [0, {n}): {int(idx.min())}..{int(idx.max())}")
    return idx.astype(np.int64, copy=False)


def fit_standardizer(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std of ``rows`` ``[m, C]``; a (near-)constant column gets std 1.

    Returns:
        ``(mean, std)`` as float64 arrays of shape ``[C]``.
    """
    rows = np.asarray(rows, dtype=np.float64)
    mean = rows.mean(axis=0)
    std = rows.std(axis=0)
    std = np.where(std > 1e-10 * (np.abs(mean) + 1.0), std, 1.0)
    return mean, std


@dataclass(frozen=True)
class Targets:
    """Validated targets: int64 class codes ``[n]`` or float64 values ``[n, k]``."""

    task: str
    values: np.ndarray
    class_names: list[str] | None
    numeric_labels: bool = False  # the labels were numbers: answers give them back as ints

    @classmethod
    def from_array(cls, task: str, y: np.ndarray, name: str = "y") -> Targets:
        """Validate raw targets for a classification or regression task.

        Args:
            task: ``"classification"`` or ``"regression"``.
            y: class labels (integers, integer-valued floats or strings) or real values
                ``[n]`` / ``[n, k]``.
            name: what to call the array in error messages.

        Returns:
            The encoded targets; class codes follow the sorted labels.

        Raises:
            DataError: for a wrong dtype or shape, non-finite values or a single class.
        """
        y = np.asarray(y)
        if y.ndim == 0 or len(y) < MIN_SAMPLES:
            n = 0 if y.ndim == 0 else len(y)
            raise DataError(f"{name} has {n} rows; cross-validation needs at least {MIN_SAMPLES}")
        if task == "classification":
            codes, names = _encode_labels(name, y)
            return cls(task, codes, names, numeric_labels=y.dtype.kind in "iuf")
        if task != "regression":
            raise DataError(f"task must be classification or regression for these targets; got {task}")
        if y.dtype.kind not in "iuf":
            raise DataError(f"{name} must hold numbers for regression; got dtype {y.dtype}")
        if y.ndim not in (1, 2) or y.size == 0:
            raise DataError(f"{name} must have shape [n] or [n, k] for regression; got shape {y.shape}")
        values = y.astype(np.float64).reshape(len(y), -1)
        check_finite(name, values)
        check_target_range(name, values)
        return cls(task, values, None)

    @property
    def classes(self) -> list[int] | list[str] | None:
        """Class labels in code order, with the type they were given (ints for numeric labels)."""
        if self.class_names is None or not self.numeric_labels:
            return self.class_names
        return [int(n) for n in self.class_names]

    @property
    def out_dim(self) -> int:
        """Number of classes, or number of regression outputs."""
        return len(self.class_names) if self.class_names is not None else self.values.shape[1]

    def split(
        self, train_idx: np.ndarray, val_idx: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float] | None]:
        """Target tensors for a fold; regression values are standardized on training rows.

        Returns:
            ``(y_train, y_val, target_scale)``; ``target_scale`` is None for classification.
        """
        if self.class_names is not None:
            return torch.from_numpy(self.values[train_idx]), torch.from_numpy(self.values[val_idx]), None
        mean, std = (float(v[0]) for v in fit_standardizer(self.values[train_idx].reshape(-1, 1)))

        def scale(idx: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(((self.values[idx] - mean) / std).astype(np.float32))

        return scale(train_idx), scale(val_idx), (mean, std)

    def describe(self) -> dict[str, Any]:
        """Class counts (classification) or target statistics (regression)."""
        if self.class_names is not None:
            counts = np.bincount(self.values, minlength=len(self.class_names))
            return {
                "n_classes": len(self.class_names),
                "class_counts": {name: int(c) for name, c in zip(self.class_names, counts, strict=True)},
            }
        return {
            "out_dim": self.out_dim,
            "target_mean": float(self.values.mean()),
            "target_std": float(self.values.std()),
        }


def _encode_labels(name: str, y: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map labels to codes 0..C-1 in sorted order (numeric order for integer strings)."""
    if y.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of class labels; got shape {y.shape}")
    kind = y.dtype.kind
    if kind == "f":
        check_finite(name, y)
        fractional = y[y != np.round(y)]
        if fractional.size:
            raise DataError(
                f"{name} holds non-integer class labels such as {fractional[0]:g}; classification accepts "
                "integer or string labels (use task regression for real-valued targets)"
            )
        y = y.astype(np.int64)
    elif kind not in "iubU":
        raise DataError(f"{name} must hold integer or string class labels; got dtype {y.dtype}")
    classes, codes = np.unique(y, return_inverse=True)
    names = [str(c) for c in classes]
    if len(names) < 2:
        raise DataError(f"{name} has a single class ({names[0]}); classification needs at least 2")
    if kind == "U" and all(_INT_LABEL.match(n) for n in names):
        order = sorted(range(len(names)), key=lambda i: int(names[i]))
        remap = np.empty(len(names), dtype=np.int64)
        remap[order] = np.arange(len(names))
        codes, names = remap[codes], [names[i] for i in order]
    return codes.astype(np.int64).reshape(-1), names
