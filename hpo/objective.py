"""The objective Optuna optimizes: spec + trial -> mean k-fold held-out score."""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable

import numpy as np
import optuna
import torch

from hpo.cv import run_folds
from hpo.data import Dataset, FoldData
from hpo.fitting import fit_spec_to_data, fitted_folds
from hpo.lockstep import lockstep_trainers
from hpo.samplers import suggest_params
from hpo.spec import StudySpec
from hpo.studies import FAIL_REASON_ATTR

STOPPED_BY_ATTR = "stopped_by"
from hpo.train import FoldTrainer, Trainer, fold_models, fold_summary, pick_device

TrialCompleted = Callable[[optuna.Trial, float, list[torch.nn.Module], list[FoldData], list[int], list[int]], None]


class Objective:
    """Callable for ``study.optimize``: suggests parameters, cross-validates, returns the mean.

    A fold here is a fold-run: with ``cv.repeats`` r, the k folds of each of the r repeats
    (``k x r`` of them, numbered repeat by repeat). Folds' preprocessed tensors are built
    once per process and reused by every trial.
    Within each fold an inner split of its training rows decides early stopping and the
    epoch kept (:func:`hpo.cv.nested_fold`); the fold's validation rows are scored once,
    with that epoch's weights, and the trial's value is the mean of those scores. Each
    epoch the mean inner validation score across folds is reported (step = epoch) so
    epoch-wise pruners can stop a trial early; with the Wilcoxon pruner each fold's inner
    score is reported instead (step = fold) and a clearly worse trial stops before all k
    folds. ``scoring``, per-fold scores, their std, ``cv_loss`` and the chosen epochs are
    stored as trial user attributes; a failure (a score that is not finite included)
    stores its reason as ``fail_reason``.

    Args:
        spec: the study spec.
        dataset: the loaded dataset.
        device: where to train (CUDA when available by default).
        should_stop: polled every epoch; when true the trial fails as interrupted.
        past_deadline: polled after every epoch; when true (the study's ``budget.timeout_s``
            has passed) a trial whose folds train together stops there and is scored with
            what each fold reached (its chosen epoch so far), so a budget always leaves
            complete trials and a model; a trial trained fold by fold (Wilcoxon), whose
            later folds never started, stops as pruned.
        on_fitted: called once, with the spec fitted to the data, when the folds are first
            built (before any epoch is reported): the workers make the study's pruner from it,
            so that fitted values (``pruner.n_warmup_steps``, ``training.max_epochs``) reach it.
        on_complete: called when a trial's folds all finished, before its value is told:
            ``(trial, value, fold networks, their FoldData, fold indices, epochs)``, for the
            first repeat's k folds; the workers keep the best trial's fold models with it
            (``hpo.export.ensemble``).
    """

    def __init__(
        self,
        spec: StudySpec,
        dataset: Dataset,
        device: torch.device | None = None,
        should_stop: Callable[[], bool] | None = None,
        past_deadline: Callable[[], bool] | None = None,
        on_fitted: Callable[[StudySpec], None] | None = None,
        on_complete: TrialCompleted | None = None,
    ):
        self.spec = spec
        self.dataset = dataset
        self.device = device or pick_device()
        self.should_stop = should_stop
        self.past_deadline = past_deadline
        self.on_fitted = on_fitted
        self.on_complete = on_complete
        self._folds: list[FoldData] | None = None

    def folds(self) -> list[FoldData]:
        if self._folds is None:
            # What the spec leaves out is fitted to the data: the same for every worker of the study.
            spec, self._folds = fitted_folds(self.spec, self.dataset)
            self.spec = fit_spec_to_data(spec, self._folds)
            if self.on_fitted is not None:
                self.on_fitted(self.spec)
        return self._folds

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr(FAIL_REASON_ATTR, f"{type(exc).__name__}: {exc}"[:2000])
            trial.set_user_attr("fail_traceback", traceback.format_exc()[-4000:])
            raise

    def _run(self, trial: optuna.Trial) -> float:
        folds = self.folds()
        spec = self.spec
        params = suggest_params(trial, spec.search_space)
        seed = spec.training.seed
        per_fold = spec.pruner.name == "wilcoxon"
        # Optuna advises a shuffled instance order for Wilcoxon so early folds do not dominate.
        order = np.random.default_rng(seed + trial.number).permutation(len(folds)) if per_fold else range(len(folds))
        built: list[Trainer] = []

        def fold_trainer(i: int) -> Trainer:
            built.append(FoldTrainer(
                folds[i], params, spec.model, spec.training.metric, spec.training.patience, self.device, seed + i, i,
                spec.training.max_epochs,
            ))
            return built[-1]

        def unfinished() -> bool:
            max_epochs = spec.training.max_epochs
            progress = [p for t in built for p in t.progress]
            return len(progress) < len(folds) or any(not p.stopped and p.epochs < max_epochs for p in progress)

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} with {spec.training.metric} {value:.4g}")
            if per_fold and self.past_deadline is not None and unfinished() and self.past_deadline():
                raise optuna.TrialPruned(f"budget.timeout_s ({spec.budget.timeout_s:g}) reached: stopped at "
                                         f"step {step} with {spec.training.metric} {value:.4g}")

        if not per_fold:  # lockstep: small networks' folds train as one stacked computation
            built.extend(lockstep_trainers(
                folds, params, spec.model, spec.training.metric, spec.training.patience, self.device,
                [seed + i for i in range(len(folds))], spec.training.max_epochs,
            ))
        try:
            run_folds(
                (fold_trainer(int(i)) for i in order) if per_fold else built,
                spec.training.max_epochs,
                per_fold=per_fold,
                on_epoch=report,
                on_fold=report,
                should_stop=self.should_stop,
                out_of_time=None if per_fold else self.past_deadline,
            )
            if unfinished():
                trial.set_user_attr(STOPPED_BY_ATTR, f"budget.timeout_s ({spec.budget.timeout_s:g}) reached")
        finally:
            progress = sorted((p for t in built for p in t.progress if p.epochs), key=lambda p: p.number)
            for key, value in fold_summary(progress).items():
                trial.set_user_attr(key, value)
        scores = [p.holdout.score if p.holdout is not None else math.nan for t in built for p in t.progress]
        value = float(np.mean(scores))
        if not math.isfinite(value):
            raise ValueError(f"the trial's {spec.training.metric} is {value}, not a finite number "
                             f"(fold scores {scores}); Optuna cannot rank it")
        if self.on_complete is not None:
            # With repeated CV, the first repeat's k fold models: one partition of the rows, as
            # many members as without repeats (the archive and predictions do not grow r-fold).
            kept = fold_models(built)[: spec.cv.folds]
            progress = sorted((p for t in built for p in t.progress), key=lambda p: p.number)[: spec.cv.folds]
            self.on_complete(trial, value, [network for network, _ in kept], [fold for _, fold in kept],
                             [p.number for p in progress], [p.chosen_epoch for p in progress])
        return value
