"""Studies for the tests: a tiny spec that trains in seconds, and trials written by hand through
Optuna's own API (ask / report / tell), as a worker would."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from hpo.studies import FAIL_REASON_ATTR


def tiny_spec(name: str = "digits-tiny", **overrides: Any) -> dict[str, Any]:
    """A spec that trains in seconds: digits, 2 folds, 2 epochs, hidden size fixed at 16, large
    batches, 3 trials."""
    spec: dict[str, Any] = {
        "name": name,
        "task": "classification",
        "dataset": {"builtin": "digits"},
        "search_space": {"hidden_size": {"value": 16}, "batch_size": {"choices": [128, 256]}},
        "cv": {"folds": 2},
        "training": {"max_epochs": 2},
        "budget": {"n_trials": 3},
    }
    spec.update(overrides)
    return spec


def add_trial(
    storage: BaseStorage,
    study_name: str,
    *,
    state: str = "complete",
    value: float = 0.5,
    lr: float | None = None,
    steps: list[float] = (),
    fold_scores: list[float] | None = None,
    fail_reason: str | None = None,
) -> int:
    """Run one trial by hand through Optuna (ask / report / tell), as a worker would.

    Returns:
        The trial's number.
    """
    study = optuna.load_study(study_name=study_name, storage=storage)
    if lr is not None:
        study.enqueue_trial({"lr": lr})
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.suggest_categorical("batch_size", [16, 32])
    for step, score in enumerate(steps):
        trial.report(score, step)
    if fold_scores is not None:
        trial.set_user_attr("fold_scores", fold_scores)
        finite = [s for s in fold_scores if s == s]
        trial.set_user_attr("fold_std", float(max(finite) - min(finite)) / 2 if finite else None)
    if state == "running":
        return trial.number
    if state == "failed":
        trial.set_user_attr(FAIL_REASON_ATTR, fail_reason or "it broke")
        study.tell(trial, state=TrialState.FAIL)
    elif state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, value)
    return trial.number
