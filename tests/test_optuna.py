"""Studies on a real SQLite storage: every sampler, pruning, resume, warm start, seeds."""

import optuna
import pytest
from optuna.trial import TrialState

from hpo import local
from hpo.spec import parse_spec

TINY_SPACE = {"hidden_size": {"value": 16}, "batch_size": {"value": 128},
              "lr": {"low": 3e-3, "high": 3e-2, "log": True}}


def tiny_spec(name="tiny", **overrides):
    data = {"name": name, "dataset": {"builtin": "digits"}, "search_space": TINY_SPACE,
            "cv": {"folds": 2}, "training": {"max_epochs": 2, "patience": None},
            "pruner": {"name": "none"}, "budget": {"n_trials": 3}}
    data.update(overrides)
    return parse_spec(data)


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path}/optuna.db"


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "cmaes", "qmc", "gp"])
def test_each_sampler_runs_and_optuna_reads_the_study_back(sampler, storage):
    extra = {"sampler": {"name": sampler, "seed": 0, "grid_points": 3}} if sampler == "grid" else \
        {"sampler": {"name": sampler, "seed": 0}}
    spec = tiny_spec(f"s-{sampler}", **extra)
    best = local.run(spec, storage, jobs=1, show_progress=False)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    assert best["value"] == study.best_value and best["params"] == study.best_params
    assert set(study.best_params) >= {"lr", "batch_size", "hidden_size", "dropout", "clip_norm"}
    assert len(study.best_trial.user_attrs["fold_scores"]) == 2
    if sampler == "grid":
        grid = spec.grid()
        assert len({tuple(sorted(t.params.items())) for t in done}) == 3  # no grid point twice
        assert all(t.params[name] in values for t in done for name, values in grid.items())


def test_enqueued_configurations_run_first_exactly(storage):
    configs = [{"lr": 0.01, "dropout": 0.0, "clip_norm": 1.0}, {"lr": 0.02, "dropout": 0.3, "clip_norm": 5.0}]
    spec = tiny_spec("warm", enqueue_trials=configs)
    local.run(spec, storage, jobs=1, show_progress=False)
    trials = optuna.load_study(study_name="warm", storage=storage).trials
    for trial, config in zip(trials[:2], configs):
        assert {k: trial.params[k] for k in config} == config


def test_enqueued_configurations_run_costliest_first(storage):
    small, large, medium = ({"batch_size": 128, "lr": 0.01}, {"batch_size": 16, "lr": 0.02},
                            {"batch_size": 32, "lr": 0.03})
    spec = tiny_spec("longest-first", search_space={**TINY_SPACE, "batch_size": {"choices": [16, 32, 128]}},
                     budget={"n_trials": 4}, enqueue_trials=[small, large, medium, {**small, "lr": 0.005}])
    local.run(spec, storage, jobs=1, show_progress=False)
    trials = optuna.load_study(study_name="longest-first", storage=storage).trials
    ran = [{k: t.params[k] for k in ("batch_size", "lr")} for t in trials[:4]]
    assert ran == [large, medium, small, {**small, "lr": 0.005}]  # equal costs keep the list's order


def test_running_a_study_again_resumes_it(storage):
    local.run(tiny_spec("again"), storage, jobs=1, show_progress=False)
    local.run(tiny_spec("again", budget={"n_trials": 5}), storage, jobs=1, show_progress=False)
    trials = optuna.load_study(study_name="again", storage=storage).trials
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)


def test_same_seed_same_study(tmp_path):
    values = []
    for i in range(2):
        url = f"sqlite:///{tmp_path}/seed{i}.db"
        local.run(tiny_spec("seeded", sampler={"name": "tpe", "seed": 7}), url, jobs=1, show_progress=False)
        values.append([(t.params, t.value) for t in optuna.load_study(study_name="seeded", storage=url).trials])
    assert values[0] == values[1]


def test_median_pruner_prunes_a_clearly_bad_trial(storage):
    good = {"lr": 0.03, "hidden_size": 32, "batch_size": 32}
    bad = {"lr": 1e-4, "hidden_size": 16, "batch_size": 256}
    spec = parse_spec({
        "name": "prune", "dataset": {"builtin": "digits"}, "cv": {"folds": 2},
        "training": {"max_epochs": 4, "patience": None},
        "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        "budget": {"n_trials": 3}, "enqueue_trials": [good, good, bad],
    })
    local.run(spec, storage, jobs=1, show_progress=False)
    trials = optuna.load_study(study_name="prune", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert len(trials[2].intermediate_values) < 4  # cut short


def test_the_median_pruner_waits_for_the_fitted_warm_up_before_pruning(storage):
    good = {"lr": 0.03, "hidden_size": 32, "batch_size": 32}
    bad = {"lr": 1e-4, "hidden_size": 16, "batch_size": 256}
    spec = parse_spec({  # n_warmup_steps left out: fitted to the patience, 3
        "name": "warm-up", "dataset": {"builtin": "digits"}, "cv": {"folds": 2},
        "training": {"max_epochs": 6, "patience": 3}, "pruner": {"name": "median", "n_startup_trials": 2},
        "budget": {"n_trials": 3}, "enqueue_trials": [good, good, bad],
    })
    local.run(spec, storage, jobs=1, show_progress=False)
    trials = optuna.load_study(study_name="warm-up", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert sorted(trials[2].intermediate_values) == [0, 1, 2, 3]  # judged first after epoch 4 (step 3)


def test_wilcoxon_pruner_skips_folds_of_a_clearly_worse_trial(storage):
    good = {"lr": 0.03, "hidden_size": 32, "batch_size": 32}
    bad = {"lr": 1e-4, "hidden_size": 16, "batch_size": 256}
    spec = parse_spec({
        "name": "wilcoxon", "dataset": {"builtin": "digits"}, "cv": {"folds": 6},
        "training": {"max_epochs": 2, "patience": None},
        "pruner": {"name": "wilcoxon", "p_threshold": 0.1},
        "budget": {"n_trials": 2}, "enqueue_trials": [good, bad],
    })
    local.run(spec, storage, jobs=1, show_progress=False)
    trials = optuna.load_study(study_name="wilcoxon", storage=storage).trials
    assert trials[0].state == TrialState.COMPLETE and len(trials[0].user_attrs["fold_scores"]) == 6
    assert trials[1].state == TrialState.PRUNED
    assert len(trials[1].intermediate_values) < 6  # not all k folds ran


def test_the_wilcoxon_pruner_pairs_every_fold_run_of_repeated_folds(storage):
    spec = tiny_spec("wilcoxon-repeats", cv={"folds": 2, "repeats": 2}, pruner={"name": "wilcoxon"},
                     budget={"n_trials": 1})
    local.run(spec, storage, jobs=1, show_progress=False)
    [trial] = optuna.load_study(study_name="wilcoxon-repeats", storage=storage).trials
    assert sorted(trial.intermediate_values) == [0, 1, 2, 3]  # one paired instance per fold-run
    assert len(trial.user_attrs["fold_scores"]) == 4
    assert trial.value == pytest.approx(sum(trial.user_attrs["fold_scores"]) / 4)


def test_a_failing_dataset_fails_the_study_with_its_reason(storage, tmp_path):
    spec = tiny_spec("missing", dataset={"path": str(tmp_path / "nope.npz")})
    assert local.run(spec, storage, jobs=1, show_progress=False) is None
    study = optuna.load_study(study_name="missing", storage=storage)
    assert all(t.state == TrialState.FAIL for t in study.trials) and len(study.trials) == 3
    assert "nope.npz" in study.trials[0].user_attrs["fail_reason"]
