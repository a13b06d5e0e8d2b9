"""The final fit: one configuration trained on all the training data, as a :class:`Model`.

Cross-validation chose the parameters; here they are trained once more on every row (or
all but an optional validation holdout) for the epochs early stopping found best, using
the same ``FoldTrainer`` and the same preprocessing as the trials.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import safetensors
import torch
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sklearn.model_selection import train_test_split

from hpo.cv import Interrupted
from hpo.data import Dataset, load_dataset
from hpo.data.base import MIN_SAMPLES
from hpo.export.archive import Manifest, Model, TargetInfo, now_iso, plain_state_dict
from hpo.settings import DEFAULT_DATA_DIR
from hpo.spec import StudySpec
from hpo.studies import best_of, study_spec
from hpo.train import FoldTrainer, pick_device

MONITOR_ROWS = 512  # training rows scored each epoch when there is no holdout
MAX_HOLDOUT = 0.5
EpochCallback = Callable[[int, int, float], None]


def final_epochs(trial: FrozenTrial, spec: StudySpec) -> tuple[int, str]:
    """Epochs for the final fit: the median of the trial's per-fold best epochs (rounded
    up), else ``training.max_epochs``.

    Returns:
        ``(epochs, where the number came from)``.
    """
    recorded = trial.user_attrs.get("fold_best_epochs") or []
    best = [int(e) for e in recorded if isinstance(e, (int, float)) and not isinstance(e, bool) and e >= 1]
    if best:
        return max(1, math.ceil(statistics.median(best))), f"median of trial {trial.number}'s fold_best_epochs {best}"
    return spec.training.max_epochs, f"training.max_epochs (trial {trial.number} recorded no fold_best_epochs)"


def holdout_split(dataset: Dataset, spec: StudySpec, holdout: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows to train on and rows held out for validation (None without a holdout).

    Forecasting holds out the last windows, after a gap of ``horizon - 1`` windows so that
    no held-out target is also a training target; classification holds out a stratified
    share; regression a shuffled one.

    Raises:
        ValueError: for a holdout outside ``[0, 0.5]`` or one that leaves too few rows.
    """
    if not 0.0 <= holdout <= MAX_HOLDOUT:
        raise ValueError(f"holdout must be a fraction in [0, {MAX_HOLDOUT}]; got {holdout}")
    rows = np.arange(dataset.n_samples)
    if holdout == 0.0:
        return rows, None
    n_val = max(1, math.ceil(holdout * len(rows)))
    if spec.task == "forecasting":
        train, val = rows[: len(rows) - n_val - (spec.training.horizon - 1)], rows[len(rows) - n_val:]
    else:
        stratify = dataset.labels if spec.task == "classification" else None
        try:
            train, val = train_test_split(rows, test_size=n_val, random_state=spec.training.seed, stratify=stratify)
        except ValueError:  # a class too small to stratify: a plain shuffled split
            train, val = train_test_split(rows, test_size=n_val, random_state=spec.training.seed)
        train, val = np.sort(train), np.sort(val)
    if len(train) < MIN_SAMPLES:
        raise ValueError(f"holdout {holdout} leaves {len(train)} training rows; at least {MIN_SAMPLES} are needed")
    return train, val


def fit_model(
    spec: StudySpec,
    dataset: Dataset,
    params: dict[str, Any],
    *,
    epochs: int,
    epochs_source: str = "given",
    holdout: float = 0.0,
    device: torch.device | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    source: dict[str, Any] | None = None,
) -> Model:
    """Train ``params`` on the dataset for exactly ``epochs`` epochs (no early stopping).

    Args:
        spec: the study spec (architecture, metric, seed, task).
        dataset: the training data.
        params: hyperparameters, as a trial's ``params``.
        epochs: epochs to train.
        epochs_source: where ``epochs`` came from (recorded with the model).
        holdout: share of rows held out and scored each epoch; 0 trains on every row and
            scores a sample of training rows instead.
        device: where to train (CUDA when available by default).
        on_epoch: called ``(epoch, epochs, score)`` after each epoch.
        should_stop: polled before each epoch; when true the fit stops.
        source: the study and trial the parameters came from (recorded with the model).

    Returns:
        The fitted model, on the CPU.

    Raises:
        ValueError: for epochs < 1 or a bad holdout.
        hpo.cv.Interrupted: when ``should_stop`` asked to stop.
        hpo.train.TrainingDiverged: when the training loss became NaN or infinite.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    train_idx, val_idx = holdout_split(dataset, spec, holdout)
    monitor_idx = val_idx if val_idx is not None else train_idx[:: max(1, len(train_idx) // MONITOR_ROWS)]
    fold = dataset.fold(train_idx, monitor_idx)
    seed = spec.training.seed
    trainer = FoldTrainer(fold, params, spec.model, spec.training.metric, None, device or pick_device(), seed,
                          max_epochs=epochs)
    score = math.nan
    for epoch in range(1, epochs + 1):
        if should_stop is not None and should_stop():
            raise Interrupted(f"the fit was stopped before epoch {epoch} of {epochs}")
        trainer.step()
        score = trainer.progress[0].score
        if on_epoch is not None:
            on_epoch(epoch, epochs, score)
    if fold.target_scale is None:
        target = TargetInfo(class_names=list(dataset.class_names or []))
    else:
        target = TargetInfo(mean=fold.target_scale[0], std=fold.target_scale[1])
    metric = spec.training.metric
    manifest = Manifest(
        task=spec.task,
        spec=spec.model_dump(mode="json"),
        params=dict(params),
        architecture=trainer.architecture,
        preprocessing=fold.preprocessing.to_dict(),
        target=target,
        training={
            "epochs": epochs,
            "epochs_source": epochs_source,
            "n_samples": int(len(train_idx)),
            "holdout": holdout,
            "holdout_samples": 0 if val_idx is None else int(len(val_idx)),
            f"{'holdout' if val_idx is not None else 'train'}_{metric}": _finite(score),
            "seed": seed,
            "device": str(next(trainer.network().parameters()).device),
        },
        source=source,
        data_fingerprint=dataset.fingerprint(),
        versions=framework_versions(),
        created_at=now_iso(),
    )
    return Model(manifest, plain_state_dict(trainer.network()))


def fit_study_model(
    storage: str | BaseStorage,
    study_name: str,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    *,
    trial_number: int | None = None,
    holdout: float = 0.0,
    device: torch.device | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Model:
    """Fit a study's best trial (or trial ``trial_number``) on the study's whole dataset.

    Epochs: see :func:`final_epochs`. The model records the study, trial, CV score and
    epochs it came from.

    Raises:
        KeyError: no such study, or it was not created by hpo.
        ValueError: no completed trial (or ``trial_number`` did not complete), or the
            dataset cannot be loaded (``hpo.data.DataError``).
    """
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise KeyError(f"no study {study_name!r} in the storage") from None
    spec = study_spec(study)
    trial = pick_trial(study, trial_number)
    epochs, epochs_source = final_epochs(trial, spec)
    dataset = load_dataset(spec, data_dir)
    source = {
        "study": study_name,
        "trial_number": trial.number,
        "cv_score": _finite(trial.value),
        "metric": spec.training.metric,
        "direction": spec.direction,
        "fold_scores": trial.user_attrs.get("fold_scores"),
        "fold_best_epochs": trial.user_attrs.get("fold_best_epochs"),
    }
    return fit_model(spec, dataset, trial.params, epochs=epochs, epochs_source=epochs_source, holdout=holdout,
                     device=device, on_epoch=on_epoch, should_stop=should_stop, source=source)


def pick_trial(study: optuna.Study, trial_number: int | None = None) -> FrozenTrial:
    """The study's best complete trial (ranked by :func:`hpo.studies.rank_key`), or the complete
    trial ``trial_number``.

    Raises:
        ValueError: when there is no such complete trial.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if trial_number is None:
        best = best_of(complete, study.direction.name.lower())
        if best is None:
            raise ValueError(f"study {study.study_name!r} has no completed trial yet")
        return best
    found = [t for t in complete if t.number == trial_number]
    if not found:
        numbers = ", ".join(str(t.number) for t in complete[:20]) or "none"
        raise ValueError(f"trial {trial_number} of study {study.study_name!r} is not a completed trial "
                         f"(completed: {numbers})")
    return found[0]


def framework_versions() -> dict[str, str]:
    """Versions of what built the model: hpo, torch, optuna, numpy, safetensors, Python."""
    try:
        hpo_version = importlib.metadata.version("hpo")
    except importlib.metadata.PackageNotFoundError:
        hpo_version = "unknown"
    return {"hpo": hpo_version, "torch": torch.__version__, "optuna": optuna.__version__,
            "numpy": np.__version__, "safetensors": safetensors.__version__, "python": platform.python_version()}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
