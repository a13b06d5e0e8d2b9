"""Where the time of a training step goes: each speed lever of the trainer, measured alone.

For a few (batch size, hidden size) LSTM configurations on digits, one fold-epoch is timed
with the engine's choice and with the alternative, interleaved, ``--repeats`` times; the
figure is the median ratio alternative / engine (above 1: the engine's choice is faster).
Times are CPU seconds of this process (robust to other tenants of a shared machine),
except for the thread-count lever, which is about wall-clock.

Levers: index batching vs a DataLoader; fused vs multi-tensor (foreach) Adam; multi-tensor
vs per-tensor clipping; loss kept on the device vs a host sync (``.item()``) per batch;
validation under ``inference_mode`` vs ``no_grad``; oneDNN's RNN kernels on vs off; the
k folds stacked (lockstep) vs one by one; one intra-op thread vs two.

Run: .venv/bin/python -m bench.bench_levers [--repeats N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from bench.common import footer, header

warnings.filterwarnings("ignore", message="TF32 acceleration")

CONFIGS = [(16, 16), (16, 96), (64, 128), (64, 256)]


def _digits_folds(k: int = 5) -> list[Any]:
    from hpo.cv import fold_indices
    from hpo.data import load_dataset
    from hpo.spec import parse_spec

    spec = parse_spec({"name": "levers", "dataset": {"builtin": "digits"}, "cv": {"folds": k}})
    dataset = load_dataset(spec)
    return [dataset.fold(train, val) for train, val in fold_indices(dataset, spec)]


def _fold_epoch(fold: Any, batch: int, hidden: int, seed: int, *, adam: str = "fused", clip: str = "foreach",
                sync: bool = False, loader: bool = False, onednn: bool = True, no_grad_eval: bool = False) -> float:
    """CPU seconds of one training epoch plus validation of a fresh model on ``fold``."""
    import torch
    from torch.nn import functional as F

    from hpo.model import SequenceModel

    torch.manual_seed(seed)
    model = SequenceModel(cell="lstm", hidden_size=hidden, out_dim=10, n_features=8, dropout=0.1)
    kind = {"fused": {"fused": True}, "foreach": {"foreach": True}}[adam]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, **kind)
    params = list(model.parameters())
    x, y = fold.train.x, fold.train.y
    generator = torch.Generator().manual_seed(seed)
    if loader:
        data = torch.utils.data.TensorDataset(x, y)
        batches: Any = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, generator=generator)
    else:
        order = torch.randperm(len(y), generator=generator)
        batches = ((x[order[s : s + batch]], y[order[s : s + batch]]) for s in range(0, len(y), batch))
    flags = contextlib.nullcontext() if onednn else torch.backends.mkldnn.flags(enabled=False)
    start = time.process_time()
    with flags:
        model.train()
        total = torch.zeros(())
        for xb, yb in batches:
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=clip == "foreach")
            optimizer.step()
            total += loss.item() if sync else loss.detach()
        model.eval()
        with torch.no_grad() if no_grad_eval else torch.inference_mode():
            float(F.cross_entropy(model(fold.val.x), fold.val.y))
    return time.process_time() - start


def _lockstep_epochs(folds: list[Any], batch: int, hidden: int, stacked: bool) -> float:
    """CPU seconds of two lockstep epochs of all folds, stacked or one by one."""
    import torch

    import hpo.lockstep
    from hpo.cv import run_folds
    from hpo.spec import ModelSpec

    params = {"lr": 1e-2, "batch_size": batch, "hidden_size": hidden, "dropout": 0.1, "clip_norm": 1.0}
    limit = hpo.lockstep.STACK_MAX_WORK
    hpo.lockstep.STACK_MAX_WORK = 2**62 if stacked else 0
    try:
        start = time.process_time()
        trainers = hpo.lockstep.lockstep_trainers(folds, params, ModelSpec(), "accuracy", None,
                                                  torch.device("cpu"), list(range(len(folds))))
        run_folds(trainers, 2)
        return time.process_time() - start
    finally:
        hpo.lockstep.STACK_MAX_WORK = limit


def _threads_epoch(fold: Any, batch: int, hidden: int, threads: int) -> float:
    """Wall seconds of one epoch with ``threads`` intra-op threads."""
    import torch

    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        _fold_epoch(fold, batch, hidden, 0)
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(1)


def _ratio(engine: Callable[[], float], other: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Median seconds of the engine's way, and median other / engine, interleaved."""
    engine_s, other_s = [], []
    for _ in range(repeats):
        engine_s.append(engine())
        other_s.append(other())
    return statistics.median(engine_s), statistics.median(other_s) / statistics.median(engine_s)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per lever (default 5)")
    parser.add_argument("--quick", action="store_true", help="3 repeats, two configurations")
    args = parser.parse_args(argv)
    repeats, configs = (3, CONFIGS[::3]) if args.quick else (max(1, args.repeats), CONFIGS)
    import torch

    torch.set_num_threads(1)
    header("Trainer levers: alternative / engine CPU time per fold-epoch (above 1: the engine's choice is faster)")
    folds = _digits_folds()
    fold = folds[0]
    levers: list[tuple[str, Callable[[int, int], tuple[Callable[[], float], Callable[[], float]]]]] = [
        ("DataLoader instead of index batches", lambda b, h: (
            lambda: _fold_epoch(fold, b, h, 0), lambda: _fold_epoch(fold, b, h, 0, loader=True))),
        ("foreach Adam instead of fused", lambda b, h: (
            lambda: _fold_epoch(fold, b, h, 0), lambda: _fold_epoch(fold, b, h, 0, adam="foreach"))),
        ("per-tensor clipping instead of foreach", lambda b, h: (
            lambda: _fold_epoch(fold, b, h, 0), lambda: _fold_epoch(fold, b, h, 0, clip="loop"))),
        (".item() every batch instead of on-device sum", lambda b, h: (
            lambda: _fold_epoch(fold, b, h, 0), lambda: _fold_epoch(fold, b, h, 0, sync=True))),
        ("no_grad validation instead of inference_mode", lambda b, h: (
            lambda: _fold_epoch(fold, b, h, 0), lambda: _fold_epoch(fold, b, h, 0, no_grad_eval=True))),
        ("oneDNN RNN kernels off", lambda b, h: (
            lambda: _fold_epoch(fold, b, h, 0), lambda: _fold_epoch(fold, b, h, 0, onednn=False))),
        ("5 folds one by one instead of stacked", lambda b, h: (
            lambda: _lockstep_epochs(folds, b, h, True), lambda: _lockstep_epochs(folds, b, h, False))),
        ("2 intra-op threads instead of 1 (wall)", lambda b, h: (
            lambda: _threads_epoch(fold, b, h, 1), lambda: _threads_epoch(fold, b, h, 2))),
    ]
    names = [f"b{b}/h{h}" for b, h in configs]
    print(f"{'lever':46s}" + "".join(f"{n:>10s}" for n in names), flush=True)
    for name, make in levers:
        cells = []
        for b, h in configs:
            engine, other = make(b, h)
            _, r = _ratio(engine, other, repeats)
            cells.append(f"{r:9.2f}x")
        print(f"{name:46s}" + " ".join(cells), flush=True)
    footer("bench_levers", argv)


if __name__ == "__main__":
    main(sys.argv[1:])
