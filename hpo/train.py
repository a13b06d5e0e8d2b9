"""Training folds' networks, one epoch per step, with early stopping on validation loss.

A :class:`Trainer` trains the networks of one or more folds together and every trainer
reads the same way: data, model and optimizer are built in ``__init__``; each
:meth:`Trainer.step` trains one epoch, then evaluates each fold (its :class:`FoldProgress`
keeps the scores and decides early stopping). :class:`FoldTrainer` trains one fold;
:class:`hpo.lockstep.FoldStack` trains several small networks as one stacked computation.
:func:`hpo.cv.run_folds` is the epoch loop.

One fold's epoch: batches are index slices of in-memory tensors (no DataLoader, no
per-sample Python), the loss stays on the device until the epoch ends (one host sync per
epoch, not per batch), Adam is the fused kernel, clipping takes the multi-tensor path, and
validation runs under ``torch.inference_mode``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch.nn import functional as F

from hpo.data import FoldData, Split
from hpo.model import Architecture, SequenceModel, predict_in_chunks
from hpo.spec import ModelSpec

MIN_IMPROVEMENT = 1e-4
DEFAULT_STRIDE = 4  # a frontend's stride when the trial does not choose one
# How a trial's score was computed (its ``scoring`` user attribute): the epoch chosen on an
# inner split of each fold's training rows, the fold's validation rows scored once.
SCORING = "inner_split"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: this configuration does not train."""


def pick_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class FoldScore:
    """A fold's validation result at one epoch."""

    loss: float
    score: float


class FoldProgress:
    """One fold's validation scores, epoch by epoch, its early stopping, and the score of
    its held-out rows (``fold.holdout``) with the weights of the chosen epoch.

    Args:
        fold: the fold (its validation split is scored each epoch, its holdout once).
        metric: ``accuracy`` | ``f1_macro`` | ``loss`` | ``rmse`` | ``mae``.
        patience: epochs without validation-loss improvement before stopping; ``None`` = never.
        device: where the validation tensors live.
        number: the fold's number in the cross-validation.
    """

    def __init__(self, fold: FoldData, metric: str, patience: int | None, device: torch.device, number: int = 0):
        self.number = number
        self.fold = fold
        self.metric = metric
        self.patience = patience
        self.classify = fold.target_scale is None
        self.target_std = 1.0 if fold.target_scale is None else fold.target_scale[1]
        self.val_split = to_device(fold.val, device)
        self.holdout_split = None if fold.holdout is None else to_device(fold.holdout, device)
        self.epochs = 0
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_score: float | None = None
        self.last: FoldScore | None = None
        self.stopped = False
        self.best_state: dict[str, torch.Tensor] | None = None  # the best epoch's weights, with early stopping
        self.holdout: FoldScore | None = None

    @property
    def score(self) -> float:
        """The fold's score: at the best validation-loss epoch with early stopping, else the last."""
        assert self.last is not None, "no epoch has run yet"
        if self.patience is not None and self.best_score is not None:
            return self.best_score
        return self.last.score

    @property
    def chosen_epoch(self) -> int:
        """The epoch whose weights the fold keeps: the best validation-loss one with early
        stopping, else the last."""
        return self.best_epoch if self.patience is not None else self.epochs

    def record(self, out: torch.Tensor) -> bool:
        """Score an epoch's validation outputs and update early stopping.

        Returns:
            Whether early stopping now keeps this epoch (its weights must be kept).

        Raises:
            TrainingDiverged: when the validation loss is not finite.
        """
        self.epochs += 1
        self.last = score_outputs(out, self.val_split.y, self.metric, self.target_std)
        if not math.isfinite(self.last.loss):
            raise TrainingDiverged(f"validation loss became {self.last.loss} in epoch {self.epochs}")
        if self.last.loss < self.best_loss - MIN_IMPROVEMENT:
            self.best_loss, self.best_epoch, self.best_score = self.last.loss, self.epochs, self.last.score
            return self.patience is not None
        if self.patience is not None and self.epochs - self.best_epoch >= self.patience:
            self.stopped = True
        return False


class Trainer(ABC):
    """Trains the networks of one or more folds (its slots) together, one epoch per :meth:`step`.

    ``progress[slot]`` is each fold's :class:`FoldProgress`; a fold that stops early is
    retired and the others go on. Every slot's network has the same ``architecture``.
    """

    progress: list[FoldProgress]
    architecture: Architecture

    @property
    def stopped(self) -> bool:
        """Whether every fold has stopped early."""
        return all(p.stopped for p in self.progress)

    def step(self) -> None:
        """Train every fold still training for one epoch, then evaluate each.

        Raises:
            TrainingDiverged: when a fold's training or validation loss is not finite.
        """
        self.train_epoch()
        for slot, out in self.validation_outputs().items():
            progress = self.progress[slot]
            if progress.record(out):
                progress.best_state = self.network_state(slot)
            if progress.stopped:
                self.retire(slot)

    def chosen_network(self, slot: int) -> SequenceModel:
        """Slot ``slot``'s network with the weights of its chosen epoch, as a standalone copy."""
        state = self.progress[slot].best_state or self.network_state(slot)
        with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: leave the RNG as it was
            network = self.architecture.build()
        network.load_state_dict(state)
        return network.to(next(iter(state.values())).device)

    def score_holdout(self) -> None:
        """Score each fold's held-out rows once, with the weights of its chosen epoch."""
        for slot, progress in enumerate(self.progress):
            split = progress.holdout_split
            if split is not None and progress.epochs:
                out = predict_in_chunks(self.chosen_network(slot), split.x, split.lengths)
                progress.holdout = score_outputs(out, split.y, progress.metric, progress.target_std)

    @abstractmethod
    def train_epoch(self) -> None:
        """One epoch of training for every fold still training."""

    @abstractmethod
    def validation_outputs(self) -> dict[int, torch.Tensor]:
        """The outputs on its validation split of every fold still training, by slot."""

    @abstractmethod
    def network(self, slot: int) -> SequenceModel:
        """Slot ``slot``'s network as trained so far, as a standalone ``SequenceModel``."""

    @abstractmethod
    def network_state(self, slot: int) -> dict[str, torch.Tensor]:
        """A copy of slot ``slot``'s weights as trained so far, by ``SequenceModel`` name."""

    @abstractmethod
    def retire(self, slot: int) -> None:
        """Stop training slot ``slot`` (its fold stopped early)."""


class FoldTrainer(Trainer):
    """Trains one fold's network.

    Args:
        fold: the fold's tensors (preprocessing already fitted on its training part).
        params: hyperparameters: ``lr``, ``batch_size``, ``hidden_size``, ``dropout``,
            ``clip_norm``, and optionally ``weight_decay``, ``optimizer``, ``lr_schedule``,
            ``class_weighting`` and the architecture's (see :func:`trial_architecture`).
        model_spec: the spec's architecture (cell, layers, direction, embedding size).
        metric: ``accuracy`` | ``f1_macro`` | ``loss`` | ``rmse`` | ``mae``.
        patience: epochs without validation-loss improvement before stopping; ``None`` = never.
        device: where to train.
        seed: seeds the weights, the batch order and dropout.
        number: the fold's number in the cross-validation.
        max_epochs: the epochs a ``cosine`` learning-rate schedule spans.
    """

    def __init__(
        self,
        fold: FoldData,
        params: dict[str, Any],
        model_spec: ModelSpec,
        metric: str,
        patience: int | None,
        device: torch.device,
        seed: int,
        number: int = 0,
        max_epochs: int | None = None,
    ):
        # data
        self.train_split = to_device(fold.train, device)
        self.progress = [FoldProgress(fold, metric, patience, device, number)]
        self.batch_size = int(params["batch_size"])
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        weights = class_weights(fold, params)
        self.class_weight = None if weights is None else weights.to(device)
        # model
        self.architecture = trial_architecture(fold, params, model_spec)
        self.model = build_network(self.architecture, seed).to(device)
        # optimizer
        self.optimizer = make_optimizer(self.model.parameters(), params, device)
        self.clip_norm = float(params["clip_norm"])
        self.params, self.max_epochs = params, max_epochs
        self.plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, factor=0.5, patience=max(1, (patience or 4) // 2))
            if params.get("lr_schedule") == "plateau" else None
        )

    def step(self) -> None:
        super().step()
        if self.plateau is not None and not self.stopped:
            self.plateau.step(self.progress[0].last.loss)  # type: ignore[union-attr]

    def train_epoch(self) -> None:
        data = self.train_split
        n = data.y.shape[0]
        order = torch.randperm(n, generator=self.generator).to(data.y.device)
        set_epoch_lr(self.optimizer, self.params, self.progress[0].epochs, self.max_epochs)
        self.model.train()
        total = torch.zeros((), device=data.y.device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            x, lengths = batch_inputs(data, idx)
            loss = fold_loss(self.model(x, lengths), data.y[idx], self.progress[0].classify, self.class_weight)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm, foreach=True)
            self.optimizer.step()
            total += loss.detach()
        check_finite(total, self.progress[0].epochs + 1)

    def validation_outputs(self) -> dict[int, torch.Tensor]:
        val = self.progress[0].val_split
        return {0: predict_in_chunks(self.model, val.x, val.lengths)}

    def network(self, slot: int = 0) -> SequenceModel:
        return self.model

    def network_state(self, slot: int = 0) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}

    def retire(self, slot: int) -> None:
        pass  # nothing to free: a stopped fold's trainer is simply not stepped again


def trial_architecture(fold: FoldData, params: dict[str, Any], model_spec: ModelSpec) -> Architecture:
    """The network a trial's parameters describe for this fold's data.

    The parameters win over the spec's fixed choices (``cell``, ``num_layers``,
    ``bidirectional``); ``summary`` is ``last`` and ``frontend`` ``none`` unless given (a
    frontend's stride defaults to ``DEFAULT_STRIDE``); the data gives the input and output sizes.
    """
    frontend = params.get("frontend", "none")
    return Architecture(
        cell=params.get("cell", model_spec.cell),
        hidden_size=int(params["hidden_size"]),
        out_dim=fold.out_dim,
        n_features=fold.n_features,
        vocab_size=fold.vocab_size,
        embedding_dim=model_spec.embedding_dim,
        num_layers=int(params.get("num_layers", model_spec.num_layers)),
        bidirectional=bool(params.get("bidirectional", model_spec.bidirectional)),
        dropout=float(params["dropout"]),
        summary=params.get("summary", "last"),
        frontend=frontend,
        frontend_stride=int(params.get("frontend_stride", DEFAULT_STRIDE)) if frontend != "none" else 1,
    )


def build_network(architecture: Architecture, seed: int) -> SequenceModel:
    """A network of ``architecture``, its initial weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return architecture.build()


def make_optimizer(
    parameters: Iterable[torch.Tensor], params: dict[str, Any], device: torch.device
) -> torch.optim.Optimizer:
    """The trial's ``optimizer`` (``adam`` unless given; ``adamw``, ``rmsprop``, ``sgd`` with
    momentum 0.9) with its ``lr`` and ``weight_decay``. Each updates every weight element
    on its own, so stacked folds train as if alone."""
    lr, weight_decay = float(params["lr"]), float(params.get("weight_decay", 0.0))
    name = params.get("optimizer", "adam")
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay, foreach=True)
    # The fused kernel (one pass over each tensor) beats the multi-tensor path on CPU too.
    fused = device.type in ("cpu", "cuda")
    adam = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return adam(parameters, lr=lr, weight_decay=weight_decay, fused=fused or None, foreach=None if fused else True)


def set_epoch_lr(optimizer: torch.optim.Optimizer, params: dict[str, Any], epoch: int, max_epochs: int | None) -> None:
    """With ``lr_schedule: cosine``, the learning rate of epoch ``epoch`` (from 0): ``lr``
    decayed along half a cosine to 0 at ``max_epochs``; otherwise leave it as it is."""
    if params.get("lr_schedule") != "cosine" or not max_epochs:
        return
    lr = float(params["lr"]) * 0.5 * (1 + math.cos(math.pi * min(epoch, max_epochs) / (max_epochs + 1)))
    for group in optimizer.param_groups:
        group["lr"] = lr


def class_weights(fold: FoldData, params: dict[str, Any]) -> torch.Tensor | None:
    """With ``class_weighting: balanced``, each class's loss weight ``n / (classes * count)``
    over the fold's training rows (a class it lacks weighs 0), else None."""
    if params.get("class_weighting", "none") != "balanced" or fold.target_scale is not None:
        return None
    counts = torch.bincount(fold.train.y, minlength=fold.out_dim).double()
    weights = torch.where(counts > 0, counts.sum() / (fold.out_dim * counts.clamp(min=1)), 0.0)
    return weights.float()


def fold_loss(out: torch.Tensor, y: torch.Tensor, classify: bool, class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss: cross-entropy for classes (weighted by ``class_weight``), mean
    squared error for (scaled) values."""
    return F.cross_entropy(out, y, weight=class_weight) if classify else F.mse_loss(out, y)


def score_outputs(out: torch.Tensor, y: torch.Tensor, metric: str, target_std: float = 1.0) -> FoldScore:
    """The loss and the ``metric`` of outputs against targets.

    Args:
        out: network outputs ``[n, out_dim]``.
        y: class indices ``[n]`` (classification) or scaled targets ``[n, out_dim]``.
        metric: ``accuracy`` | ``f1_macro`` | ``loss`` | ``rmse`` | ``mae``.
        target_std: the targets' scale, so that ``rmse`` and ``mae`` are in their own units.

    Returns:
        The loss (as trained on) and the score.
    """
    loss = float(fold_loss(out, y, y.dtype == torch.int64))
    if metric == "loss":
        return FoldScore(loss, loss)
    if metric == "accuracy":
        return FoldScore(loss, float((out.argmax(1) == y).float().mean()))
    if metric == "f1_macro":
        return FoldScore(loss, float(f1_score(y.cpu().numpy(), out.argmax(1).cpu().numpy(), average="macro")))
    error = (out - y).double() * target_std  # back to the target's own units (float64: no overflow there)
    if metric == "rmse":
        return FoldScore(loss, float(error.pow(2).mean().sqrt()))
    return FoldScore(loss, float(error.abs().mean()))


def check_finite(total: torch.Tensor, epoch: int) -> None:
    """Raise :class:`TrainingDiverged` when an epoch's summed training loss is not finite."""
    if not torch.isfinite(total):
        raise TrainingDiverged(
            f"training loss became {total.item()} in epoch {epoch}; try a lower lr or clip_norm"
        )


def to_device(split: Split, device: torch.device) -> Split:
    """The split's tensors on ``device`` (lengths stay on the CPU)."""
    lengths = split.lengths
    # Packing needs lengths on the CPU; keep them there.
    return Split(x=split.x.to(device), y=split.y.to(device), lengths=lengths)


def batch_inputs(split: Split, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch's inputs; variable-length batches are cut to their longest sequence."""
    if split.lengths is None:
        return split.x[idx], None
    lengths = split.lengths[idx.cpu()]
    longest = int(lengths.max())
    return split.x[idx, :longest], lengths


def fold_summary(progress: list[FoldProgress]) -> dict[str, Any]:
    """How the folds were scored, their held-out scores and losses, and the epochs they kept.

    Returns:
        ``scoring``; ``fold_scores`` and their ``fold_std``; ``cv_loss``, the mean held-out
        loss (None until every fold is scored); ``fold_best_epochs``, each fold's chosen epoch.
    """
    scored = [p.holdout for p in progress if p.holdout is not None]
    scores = [s.score for s in scored]
    return {
        "scoring": SCORING,
        "fold_scores": scores,
        "fold_std": float(np.std(scores)) if scores else None,
        "cv_loss": float(np.mean([s.loss for s in scored])) if scored and len(scored) == len(progress) else None,
        "fold_best_epochs": [p.chosen_epoch for p in progress],
    }


def fold_models(trainers: Iterable[Trainer]) -> list[tuple[SequenceModel, FoldData]]:
    """Every fold's network at its chosen epoch with the fold's data (whose ``preprocessing``
    turns raw inputs into the network's), in fold order: what a fold ensemble keeps.
    """
    slots = [(trainer, slot) for trainer in trainers for slot in range(len(trainer.progress))]
    slots.sort(key=lambda ts: ts[0].progress[ts[1]].number)
    return [(trainer.chosen_network(slot), trainer.progress[slot].fold) for trainer, slot in slots]
