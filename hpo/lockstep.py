"""A trial's folds trained in lockstep, small networks' folds as one stacked computation.

A trial's folds usually advance together, one epoch each per step (:func:`hpo.cv.run_folds`
without ``per_fold``). Small recurrent networks on a CPU spend most of a step launching
kernels, not computing; a :class:`FoldStack` stacks the k folds' models
(:class:`hpo.model.StackedSequenceModel`) and launches each kernel once for all k. Each
fold keeps everything of its own: initial weights, batch order, loss, gradient clipping,
Adam state, early stopping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from hpo.data import FoldData, Split
from hpo.model import PREDICT_CHUNK, SequenceModel, StackedSequenceModel
from hpo.spec import ModelSpec
from hpo.train import (
    FoldProgress, FoldTrainer, Trainer, build_network, check_finite, make_optimizer, set_epoch_lr, to_device,
    trial_architecture,
)

# Stacking pays while kernel launches dominate a step, i.e. while the recurrent product
# (batch_size x hidden_size^2) is small; past it oneDNN's own LSTM/GRU kernels win
# (docs/performance.md has the measurements).
STACK_MAX_WORK = 2**19


def lockstep_trainers(
    folds: Sequence[FoldData],
    params: dict[str, Any],
    model_spec: ModelSpec,
    metric: str,
    patience: int | None,
    device: torch.device,
    seeds: Sequence[int],
    max_epochs: int | None = None,
) -> list[Trainer]:
    """Trainers for folds that will advance in lockstep, together covering every fold.

    Each fold is trained as ``FoldTrainer(fold, params, ..., seed)`` trains it (same initial
    weights, batch order, clipping and early stopping). Where it pays (on the CPU, a
    unidirectional network over fixed-length sequences read to its last state, with
    ``batch_size * hidden_size**2 <= STACK_MAX_WORK``, no per-fold learning-rate schedule
    or class weights), the folds that have the same number of batches per epoch train as
    one :class:`FoldStack`. Variable-length sequences are never stacked: packing skips
    their padded steps, stacking would compute them.

    Args:
        folds: the folds; fold ``i`` gets the number ``i`` (``FoldProgress.number``).
        params, model_spec, metric, patience, device, max_epochs: as for ``FoldTrainer``.
        seeds: one seed per fold.

    Returns:
        The trainers: stacks, and ``FoldTrainer`` s for the folds not stacked.
    """
    batch_size = int(params["batch_size"])
    architecture = trial_architecture(folds[0], params, model_spec)
    stackable = (
        device.type == "cpu"
        and not architecture.bidirectional
        and architecture.vocab_size is None
        and architecture.summary == "last"
        and architecture.frontend == "none"
        and params.get("lr_schedule", "none") != "plateau"
        and params.get("class_weighting", "none") == "none"
        and all(fold.train.lengths is None for fold in folds)
        and batch_size * int(params["hidden_size"]) ** 2 <= STACK_MAX_WORK
    )
    by_batches: dict[int, list[int]] = {}
    for i, fold in enumerate(folds):
        by_batches.setdefault(math.ceil(len(fold.train.y) / batch_size), []).append(i)
    trainers: list[Trainer] = []
    for members in by_batches.values():
        if stackable and len(members) > 1:
            trainers.append(FoldStack(
                [folds[i] for i in members], params, model_spec, metric, patience, device,
                [seeds[i] for i in members], members, max_epochs,
            ))
        else:
            trainers.extend(
                FoldTrainer(folds[i], params, model_spec, metric, patience, device, seeds[i], i, max_epochs)
                for i in members
            )
    return trainers


class FoldStack(Trainer):
    """Several folds' networks trained as one :class:`StackedSequenceModel`, an epoch per step.

    Each fold keeps what ``FoldTrainer`` would give it: its seed's initial weights and batch
    order, its own loss (a batch's loss is the sum of the folds' mean losses, so each fold's
    gradient is its own mean-loss gradient), its own gradient clipping, Adam state and
    early stopping. The folds must have the same number of batches per epoch.

    Args:
        folds, params, model_spec, metric, patience, device, max_epochs: as for ``FoldTrainer``.
        seeds: one seed per fold.
        numbers: each fold's number in the cross-validation.
    """

    def __init__(
        self,
        folds: list[FoldData],
        params: dict[str, Any],
        model_spec: ModelSpec,
        metric: str,
        patience: int | None,
        device: torch.device,
        seeds: list[int],
        numbers: list[int],
        max_epochs: int | None = None,
    ):
        # data
        self.train_splits = [to_device(f.train, device) for f in folds]
        self.progress = [FoldProgress(f, metric, patience, device, n) for f, n in zip(folds, numbers)]
        self.classify = folds[0].target_scale is None
        self.batch_size = int(params["batch_size"])
        self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        # model
        self.architecture = trial_architecture(folds[0], params, model_spec)  # the folds differ only in rows
        networks = [build_network(self.architecture, s) for s in seeds]
        self.model = StackedSequenceModel(networks).to(device)
        # optimizer
        self.params, self.max_epochs = params, max_epochs
        self.device = device
        self.optimizer = make_optimizer(self.model.parameters(), params, device)
        self.clip_norm = float(params["clip_norm"])
        self.active = list(range(len(folds)))  # slot of each stacked position
        self.retired: dict[int, SequenceModel] = {}

    def train_epoch(self) -> None:
        splits = [self.train_splits[s] for s in self.active]
        orders = [torch.randperm(len(sp.y), generator=self.generators[s]).to(self.device)
                  for s, sp in zip(self.active, splits)]
        params = list(self.model.parameters())
        set_epoch_lr(self.optimizer, self.params, self.progress[self.active[0]].epochs, self.max_epochs)
        self.model.train()
        total = torch.zeros(len(splits), device=self.device)
        longest = max(len(o) for o in orders)
        for start in range(0, longest, self.batch_size):
            idx = [o[start : start + self.batch_size] for o in orders]
            x, y = _stacked_rows(splits, idx)
            losses = _stacked_loss(self.model(x), y, _row_weights(idx), self.classify)
            self.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            _clip_per_slot(params, self.clip_norm)
            self.optimizer.step()
            total += losses.detach()
        check_finite(total.sum(), self.progress[self.active[0]].epochs + 1)

    @torch.inference_mode()
    def validation_outputs(self) -> dict[int, torch.Tensor]:
        """Every active fold's validation outputs, computed in stacked chunks."""
        self.model.eval()
        splits = [self.progress[s].val_split for s in self.active]
        longest = max(len(sp.y) for sp in splits)
        chunks = []
        for start in range(0, longest, PREDICT_CHUNK):
            idx = [torch.arange(start, min(len(sp.y), start + PREDICT_CHUNK), device=self.device) for sp in splits]
            chunks.append(self.model(_stacked_rows(splits, idx)[0]))
        out = torch.cat(chunks, 1)
        return {s: out[pos, : len(sp.y)] for pos, (s, sp) in enumerate(zip(self.active, splits))}

    def network(self, slot: int) -> SequenceModel:
        if slot in self.retired:
            return self.retired[slot]
        return self.model.export(self.active.index(slot))

    def network_state(self, slot: int) -> dict[str, torch.Tensor]:
        if slot in self.retired:
            return {name: tensor.clone() for name, tensor in self.retired[slot].state_dict().items()}
        return self.model.state(self.active.index(slot))

    def retire(self, slot: int) -> None:
        """Stop training ``slot``; the other folds go on without it (their Adam state kept)."""
        self.retired[slot] = self.model.export(self.active.index(slot))
        keep = [pos for pos, s in enumerate(self.active) if s != slot]
        self.active = [self.active[pos] for pos in keep]
        if not keep:
            return
        old_params = list(self.model.parameters())
        old_state = [self.optimizer.state.get(p, {}) for p in old_params]
        self.model.keep_slots(keep)
        self.optimizer = make_optimizer(self.model.parameters(), self.params, self.device)
        index = torch.tensor(keep, device=self.device)
        for param, state in zip(self.model.parameters(), old_state):
            self.optimizer.state[param] = {
                key: value.index_select(0, index) if value.dim() > 0 else value for key, value in state.items()
            }


def _stacked_rows(splits: list[Split], idx: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each split's rows ``idx[g]``, stacked as ``(x [slots, n, T, F], y [slots, n, ...])``;
    shorter index lists are padded with row 0 up to the longest, ``n``."""
    n = max(len(i) for i in idx)
    idx = [F.pad(i, (0, n - len(i))) if len(i) < n else i for i in idx]
    return torch.stack([sp.x[i] for sp, i in zip(splits, idx)]), torch.stack([sp.y[i] for sp, i in zip(splits, idx)])


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
