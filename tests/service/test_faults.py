"""Faults a deployment meets: a worker told to stop mid-trial, PostgreSQL restarting under a
study, the API restarting under a study, a trial whose training diverges. In each the study
ends with exactly its budget of finished trials, none lost, none counted twice."""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from hpo.spec import parse_spec
from hpo.storage import open_storage
from hpo.studies import FAIL_REASON_ATTR, create_study
from tests.support.databases import PrivatePostgres
from tests.support.processes import Process, free_port, hpo
from tests.support.servers import ServeProcess
from tests.support.studies import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.service]
API = "/api/v1"


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; errors (the database or the API
    restarting) count as "not yet", failed assertions end the wait."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = condition()
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001
            result, last_error = None, exc
        else:
            last_error = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last_error!r})"
                                                                     if last_error else ""))
        time.sleep(poll_s)


def trials_of(database_url: str, study_name: str) -> list[FrozenTrial]:
    storage = open_storage(database_url)
    try:
        return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.remove_session()
        storage.engine.dispose()


def finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and not t.user_attrs.get("surplus")]


def assert_exact_budget(trials: list[FrozenTrial], n_trials: int) -> None:
    done = finished(trials)
    assert len(done) == n_trials, [(t.number, t.state.name, t.user_attrs.get(FAIL_REASON_ATTR)) for t in trials]
    assert len({t.number for t in done}) == n_trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def slow_spec(name: str, n_trials: int, epochs: int = 200) -> dict[str, Any]:
    """Trials long enough to be caught mid-way (no early stopping, no pruning)."""
    return tiny_spec(name, budget={"n_trials": n_trials}, training={"max_epochs": epochs, "patience": None},
                     pruner={"name": "none"})


def study_of(http: httpx.Client, service: ServeProcess, study_id: str) -> dict[str, Any]:
    response = http.get(f"{service.url}{API}/studies/{study_id}")
    response.raise_for_status()
    return response.json()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """One client for a test's polls: each ``httpx.get`` builds a new TLS context, tens of ms of
    CPU taken from the processes being waited for."""
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


def start_worker(database_url: str, tmp_path, name: str, processes: list[Process]) -> Process:
    worker = Process(hpo("worker", "--database", database_url, "--concurrency", "1", "--heartbeat-interval", "1",
                         "--grace-period", "3", "--data-dir", str(tmp_path / "data")), tmp_path / f"{name}.log")
    processes.append(worker)
    return worker


def test_sigterm_fails_the_running_trial_and_the_worker_exits(database_url, tmp_path, processes):
    storage = open_storage(database_url)
    study = create_study(storage, parse_spec(slow_spec("sigterm", n_trials=5)))
    worker = start_worker(database_url, tmp_path, "worker", processes)

    running = wait_for(lambda: study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), 90,
                       "a trial to start")[0]
    wait_for(lambda: study.get_trials(deepcopy=False)[running.number].intermediate_values, 60, "an epoch")
    signalled_at = dt.datetime.now()
    worker.proc.send_signal(signal.SIGTERM)  # the parent only: it stops its worker processes itself
    exit_code = worker.proc.wait(30)

    trials = study.get_trials(deepcopy=False)
    stopped = trials[running.number]
    assert exit_code == 0, worker.output()
    assert stopped.state == TrialState.FAIL
    assert "stopped before the trial finished" in stopped.user_attrs[FAIL_REASON_ATTR]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(t.datetime_start <= signalled_at for t in trials), "a trial started after SIGTERM"
    storage.engine.dispose()


def poll_study(service: ServeProcess, study_id: str, answers: list[int | None], done: threading.Event) -> None:
    """Ask for a study every 0.1 s until ``done``, noting each answer's status (None: no answer)."""
    with httpx.Client(timeout=5) as http:
        while not done.is_set():
            try:
                answers.append(http.get(f"{service.url}{API}/studies/{study_id}").status_code)
            except httpx.HTTPError:
                answers.append(None)
            time.sleep(0.1)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres(free_port())
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.mark.postgres
def test_a_postgres_restart_mid_study_loses_nothing(private_postgres, tmp_path, processes, http):
    url = private_postgres.url
    service = ServeProcess(url, tmp_path / "data", tmp_path / "serve.log", workers=1)
    processes.append(service)
    study = httpx.post(f"{service.url}{API}/studies", json=slow_spec("pg-restart", n_trials=4, epochs=20)).json()
    name = study["optuna_study_name"]

    wait_for(lambda: len(finished(trials_of(url, name))) >= 2, 120, "two finished trials")  # two to go
    before = {t.number: (t.state, t.value, t.params) for t in finished(trials_of(url, name))}
    answers: list[int | None] = []
    polling = threading.Event()
    poller = threading.Thread(target=poll_study, args=(service, study["id"], answers, polling))
    poller.start()
    try:
        private_postgres.outage(down_s=3)  # pg_ctl restart -m fast, held down long enough to cut a trial
    finally:
        polling.set()
        poller.join()
    final = wait_for(lambda: (s := study_of(http, service, study["id"]))["state"] in ("completed", "failed") and s, 150,
                     f"the study to finish after the restart:\n{service.output()}")

    trials = trials_of(url, name)
    assert final["state"] == "completed", final
    assert_exact_budget(trials, 4)
    after = {t.number: (t.state, t.value, t.params) for t in trials}
    assert all(after[number] == kept for number, kept in before.items())  # no finished trial lost or redone
    assert service.proc.poll() is None
    assert "database unavailable" in service.log.read_text(errors="replace")  # the worker met the outage
    assert 503 in answers and 500 not in answers, answers  # the API said "try again", never "broken"


def test_an_api_restart_mid_study_loses_nothing(database_url, tmp_path, processes, http):
    first = ServeProcess(database_url, tmp_path / "data", tmp_path / "serve-1.log")
    processes.append(first)
    start_worker(database_url, tmp_path, "worker", processes)
    study = httpx.post(f"{first.url}{API}/studies", json=slow_spec("api-restart", n_trials=3, epochs=10)).json()
    name = study["optuna_study_name"]
    wait_for(lambda: finished(trials_of(database_url, name)), 120, "a finished trial")

    first.signal_group(signal.SIGKILL)  # no goodbye: the API only ever read the database
    first.proc.wait()
    second = ServeProcess(database_url, tmp_path / "data", tmp_path / "serve-2.log")
    processes.append(second)
    final = wait_for(lambda: (s := study_of(http, second, study["id"]))["state"] in ("completed", "failed") and s, 150,
                     "the study to finish")

    assert final["state"] == "completed", final
    assert final["trials"]["complete"] + final["trials"]["pruned"] == 3
    assert_exact_budget(trials_of(database_url, name), 3)
    listed = httpx.get(f"{second.url}{API}/studies", timeout=10).json()
    assert [s["id"] for s in listed["items"]] == [study["id"]]


POISONED_LR = 0.0123


def test_a_diverging_trial_fails_alone_with_its_reason(sqlite_url, tmp_path, monkeypatch):
    """No spec diverges reliably here (activations are bounded and targets standardized: lr 10
    with clip_norm 1e4 still trains to finite losses), so the loss is poisoned for one
    enqueued configuration; the real worker loop, training loop and NaN check do the rest."""
    import torch.nn.functional as F

    import hpo.objective
    from hpo.worker import WorkerOptions, worker_loop

    poisoned = threading.Event()
    real_suggest, real_cross_entropy = hpo.objective.suggest_params, F.cross_entropy

    def suggest(trial, space):
        params = real_suggest(trial, space)
        (poisoned.set if params["lr"] == POISONED_LR else poisoned.clear)()
        return params

    def cross_entropy(*args, **kwargs):
        loss = real_cross_entropy(*args, **kwargs)
        return loss * float("nan") if poisoned.is_set() else loss

    monkeypatch.setattr(hpo.objective, "suggest_params", suggest)
    monkeypatch.setattr(F, "cross_entropy", cross_entropy)
    storage = open_storage(sqlite_url)
    spec = parse_spec(tiny_spec("diverges", budget={"n_trials": 3}, enqueue_trials=[{"lr": POISONED_LR}]))
    study = create_study(storage, spec)

    worker_loop(WorkerOptions(database_url=sqlite_url, data_dir=str(tmp_path), until_idle=True, threads=1))

    trials = study.get_trials(deepcopy=False)
    diverged = [t for t in trials if t.params.get("lr") == POISONED_LR]
    assert [t.state for t in diverged] == [TrialState.FAIL]
    assert "TrainingDiverged" in diverged[0].user_attrs[FAIL_REASON_ATTR]
    assert "nan" in diverged[0].user_attrs[FAIL_REASON_ATTR].lower()
    assert_exact_budget(trials, 3)
    storage.engine.dispose()
