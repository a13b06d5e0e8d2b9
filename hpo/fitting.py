"""Defaults fitted to the data: what a spec leaves out (``StudySpec.fit_to_data``) is sized
from the folds the trials will train on.

Every worker of a study loads the same data and builds the same folds, so every worker
derives the same values (the same distributions for Optuna).
"""

from __future__ import annotations

import math

from hpo.cv import fold_indices, nested_fold
from hpo.data import Dataset, FoldData
from hpo.spec import ParamSpec, StudySpec

BATCH_SIZES = (8, 16, 32, 64, 128, 256)
LONG_SEQUENCE = 200  # steps from which a frontend that shortens the sequence is searched
FRONTEND_STEPS = (100, 50)  # the recurrent layer then reads about this many steps
EPOCHS_AT_5000_ROWS = 20
MAX_FITTED_EPOCHS = 150


def fitted_folds(spec: StudySpec, dataset: Dataset) -> tuple[StudySpec, list[FoldData]]:
    """The trials' nested fold-runs (:func:`hpo.cv.nested_fold`) and the spec they were built with.

    With ``cv.folds`` among the spec's ``fit_to_data``, small data gets fewer folds: the
    most, up to the default, that leave every fold's training part enough rows for its
    inner split (a 24-month series cannot feed five time-ordered folds).

    Raises:
        ValueError: when even two folds cannot be built (the message says why).
    """
    most = spec.cv.folds
    counts = list(range(most, 1, -1)) if "cv.folds" in (spec.fit_to_data or ()) else [most]
    for folds in counts[:-1]:
        try:
            return _nested_folds(spec, dataset, folds)
        except ValueError:
            continue  # too few rows for this many folds: try one fewer
    return _nested_folds(spec, dataset, counts[-1])


def _nested_folds(spec: StudySpec, dataset: Dataset, folds: int) -> tuple[StudySpec, list[FoldData]]:
    spec = spec.model_copy(update={"cv": spec.cv.model_copy(update={"folds": folds})})
    return spec, [nested_fold(dataset.fold(train, val), spec) for train, val in fold_indices(dataset, spec)]


def fit_spec_to_data(spec: StudySpec, folds: list[FoldData]) -> StudySpec:
    """The spec with its ``fit_to_data`` fields sized from the folds.

    - ``search_space.batch_size``: the choices of ``BATCH_SIZES`` up to half the smallest
      fold's training rows (8 always among them), so that an epoch has at least two steps.
    - ``training.max_epochs``: 20 at 5,000 training rows, more for fewer rows (as
      ``1 / sqrt(rows)``: small data needs more passes for as many updates), at most 150.
    - ``training.patience``: a fifth of ``max_epochs``, between 3 and 20.
    - ``pruner.n_warmup_steps``: the patience (as fitted or given; without early stopping,
      the fitted patience's formula): the median pruner judges a trial only after the
      epochs early stopping would give it to improve, not on its first noisy epochs.
    - ``search_space.frontend``: for sequences of ``LONG_SEQUENCE`` steps or more, a
      strided ``conv`` or ``pool`` front-end is searched, with strides that leave about
      100 or 50 steps for the recurrent layer.

    Args:
        spec: the study's spec.
        folds: the folds trials train on (their ``train`` splits are counted).

    Returns:
        A copy of the spec; the spec itself is unchanged. A grid search keeps its search
        space (its grid is fixed when the study starts).
    """
    fitted = set(spec.fit_to_data or ())
    rows = min(len(fold.train.y) for fold in folds)
    space = spec.search_space.model_copy()
    training = spec.training.model_copy()
    if "training.max_epochs" in fitted:
        training.max_epochs = min(MAX_FITTED_EPOCHS, max(EPOCHS_AT_5000_ROWS, math.ceil(
            EPOCHS_AT_5000_ROWS * math.sqrt(5000 / max(rows, 1)))))
    fitted_patience = min(20, max(3, training.max_epochs // 5))
    if "training.patience" in fitted:
        training.patience = fitted_patience
    pruner = spec.pruner.model_copy()
    if "pruner.n_warmup_steps" in fitted:
        pruner.n_warmup_steps = training.patience or fitted_patience
    if spec.sampler.name != "grid":
        if "search_space.batch_size" in fitted:
            choices = [b for b in BATCH_SIZES if b <= max(8, rows // 2)]
            space.batch_size = ParamSpec(choices=choices)
        steps = folds[0].train.x.shape[1]
        if "search_space.frontend" in fitted and folds[0].n_features is not None and steps >= LONG_SEQUENCE:
            strides = sorted({max(2, round(steps / target)) for target in FRONTEND_STEPS})
            space.frontend = ParamSpec(choices=["conv", "pool"])
            space.frontend_stride = ParamSpec(choices=strides)
    return spec.model_copy(update={"search_space": space, "training": training, "pruner": pruner})
