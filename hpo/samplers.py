"""Optuna samplers and pruners from the spec, and the search space as trial suggestions."""

from __future__ import annotations

from typing import Any

import optuna

from hpo.spec import SearchSpace, StudySpec


def make_sampler(spec: StudySpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded.

    Args:
        spec: the study spec.
        seed_offset: added to the seed so that several worker processes on one study do
            not draw the same random configurations.
    """
    s = spec.sampler
    seed = None if s.seed is None else (s.seed + seed_offset) % 2**32  # stays a valid seed
    startup = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **startup)
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        return optuna.samplers.GridSampler(spec.grid(), seed=seed)
    if s.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **startup)
    if s.name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    return optuna.samplers.GPSampler(seed=seed, **startup)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner. Epoch-wise pruners see the mean validation score across folds per
    epoch; ``wilcoxon`` sees each fold's score."""
    p = spec.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource, max_resource=spec.training.max_epochs, reduction_factor=p.reduction_factor
        )
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=p.p_threshold)
    return optuna.pruners.NopPruner()


def suggest_params(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Ask the trial for every parameter of the space. Fixed values are suggested as a
    single choice, so ``trial.params`` (and Optuna's ``best_params``) is always complete."""
    params: dict[str, Any] = {}
    for name, p in space.items():
        kind = space.kind(name)
        if p.value is not None:
            params[name] = trial.suggest_categorical(name, [p.value])
        elif p.choices is not None:
            params[name] = trial.suggest_categorical(name, p.choices)
        elif kind == "int":
            params[name] = trial.suggest_int(name, int(p.low), int(p.high), log=bool(p.log))
        else:
            params[name] = trial.suggest_float(name, p.low, p.high, log=bool(p.log))
    return params
