"""Training one fold's model, one epoch at a time, with early stopping on validation loss.

The loop reads top to bottom: batches are index slices of in-memory tensors (no
DataLoader, no per-sample Python), the loss stays on the device until the epoch ends
(one host sync per epoch, not per batch), Adam is the fused kernel, clipping takes the
multi-tensor path, and validation runs under ``torch.inference_mode``. (A trial's folds of
a small network train together instead: :mod:`hpo.lockstep`.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch.nn import functional as F

from hpo.data import FoldData, Split
from hpo.model import SequenceModel
from hpo.spec import ModelSpec

EVAL_CHUNK = 4096
MIN_IMPROVEMENT = 1e-4


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


class FoldTrainer:
    """Trains one fold; call :meth:`step` once per epoch.

    Args:
        fold: the fold's tensors (preprocessing already fitted on its training part).
        params: hyperparameters: ``lr``, ``batch_size``, ``hidden_size``, ``dropout``,
            ``clip_norm``, ``weight_decay``, and optionally ``cell`` / ``num_layers``.
        model_spec: the spec's architecture (cell, layers, direction, embedding size).
        metric: ``accuracy`` | ``f1_macro`` | ``loss`` | ``rmse`` | ``mae``.
        patience: epochs without validation-loss improvement before stopping; ``None`` = never.
        device: where to train.
        seed: seeds the weights, the batch order and dropout.
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
    ):
        self._init_scoring(fold, metric, patience, device)
        self.train_split = to_device(fold.train, device)
        self.batch_size = int(params["batch_size"])
        self.clip_norm = float(params["clip_norm"])
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.model = build_model(fold, params, model_spec, seed).to(device)
        self.optimizer = make_adam(self.model.parameters(), params, device)

    def _init_scoring(self, fold: FoldData, metric: str, patience: int | None, device: torch.device) -> None:
        self.metric = metric
        self.patience = patience
        self.classify = fold.target_scale is None
        self.target_std = 1.0 if fold.target_scale is None else fold.target_scale[1]
        self.val_split = to_device(fold.val, device)
        self.epochs = 0
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_score: float | None = None
        self.last: FoldScore | None = None
        self.stopped = False

    @property
    def score(self) -> float:
        """The fold's score: at the best validation-loss epoch with early stopping, else the last."""
        assert self.last is not None, "no epoch has run yet"
        if self.patience is not None and self.best_score is not None:
            return self.best_score
        return self.last.score

    def step(self) -> float:
        """Train one epoch, validate, update early stopping; return the fold's score."""
        self._train_epoch()
        return self._record(self.predict(self.val_split))

    def _record(self, out: torch.Tensor) -> float:
        """Score an epoch's validation outputs and update early stopping."""
        self.epochs += 1
        self.last = self._evaluate(out)
        if self.last.loss < self.best_loss - MIN_IMPROVEMENT:
            self.best_loss, self.best_epoch, self.best_score = self.last.loss, self.epochs, self.last.score
        elif self.patience is not None and self.epochs - self.best_epoch >= self.patience:
            self.stopped = True
        return self.score

    def _train_epoch(self) -> None:
        data = self.train_split
        n = data.y.shape[0]
        order = torch.randperm(n, generator=self.generator).to(data.y.device)
        self.model.train()
        total = torch.zeros((), device=data.y.device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            x, lengths = batch_inputs(data, idx)
            loss = _loss(self.model(x, lengths), data.y[idx], self.classify)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm, foreach=True)
            self.optimizer.step()
            total += loss.detach()
        check_finite(total, self.epochs + 1)

    @torch.inference_mode()
    def predict(self, split: Split) -> torch.Tensor:
        """Model outputs for a whole split, in chunks."""
        self.model.eval()
        n = split.y.shape[0]
        outs = []
        for start in range(0, n, EVAL_CHUNK):
            idx = torch.arange(start, min(n, start + EVAL_CHUNK), device=split.y.device)
            outs.append(self.model(*batch_inputs(split, idx)))
        return torch.cat(outs)

    def _evaluate(self, out: torch.Tensor) -> FoldScore:
        y = self.val_split.y
        loss = float(_loss(out, y, self.classify))
        if not math.isfinite(loss):
            raise TrainingDiverged(f"validation loss became {loss} in epoch {self.epochs}")
        return FoldScore(loss=loss, score=self._score(out, y, loss))

    def _score(self, out: torch.Tensor, y: torch.Tensor, loss: float) -> float:
        if self.metric == "loss":
            return loss
        if self.metric == "accuracy":
            return float((out.argmax(1) == y).float().mean())
        if self.metric == "f1_macro":
            return float(f1_score(y.cpu().numpy(), out.argmax(1).cpu().numpy(), average="macro"))
        error = (out - y) * self.target_std  # back to the target's own units
        if self.metric == "rmse":
            return float(error.pow(2).mean().sqrt())
        return float(error.abs().mean())


def build_model(fold: FoldData, params: dict[str, Any], model_spec: ModelSpec, seed: int) -> SequenceModel:
    """The fold's network for these hyperparameters, its initial weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return SequenceModel(
        cell=params.get("cell", model_spec.cell),
        hidden_size=int(params["hidden_size"]),
        out_dim=fold.out_dim,
        n_features=fold.n_features,
        vocab_size=fold.vocab_size,
        embedding_dim=model_spec.embedding_dim,
        num_layers=int(params.get("num_layers", model_spec.num_layers)),
        bidirectional=model_spec.bidirectional,
        dropout=float(params["dropout"]),
    )


def make_adam(parameters: Any, params: dict[str, Any], device: torch.device) -> torch.optim.Adam:
    """Adam with the trial's ``lr`` and ``weight_decay``."""
    # The fused kernel (one pass over each tensor) beats the multi-tensor path on CPU too.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(
        parameters,
        lr=float(params["lr"]),
        weight_decay=float(params.get("weight_decay", 0.0)),
        fused=fused or None,
        foreach=None if fused else True,
    )


def _loss(out: torch.Tensor, y: torch.Tensor, classify: bool) -> torch.Tensor:
    return F.cross_entropy(out, y) if classify else F.mse_loss(out, y)


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


def fold_summary(trainers: list[FoldTrainer]) -> dict[str, Any]:
    """Per-fold scores, their spread, and where each fold's validation loss was best."""
    scores = [t.score for t in trainers]
    return {
        "fold_scores": scores,
        "fold_std": float(np.std(scores)) if scores else None,
        "fold_best_epochs": [t.best_epoch for t in trainers],
    }
