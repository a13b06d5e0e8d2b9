"""The `hpo` command line, run as a real process."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from hpo.storage import normalize_url
from hpo.studies import is_surplus

ROOT = Path(__file__).parent.parent


def hpo(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "hpo", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def test_validate_accepts_the_examples_and_names_bad_fields(tmp_path):
    ok = hpo("validate", str(ROOT / "studies" / "digits-tpe.yaml"))
    assert ok.returncode == 0 and "ok" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndataset: {builtin: digits}\nsearch_space:\n  lr: {low: 0.1, high: 0.001}\n")
    refused = hpo("validate", str(bad))
    assert refused.returncode == 2
    assert "search_space.lr: low (0.1) must be < high (0.001)" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_run_refuses_a_bad_spec_and_a_missing_file_without_traceback(tmp_path):
    missing = hpo("run", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
    unknown = hpo("best", "no-such-study", "--storage", f"sqlite:///{tmp_path}/empty.db")
    assert unknown.returncode == 1 and "no study 'no-such-study'" in unknown.stderr


@pytest.mark.slow
def test_run_digits_example_then_read_it_back(tmp_path):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    run = hpo("run", str(ROOT / "studies" / "digits-tpe.yaml"), "--n-trials", "3", "--storage", storage,
              "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    best = json.loads(run.stdout)
    assert best["value"] > 0.8
    study = optuna.load_study(study_name="digits-tpe", storage=storage)
    assert len(study.trials) >= 3 and study.best_value == best["value"]
    shown = hpo("best", "digits-tpe", "--storage", storage, "--json")
    assert json.loads(shown.stdout)["params"] == study.best_params


def test_run_with_two_workers_runs_every_trial_once(database_url, tmp_path):
    """`hpo run -j 2`: a second worker process (forked on Linux) shares the study; both train
    at the same time and no trial is run twice."""
    spec = tmp_path / "two.yaml"
    spec.write_text(json.dumps({
        "name": "two-workers", "dataset": {"builtin": "digits"},
        "search_space": {"hidden_size": {"value": 32}, "batch_size": {"value": 64},
                         "lr": {"low": 3e-3, "high": 3e-2, "log": True}},
        "cv": {"folds": 2}, "training": {"max_epochs": 4, "patience": None}, "pruner": {"name": "none"},
        "budget": {"n_trials": 10},
    }))
    run = hpo("run", str(spec), "--jobs", "2", "--storage", database_url, "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr, run.stderr  # e.g. Optuna's ExperimentalWarning for heartbeats

    stored = optuna.load_study(study_name="two-workers", storage=normalize_url(database_url)).trials
    # A worker that starts a trial just as the other finishes the budget fails it at once as
    # surplus, untrained (by design; seen under load): only the others count.
    trials = [t for t in stored if not is_surplus(t)]
    assert len(trials) == 10 and len({t.number for t in trials}) == 10, [(t.number, t.state) for t in stored]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [t.state for t in trials]
    overlapping = [(a.number, b.number) for a in trials for b in trials
                   if a.number < b.number and a.datetime_start < b.datetime_complete
                   and b.datetime_start < a.datetime_complete]
    assert overlapping, "the two workers never trained at the same time"


def test_run_exits_non_zero_when_no_trial_completed(tmp_path):
    """A budget that ends during the first trial of a fold-by-fold (Wilcoxon) study: its last
    fold never starts, so it stops as pruned and none completes."""
    spec = tmp_path / "short.yaml"
    spec.write_text("name: short\ndataset: {builtin: digits}\ncv: {folds: 3}\npruner: {name: wilcoxon}\n"
                    "search_space: {hidden_size: 16, batch_size: 128}\n"
                    "training: {max_epochs: 3, patience: null}\nbudget: {n_trials: 5, timeout_s: 0.01}\n")
    run = hpo("run", str(spec), "--jobs", "1", "--quiet", "--storage", f"sqlite:///{tmp_path}/hpo.db")
    assert run.returncode == 2, run.stderr
    assert "no trial completed" in run.stderr and "Traceback" not in run.stderr


def test_flags_win_over_the_environment_which_wins_over_the_defaults(monkeypatch):
    from hpo.cli import build_parser
    from hpo.settings import settings_of

    parser = build_parser()
    assert settings_of(parser.parse_args(["worker"])).grace_period == 30
    monkeypatch.setenv("HPO_GRACE_PERIOD", "7")
    monkeypatch.setenv("HPO_URL", "http://example.invalid:1")
    assert settings_of(parser.parse_args(["worker"])).grace_period == 7
    assert settings_of(parser.parse_args(["worker", "--grace-period", "9"])).grace_period == 9
    assert settings_of(parser.parse_args(["status", "x"])).url == "http://example.invalid:1"
    assert settings_of(parser.parse_args(["model", "download", "x", "--url", "http://h:2"])).url == "http://h:2"


def test_validate_loads_the_dataset_file(tmp_path):
    spec = tmp_path / "file.yaml"
    spec.write_text("name: file\ntask: regression\ndataset: {path: nope.npz}\n")
    missing = hpo("validate", str(spec), cwd=tmp_path)
    np.savez(tmp_path / "huge.npz", X=np.ones((20, 6, 2), dtype=np.float32), y=np.linspace(1e199, 1e200, 20))
    spec.write_text("name: file\ntask: regression\ndataset: {path: huge.npz}\n")
    huge = hpo("validate", str(spec), cwd=tmp_path)

    assert missing.returncode == 2 and f"{spec}: dataset.path: nope.npz: no such file" in missing.stderr
    assert huge.returncode == 2 and "dataset.path: huge.npz: y holds values up to 1e+200" in huge.stderr


def test_run_prints_one_line_per_failed_trial(tmp_path):
    spec = tmp_path / "missing.yaml"
    spec.write_text("name: missing\ntask: regression\ndataset: {path: nope.npz}\ncv: {folds: 2}\n"
                    "budget: {n_trials: 2}\n")
    run = hpo("run", str(spec), "--jobs", "1", "--storage", f"sqlite:///{tmp_path}/hpo.db", cwd=tmp_path)

    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    failed = [line for line in run.stderr.splitlines() if " failed: " in line]
    assert failed == [f"trial {n} failed: cannot load the dataset: nope.npz: no such file" for n in (0, 1)]
    assert "no trial completed (each failed trial's reason is above)" in run.stderr


def test_run_answers_on_stdout_quiet_or_not(tmp_path):
    spec = tmp_path / "one.yaml"
    spec.write_text("name: one\ndataset: {builtin: digits}\ncv: {folds: 2}\ntraining: {max_epochs: 1}\n"
                    "search_space: {hidden_size: 16, batch_size: 256}\nbudget: {n_trials: 1}\n")
    storage = f"sqlite:///{tmp_path}/hpo.db"
    quiet = hpo("run", str(spec), "--jobs", "1", "--quiet", "--storage", storage, cwd=tmp_path)
    again = hpo("run", str(spec), "--jobs", "1", "--n-trials", "1", "--storage", storage, cwd=tmp_path)

    assert quiet.returncode == 0, quiet.stderr
    assert re.fullmatch(r"best accuracy \d\.\d+ \(trial 0\)\n", quiet.stdout), quiet.stdout
    assert again.returncode == 0 and "Best trial #0: accuracy" in again.stdout, again


@pytest.mark.slow
def test_run_leaves_its_refit_ready_and_the_model_commands_read_it_from_the_storage(tmp_path):
    """The default final model, a 3-seed refit queued as the study ends, is fitted before
    `hpo run` returns; `hpo model status | download --database` read both kinds from the storage."""
    spec = tmp_path / "one.yaml"
    spec.write_text("name: one\ndataset: {builtin: digits}\ncv: {folds: 2}\ntraining: {max_epochs: 1}\n"
                    "search_space: {hidden_size: 16, batch_size: 256}\nbudget: {n_trials: 1}\n")
    storage = f"sqlite:///{tmp_path}/hpo.db"
    run = hpo("run", str(spec), "--jobs", "1", "--quiet", "--storage", storage, cwd=tmp_path)
    status = hpo("model", "status", "one", "--database", storage)
    ensemble = hpo("model", "download", "one", "--kind", "ensemble", "--database", storage, cwd=tmp_path)

    assert run.returncode == 0, run.stderr
    assert "final model: serving: refit of trial 0 (3 seeds)" in run.stderr, run.stderr
    model = json.loads(status.stdout)
    assert model["kind"] == "refit" and model["refit"]["state"] == "ready" and model["refit"]["auto"] is True
    assert set(model["archives"]) == {"ensemble", "refit"}
    assert ensemble.returncode == 0, ensemble.stderr
    assert "model kind: ensemble (2 network(s))" in ensemble.stderr and (tmp_path / "one.hpo.zip").exists()
def test_only_commands_that_read_datasets_offer_a_data_folder():
    """``--data-dir`` is a cache of uploaded datasets: the commands that never read one
    (the storage proxy, migrations, keys) refuse it instead of ignoring it."""
    from hpo.cli import build_parser

    parser = build_parser()
    for command in (["run", "spec.yaml"], ["serve"], ["worker"], ["model", "fit", "s"]):
        assert parser.parse_args([*command, "--data-dir", "d"]).data_dir == "d"
    for command in (["storage-proxy"], ["db", "upgrade"], ["keys", "list"], ["model", "status", "s"],
                    ["model", "download", "s"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--data-dir", "d"])
        assert parser.parse_args([*command, "--database", "sqlite:///x.db"]).database == "sqlite:///x.db"
