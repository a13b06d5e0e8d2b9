"""Folds in lockstep: k models computed as one must equal k models computed one by one."""

import math

import pytest
import torch

from hpo.cv import fold_indices, run_folds
from hpo.data import FoldData, Split, load_dataset
from hpo.lockstep import FoldStack, lockstep_trainers
from hpo.model import SequenceModel, StackedSequenceModel, predict_in_chunks
from hpo.spec import ModelSpec, parse_spec
from hpo.train import FoldTrainer, TrainingDiverged

CPU = torch.device("cpu")
PARAMS = {"lr": 1e-2, "batch_size": 64, "hidden_size": 24, "dropout": 0.0, "clip_norm": 1.0, "weight_decay": 0.0}


def _models(cell, layers, slots=3):
    models = []
    for g in range(slots):
        torch.manual_seed(g)
        models.append(SequenceModel(cell=cell, hidden_size=6, out_dim=3, n_features=4, num_layers=layers,
                                    dropout=0.3).eval())
    return models


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_stacked_model_computes_what_each_model_computes(cell, layers):
    models = _models(cell, layers)
    stacked = StackedSequenceModel(models).eval()
    x = torch.randn(len(models), 5, 7, 4, generator=torch.Generator().manual_seed(10))
    out = stacked(x)
    one_by_one = [model(x[g]) for g, model in enumerate(models)]
    torch.testing.assert_close(out, torch.stack(one_by_one), rtol=1e-5, atol=1e-6)

    out.square().sum().backward()
    sum(o.square().sum() for o in one_by_one).backward()
    for name, _ in models[0].named_parameters():
        for g, model in enumerate(models):
            expected = dict(model.named_parameters())[name].grad
            torch.testing.assert_close(stacked.weight(name).grad[g], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stacked.export(1).eval()(x[1]), one_by_one[1])


def test_stacking_refuses_bidirectional_and_token_models():
    both_ways = SequenceModel(cell="gru", hidden_size=4, out_dim=2, n_features=3, bidirectional=True)
    tokens = SequenceModel(cell="gru", hidden_size=4, out_dim=2, vocab_size=10)
    for model in (both_ways, tokens):
        with pytest.raises(ValueError, match="unidirectional models over numeric inputs"):
            StackedSequenceModel([model, model])


def _digits_folds(k=3):
    spec = parse_spec({"name": "t", "dataset": {"builtin": "digits"}, "cv": {"folds": k}})
    dataset = load_dataset(spec)
    return [dataset.fold(train, val) for train, val in fold_indices(dataset, spec)]


def _one_by_one(folds, params, patience, epochs, seeds):
    trainers = [FoldTrainer(f, params, ModelSpec(), "accuracy", patience, CPU, s) for f, s in zip(folds, seeds)]
    return _by_fold(run_folds(trainers, epochs))


def _by_fold(trainers):
    """Every fold's progress, in fold order."""
    return sorted((p for t in trainers for p in t.progress), key=lambda p: p.number)


def test_lockstep_stacks_small_networks_and_trains_each_fold_as_alone():
    folds = _digits_folds()
    stacked = lockstep_trainers(folds, PARAMS, ModelSpec(), "accuracy", None, CPU, [0, 1, 2])
    assert len(stacked) == 1 and isinstance(stacked[0], FoldStack)
    run_folds(stacked, 3)
    alone = _one_by_one(folds, PARAMS, None, 3, [0, 1, 2])
    for s, a in zip(_by_fold(stacked), alone):
        assert s.epochs == a.epochs == 3
        assert s.last.loss == pytest.approx(a.last.loss, rel=2e-3)
        assert abs(s.score - a.score) <= 0.01


def _histories(trainers, epochs):
    """Each fold's validation loss after each epoch it trained, in fold order."""
    losses = [[] for _ in _by_fold(trainers)]
    for _ in range(epochs):
        for trainer in trainers:
            running = [p for p in trainer.progress if not p.stopped]
            if running:
                trainer.step()
            for progress in running:
                losses[progress.number].append(progress.last.loss)
    return losses


def test_lockstep_early_stopping_retires_a_fold_without_disturbing_the_others():
    folds = _digits_folds()
    params = {**PARAMS, "lr": 0.05}
    stopping = lockstep_trainers(folds, params, ModelSpec(), "accuracy", 1, CPU, [0, 1, 2])
    with_stops = _histories(stopping, 40)
    assert all(t.stopped for t in stopping)
    progress = _by_fold(stopping)
    assert len({p.epochs for p in progress}) > 1  # folds stopped at different epochs
    for fold, history in zip(progress, with_stops):
        assert fold.epochs - fold.best_epoch == 1
        assert min(history) == history[fold.best_epoch - 1]
    # The folds still training after another one stopped train exactly as if none had stopped.
    never_stopping = lockstep_trainers(folds, params, ModelSpec(), "accuracy", None, CPU, [0, 1, 2])
    without_stops = _histories(never_stopping, max(len(h) for h in with_stops))
    for history, reference in zip(with_stops, without_stops):
        assert history == pytest.approx(reference[: len(history)], rel=1e-5)
    out = predict_in_chunks(stopping[0].network(0), folds[0].val.x, None)  # a stopped fold keeps its own weights
    assert float(torch.nn.functional.cross_entropy(out, folds[0].val.y)) == pytest.approx(with_stops[0][-1], rel=1e-5)


def test_lockstep_clips_each_fold_on_its_own():
    folds = _digits_folds()
    clip = 0.05
    stacked = lockstep_trainers(folds, {**PARAMS, "clip_norm": clip}, ModelSpec(), "accuracy", None, CPU, [0, 1, 2])
    stack = stacked[0]
    norms = []

    def record(optimizer, *_):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        per_slot = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
        norms.append(torch.linalg.vector_norm(per_slot, dim=0))

    stack.optimizer.register_step_pre_hook(record)
    stacked[0].step()
    norms = torch.stack(norms)
    assert norms.max() <= clip * (1 + 1e-4) and norms.min() > clip * 0.99


def _synthetic_fold(n_train, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + 20, 6, 3, generator=gen)
    y = (x[:, -1, 0] > 0).long()
    split = lambda rows: Split(x=x[rows], y=y[rows], lengths=None)  # noqa: E731
    return FoldData(train=split(slice(0, n_train)), val=split(slice(n_train, None)), n_features=3,
                    vocab_size=None, out_dim=2, target_scale=None)


def test_lockstep_pads_uneven_last_batches_and_separates_other_batch_counts():
    # 100 and 97 rows make 7 batches of 16 (the last has 4 or 1 rows); 120 rows make 8.
    folds = [_synthetic_fold(100, 0), _synthetic_fold(97, 1), _synthetic_fold(120, 2)]
    params = {**PARAMS, "batch_size": 16}
    trainers = lockstep_trainers(folds, params, ModelSpec(), "loss", None, CPU, [0, 1, 2])
    assert isinstance(trainers[0], FoldStack) and [p.number for p in trainers[0].progress] == [0, 1]
    assert isinstance(trainers[1], FoldTrainer) and trainers[1].progress[0].number == 2
    run_folds(trainers, 3)
    alone = _one_by_one(folds, params, None, 3, [0, 1, 2])
    for s, a in zip(_by_fold(trainers), alone):
        assert s.last.loss == pytest.approx(a.last.loss, rel=1e-4)


def test_large_bidirectional_or_variable_length_networks_train_fold_by_fold():
    folds = _digits_folds()
    big = lockstep_trainers(folds, {**PARAMS, "hidden_size": 512}, ModelSpec(), "accuracy", None, CPU, [0, 1, 2])
    both_ways = lockstep_trainers(folds, PARAMS, ModelSpec(bidirectional=True), "accuracy", None, CPU, [0, 1, 2])
    ragged = []
    for fold in folds:
        n_train, n_val = len(fold.train.y), len(fold.val.y)
        ragged.append(FoldData(
            train=Split(fold.train.x, fold.train.y, torch.full((n_train,), 8)),
            val=Split(fold.val.x, fold.val.y, torch.full((n_val,), 8)),
            n_features=fold.n_features, vocab_size=None, out_dim=fold.out_dim, target_scale=None,
        ))
    packed = lockstep_trainers(ragged, PARAMS, ModelSpec(), "accuracy", None, CPU, [0, 1, 2])
    assert all(isinstance(t, FoldTrainer) for t in big + both_ways + packed)
    assert len(big) == len(both_ways) == len(packed) == 3


def test_stacked_divergence_names_the_epoch():
    fold = _synthetic_fold(64, 0)
    fold.train.x[3, 2, 1] = math.nan
    trainers = lockstep_trainers([fold, _synthetic_fold(64, 1)], PARAMS, ModelSpec(), "accuracy", None, CPU, [0, 1])
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        trainers[0].step()
