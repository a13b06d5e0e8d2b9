"""The worker's bookkeeping on a real storage: which study it runs, when it looks again,
the budget bound that spares a read, stale trials, surplus trials, and its light imports."""

import datetime as dt
import io
import itertools
import logging
import random
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import optuna
import pytest
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState, create_trial

from hpo.data import DataError
from hpo.spec import parse_spec
from hpo.storage import open_storage
from hpo.studies import (
    FAIL_REASON_ATTR, SPEC_ATTR, SURPLUS_ATTR, create_study, progress, set_cancelled, study_spec,
)
from hpo.worker import (
    COUNTED_STATES, StudyPicker, StudyRunner, SurplusTrialLog, WorkerOptions, _BudgetReached, counted_at_most,
    import_training_libraries, quiet_surplus_trials, worker_loop,
)

# The tests play the other workers with ask/tell on a storage with heartbeats.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


def spec(name, n_trials=3, **overrides):
    data = {"name": name, "dataset": {"builtin": "digits"}, "search_space": {"hidden_size": 16, "batch_size": 128},
            "cv": {"folds": 2}, "training": {"max_epochs": 1, "patience": None}, "pruner": {"name": "none"},
            "budget": {"n_trials": n_trials}}
    data.update(overrides)
    return parse_spec(data)


def picker_on(url, poll_interval_s=60.0, grace_period=60, **options):
    storage = open_storage(url, heartbeat_interval=1, grace_period=grace_period)
    return storage, StudyPicker(storage, WorkerOptions(database_url=url, poll_interval_s=poll_interval_s, **options),
                                0, threading.Event())


def start_trial(storage, name):
    """A trial another worker is running (RUNNING, with a heartbeat)."""
    trial = optuna.load_study(study_name=name, storage=storage).ask()
    storage.record_heartbeat(trial._trial_id)
    return trial


def finish_trials(storage, name, n):
    study = optuna.load_study(study_name=name, storage=storage)
    for _ in range(n):
        study.tell(study.ask(), 0.5)


def test_the_budget_bound_holds_however_the_trials_move_on():
    rng = random.Random(0)
    for _ in range(30):
        study = optuna.create_study()
        for _ in range(rng.randrange(12)):
            state = rng.choice([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING,
                                TrialState.WAITING])
            surplus = state == TrialState.FAIL and rng.random() < 0.5
            study.add_trial(create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                                         user_attrs={SURPLUS_ATTR: True} if surplus else {}))
        snapshot = study.get_trials(deepcopy=True)
        for trial in study.get_trials(deepcopy=False):  # after the read: unfinished trials end or start
            if trial.state in (TrialState.RUNNING, TrialState.WAITING):
                study._storage.set_trial_state_values(
                    trial._trial_id, rng.choice([TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]),
                    values=[0.5])
        for _ in range(rng.randrange(4)):
            study.add_trial(create_trial(state=TrialState.RUNNING))
        later = study.get_trials(deepcopy=False)
        for number in range(len(later) + 1):
            counted = sum(1 for t in later if t.number < number and t.state in COUNTED_STATES
                          and not t.user_attrs.get(SURPLUS_ATTR))
            assert counted <= counted_at_most(number, snapshot)
        failed_before = sum(1 for t in snapshot if t.state == TrialState.FAIL)
        assert counted_at_most(len(snapshot), snapshot) == len(snapshot) - failed_before


def test_progress_without_details_derives_the_same_state_and_counts():
    specs = [spec("s", n_trials=3), spec("s", n_trials=3, budget={"n_trials": 3, "timeout_s": 1})]
    later = dt.datetime.now() + dt.timedelta(hours=1)  # past the timeout
    rng = random.Random(1)
    for _ in range(40):
        study = optuna.create_study(direction="maximize")
        for _ in range(rng.randrange(8)):
            state = rng.choice([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING])
            attrs = {FAIL_REASON_ATTR: "boom"} if state == TrialState.FAIL else {}
            if state == TrialState.FAIL and rng.random() < 0.3:
                attrs[SURPLUS_ATTR] = True
            study.add_trial(create_trial(state=state, value=rng.random() if state == TrialState.COMPLETE else None,
                                         user_attrs=attrs))
        for s, now, cancelled in itertools.product(specs, (None, later), (False, True)):
            full = progress(study, s, now, cancelled=cancelled)
            lean = progress(study, s, now, trials=study.get_trials(deepcopy=False), cancelled=cancelled,
                            details=False)
            assert (lean.state, lean.reason, lean.runnable) == (full.state, full.reason, full.runnable)
            assert (lean.complete, lean.pruned, lean.failed, lean.running, lean.waiting) == \
                (full.complete, full.pruned, full.failed, full.running, full.waiting)


def test_the_picker_takes_the_study_with_fewest_running_trials_then_the_oldest(sqlite_url):
    storage, picker = picker_on(sqlite_url)
    for name in ("older", "newer"):
        create_study(storage, spec(name))
    assert picker.pick(storage.get_all_studies()).study.study_name == "older"
    start_trial(storage, "older")
    assert picker.pick(storage.get_all_studies()).study.study_name == "newer"


def test_the_picker_keeps_its_study_until_a_listing_is_due_or_it_stops_being_runnable(sqlite_url):
    storage, picker = picker_on(sqlite_url, poll_interval_s=2.0)
    create_study(storage, spec("first", n_trials=2))
    assert picker.pick(storage.get_all_studies()).study.study_name == "first"
    create_study(storage, spec("second"))
    start_trial(storage, "first")  # a fresh pick would now prefer "second"
    assert picker.keep_current() is picker.current  # no listing due: no look at the other studies
    time.sleep(2.1)
    assert picker.keep_current() is None  # a listing is due
    assert picker.pick(storage.get_all_studies()).study.study_name == "second"
    finish_trials(storage, "second", 3)
    picker.pick(storage.get_all_studies())
    assert picker.keep_current() is picker.current
    set_cancelled(storage, "first", True)  # noticed before the next trial, listing due or not
    assert picker.keep_current() is None
    set_cancelled(storage, "first", False)
    finish_trials(storage, "first", 1)  # with the running trial, the budget of "first" is taken
    assert picker.keep_current() is None


def test_cancelled_and_ended_studies_are_skipped_until_resumed_or_given_a_new_budget(sqlite_url):
    storage, picker = picker_on(sqlite_url)
    create_study(storage, spec("done", n_trials=1))
    create_study(storage, spec("stopped"))
    finish_trials(storage, "done", 1)
    set_cancelled(storage, "stopped", True)
    assert picker.pick(storage.get_all_studies()) is None
    assert set(picker.ended) == {storage.get_study_id_from_name("done")}

    set_cancelled(storage, "stopped", False)
    assert picker.pick(storage.get_all_studies()).study.study_name == "stopped"
    finish_trials(storage, "stopped", 3)
    create_study(storage, spec("done", n_trials=2))  # run again with a larger budget: it resumes
    assert picker.pick(storage.get_all_studies()).study.study_name == "done"


def test_a_study_whose_stored_spec_does_not_parse_is_left_alone(sqlite_url):
    storage, picker = picker_on(sqlite_url)
    study = create_study(storage, spec("broken"))
    study.set_user_attr(SPEC_ATTR, {"name": "broken", "dataset": {"builtin": "nope"}})
    assert picker.pick(storage.get_all_studies()) is None


def test_a_dead_workers_trial_holding_the_last_slot_is_failed_and_queued_again(sqlite_url):
    storage, picker = picker_on(sqlite_url, grace_period=1)
    create_study(storage, spec("rescue", n_trials=2))
    finish_trials(storage, "rescue", 1)
    dead = start_trial(storage, "rescue")
    assert not progress(optuna.load_study(study_name="rescue", storage=storage), spec("rescue", 2)).runnable
    time.sleep(2.2)  # past the grace period (SQLite's clock counts whole seconds)
    assert picker.pick(storage.get_all_studies()).study.study_name == "rescue"
    trials = optuna.load_study(study_name="rescue", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[2]) == dead.number


def test_a_one_trial_study_whose_worker_died_waits_for_the_retry_instead_of_failing(sqlite_url):
    """A dead worker's trial is failed and queued again: a study of fewer trials than
    FAILURES_BEFORE_GIVING_UP must not count that failure and give up."""
    storage, picker = picker_on(sqlite_url, grace_period=1)
    create_study(storage, spec("rescue-one", n_trials=1))
    start_trial(storage, "rescue-one")
    time.sleep(2.2)  # past the grace period (SQLite's clock counts whole seconds)

    assert picker.pick(storage.get_all_studies()).study.study_name == "rescue-one"

    study = optuna.load_study(study_name="rescue-one", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    prog = progress(study, spec("rescue-one", n_trials=1))
    assert prog.state == "running" and prog.runnable and prog.failed == 1
    finish_trials(storage, "rescue-one", 1)  # the retry runs
    assert progress(study, spec("rescue-one", n_trials=1)).state == "completed"


def test_a_trial_started_past_the_budget_is_surplus_and_never_trains(sqlite_url, tmp_path):
    storage, picker = picker_on(sqlite_url)
    # A dataset that cannot load: a trial that got as far as training would fail with that.
    create_study(storage, spec("raced", n_trials=2, dataset={"path": str(tmp_path / "missing.npz")}))
    runner = picker.pick(storage.get_all_studies())
    assert runner.trials == []  # read when the budget was still free
    start_trial(storage, "raced")
    start_trial(storage, "raced")  # two other workers took both slots since
    runner.run_one()
    trial = runner.study.trials[-1]
    assert trial.state == TrialState.FAIL and trial.user_attrs[SURPLUS_ATTR] is True
    assert trial.user_attrs[FAIL_REASON_ATTR] == "budget already used up by other workers"
    assert progress(runner.study, runner.spec).failed == 0  # surplus trials are not failures


def test_a_runner_loads_its_dataset_at_its_first_trial(sqlite_url, tmp_path):
    storage, picker = picker_on(sqlite_url)
    create_study(storage, spec("lazy", n_trials=2, dataset={"path": str(tmp_path / "missing.npz")}))
    runner = picker.pick(storage.get_all_studies())
    assert isinstance(runner, StudyRunner)  # built without touching the dataset
    runner.refresh(cancelled=False)
    runner.run_one()
    assert "cannot load the dataset" in runner.study.trials[0].user_attrs[FAIL_REASON_ATTR]


def test_a_runner_never_trains_on_a_deleted_dataset_it_holds_in_memory(sqlite_url, tmp_path, dataset_store):
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, X=rng.normal(size=(20, 6, 2)).astype(np.float32), y=np.arange(20) % 2)
    store = dataset_store
    info = store.save("kept.npz", buffer.getvalue(), task="classification")
    storage, picker = picker_on(sqlite_url, data_dir=str(tmp_path / "data"))
    create_study(storage, spec("kept", n_trials=3, dataset={"id": info.id}))
    runner = picker.pick(storage.get_all_studies())
    runner.run_one()
    assert [t.state for t in runner.study.trials] == [TrialState.COMPLETE]  # the data is now in memory

    store.delete(info.id)

    with pytest.raises(DataError, match=f"{info.id}.*deleted"):
        runner.run_one()
    assert len(runner.study.trials) == 1  # no trial started


@pytest.mark.parametrize("module", ["hpo.local", "hpo.worker", "hpo.cli"])
def test_starting_workers_does_not_wait_for_pytorch_or_scikit_learn(module):
    """``hpo run`` spawns its workers before it imports the heavy libraries itself, and
    nothing on its way imports Alembic, which only migrations use."""
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'sklearn', 'alembic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_timed_out_study_is_completed_only_once_no_trial_runs():
    timed = spec("s", n_trials=5, budget={"n_trials": 5, "timeout_s": 1})
    later = dt.datetime.now() + dt.timedelta(hours=1)  # past the timeout
    study = optuna.create_study()
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5))
    running = study.ask()
    prog = progress(study, timed, later)
    assert (prog.state, prog.runnable) == ("running", False)
    study.tell(running, state=TrialState.PRUNED)
    prog = progress(study, timed, later)
    assert (prog.state, prog.runnable) == ("completed", False)
    assert "timeout_s" in prog.reason


def test_the_eta_of_a_timed_study_is_at_most_the_time_its_budget_has_left():
    timed = spec("s", budget={"timeout_s": 60}).with_trial_cap(1000)
    start = dt.datetime.now()
    study = optuna.create_study()
    study.add_trial(optuna.trial.FrozenTrial(
        number=0, trial_id=0, state=TrialState.COMPLETE, value=0.5, datetime_start=start,
        datetime_complete=start + dt.timedelta(seconds=10), params={}, distributions={}, user_attrs={},
        system_attrs={}, intermediate_values={}))
    study.ask()  # one trial running
    prog = progress(study, timed, start + dt.timedelta(seconds=45))
    assert prog.n_trials == 1000 and prog.state == "running"
    assert prog.eta_s == pytest.approx(15)  # not 999 trials x 10 s: the budget ends in 15 s


def test_a_running_trial_stops_at_its_next_epoch_when_the_budget_ends(sqlite_url):
    max_epochs = 300
    storage = open_storage(sqlite_url)
    create_study(storage, spec("timed", n_trials=50, budget={"n_trials": 50, "timeout_s": 1},
                               training={"max_epochs": max_epochs, "patience": None}))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        worker_loop(WorkerOptions(database_url=sqlite_url, until_idle=True, threads=1))
        assert torch.get_num_threads() == 1  # the thread that trains has one intra-op thread (per thread)
    finally:
        torch.set_num_threads(threads)
    study = optuna.load_study(study_name="timed", storage=storage)
    [trial] = study.get_trials()  # none started past the timeout
    # It stopped early and was scored with what its folds reached: the budget leaves a model.
    assert trial.state == TrialState.COMPLETE
    assert max(trial.intermediate_values) < max_epochs - 1
    assert "timeout_s" in trial.user_attrs["stopped_by"]
    assert progress(study, study_spec(study)).state == "completed"


def test_a_worker_started_while_its_database_refuses_connections_waits_instead_of_dying(caplog):
    """64 workers on a PostgreSQL of 100 connections: those started past the limit got "too
    many clients" at start and died (bench_fleet); now they back off like any outage."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/none"
    import_training_libraries()  # first: the stop below is timed from the worker's loop
    stop = threading.Event()
    threading.Timer(2.5, stop.set).start()
    with caplog.at_level(logging.WARNING, logger="hpo.worker"):
        worker_loop(WorkerOptions(database_url=url, threads=1), stop=stop)  # returns once stopped
    assert "database unavailable (OperationalError); retrying in 1 s" in caplog.text


def test_a_surplus_trial_is_logged_in_one_line_and_other_failures_keep_their_traceback(caplog):
    quiet_surplus_trials()
    quiet_surplus_trials()  # once per process, however often a worker starts
    logger = logging.getLogger("optuna.study._optimize")
    assert sum(isinstance(f, SurplusTrialLog) for f in logger.filters) == 1

    for error in (_BudgetReached("budget already used up by other workers"), ValueError("diverged")):
        try:
            raise error
        except Exception:
            logger.warning("Trial 3 failed because of the following error: %s.", error, exc_info=True)

    surplus, other = caplog.records[-2:]
    assert surplus.levelname == "INFO" and surplus.exc_info is None and "budget already used up" in surplus.getMessage()
    assert other.levelname == "WARNING" and other.exc_info[0] is ValueError
