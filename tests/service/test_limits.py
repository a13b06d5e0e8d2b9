"""Per-server caps on what one study may ask for, and on how many one owner may queue."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service import keys
from service.app import create_app
from tests.support.studies import tiny_spec

STUDIES = "/api/v1/studies"


@pytest.fixture
def capped(settings):
    """An app with small caps: 10 trials, 3 folds, 5 epochs, 2 unfinished studies per owner."""
    settings = settings.model_copy(update={
        "max_n_trials": 10, "max_folds": 3, "max_cv_repeats": 2, "max_epochs": 5, "max_queued_studies_per_owner": 2,
    })
    with TestClient(create_app(settings)) as client:
        client.settings = settings
        yield client


def refused_fields(response) -> list[str]:
    return [item["field"] for item in response.json()["detail"]]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"budget": {"n_trials": 11}}, "budget.n_trials", "11 trials exceed this server's limit of 10"),
        ({"sampler": {"name": "grid", "grid_points": 4}, "budget": {}}, "budget.n_trials", "grid's 128 points"),
        ({"budget": {}}, "budget.n_trials", "20 trials (the default budget) exceed"),
        ({"enqueue_trials": [{"lr": 0.01}] * 11}, "enqueue_trials", "11 queued trials"),
        ({"cv": {"folds": 4}}, "cv.folds", "4 folds exceed this server's limit of 3 (HPO_MAX_FOLDS)"),
        ({"cv": {"folds": 2, "repeats": 3}}, "cv.repeats", "3 repeats exceed this server's limit of 2 (HPO_MAX_CV_REPEATS)"),
        ({"training": {"max_epochs": 6}}, "training.max_epochs", "6 epochs exceed this server's limit of 5"),
    ],
)
def test_study_size_caps_are_422_naming_the_field(capped, change, field, words):
    response = capped.post(STUDIES, json=tiny_spec(**change))

    assert response.status_code == 422, response.text
    assert refused_fields(response) == [field]
    assert words in response.json()["detail"][0]["message"]
    assert capped.get(STUDIES).json()["total"] == 0


def test_at_the_caps_is_accepted(capped):
    spec = tiny_spec(budget={"n_trials": 10}, cv={"folds": 3, "repeats": 2}, training={"max_epochs": 5})

    assert capped.post(STUDIES, json=spec).status_code == 201


@pytest.mark.parametrize(
    ("budget", "n_trials"),
    [
        ({"timeout_s": 300}, 10),  # a wall-clock budget alone: trials until the time ends, up to the server's cap
        ({"timeout_s": 300, "n_trials": 4}, 4),
    ],
)
def test_a_timeout_alone_runs_up_to_the_servers_trial_cap(capped, budget, n_trials):
    response = capped.post(STUDIES, json=tiny_spec(budget=budget))
    assert response.status_code == 201, response.text
    study = response.json()

    assert study["n_trials"] == n_trials
    assert study["spec"]["budget"]["timeout_s"] == 300
    assert capped.get(f"{STUDIES}/{study['id']}").json()["n_trials"] == n_trials


def test_unfinished_studies_per_owner_are_capped(capped):
    first = capped.post(STUDIES, json=tiny_spec()).json()
    assert capped.post(STUDIES, json=tiny_spec()).status_code == 201

    refused = capped.post(STUDIES, json=tiny_spec())
    assert refused.status_code == 429
    assert "2 unfinished (queued or running) studies" in refused.json()["detail"][0]["message"]

    assert capped.post(f"{STUDIES}/{first['id']}/cancel").status_code == 200  # a cancelled study does not count
    assert capped.post(STUDIES, json=tiny_spec()).status_code == 201
    assert capped.post(f"{STUDIES}/{first['id']}/resume").status_code == 429  # resuming would queue a third


def test_the_queue_cap_is_per_owner(capped):
    database = capped.settings.database_url
    tokens = {name: keys.create_key(database, name)[1] for name in ("alice", "bob")}
    alice, bob = ({"Authorization": f"Bearer {tokens[n]}"} for n in ("alice", "bob"))
    for _ in range(2):
        assert capped.post(STUDIES, json=tiny_spec(), headers=alice).status_code == 201

    assert capped.post(STUDIES, json=tiny_spec(), headers=alice).status_code == 429
    assert capped.post(STUDIES, json=tiny_spec(), headers=bob).status_code == 201


@pytest.mark.parametrize("path", [STUDIES, "/api/v1/datasets", "/api/v1/views/studies"])
def test_absurd_offsets_are_422_not_a_database_overflow(shared_api, path):
    """Found by Schemathesis: an offset past 64 bits overflowed SQLite and PostgreSQL (500)."""
    response = shared_api.get(path, params={"offset": 10**30})

    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "offset"


def test_a_predict_body_over_the_limit_says_that_a_file_upload_works(shared_api):
    """Inputs too large for a JSON body fit in a multipart file on the same endpoint."""
    max_body = shared_api.app.state.settings.max_body_bytes
    body = '{"x": [' + ",".join(["0.5"] * (max_body // 4)) + "]}"

    predict = shared_api.post("/api/v1/studies/any/predict", content=body,
                              headers={"Content-Type": "application/json"})
    submit = shared_api.post("/api/v1/studies", content=body, headers={"Content-Type": "application/json"})

    assert predict.status_code == 413
    message = predict.json()["detail"][0]["message"]
    assert "send larger inputs as a multipart `file` (NPZ, CSV or TSV, up to 0.25 MiB) to the same endpoint" in message
    assert submit.status_code == 413 and "multipart" not in submit.json()["detail"][0]["message"]
