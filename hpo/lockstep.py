"""A trial's folds trained in lockstep, small networks' folds as one stacked computation.

A trial's folds usually advance together, one epoch each in turn (:func:`hpo.cv.run_folds`
without ``per_fold``). Small recurrent networks on a CPU spend most of a step launching
kernels, not computing; stacking the k folds' models (:class:`hpo.model.StackedSequenceModel`)
launches each kernel once for all k. Each fold keeps everything of its own: initial
weights, batch order, loss, gradient clipping, Adam state, early stopping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from hpo.data import FoldData, Split
from hpo.model import SequenceModel, StackedSequenceModel
from hpo.spec import ModelSpec
from hpo.train import EVAL_CHUNK, FoldTrainer, batch_inputs, build_model, check_finite, make_adam, to_device

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
) -> list[FoldTrainer]:
    """Trainers for folds that will advance in lockstep.

    Each fold is trained as ``FoldTrainer(fold, params, ..., seed)`` trains it (same initial
    weights, batch order, clipping and early stopping). Where it pays (on the CPU, a
    unidirectional network over fixed-length sequences with ``batch_size * hidden_size**2
    <= STACK_MAX_WORK``), the folds that have the same number of batches per epoch train as
    one stacked computation. Variable-length sequences are never stacked: packing skips
    their padded steps, stacking would compute them.

    Args:
        folds: the folds, in the order they will be stepped.
        params, model_spec, metric, patience, device: as for ``FoldTrainer``.
        seeds: one seed per fold.

    Returns:
        One trainer per fold, in the order of ``folds``.
    """
    batch_size = int(params["batch_size"])
    stackable = (
        device.type == "cpu"
        and not model_spec.bidirectional
        and all(fold.train.lengths is None for fold in folds)
        and batch_size * int(params["hidden_size"]) ** 2 <= STACK_MAX_WORK
    )
    by_batches: dict[int, list[int]] = {}
    for i, fold in enumerate(folds):
        by_batches.setdefault(math.ceil(len(fold.train.y) / batch_size), []).append(i)
    trainers: dict[int, FoldTrainer] = {}
    for members in by_batches.values():
        if stackable and len(members) > 1:
            stack = FoldStack([folds[i] for i in members], params, model_spec, device, [seeds[i] for i in members])
            for slot, i in enumerate(members):
                trainers[i] = StackedFoldTrainer(stack, slot, folds[i], metric, patience, device)
        else:
            for i in members:
                trainers[i] = FoldTrainer(folds[i], params, model_spec, metric, patience, device, seeds[i])
    return [trainers[i] for i in range(len(folds))]


class StackedFoldTrainer(FoldTrainer):
    """One fold of a :class:`FoldStack`: the scoring and early stopping are its own, the
    training is the stack's."""

    def __init__(
        self, stack: FoldStack, slot: int, fold: FoldData, metric: str, patience: int | None, device: torch.device
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
            model(*batch_inputs(split, torch.arange(start, min(n, start + EVAL_CHUNK), device=split.y.device)))
            for start in range(0, n, EVAL_CHUNK)
        ])


class FoldStack:
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
        self.train_splits = [to_device(f.train, device) for f in folds]
        self.val_splits = [to_device(f.val, device) for f in folds]
        self.classify = folds[0].target_scale is None
        self.batch_size = int(params["batch_size"])
        self.clip_norm = float(params["clip_norm"])
        self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        models = [build_model(fold, params, model_spec, seed) for fold, seed in zip(folds, seeds)]
        self.model = StackedSequenceModel(models).to(device)
        self.params = params
        self.device = device
        self.optimizer = make_adam(self.model.parameters(), params, device)
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
        self.optimizer = make_adam(self.model.parameters(), self.params, self.device)
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
        check_finite(total.sum(), self.epochs + 1)

    @torch.inference_mode()
    def _predict_val(self) -> dict[int, torch.Tensor]:
        """Every active fold's validation outputs, computed in stacked chunks."""
        self.model.eval()
        splits = [self.val_splits[s] for s in self.active]
        longest = max(len(sp.y) for sp in splits)
        chunks = []
        for start in range(0, longest, EVAL_CHUNK):
            idx = [torch.arange(start, min(len(sp.y), start + EVAL_CHUNK), device=self.device) for sp in splits]
            chunks.append(self.model(_stacked_rows(splits, idx)[0]))
        out = torch.cat(chunks, 1)
        return {s: out[pos, : len(sp.y)] for pos, (s, sp) in enumerate(zip(self.active, splits))}


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
