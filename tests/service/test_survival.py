"""Workers survive what one study does to them (issue 12, item 1): a study that cannot run
fails with its reason and the worker goes on; ``hpo serve`` restarts dead embedded workers,
and ``/readyz`` says when none is alive."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.spec import parse_spec
from hpo.storage import open_storage
from hpo.studies import create_study
from tests.service.test_faults import http, processes, slow_spec, start_worker, wait_for  # noqa: F401  (fixtures)
from tests.support.servers import ServeProcess
from tests.support.studies import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.service]
API = "/api/v1"


def worker_children(pid: int) -> set[int]:
    """The worker processes ``hpo serve`` (process ``pid``) started: its children that run
    Python's multiprocessing (not the resource tracker)."""
    found = set()
    # Each thread lists the children it started (the supervisor thread restarts workers).
    children = {int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()}
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except FileNotFoundError:
            pass  # it just exited
    return found


def test_a_study_deleted_under_its_running_trial_does_not_stop_the_worker(database_url, tmp_path, processes):
    storage = open_storage(database_url)
    create_study(storage, parse_spec(slow_spec("doomed", n_trials=1, epochs=500)))
    worker = start_worker(database_url, tmp_path, "worker", processes)

    def running():
        trials = optuna.load_study(study_name="doomed", storage=storage).get_trials(deepcopy=False)
        return any(t.state == TrialState.RUNNING for t in trials)

    wait_for(running, 120, "the trial to start")
    optuna.delete_study(study_name="doomed", storage=storage)  # its trial's rows go while it trains
    create_study(storage, parse_spec(tiny_spec("next", budget={"n_trials": 1})))

    def next_done():
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.output()}"
        trials = optuna.load_study(study_name="next", storage=storage).get_trials(deepcopy=False)
        return any(t.state == TrialState.COMPLETE for t in trials)

    try:
        wait_for(next_done, 180, "the next study's trial")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the worker's log:\n{worker.output()}") from None
    storage.remove_session()


def test_serve_restarts_a_dead_worker_and_readyz_says_when_none_is_alive(sqlite_url, tmp_path, http):
    with ServeProcess(sqlite_url, tmp_path / "data", tmp_path / "serve.log", workers=1) as service:
        bad = http.post(f"{service.url}{API}/studies", json=tiny_spec(sampler={"name": "tpe", "seed": -2}))
        assert bad.status_code == 422, bad.text
        assert "sampler.seed" in bad.text

        first = wait_for(lambda: worker_children(service.proc.pid), 60, "the embedded worker")
        for pid in first:
            os.kill(pid, signal.SIGKILL)

        def not_ready():
            response = http.get(f"{service.url}/readyz")
            return response.status_code == 503 and "no worker process alive" in response.text

        wait_for(not_ready, 30, "/readyz to report no live worker", poll_s=0.05)
        wait_for(lambda: http.get(f"{service.url}/readyz").status_code == 200, 60,
                 "/readyz to be ready again")
        restarted = worker_children(service.proc.pid)
        assert restarted and not restarted & first

        # The restarted worker runs studies.
        submitted = http.post(f"{service.url}{API}/studies", json=tiny_spec(budget={"n_trials": 1}))
        assert submitted.status_code == 201, submitted.text
        study_id = submitted.json()["id"]
        wait_for(lambda: http.get(f"{service.url}{API}/studies/{study_id}").json()["state"]
                 == "completed", 180, "the study to complete")
