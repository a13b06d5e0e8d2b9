"""Training a fold's model, one epoch at a time, with early stopping on validation loss.

The loop reads top to bottom: batches are index slices of in-memory tensors (no
DataLoader, no per-sample Python), the loss stays on the device until the epoch ends
(one host sync per epoch, not per batch), Adam is the fused kernel, clipping takes the
multi-tensor path, and validation runs under ``torch.inference_mode``.

A trial's folds usually advance in lockstep (one epoch each in turn). Then
:meth:`FoldTrainer.lockstep` trains small networks' folds as one stacked computation
(:class:`hpo.model.StackedSequenceModel`): each fold keeps its own weights, batch order,
clipping, optimizer state and early stopping, but the k folds share every kernel launch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch.nn import functional as F

from hpo.data import FoldData, Split
from hpo.model import SequenceModel, StackedSequenceModel
from hpo.spec import ModelSpec

EVAL_CHUNK = 4096
MIN_IMPROVEMENT = 1e-4
# Stacking folds pays while kernel launches dominate a step; past this size the matrix
# products dominate and oneDNN's own LSTM/GRU kernel is faster (docs/performance.md).
STACK_MAX_HIDDEN = 160


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
        self.train_split = _to_device(fold.train, device)
        self.batch_size = int(params["batch_size"])
        self.clip_norm = float(params["clip_norm"])
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.model = _build_model(fold, params, model_spec, seed).to(device)
        self.optimizer = _adam(self.model.parameters(), params, device)

    def _init_scoring(self, fold: FoldData, metric: str, patience: int | None, device: torch.device) -> None:
        self.metric = metric
        self.patience = patience
        self.classify = fold.target_scale is None
        self.target_std = 1.0 if fold.target_scale is None else fold.target_scale[1]
        self.val_split = _to_device(fold.val, device)
        self.epochs = 0
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_score: float | None = None
        self.last: FoldScore | None = None
        self.stopped = False

    @classmethod
    def lockstep(
        cls,
        folds: Sequence[FoldData],
        params: dict[str, Any],
        model_spec: ModelSpec,
        metric: str,
        patience: int | None,
        device: torch.device,
        seeds: Sequence[int],
    ) -> list[FoldTrainer]:
        """Trainers for folds that will advance together, one epoch each in turn
        (:func:`hpo.cv.run_folds` without ``per_fold``).

        Each fold is trained exactly as ``FoldTrainer(fold, ..., seed)`` would train it
        (same initial weights, batch order, clipping and early stopping). Where it pays
        (a unidirectional network of at most ``STACK_MAX_HIDDEN`` units on the CPU), folds
        with the same number of batches per epoch train as one stacked computation.

        Args:
            folds: the folds, in the order they will be stepped.
            seeds: one seed per fold.
            params, model_spec, metric, patience, device: as for ``FoldTrainer``.

        Returns:
            One trainer per fold, in the order of ``folds``.
        """
        batch_size = int(params["batch_size"])
        stackable = (
            device.type == "cpu" and not model_spec.bidirectional and int(params["hidden_size"]) <= STACK_MAX_HIDDEN
        )
        by_batches: dict[int, list[int]] = {}
        for i, fold in enumerate(folds):
            by_batches.setdefault(math.ceil(len(fold.train.y) / batch_size), []).append(i)
        trainers: list[FoldTrainer | None] = [None] * len(folds)
        for members in by_batches.values():
            if stackable and len(members) > 1:
                stack = _FoldStack([folds[i] for i in members], params, model_spec, device, [seeds[i] for i in members])
                for slot, i in enumerate(members):
                    trainers[i] = _StackedFoldTrainer(stack, slot, folds[i], metric, patience, device)
            else:
                for i in members:
                    trainers[i] = cls(folds[i], params, model_spec, metric, patience, device, seeds[i])
        return [t for t in trainers if t is not None]

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
            x, lengths = _batch_inputs(data, idx)
            loss = _loss(self.model(x, lengths), data.y[idx], self.classify)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm, foreach=True)
            self.optimizer.step()
            total += loss.detach()
        _check_finite(total, self.epochs + 1)

    @torch.inference_mode()
    def predict(self, split: Split) -> torch.Tensor:
        """Model outputs for a whole split, in chunks."""
        self.model.eval()
        n = split.y.shape[0]
        outs = []
        for start in range(0, n, EVAL_CHUNK):
            idx = torch.arange(start, min(n, start + EVAL_CHUNK), device=split.y.device)
            outs.append(self.model(*_batch_inputs(split, idx)))
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


class _StackedFoldTrainer(FoldTrainer):
    """One fold of a :class:`_FoldStack`: the scoring and early stopping are its own, the
    training is the stack's."""

    def __init__(
        self, stack: _FoldStack, slot: int, fold: FoldData, metric: str, patience: int | None, device: torch.device
    ):
        self._init_scoring(fold, metric, patience, device)
        self.stack = stack
        self.slot = slot

    @property
    def model(self) -> SequenceModel:  # type: ignore[override]
        """This fold's network, as a standalone copy."""
        return self.stack.export(self.slot)

    def step(self) -> float:
        """See :meth:`FoldTrainer.step`; the first fold stepped in an epoch trains the whole stack."""
        score = self._record(self.stack.advance(self.slot))
        if self.stopped:
            self.stack.retire(self.slot)
        return score

    @torch.inference_mode()
    def predict(self, split: Split) -> torch.Tensor:
        """See :meth:`FoldTrainer.predict`."""
        model = self.model.eval()
        n = split.y.shape[0]
        return torch.cat([
            model(*_batch_inputs(split, torch.arange(start, min(n, start + EVAL_CHUNK), device=split.y.device)))
            for start in range(0, n, EVAL_CHUNK)
        ])


class _FoldStack:
    """Several folds' models trained as one :class:`StackedSequenceModel`, an epoch at a time.

    Each fold keeps what ``FoldTrainer`` would give it: its seed's initial weights and batch
    order, its own loss (a batch's loss is the sum of the folds' mean losses, so each fold's
    gradient is its own mean-loss gradient), its own gradient clipping and Adam state.
    The folds must have the same number of batches per epoch.
    """

    def __init__(
        self,
        folds: list[FoldData],
        params: dict[str, Any],
        model_spec: ModelSpec,
        device: torch.device,
        seeds: list[int],
    ):
        self.train_splits = [_to_device(f.train, device) for f in folds]
        self.val_splits = [_to_device(f.val, device) for f in folds]
        self.classify = folds[0].target_scale is None
        self.batch_size = int(params["batch_size"])
        self.clip_norm = float(params["clip_norm"])
        self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        models = [_build_model(fold, params, model_spec, seed) for fold, seed in zip(folds, seeds)]
        self.model = StackedSequenceModel(models).to(device)
        self.params = params
        self.device = device
        self.optimizer = _adam(self.model.parameters(), params, device)
        self.active = list(range(len(folds)))  # slot of each stacked position
        self.epochs = 0
        self.epochs_taken = [0] * len(folds)
        self.val_outputs: dict[int, torch.Tensor] = {}
        self.retired: dict[int, SequenceModel] = {}

    def advance(self, slot: int) -> torch.Tensor:
        """Validation outputs of ``slot`` after its next epoch (the first fold to ask for an
        epoch trains it for every fold still training).

        Raises:
            RuntimeError: when a fold asks for its next epoch before every other fold took
                the current one (the folds must advance in lockstep).
        """
        if self.epochs_taken[slot] == self.epochs:
            if any(self.epochs_taken[s] != self.epochs for s in self.active):
                raise RuntimeError("stacked folds must advance together, one epoch each in turn")
            self._train_epoch()
            self.epochs += 1
            self.val_outputs = self._predict_val()
        self.epochs_taken[slot] += 1
        return self.val_outputs[slot]

    def export(self, slot: int) -> SequenceModel:
        """Slot ``slot``'s network as a standalone ``SequenceModel``."""
        if slot in self.retired:
            return self.retired[slot]
        return self.model.export(self.active.index(slot))

    def retire(self, slot: int) -> None:
        """Stop training ``slot`` (its fold stopped early); the other folds go on without it."""
        self.retired[slot] = self.model.export(self.active.index(slot))
        keep = [pos for pos, s in enumerate(self.active) if s != slot]
        self.active = [self.active[pos] for pos in keep]
        if not keep:
            return
        old_params = list(self.model.parameters())
        old_state = [self.optimizer.state.get(p, {}) for p in old_params]
        self.model.keep_slots(keep)
        self.optimizer = _adam(self.model.parameters(), self.params, self.device)
        index = torch.tensor(keep, device=self.device)
        for param, state in zip(self.model.parameters(), old_state):
            self.optimizer.state[param] = {
                key: value if key == "step" else value.index_select(0, index) for key, value in state.items()
            }

    def _train_epoch(self) -> None:
        splits = [self.train_splits[s] for s in self.active]
        orders = [torch.randperm(len(sp.y), generator=self.generators[s]).to(self.device)
                  for s, sp in zip(self.active, splits)]
        params = list(self.model.parameters())
        embedding = self.model.weights["embedding__weight"] if self.model.vocab_sizes is not None else None
        self.model.train()
        total = torch.zeros(len(splits), device=self.device)
        longest = max(len(o) for o in orders)
        for start in range(0, longest, self.batch_size):
            idx = [o[start : start + self.batch_size] for o in orders]
            x, lengths, y = _stacked_batch(splits, idx)
            losses = _stacked_loss(self.model(x, lengths), y, _row_weights(idx), self.classify)
            self.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            if embedding is not None and embedding.grad is not None:
                embedding.grad[:, 0] = 0  # the padding token's row, as nn.Embedding(padding_idx=0)
            _clip_per_slot(params, self.clip_norm)
            self.optimizer.step()
            total += losses.detach()
        _check_finite(total.sum(), self.epochs + 1)

    @torch.inference_mode()
    def _predict_val(self) -> dict[int, torch.Tensor]:
        """Every active fold's validation outputs, computed in stacked chunks."""
        self.model.eval()
        splits = [self.val_splits[s] for s in self.active]
        longest = max(len(sp.y) for sp in splits)
        chunks = []
        for start in range(0, longest, EVAL_CHUNK):
            idx = [torch.arange(start, min(len(sp.y), start + EVAL_CHUNK), device=self.device) for sp in splits]
            x, lengths, _ = _stacked_batch(splits, idx)
            chunks.append(self.model(x, lengths))
        out = torch.cat(chunks, 1)
        return {s: out[pos, : len(sp.y)] for pos, (s, sp) in enumerate(zip(self.active, splits))}


def _build_model(fold: FoldData, params: dict[str, Any], model_spec: ModelSpec, seed: int) -> SequenceModel:
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


def _adam(parameters: Any, params: dict[str, Any], device: torch.device) -> torch.optim.Adam:
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


def _check_finite(total: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(total):
        raise TrainingDiverged(
            f"training loss became {total.item()} in epoch {epoch}; try a lower lr or clip_norm"
        )


def _stacked_batch(
    splits: list[Split], idx: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Each split's rows ``idx[g]`` stacked as ``[slots, n, ...]`` (``n``: the longest index
    list; shorter ones are padded with row 0); variable-length batches are cut to their
    longest sequence. Returns ``(x, lengths, y)``."""
    n = max(len(i) for i in idx)
    idx = [F.pad(i, (0, n - len(i))) if len(i) < n else i for i in idx]
    y = torch.stack([sp.y[i] for sp, i in zip(splits, idx)])
    if splits[0].lengths is None:
        return torch.stack([sp.x[i] for sp, i in zip(splits, idx)]), None, y
    lengths = torch.stack([sp.lengths[i.cpu()] for sp, i in zip(splits, idx)])  # type: ignore[index]
    longest = int(lengths.max())
    x = torch.stack([sp.x[i, :longest] for sp, i in zip(splits, idx)])
    return x, lengths.to(x.device), y


def _row_weights(idx: list[torch.Tensor]) -> torch.Tensor | None:
    """``[slots, n]`` weights that make a padded batch's loss each slot's mean over its own
    rows (``1 / count`` for real rows, 0 for padding); None when no slot is padded."""
    n = max(len(i) for i in idx)
    if all(len(i) == n for i in idx):
        return None
    return torch.stack([F.pad(torch.full((len(i),), 1.0 / len(i), device=i.device), (0, n - len(i))) for i in idx])


def _stacked_loss(out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None, classify: bool) -> torch.Tensor:
    """Each slot's mean loss over its real rows, ``[slots]``."""
    if classify:
        per_row = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
    else:
        per_row = (out - y).pow(2).mean(-1)
    return per_row.mean(1) if weights is None else (per_row * weights).sum(1)


def _clip_per_slot(params: list[torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` for each slot on its own (the norm over that slot's gradients)."""
    with_grad = [p for p in params if p.grad is not None]
    slots = len(with_grad[0])
    norms = torch.stack([torch.linalg.vector_norm(p.grad.reshape(slots, -1), dim=1) for p in with_grad])  # type: ignore[union-attr]
    coef = (max_norm / (torch.linalg.vector_norm(norms, dim=0) + 1e-6)).clamp(max=1.0)
    for p in with_grad:
        # Not in place: autograd may hand two parameters one gradient buffer (b_ih and b_hh
        # are summed in the forward pass), which an in-place scale would scale twice.
        p.grad = p.grad * coef.view(-1, *[1] * (p.dim() - 1))  # type: ignore[operator]


def _to_device(split: Split, device: torch.device) -> Split:
    lengths = split.lengths
    # Packing needs lengths on the CPU; keep them there.
    return Split(x=split.x.to(device), y=split.y.to(device), lengths=lengths)


def _batch_inputs(split: Split, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
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
