"""End to end: ``python -m hpo serve`` and ``hpo worker`` processes, real HTTP, real training."""

from __future__ import annotations

import signal
import time

import httpx
import numpy as np
import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hpo.client import Client
from hpo.storage import normalize_url
from tests.support.processes import Process, hpo
from tests.support.servers import ServeProcess
from tests.support.studies import tiny_spec

pytestmark = pytest.mark.service
STUDY_TIMEOUT_S = 300


@pytest.fixture
def serve(database_url, tmp_path):
    """Start ``hpo serve`` with N embedded workers; returns its URL."""
    started: list[ServeProcess] = []

    def start(workers: int) -> str:
        started.append(ServeProcess(database_url, tmp_path / "data", tmp_path / "serve.log", workers=workers))
        return started[-1].url

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def workers(database_url, tmp_path):
    """Start ``hpo worker`` processes (fast heartbeats: a killed one is noticed within seconds)."""
    started: list[Process] = []

    def start(name: str) -> Process:
        process = Process(hpo("worker", "--database", database_url, "--concurrency", "1",
                              "--heartbeat-interval", "1", "--grace-period", "3",
                              "--data-dir", str(tmp_path / "data")), tmp_path / f"{name}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def load_optuna_study(database_url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=normalize_url(database_url))


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and not t.user_attrs.get("surplus")]


def test_serve_runs_a_study_end_to_end_and_serves_its_model(serve, database_url, tmp_path):
    """An uploaded variable-length dataset, a study run by the embedded worker, its best trial
    as Optuna has it, and its final model served (its own 3-seed refit, the fold ensemble still
    there by name): predict refuses padding without lengths and keeps integer labels."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 11, size=80)
    sequences = [rng.normal(size=(n, 2)) for n in lengths]
    labels = np.where([s[:, 0].mean() > 0 for s in sequences], 7, 3)  # integer labels, not 0-based
    path = tmp_path / "ragged.npz"
    np.savez(path, values=np.concatenate(sequences), lengths=lengths, y=labels)
    padded = np.zeros((5, 10, 2))
    for i in range(5):
        padded[i, : lengths[i]] = sequences[i]

    url = serve(workers=1)
    with Client(url, timeout=30) as client:
        dataset = client.upload_dataset(path, "classification")
        study = client.submit({
            "name": "ragged", "task": "classification", "dataset": {"id": dataset["id"]},
            "search_space": {"hidden_size": 8, "lr": 0.01, "batch_size": {"choices": [16, 32]}},
            "cv": {"folds": 2}, "training": {"max_epochs": 2}, "budget": {"n_trials": 3}})
        final = client.wait(study["id"], poll_s=0.5, timeout_s=STUDY_TIMEOUT_S)
        best = client.best(study["id"])
        trials = client.trials(study["id"])
        metrics = httpx.get(f"{url}/metrics").text
        status = client.wait_model(study["id"], poll_s=0.5, timeout_s=STUDY_TIMEOUT_S)
        refused = httpx.post(f"{url}/api/v1/studies/{study['id']}/predict", json={"x": padded.tolist()})
        answer = client.predict(study["id"], {"x": padded, "lengths": lengths[:5]})
        ragged = client.predict(study["id"], {"x": [s.tolist() for s in sequences[:5]]})
        ensemble = client.predict(study["id"], {"x": padded, "lengths": lengths[:5]}, kind="ensemble")

    assert final["state"] == "completed", final
    assert final["trials"]["complete"] + final["trials"]["pruned"] == 3
    expected = load_optuna_study(database_url, study["optuna_study_name"]).best_trial
    assert best["number"] == expected.number
    assert best["value"] == pytest.approx(expected.value)
    assert best["params"] == expected.params
    assert best["params"]["hidden_size"] == 8
    assert len(best["fold_scores"]) == 2
    assert trials["total"] >= 3
    assert 'hpo_studies{state="completed"} 1' in metrics
    assert status["state"] == "ready" and status["kind"] == "refit" and status["refit"]["auto"] is True, status
    assert status["model"]["members"] == 3 and isinstance(status["learned"], bool)
    assert set(status["archives"]) == {"ensemble", "refit"}
    assert refused.status_code == 422
    [problem] = refused.json()["detail"]
    assert problem["field"] == "lengths" and "required" in problem["message"]
    assert answer["classes"] == [3, 7] and set(answer["labels"]) <= {3, 7}
    assert all(type(label) is int for label in answer["labels"])
    assert answer["labels"] == ragged["labels"] and answer["kind"] == "refit"
    assert ensemble["kind"] == "ensemble" and ensemble["classes"] == [3, 7]


def test_many_workers_share_one_study(serve, workers, database_url):
    url = serve(workers=0)
    workers("worker-a")
    workers("worker-b")
    with Client(url, timeout=30) as client:
        study = client.submit(tiny_spec(budget={"n_trials": 4}))
        final = client.wait(study["id"], poll_s=0.5, timeout_s=STUDY_TIMEOUT_S)

    assert final["state"] == "completed", final
    optuna_study = load_optuna_study(database_url, study["optuna_study_name"])
    finished = finished_trials(optuna_study)
    assert len(finished) == 4
    assert len({t.number for t in finished}) == 4


@pytest.mark.slow
def test_a_killed_worker_trial_is_retried_and_the_study_finishes(serve, workers, database_url):
    url = serve(workers=0)
    doomed = workers("doomed")
    spec = tiny_spec(budget={"n_trials": 2}, training={"max_epochs": 30, "patience": None},
                     pruner={"name": "none"})
    with Client(url, timeout=30) as client:
        study = client.submit(spec)
        deadline = time.monotonic() + 120
        while not client.trials(study["id"], state="running")["items"]:
            assert time.monotonic() < deadline, f"no trial started:\n{doomed.output()}"
            time.sleep(0.1)
        killed = client.trials(study["id"], state="running")["items"][0]["number"]
        doomed.signal_group(signal.SIGKILL)  # the worker and the process running the trial, mid-epoch
        doomed.proc.wait()
        workers("rescuer")
        final = client.wait(study["id"], poll_s=0.5, timeout_s=STUDY_TIMEOUT_S)

    assert final["state"] == "completed", final
    optuna_study = load_optuna_study(database_url, study["optuna_study_name"])
    trials = {t.number: t for t in optuna_study.get_trials(deepcopy=False)}
    assert trials[killed].state == TrialState.FAIL
    retries = [t for t in trials.values() if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed]
    assert retries, "the killed trial was not queued again"
    assert len(finished_trials(optuna_study)) == 2
