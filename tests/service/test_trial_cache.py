"""The trial cache every route reads studies through: warmed at start, bounded, always current."""

from __future__ import annotations

import threading
import time

from service.admission import Activity
from service.trial_cache import TrialCache
from tests.support.studies import add_trial, tiny_spec

STUDIES = "/api/v1/studies"


def submit_with_trials(api, storage, n_trials: int) -> dict:
    study = api.post(STUDIES, json=tiny_spec(budget={"n_trials": n_trials + 1})).json()
    for i in range(n_trials):
        add_trial(storage, study["optuna_study_name"], value=i / 10)
    return study


def test_warm_reads_every_study_within_the_limit(api, storage):
    studies = [submit_with_trials(api, storage, n) for n in (3, 2, 4)]  # the last one is the newest
    app = api.app

    cache = TrialCache(app.state.storage, max_cached_trials=100)
    cache.warm(app.state.sessions)
    assert cache.size == 9

    small = TrialCache(app.state.storage, max_cached_trials=5)
    small.warm(app.state.sessions)  # newest first: past the limit the least recently read are forgotten
    assert 0 < small.size <= 5
    for study in studies:
        assert len(small.study(study["optuna_study_name"]).get_trials()) in (2, 3, 4)
        assert small.size <= 5


def test_routes_see_trials_that_finish_after_the_first_read(api, storage):
    study = submit_with_trials(api, storage, 2)
    url = f"{STUDIES}/{study['id']}"
    assert api.get(url).json()["trials"]["complete"] == 2  # read (and cached) once
    add_trial(storage, study["optuna_study_name"], value=0.9)
    add_trial(storage, study["optuna_study_name"], state="pruned")

    detail = api.get(url).json()
    assert detail["trials"]["complete"] == 3 and detail["trials"]["pruned"] == 1
    assert detail["best_value"] == 0.9
    assert api.get(f"{url}/trials").json()["total"] == 4


def test_a_deleted_study_is_forgotten(api, storage):
    study = submit_with_trials(api, storage, 2)
    cache = api.app.state.trial_cache
    api.get(f"{STUDIES}/{study['id']}")
    before = cache.size
    assert api.delete(f"{STUDIES}/{study['id']}").status_code == 204
    assert cache.size == before - 2
    assert api.get(f"{STUDIES}/{study['id']}").status_code == 404


def test_warming_waits_for_a_moment_without_requests(api, storage):
    """At start-up the cache is warmed in the background; a request being worked on (a page
    opened at once, whose first view does not need the cache) keeps it waiting."""
    for n in (3, 2):
        submit_with_trials(api, storage, n)
    activity = Activity()
    activity.started()  # a request in flight
    cache = TrialCache(api.app.state.storage, max_cached_trials=100)
    warming = threading.Thread(target=cache.warm, args=(api.app.state.sessions,),
                               kwargs={"before_each": lambda: activity.wait_quiet(0.2)})
    warming.start()
    time.sleep(0.6)
    assert warming.is_alive() and cache.size == 0
    activity.ended()
    warming.join(timeout=30)
    assert cache.size == 5
