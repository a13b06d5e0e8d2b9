"""hpo.storage: the bulk trial read gives exactly what Optuna's own ORM read gives; stale
trials are found even when their worker died before its first heartbeat; claims are atomic
and stored in UTC; any number of processes may start together on a new database.

Every test here runs under ``TZ=Asia/Tokyo`` (the rest of the suite runs in the machine's
zone, UTC in CI), so a time stored in local time instead of UTC shows as 9 hours off.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import multiprocessing as mp
import os
import time

import optuna
import pytest
import sqlalchemy as sa
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState, create_trial

from hpo.db import make_engine, upgrade
from hpo.storage import (
    TRIALS_BY_STUDY_INDEX, BulkReadRDBStorage, CachedStudyStorage, open_storage, study_id_of, study_storage,
    write_trials,
)

NON_UTC_ZONE = "Asia/Tokyo"  # UTC+9, no daylight saving time


@pytest.fixture(autouse=True, scope="module")
def non_utc_time_zone():
    """This module's tests (and the processes they spawn) run 9 hours east of UTC."""
    previous = os.environ.get("TZ")
    os.environ["TZ"] = NON_UTC_ZONE
    time.tzset()
    assert time.localtime().tm_gmtoff == 9 * 3600
    yield
    if previous is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = previous
    time.tzset()


def orm_read(storage: RDBStorage, study_id: int, *args) -> list:
    return comparable(RDBStorage._get_trials(storage, study_id, *args))


def comparable(trials: list) -> list:
    """The trials with NaN intermediate values made equal to themselves (NaN != NaN)."""
    out = []
    for trial in trials:
        trial = copy.deepcopy(trial)
        trial.intermediate_values = {k: "nan" if math.isnan(v) else v for k, v in trial.intermediate_values.items()}
        out.append(trial)
    return out


def varied_study(storage: RDBStorage) -> optuna.Study:
    """Trials in every state, with every kind of value the tables store specially."""
    study = optuna.create_study(study_name="varied", storage=storage, direction="maximize")
    distributions = {
        "lr": FloatDistribution(1e-5, 1.0, log=True),
        "hidden": IntDistribution(8, 256, step=8),
        "cell": CategoricalDistribution(["lstm", "gru", None, True, 3.5]),
    }
    for number, (state, value) in enumerate([
        (TrialState.COMPLETE, 0.5), (TrialState.COMPLETE, math.inf), (TrialState.COMPLETE, -math.inf),
        (TrialState.PRUNED, None), (TrialState.FAIL, None), (TrialState.COMPLETE, 0.25),
    ]):
        study.add_trial(create_trial(
            state=state, value=value,
            params={"lr": 10 ** -(number % 5), "hidden": 8 * (number + 1), "cell": [None, True, "gru", 3.5][number % 4]},
            distributions=distributions,
            intermediate_values={0: 0.1, 1: math.inf, 2: -math.inf, 3: math.nan}
            if number % 2 else {e: 0.1 * e for e in range(number)},
            user_attrs={"fold_scores": [0.1, 0.2], "note": f"trial {number}", "nested": {"a": [1, None]}},
            system_attrs={"fixed_params": {"lr": 0.1}} if number == 3 else {},
        ))
    running = study.ask({"lr": distributions["lr"]})
    running.report(0.3, 0)
    study.enqueue_trial({"lr": 0.01, "hidden": 64, "cell": "gru"})
    return study


def test_open_storage_gives_the_bulk_reader(storage):
    assert isinstance(storage, BulkReadRDBStorage)


def test_bulk_read_equals_optunas_orm_read(storage):
    study = varied_study(storage)
    study_id = study._study_id
    trials = storage._get_trials(study_id, None, set(), -1)
    assert comparable(trials) == orm_read(storage, study_id, None, set(), -1)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED, TrialState.FAIL,
                                                                      TrialState.COMPLETE, TrialState.RUNNING,
                                                                      TrialState.WAITING]
    assert trials[1].value == math.inf and trials[2].value == -math.inf
    assert math.isnan(trials[1].intermediate_values[3])
    assert trials[0].params["cell"] is None and trials[1].params["cell"] is True
    assert trials[0].datetime_start == orm_read(storage, study_id, None, set(), -1)[0].datetime_start


def test_filtered_reads_match(storage):
    """The filters ``_CachedStorage`` uses to fetch only new and unfinished trials."""
    study = varied_study(storage)
    ids = [t._trial_id for t in study.get_trials()]
    for states in (None, (TrialState.COMPLETE,), (TrialState.RUNNING, TrialState.WAITING)):
        for included, greater_than in [(set(), -1), (set(), ids[3]), ({ids[1], ids[2]}, ids[3]),
                                       ({ids[1], ids[7]}, ids[3]), ({ids[2]}, ids[-1] + 1)]:
            ours = storage._get_trials(study._study_id, states, included, greater_than)
            assert comparable(ours) == orm_read(storage, study._study_id, states, included, greater_than), \
                (states, included, greater_than)


def test_cached_storage_sees_new_and_finished_trials(storage):
    """Through Optuna's cache (what workers and the service use): a running trial that
    finishes, and trials added later, are read again."""
    study = varied_study(storage)
    cached = optuna.load_study(study_name="varied", storage=storage)
    assert len(cached.get_trials()) == 8
    running = next(t for t in study.get_trials() if t.state == TrialState.RUNNING)
    study.tell(running.number, 0.9)
    study.add_trial(create_trial(value=0.1, params={}, distributions={}))
    trials = cached.get_trials()
    assert len(trials) == 9 and trials[running.number].value == 0.9
    assert comparable(trials) == orm_read(storage, study._study_id, None, set(), -1)


def test_write_trials_stores_what_add_trials_stores(storage):
    """The benchmarks' bulk writer against Optuna's own ``add_trials``: same trials read back
    (ids aside), and Optuna's next trial follows them."""
    finished = [t for t in varied_study(storage).get_trials() if t.state.is_finished()]
    for trial in finished:  # as create_trial makes them: no id, times as given
        trial.datetime_start = dt.datetime(2026, 1, 2, 3, 4, trial.number)
    by_optuna = optuna.create_study(study_name="by-optuna", storage=storage)
    by_optuna.add_trials(finished)
    written = optuna.create_study(study_name="written", storage=storage)
    write_trials(storage, "written", finished[:2])
    write_trials(storage, "written", finished[2:])

    def read(study):
        return [{**vars(t), "_trial_id": None} for t in orm_read(storage, study._study_id, None, set(), -1)]

    assert read(written) == read(by_optuna)
    written.ask()
    next_trial = written.get_trials()[-1]
    assert next_trial.number == len(finished) and next_trial._trial_id > max(t._trial_id for t in written.get_trials()[:-1])


def test_unknown_study_is_a_key_error(storage):
    with pytest.raises(KeyError):
        storage._get_trials(12345, None, set(), -1)


@pytest.fixture
def heartbeat_storage(database_url):
    """The worker's storage with a 1 s heartbeat and a 1 s grace period."""
    storage = open_storage(database_url, heartbeat_interval=1, grace_period=1)
    yield storage
    storage.remove_session()
    storage.engine.dispose()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask() outside optimize, on purpose
def test_a_trial_that_never_beat_is_failed_and_retried_after_the_grace_period(heartbeat_storage):
    study = optuna.create_study(study_name="silent", storage=heartbeat_storage)
    silent = study.ask()  # RUNNING, and no heartbeat: its worker died before the first beat
    beating = study.ask()
    heartbeat_storage.record_heartbeat(beating._trial_id)

    fail_stale_trials(study)  # first seen silent now: not stale yet
    assert study.trials[silent.number].state == TrialState.RUNNING
    time.sleep(2.2)  # past the grace period (SQLite's clock counts whole seconds)
    heartbeat_storage.record_heartbeat(beating._trial_id)
    fail_stale_trials(study)

    trials = study.trials
    assert trials[silent.number].state == TrialState.FAIL
    assert trials[beating.number].state == TrialState.RUNNING
    retries = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == silent.number]
    assert [t.state for t in retries] == [TrialState.WAITING]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask() outside optimize, on purpose
def test_a_stale_heartbeat_is_failed_as_optuna_does(heartbeat_storage):
    study = optuna.create_study(study_name="stale", storage=heartbeat_storage)
    stale = study.ask()
    heartbeat_storage.record_heartbeat(stale._trial_id)
    time.sleep(2.2)
    fail_stale_trials(study)
    assert study.trials[stale.number].state == TrialState.FAIL


def claim_queued(url: str, queued: int, start_at: float, claimed: mp.Queue) -> None:
    """Ask for trials from the moment ``start_at`` until the ``queued`` enqueued ones (numbers
    0 .. queued - 1) are gone; put the numbers this process got."""
    numbers: list[int] | str = []
    try:
        study = optuna.load_study(study_name="queue", storage=open_storage(url))
        time.sleep(max(0.0, start_at - time.time()))
        while (trial := study.ask()).number < queued:
            numbers.append(trial.number)
        study.tell(trial, state=TrialState.FAIL)  # a new trial: the queue is empty
    except Exception as exc:
        numbers = repr(exc)
    claimed.put(numbers)


def claimed_by_racing_processes(url: str, queued: int, processes: int = 4) -> list[int]:
    """The trial numbers that ``processes`` processes popping the ``queued`` enqueued trials
    of study "queue" at the same moments got, sorted (a number twice: claimed twice)."""
    ctx = mp.get_context("spawn")
    claimed = ctx.Queue()
    start_at = time.time() + 3  # after the processes' start-up: they pop at the same moments
    procs = [ctx.Process(target=claim_queued, args=(url, queued, start_at, claimed)) for _ in range(processes)]
    for p in procs:
        p.start()
    results = [claimed.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert not [r for r in results if isinstance(r, str)], results
    return sorted(n for r in results for n in r)


def test_racing_workers_never_claim_the_same_queued_trial(database_url):
    storage = open_storage(database_url)
    study = optuna.create_study(study_name="queue", storage=storage)
    queued = 120
    for x in range(queued):
        study.enqueue_trial({"x": x})
    storage.engine.dispose()
    assert claimed_by_racing_processes(database_url, queued) == list(range(queued)), \
        "a queued trial was claimed twice (or not at all)"


def test_a_claimed_queued_trial_starts_now_stored_in_utc(storage):
    """The claim override writes ``datetime_start`` itself: as naive UTC, like Optuna's models."""
    study = optuna.create_study(study_name="clock", storage=storage)
    study.enqueue_trial({"x": 1.0})
    trial = study.ask()  # claims the queued trial (WAITING -> RUNNING)
    study.tell(trial, 1.0)
    started = study.trials[0].datetime_start  # Optuna hands out naive local time
    assert abs((started - dt.datetime.now()).total_seconds()) < 120, started
    with storage.engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT datetime_start FROM trials")).scalar_one()
    stored = dt.datetime.fromisoformat(stored) if isinstance(stored, str) else stored
    utc_now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    assert abs((stored - utc_now).total_seconds()) < 120, stored
    assert study.trials[0].duration >= dt.timedelta(0)


def test_study_ids_through_the_public_helpers(storage):
    study = optuna.create_study(study_name="ids", storage=storage)
    held, study_id = study_storage(study)
    assert held.get_study_id_from_name("ids") == study_id
    assert [study_id_of(frozen) for frozen in storage.get_all_studies()] == [study_id]


def test_cached_study_storage_reads_finished_trials_once_and_reports_its_size(storage):
    study = optuna.create_study(study_name="cached", storage=storage)
    for value in (0.1, 0.2):
        study.add_trial(create_trial(value=value, params={}, distributions={}))
    sizes = []
    cached = optuna.load_study(study_name="cached", storage=CachedStudyStorage(storage, sizes.append))
    assert [t.value for t in cached.get_trials()] == [0.1, 0.2]
    study.add_trial(create_trial(value=0.3, params={}, distributions={}))
    assert [t.value for t in cached.get_trials()] == [0.1, 0.2, 0.3]
    assert sizes == [2, 3]


def start_on_new_database(url: str, upgrade_first: bool, start: mp.Barrier, outcome: mp.Queue) -> None:
    """What ``hpo serve`` (our tables, then Optuna's) or ``hpo worker`` / ``hpo run`` (Optuna's,
    then ours via ``hpo keys`` or a server) do at start, released together by ``start``."""
    try:
        start.wait(120)
        if upgrade_first:
            upgrade(url)
        storage = open_storage(url)
        if not upgrade_first:
            upgrade(url)
        optuna.create_study(study_name=f"study-{os.getpid()}", storage=storage)
        storage.engine.dispose()
        outcome.put("ok")
    except Exception as exc:
        outcome.put(repr(exc))


def test_processes_started_together_on_a_new_database(database_url):
    ctx = mp.get_context("spawn")
    n = 6
    start, outcome = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=start_on_new_database, args=(database_url, i % 2 == 0, start, outcome))
             for i in range(n)]
    for p in procs:
        p.start()
    results = [outcome.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)

    assert results == ["ok"] * n, results
    assert len(open_storage(database_url).get_all_studies()) == n
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        assert connection.execute(sa.text("SELECT count(*) FROM hpo_alembic_version")).scalar_one() == 1
    engine.dispose()


def test_trials_are_indexed_by_study_and_id(database_url):
    """The range Optuna's cache polls (a study's unfinished and newer trials) has its index,
    on a new database and on one opened again."""
    for _ in range(2):
        storage = open_storage(database_url)
        indexes = {ix["name"]: ix["column_names"] for ix in sa.inspect(storage.engine).get_indexes("trials")}
        assert indexes[TRIALS_BY_STUDY_INDEX] == ["study_id", "trial_id"]
        storage.engine.dispose()
