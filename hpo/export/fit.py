"""Final models, as a :class:`Model` of one or more member networks.

- :func:`ensemble_model`: the best trial's k fold models as they were trained (each with
  its fold's preprocessing); their averaged answer is served as soon as the study ends,
  kept by the workers as trials complete (``hpo.export.ensemble.keep_if_best``).
- :func:`fit_model`: the configuration trained once more on every row (or all but an
  optional validation holdout), for the epochs early stopping found best, once per seed,
  with the same ``FoldTrainer`` and preprocessing as the trials (a refit: by default the
  final model, queued by the study as it ends and served once ready).

Either way the model records whether it beat the trivial answer on its own training
rows (:func:`learning_check`).
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
import safetensors
import torch
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sklearn.model_selection import train_test_split

from hpo.cv import Interrupted
from hpo.data import Dataset, DatasetStore, FoldData, load_dataset
from hpo.data.base import MIN_SAMPLES
from hpo.data.forecast import SeriesScaling
from hpo.export.archive import (
    LearningCheck, Manifest, MemberInfo, Model, TargetScale, member_weights, now_iso,
)
from hpo.spec import MAX_SEEDS, StudySpec
from hpo.studies import best_of, study_spec
from hpo.model import predict_in_chunks
from hpo.train import FoldTrainer, pick_device, trial_architecture

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
    seeds: int = 1,
    device: torch.device | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    source: dict[str, Any] | None = None,
) -> Model:
    """Train ``params`` on the dataset for exactly ``epochs`` epochs (no early stopping),
    once per seed; the model averages the ``seeds`` networks (a ``refit``).

    Args:
        spec: the study spec (architecture, metric, seed, task).
        dataset: the training data.
        params: hyperparameters, as a trial's ``params``.
        epochs: epochs to train each network.
        epochs_source: where ``epochs`` came from (recorded with the model).
        holdout: share of rows held out and scored each epoch; 0 trains on every row and
            scores a sample of training rows instead.
        seeds: networks to train, seeded ``training.seed``, ``training.seed + 1``, ...
        device: where to train (CUDA when available by default).
        on_epoch: called ``(epoch, epochs, score)`` after each epoch, counting every
            network's epochs (``epochs * seeds`` in all).
        should_stop: polled before each epoch; when true the fit stops.
        source: the study and trial the parameters came from (recorded with the model).

    Returns:
        The fitted model, on the CPU.

    Raises:
        ValueError: for epochs < 1, seeds outside 1..10 or a bad holdout.
        hpo.cv.Interrupted: when ``should_stop`` asked to stop.
        hpo.train.TrainingDiverged: when the training loss became NaN or infinite.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    if not 1 <= seeds <= MAX_SEEDS:
        raise ValueError(f"seeds must be in 1..{MAX_SEEDS}; got {seeds}")
    train_idx, val_idx = holdout_split(dataset, spec, holdout)
    monitor_idx = val_idx if val_idx is not None else train_idx[:: max(1, len(train_idx) // MONITOR_ROWS)]
    fold = dataset.fold(train_idx, monitor_idx)
    device = device or pick_device()
    networks, scores = [], []
    for n in range(seeds):
        seed = spec.training.seed + n
        trainer = FoldTrainer(fold, params, spec.model, spec.training.metric, None, device, seed,
                              max_epochs=epochs)
        score = math.nan
        for epoch in range(1, epochs + 1):
            done = n * epochs + epoch
            if should_stop is not None and should_stop():
                raise Interrupted(f"the fit was stopped before epoch {done} of {epochs * seeds}")
            trainer.step()
            score = trainer.progress[0].score
            if on_epoch is not None:
                on_epoch(done, epochs * seeds, score)
        networks.append(trainer.network())
        scores.append(score)
    members = [member_info(spec, params, fold, spec.training.seed + n, epochs=epochs) for n in range(seeds)]
    metric = spec.training.metric
    training = {
        "epochs": epochs,
        "epochs_source": epochs_source,
        "seeds": seeds,
        "n_samples": int(len(train_idx)),
        "holdout": holdout,
        "holdout_samples": 0 if val_idx is None else int(len(val_idx)),
        f"{'holdout' if val_idx is not None else 'train'}_{metric}": _finite(float(np.mean(scores))),
        "device": str(device),
    }
    check = learning_check(spec.task, networks, [fold] * seeds)
    return _model("refit", spec, dataset, params, members, networks, training, check, source)


def ensemble_model(
    spec: StudySpec,
    dataset: Dataset,
    params: dict[str, Any],
    networks: list[torch.nn.Module],
    folds: list[FoldData],
    *,
    fold_numbers: list[int] | None = None,
    fold_epochs: list[int] | None = None,
    source: dict[str, Any] | None = None,
) -> Model:
    """The trial's fold networks as one model (an ``ensemble``): each keeps its fold's
    preprocessing, their answers are averaged.

    Args:
        spec: the study spec.
        dataset: the data the folds came from.
        params: the trial's hyperparameters.
        networks: the trained fold networks, at the epoch each fold chose.
        folds: each network's fold (its preprocessing and training rows).
        fold_numbers: each network's fold index (default ``0..k-1``).
        fold_epochs: the epoch each network was taken at.
        source: the study and trial the networks came from (recorded with the model).

    Returns:
        The model, on the CPU.

    Raises:
        ValueError: when ``networks`` and ``folds`` differ in length or are empty.
    """
    if not networks or len(networks) != len(folds):
        raise ValueError(f"an ensemble needs one fold per network; got {len(networks)} networks, {len(folds)} folds")
    fold_numbers = fold_numbers or list(range(len(folds)))
    members = [
        member_info(spec, params, fold, spec.training.seed + number, fold_number=number,
                    epochs=fold_epochs[i] if fold_epochs and fold_epochs[i] >= 1 else None)
        for i, (fold, number) in enumerate(zip(folds, fold_numbers, strict=True))
    ]
    training = {
        "folds": len(folds),
        "fold_epochs": fold_epochs,
        "n_samples": int(dataset.n_samples),
        "fold_train_samples": [int(len(fold.train.y)) for fold in folds],
    }
    check = learning_check(spec.task, networks, folds)
    cpu = [network.to("cpu") for network in networks]
    return _model("ensemble", spec, dataset, params, members, cpu, training, check, source)


def member_info(spec: StudySpec, params: dict[str, Any], fold: FoldData, seed: int, *, fold_number: int | None = None,
                epochs: int | None = None) -> MemberInfo:
    """How to rebuild one member: its architecture (as ``FoldTrainer`` builds it), its
    fold's preprocessing and target scale."""
    architecture = trial_architecture(fold, params, spec.model)
    target = None if fold.target_scale is None else TargetScale(mean=fold.target_scale[0], std=fold.target_scale[1])
    return MemberInfo(architecture=architecture, preprocessing=fold.preprocessing.to_dict(), target=target,
                      seed=seed, fold=fold_number, epochs=epochs)


def _model(kind: str, spec: StudySpec, dataset: Dataset, params: dict[str, Any], members: list[MemberInfo],
           networks: list[torch.nn.Module], training: dict[str, Any], check: LearningCheck,
           source: dict[str, Any] | None) -> Model:
    manifest = Manifest(
        kind=kind,
        task=spec.task,
        spec=spec.model_dump(mode="json"),
        params=dict(params),
        classes=dataset.classes,
        members=members,
        training=training,
        learning=check,
        source=source,
        data_fingerprint=dataset.fingerprint(),
        versions=framework_versions(),
        created_at=now_iso(),
    )
    # Model() reloads the weights into networks built from the manifest, strictly: a mismatch fails here.
    return Model(manifest, member_weights(networks))


def learning_check(task: str, networks: list[torch.nn.Module], folds: list[FoldData]) -> LearningCheck:
    """Did the networks learn? Each is scored on its own training rows against the trivial
    answer there: the majority class (accuracy), else the training mean (regression) or the
    last observed value (forecasting; RMSE in the target's units). The model learned when
    the members' mean score beats the members' mean baseline.

    Args:
        task: the study's task.
        networks: the trained networks.
        folds: each network's fold (its ``train`` split is scored).

    Returns:
        The check, recorded in the model's manifest.
    """
    scores, baselines, rows = [], [], 0
    for network, fold in zip(networks, folds, strict=True):
        split = fold.train
        outputs = predict_in_chunks(network, split.x, split.lengths).float().cpu()
        rows += len(split.y)
        if task == "classification":
            y = split.y.cpu()
            scores.append(float((outputs.argmax(1) == y).double().mean()))
            baselines.append(float(torch.bincount(y).max()) / len(y))
            continue
        assert fold.target_scale is not None
        mean, std = fold.target_scale
        y = split.y.cpu().double().reshape(len(split.y), -1) * std + mean
        predicted = outputs.double().reshape(y.shape) * std + mean
        scores.append(float((predicted - y).pow(2).mean().sqrt()))
        if task == "forecasting":
            scaling = fold.preprocessing
            assert isinstance(scaling, SeriesScaling)
            # Inputs and targets of the target column share its scaling (SeriesScaling.target_scale): the last
            # input scaled back is persistence's answer (0 for a difference model's: no change).
            last = split.x[:, -1, scaling.target_index].cpu().double()[:, None] * std + mean
            baselines.append(float((last - y).pow(2).mean().sqrt()))
        else:
            baselines.append(float((y - y.mean(0)).pow(2).mean().sqrt()))
    score, baseline = float(np.mean(scores)), float(np.mean(baselines))
    if task == "classification":
        return LearningCheck(learned=score > baseline + 1e-9, metric="accuracy", score=score, baseline=baseline,
                             baseline_name="majority class", rows=rows)
    return LearningCheck(learned=score < baseline - 1e-12 * max(1.0, baseline), metric="rmse", score=score,
                         baseline=baseline,
                         baseline_name="persistence" if task == "forecasting" else "training mean", rows=rows)


def fit_study_model(
    storage: str | BaseStorage,
    study_name: str,
    datasets: DatasetStore | None = None,
    *,
    trial_number: int | None = None,
    holdout: float = 0.0,
    seeds: int = 1,
    device: torch.device | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Model:
    """Refit a study's best trial (or trial ``trial_number``) on the study's whole dataset,
    once per seed (see :func:`fit_model`).

    Epochs: see :func:`final_epochs`. The model records the study, trial, CV score and
    epochs it came from. ``datasets`` is where a ``dataset.id`` spec's file comes from.

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
    dataset = load_dataset(spec, datasets)
    source = trial_source(study_name, spec, trial.number, trial.value, trial.user_attrs)
    return fit_model(spec, dataset, trial.params, epochs=epochs, epochs_source=epochs_source, holdout=holdout,
                     seeds=seeds, device=device, on_epoch=on_epoch, should_stop=should_stop, source=source)


def trial_source(study_name: str, spec: StudySpec, trial_number: int, value: float | None,
                 user_attrs: dict[str, Any]) -> dict[str, Any]:
    """Where a model came from, as its manifest records it: study, trial, CV score and folds."""
    return {
        "study": study_name,
        "trial_number": trial_number,
        "cv_score": _finite(value),
        "cv_loss": _finite(user_attrs.get("cv_loss")),
        "metric": spec.training.metric,
        "direction": spec.direction,
        "fold_scores": user_attrs.get("fold_scores"),
        "fold_best_epochs": user_attrs.get("fold_best_epochs"),
    }


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


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
