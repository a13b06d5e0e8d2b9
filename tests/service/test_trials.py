"""A study's trials and its best trial, written through Optuna's own API the way workers do."""

from __future__ import annotations

import math

import optuna
import pytest

from hpo import local
from tests.support.studies import add_trial, tiny_spec

STUDIES = "/api/v1/studies"


@pytest.fixture
def study(api) -> dict:
    return api.post(STUDIES, json=tiny_spec(budget={"n_trials": 10})).json()


def test_best_is_409_until_a_trial_completes(api, storage, study):
    before = api.get(f"{STUDIES}/{study['id']}/best")
    add_trial(storage, study["optuna_study_name"], state="failed")
    add_trial(storage, study["optuna_study_name"], state="pruned")
    still = api.get(f"{STUDIES}/{study['id']}/best")

    for response in (before, still):
        assert response.status_code == 409
        assert "no trial" in response.json()["detail"][0]["message"]
    assert "1 failed" in still.json()["detail"][0]["message"]


def test_best_matches_optuna(api, storage, study):
    name = study["optuna_study_name"]
    add_trial(storage, name, value=0.71, fold_scores=[0.7, 0.72])
    add_trial(storage, name, value=0.93, fold_scores=[0.92, 0.94])
    add_trial(storage, name, value=0.85, fold_scores=[0.8, 0.9])

    best = api.get(f"{STUDIES}/{study['id']}/best")

    expected = optuna.load_study(study_name=name, storage=storage).best_trial
    assert best.status_code == 200
    assert best.json() == {
        "study": name,
        "study_id": study["id"],
        "number": expected.number,
        "value": expected.value,
        "metric": "accuracy",
        "direction": "maximize",
        "params": expected.params,
        "fold_scores": [0.92, 0.94],
        "fold_std": pytest.approx(0.01),
    }


def test_best_follows_a_minimized_metric(api, storage):
    spec = tiny_spec(training={"max_epochs": 2, "metric": "loss"})
    study = api.post(STUDIES, json=spec).json()
    add_trial(storage, study["optuna_study_name"], value=0.4)
    add_trial(storage, study["optuna_study_name"], value=0.2)

    best = api.get(f"{STUDIES}/{study['id']}/best").json()

    assert study["direction"] == "minimize"
    assert best["value"] == 0.2 and best["number"] == 1


def test_trials_carry_scores_state_and_timing(api, storage, study):
    name = study["optuna_study_name"]
    add_trial(storage, name, value=0.8, lr=0.01, steps=[0.5, 0.7, 0.8], fold_scores=[0.75, 0.85])
    add_trial(storage, name, state="failed", fail_reason="CUDA out of memory")
    add_trial(storage, name, state="pruned", steps=[0.1])
    add_trial(storage, name, state="running", steps=[0.3])

    page = api.get(f"{STUDIES}/{study['id']}/trials")

    assert page.status_code == 200
    body = page.json()
    assert body["total"] == 4 and [t["number"] for t in body["items"]] == [0, 1, 2, 3]
    complete, failed, pruned, running = body["items"]
    assert complete["state"] == "complete" and complete["value"] == 0.8
    assert complete["params"]["lr"] == pytest.approx(0.01) and complete["params"]["batch_size"] in (16, 32)
    assert complete["fold_scores"] == [0.75, 0.85] and complete["fold_std"] == pytest.approx(0.05)
    assert complete["duration_s"] >= 0 and complete["started_at"] and complete["completed_at"]
    assert complete["last_step"] == 2
    assert "intermediate_values" not in complete
    assert failed["state"] == "failed" and failed["fail_reason"] == "CUDA out of memory" and failed["value"] is None
    assert pruned["state"] == "pruned"
    assert running["state"] == "running" and running["completed_at"] is None and running["duration_s"] is None


def test_intermediate_values_only_when_asked(api, storage, study):
    add_trial(storage, study["optuna_study_name"], value=0.8, steps=[0.5, 0.7, 0.8])

    listed = api.get(f"{STUDIES}/{study['id']}/trials", params={"include": "intermediate"}).json()
    one = api.get(f"{STUDIES}/{study['id']}/trials/0").json()

    expected = [{"step": 0, "value": 0.5}, {"step": 1, "value": 0.7}, {"step": 2, "value": 0.8}]
    assert listed["items"][0]["intermediate_values"] == expected
    assert one["intermediate_values"] == expected and one["number"] == 0


def test_trials_filter_sort_and_page(api, storage, study):
    name = study["optuna_study_name"]
    for value in (0.3, 0.9, 0.6):
        add_trial(storage, name, value=value)
    add_trial(storage, name, state="failed")

    complete = api.get(f"{STUDIES}/{study['id']}/trials", params={"state": "complete"}).json()
    by_value = api.get(f"{STUDIES}/{study['id']}/trials", params={"sort": "-value"}).json()
    best_first = api.get(f"{STUDIES}/{study['id']}/trials", params={"sort": "best", "limit": 2}).json()
    second_page = api.get(f"{STUDIES}/{study['id']}/trials", params={"limit": 2, "offset": 2}).json()

    assert complete["total"] == 3 and {t["state"] for t in complete["items"]} == {"complete"}
    assert [t["value"] for t in by_value["items"]] == [0.9, 0.6, 0.3, None]  # no value: last
    assert [t["value"] for t in best_first["items"]] == [0.9, 0.6] and best_first["total"] == 4
    assert [t["number"] for t in second_page["items"]] == [2, 3]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"state": "exploded"}, "state"), ({"sort": "colour"}, "sort"), ({"include": "everything"}, "include"),
     ({"limit": 0}, "limit")],
)
def test_bad_trial_parameters_are_422(api, study, params, field):
    response = api.get(f"{STUDIES}/{study['id']}/trials", params=params)

    assert response.status_code == 422
    assert [item["field"] for item in response.json()["detail"]] == [field]


def test_non_finite_scores_become_null(api, storage, study):
    add_trial(storage, study["optuna_study_name"], value=0.5, fold_scores=[0.5, math.nan], steps=[math.nan])

    trial = api.get(f"{STUDIES}/{study['id']}/trials/0")

    assert trial.status_code == 200
    assert trial.json()["fold_scores"] == [0.5, None]
    assert trial.json()["intermediate_values"] == [{"step": 0, "value": None}]


def test_trial_number_must_be_an_integer(api, study):
    response = api.get(f"{STUDIES}/{study['id']}/trials/first")

    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "number"


def test_unknown_trial_number_is_404(api, storage, study):
    add_trial(storage, study["optuna_study_name"])

    response = api.get(f"{STUDIES}/{study['id']}/trials/99")

    assert response.status_code == 404
    assert response.json()["detail"][0]["field"] == "number"
    assert api.get(f"{STUDIES}/{study['id']}/trials/0").status_code == 200
    # Past what the database's integer column holds (the trial is looked up in SQL): still a 404.
    for number in (2**31, 10**19, -1):
        assert api.get(f"{STUDIES}/{study['id']}/trials/{number}").status_code == 404


def tied_trial(storage, study_name: str, value: float, cv_loss: float | None = None,
               fold_best_epochs: list[int] | None = None) -> int:
    """A complete trial with the attributes that break ties (left out when ``None``, as on
    trials written before they existed)."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    if cv_loss is not None:
        trial.set_user_attr("cv_loss", cv_loss)
    if fold_best_epochs is not None:
        trial.set_user_attr("fold_best_epochs", fold_best_epochs)
    study.tell(trial, value)
    return trial.number


def test_ties_are_broken_one_way_everywhere(api, storage, database_url, study):
    """Equal score, then lower mean validation loss (missing: worst), then fewer epochs, then
    the earlier trial: /best, ?sort=best, the study page, the study's state and hpo best agree."""
    name = study["optuna_study_name"]
    no_loss = tied_trial(storage, name, 0.9)
    higher_loss = tied_trial(storage, name, 0.9, cv_loss=0.5, fold_best_epochs=[2, 2])
    more_epochs = tied_trial(storage, name, 0.9, cv_loss=0.3, fold_best_epochs=[9, 7])
    fewer_epochs = tied_trial(storage, name, 0.9, cv_loss=0.3, fold_best_epochs=[2, 4])
    lower_score = tied_trial(storage, name, 0.8, cv_loss=0.1, fold_best_epochs=[1, 1])
    same_as_fewer = tied_trial(storage, name, 0.9, cv_loss=0.3, fold_best_epochs=[3, 3])
    expected = [fewer_epochs, same_as_fewer, more_epochs, higher_loss, no_loss, lower_score]

    best = api.get(f"{STUDIES}/{study['id']}/best").json()
    best_first = api.get(f"{STUDIES}/{study['id']}/trials", params={"sort": "best"}).json()
    overview = api.get(f"/api/v1/views/studies/{study['id']}").json()
    state = api.get(f"{STUDIES}/{study['id']}").json()
    found, _ = local.best(name, database_url)

    assert [t["number"] for t in best_first["items"]] == expected
    assert best["number"] == overview["best"]["number"] == state["best_trial"] == found["number"] == fewer_epochs
