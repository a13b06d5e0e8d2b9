"""Cross-validation: fold splitters (stratified, plain, time-ordered), the inner split that
keeps a fold's validation rows out of every training decision, and the epoch loop."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.model_selection import (
    KFold, RepeatedKFold, RepeatedStratifiedKFold, StratifiedKFold, TimeSeriesSplit, train_test_split,
)

from hpo.data import Dataset, FoldData, Split
from hpo.data.base import MIN_SAMPLES
from hpo.spec import StudySpec

if TYPE_CHECKING:  # the splitters are used where PyTorch is not loaded yet
    from hpo.train import Trainer

FoldIndices = list[tuple[np.ndarray, np.ndarray]]


class Interrupted(RuntimeError):
    """The trial was asked to stop (study cancelled, worker shutting down)."""


def fold_indices(dataset: Dataset, spec: StudySpec) -> FoldIndices:
    """Train/validation row indices for each fold-run, from scikit-learn's splitters.

    ``cv.folds`` folds, repeated ``cv.repeats`` times (``RepeatedStratifiedKFold`` /
    ``RepeatedKFold``: each repeat is a partition of the rows, shuffled anew), repeat by
    repeat: fold-run ``r * folds + f`` is fold ``f`` of repeat ``r``. The first repeat is
    exactly the unrepeated splitter's folds. ``timeseries`` folds validate only on rows
    after every training row, and leave a gap of ``horizon - 1`` windows so no validation
    target is also a training target (they are never repeated: the spec refuses it).

    Raises:
        ValueError: when the data cannot be split that many ways (e.g. a class with
            fewer members than folds).
    """
    cv = spec.cv
    rows = np.zeros(dataset.n_samples)
    if cv.strategy == "timeseries":
        splitter = TimeSeriesSplit(n_splits=cv.folds, gap=spec.training.horizon - 1)
        return list(splitter.split(rows))
    seed = cv.seed if cv.shuffle else None
    stratified = cv.strategy == "stratified"
    if stratified:
        counts = np.bincount(dataset.labels)
        if counts[counts > 0].min() < cv.folds:
            raise ValueError(
                f"cv.folds: {cv.folds} stratified folds need every class to have at least "
                f"{cv.folds} samples; the smallest class has {counts[counts > 0].min()}"
            )
    if cv.repeats > 1:  # the spec allows repeats only with shuffle
        repeated = RepeatedStratifiedKFold if stratified else RepeatedKFold
        splitter = repeated(n_splits=cv.folds, n_repeats=cv.repeats, random_state=seed)
    else:
        single = StratifiedKFold if stratified else KFold
        splitter = single(n_splits=cv.folds, shuffle=cv.shuffle, random_state=seed)
    return list(splitter.split(rows, dataset.labels if stratified else None))


def holdout_rows(
    task: str, n: int, fraction: float, *, labels: np.ndarray | None = None, gap: int = 0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``0..n-1`` split into rows kept for training and rows held out.

    Forecasting rows are windows in time order: the last ones are held out, after a gap of
    ``gap`` windows so that no held-out target is also a training target. Classification
    holds out a stratified share (a plain shuffled one when a class is too small to
    stratify); regression a shuffled one.

    Args:
        task: the spec's task.
        n: how many rows.
        fraction: the share held out (at least one row).
        labels: class labels ``[n]`` (classification).
        gap: windows left out between training and held-out rows (forecasting).
        seed: seeds the shuffle.

    Returns:
        ``(kept, held_out)``, each sorted.
    """
    rows = np.arange(n)
    n_held = max(1, math.ceil(fraction * n))
    if task == "forecasting":
        return rows[: max(0, n - n_held - gap)], rows[n - n_held :]
    stratify = labels if task == "classification" else None
    try:
        kept, held = train_test_split(rows, test_size=n_held, random_state=seed, stratify=stratify)
    except ValueError:  # a class too small to stratify (or fewer held-out rows than classes)
        kept, held = train_test_split(rows, test_size=n_held, random_state=seed)
    return np.sort(kept), np.sort(held)


def nested_fold(fold: FoldData, spec: StudySpec) -> FoldData:
    """A CV fold made honest: its training rows are split again.

    The inner training rows train, the inner validation rows (``cv.inner_holdout`` of them,
    the latest for forecasting) decide early stopping and the epoch kept, and the fold's
    own validation rows become ``holdout``: scored once, never deciding anything. The
    preprocessing stays the one fitted on the fold's training rows.

    Raises:
        ValueError: when the inner training part would have fewer than ``MIN_SAMPLES`` rows.
    """
    y = fold.train.y
    labels = y.numpy() if spec.task == "classification" else None
    kept, held = holdout_rows(
        spec.task, len(y), spec.cv.inner_holdout, labels=labels, gap=spec.training.horizon - 1, seed=spec.cv.seed
    )
    if len(kept) < MIN_SAMPLES:
        raise ValueError(
            f"cv.inner_holdout: a fold's {len(y)} training rows leave {len(kept)} to train on after the inner "
            f"validation split; at least {MIN_SAMPLES} are needed (use fewer cv.folds, a smaller inner_holdout, "
            "or for a series a shorter training.lookback)"
        )
    return dataclasses.replace(fold, train=_rows(fold.train, kept), val=_rows(fold.train, held), holdout=fold.val)


def _rows(split: Split, positions: np.ndarray) -> Split:
    index = torch.from_numpy(positions)
    return Split(split.x[index], split.y[index], None if split.lengths is None else split.lengths[index])


def run_folds(
    trainers: Iterable[Trainer],
    max_epochs: int,
    *,
    per_fold: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
    on_fold: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    out_of_time: Callable[[], bool] | None = None,
) -> list[Trainer]:
    """The epoch loop: train the trainers' folds and return the trainers that ran.

    By default all trainers advance together, one epoch each per step, and ``on_epoch(epoch,
    mean validation score across folds)`` is called after each step (so epoch-wise pruners
    can act). With ``per_fold``, trainers run one after another and ``on_fold(fold number,
    validation score)`` follows each of their folds (for pruners that compare per-fold
    scores, such as Wilcoxon); ``trainers`` may then be a lazy iterable so skipped folds are
    never built. A trainer's held-out rows are scored once, when it has finished. When
    ``out_of_time()`` turns true after a step (not with ``per_fold``), the folds stop where
    they are: each keeps its chosen epoch so far and its held-out rows are scored.

    Raises:
        Interrupted: as soon as ``should_stop()`` is true at an epoch boundary.
        hpo.train.TrainingDiverged: when a fold's loss is not finite.
    """

    def check_stop() -> None:
        if should_stop is not None and should_stop():
            raise Interrupted("stopped before the trial finished (study cancelled or worker stopping)")

    if per_fold:
        ran = []
        for trainer in trainers:
            for _ in range(max_epochs):
                check_stop()
                trainer.step()
                if trainer.stopped:
                    break
            trainer.score_holdout()
            ran.append(trainer)
            for progress in trainer.progress:
                if on_fold is not None:
                    on_fold(progress.number, progress.score)
        return ran

    trainers = list(trainers)
    for epoch in range(max_epochs):
        check_stop()
        for trainer in trainers:
            if not trainer.stopped:
                trainer.step()
        if on_epoch is not None:
            on_epoch(epoch, float(np.mean([p.score for t in trainers for p in t.progress])))
        if all(t.stopped for t in trainers) or (out_of_time is not None and out_of_time()):
            break
    for trainer in trainers:
        trainer.score_holdout()
    return trainers
