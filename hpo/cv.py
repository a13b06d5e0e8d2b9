"""Cross-validation: fold splitters (stratified, plain, time-ordered) and the fold runner."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, TimeSeriesSplit

from hpo.data import Dataset
from hpo.spec import StudySpec

if TYPE_CHECKING:  # the splitters are used where PyTorch is not loaded yet
    from hpo.train import Trainer

FoldIndices = list[tuple[np.ndarray, np.ndarray]]


class Interrupted(RuntimeError):
    """The trial was asked to stop (study cancelled, worker shutting down)."""


def fold_indices(dataset: Dataset, spec: StudySpec) -> FoldIndices:
    """Train/validation row indices for each fold, from scikit-learn's splitters.

    ``timeseries`` folds validate only on rows after every training row, and leave a gap
    of ``horizon - 1`` windows so no validation target is also a training target.

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
    if cv.strategy == "stratified":
        counts = np.bincount(dataset.labels)
        if counts[counts > 0].min() < cv.folds:
            raise ValueError(
                f"cv.folds: {cv.folds} stratified folds need every class to have at least "
                f"{cv.folds} samples; the smallest class has {counts[counts > 0].min()}"
            )
        splitter = StratifiedKFold(n_splits=cv.folds, shuffle=cv.shuffle, random_state=seed)
        return list(splitter.split(rows, dataset.labels))
    splitter = KFold(n_splits=cv.folds, shuffle=cv.shuffle, random_state=seed)
    return list(splitter.split(rows))


def run_folds(
    trainers: Iterable[Trainer],
    max_epochs: int,
    *,
    per_fold: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
    on_fold: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Trainer]:
    """The epoch loop: train the trainers' folds and return the trainers that ran.

    By default all trainers advance together, one epoch each per step, and ``on_epoch(epoch,
    mean score across folds)`` is called after each step (so epoch-wise pruners can act).
    With ``per_fold``, trainers run one after another and ``on_fold(fold number, score)``
    follows each of their folds (for pruners that compare per-fold scores, such as
    Wilcoxon); ``trainers`` may then be a lazy iterable so skipped folds are never built.

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
        if all(t.stopped for t in trainers):
            break
    return trainers
