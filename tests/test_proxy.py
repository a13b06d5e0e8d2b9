"""``hpo storage-proxy``: Optuna's gRPC storage proxy over this project's storage. Claims stay
atomic through it (each worker's client caches trials on its own), dead workers' trials are
failed and retried through it, workers finish a study across a restart of it, and a bad
``grpc://`` URL is one clear line."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import optuna
import pytest
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from hpo.spec import parse_spec
from hpo.storage import ProxiedStorage, open_storage, serve_proxy
from hpo.studies import SURPLUS_ATTR, create_study
from tests.support.processes import Process, free_port, hpo
from tests.support.studies import tiny_spec
from tests.test_storage import claimed_by_racing_processes

pytestmark = pytest.mark.postgres


@pytest.fixture
def proxy_url(postgres_url) -> Iterator[str]:
    """A proxy in this process over a fresh PostgreSQL database (1 s heartbeats, 1 s grace)."""
    port = free_port()
    server = serve_proxy(postgres_url, "127.0.0.1", port, heartbeat_interval=1, grace_period=1)
    yield f"grpc://127.0.0.1:{port}"
    server.stop(0).wait()


def test_racing_workers_through_the_proxy_never_claim_the_same_queued_trial(proxy_url):
    storage = open_storage(proxy_url)
    assert isinstance(storage, ProxiedStorage)
    study = optuna.create_study(study_name="queue", storage=storage)
    queued = 60
    for x in range(queued):
        study.enqueue_trial({"x": x})
    assert claimed_by_racing_processes(proxy_url, queued) == list(range(queued)), \
        "a queued trial was claimed twice (or not at all) through the proxy"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask() outside optimize, on purpose
def test_a_dead_workers_trials_are_failed_and_retried_through_the_proxy(proxy_url):
    study = optuna.create_study(study_name="stale", storage=open_storage(proxy_url, heartbeat_interval=1))
    beat_once = study.ask()
    study._storage.record_heartbeat(beat_once._trial_id)
    never_beat = study.ask()  # its worker died before the first beat: the project's rule, not Optuna's
    fail_stale_trials(study)  # the proxy sees the silent trial now
    time.sleep(2.2)  # past the grace period
    fail_stale_trials(study)

    trials = study.get_trials(deepcopy=False)
    assert [trials[n].state for n in (beat_once.number, never_beat.number)] == [TrialState.FAIL] * 2
    retries = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == sorted([beat_once.number, never_beat.number])


def test_a_bad_proxy_url_is_one_clear_line():
    port = free_port()  # nothing listens there
    absent = subprocess.run(hpo("worker", "--database", f"grpc://127.0.0.1:{port}"), capture_output=True, text=True,
                            timeout=60)
    malformed = subprocess.run(hpo("worker", "--database", "grpc://127.0.0.1"), capture_output=True, text=True,
                               timeout=60)

    assert absent.returncode == 1 and len(absent.stderr.strip().splitlines()) == 1, absent.stderr
    assert f"no storage proxy answers at grpc://127.0.0.1:{port}" in absent.stderr
    assert "hpo storage-proxy --database" in absent.stderr
    assert malformed.returncode == 1 and len(malformed.stderr.strip().splitlines()) == 1, malformed.stderr
    assert "grpc://HOST:PORT" in malformed.stderr


def wait_for(check, timeout_s: float, what: str, *logs: Process):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(log.output() for log in logs))


@pytest.mark.slow  # real worker processes (PyTorch) training a study while the proxy restarts
def test_workers_through_the_proxy_finish_a_study_across_a_proxy_restart(postgres_url, tmp_path):
    configs = [{"batch_size": size, "lr": lr} for size in (128, 256) for lr in (0.01, 0.02, 0.03)]
    spec = parse_spec(tiny_spec("proxied", budget={"n_trials": 6}, enqueue_trials=configs,
                                training={"max_epochs": 1}))
    study = create_study(open_storage(postgres_url), spec)
    port = str(free_port())
    proxy_args = hpo("storage-proxy", "--database", postgres_url, "--port", port, "--heartbeat-interval", "1",
                     "--grace-period", "5")
    proxy = Process(proxy_args, tmp_path / "proxy-1.log")
    worker = None
    try:
        wait_for(lambda: "hpo storage-proxy:" in proxy.output(), 60, "the proxy", proxy)
        worker = Process(hpo("worker", "--database", f"grpc://127.0.0.1:{port}", "--concurrency", "2",
                             "--heartbeat-interval", "1", "--data-dir", str(tmp_path / "data")), tmp_path / "worker.log")
        wait_for(lambda: study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), 180, "a trial", worker)
        proxy.stop()  # SIGTERM: answers in flight finish, then the workers find no proxy
        time.sleep(2)
        proxy = Process(proxy_args, tmp_path / "proxy-2.log")
        wait_for(lambda: sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                             if not t.user_attrs.get(SURPLUS_ATTR)) >= 6, 240, "the study's end", worker, proxy)
        time.sleep(1)  # the workers' last tells
    finally:
        if worker is not None:
            worker.stop()
        proxy.stop()

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and not t.user_attrs.get(SURPLUS_ATTR)]
    assert len(complete) == 6, [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in trials}) == len(trials)
    done = Counter((t.params["batch_size"], t.params["lr"]) for t in complete)
    assert max(done.values()) == 1  # an enqueued configuration is trained once (one cut by the restart: not again)
    assert "database unavailable (ProxyUnavailable)" in worker.output(20000)
