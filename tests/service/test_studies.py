"""Submitting, listing, inspecting, cancelling, resuming and deleting studies over the API."""

from __future__ import annotations

import json

import optuna
import pytest
import sqlalchemy as sa
import yaml

from hpo.export import model_archive, model_job
from hpo.db.models import model_archives, model_jobs
from hpo.export.store import ensure_tables, utcnow
from hpo.studies import SPEC_ATTR, fail_study
from tests.support.servers import MAX_BODY_BYTES
from tests.support.studies import add_trial, tiny_spec

STUDIES = "/api/v1/studies"


def fields(response) -> list[str]:
    return [item["field"] for item in response.json()["detail"]]


def test_submit_json_creates_the_optuna_study(api, database_url):
    response = api.post(STUDIES, json=tiny_spec())

    assert response.status_code == 201, response.text
    study = response.json()
    assert study["state"] == "queued"
    assert study["optuna_study_name"] == f"digits-tiny-{study['id']}"
    assert study["links"] == {
        "self": f"{STUDIES}/{study['id']}",
        "trials": f"{STUDIES}/{study['id']}/trials",
        "best": f"{STUDIES}/{study['id']}/best",
        "events": f"{STUDIES}/{study['id']}/events",
    }
    assert response.headers["location"] == study["links"]["self"]
    assert study["n_trials"] == 3 and study["direction"] == "maximize" and study["metric"] == "accuracy"
    # Workers find studies only through Optuna's storage: the spec must be there.
    optuna_study = optuna.load_study(study_name=study["optuna_study_name"], storage=database_url.replace(
        "postgresql://", "postgresql+psycopg://"))
    assert optuna_study.user_attrs[SPEC_ATTR]["cv"]["folds"] == 2


def test_submit_yaml(api):
    text = yaml.safe_dump(tiny_spec(name="from-yaml"))

    response = api.post(STUDIES, content=text, headers={"Content-Type": "application/yaml"})

    assert response.status_code == 201, response.text
    assert response.json()["name"] == "from-yaml"
    assert response.json()["spec"]["cv"]["folds"] == 2


def test_same_spec_twice_gives_two_studies(api):
    first = api.post(STUDIES, json=tiny_spec()).json()
    second = api.post(STUDIES, json=tiny_spec()).json()

    assert first["id"] != second["id"]
    assert first["optuna_study_name"] != second["optuna_study_name"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cv": {"folds": 1}}, "cv.folds"),
        ({"search_space": {"lr": {"low": 0.1, "high": 0.001}}}, "search_space.lr"),
        ({"bogus": 1}, "bogus"),
        ({"task": "regression"}, "task"),
        ({"name": "no spaces allowed"}, "name"),
        ({"budget": {"n_trials": 0}}, "budget.n_trials"),
        ({"final_model": {"kind": "ensemble", "seeds": 3}}, "final_model.seeds"),
        ({"final_model": {"seeds": 11}}, "final_model.seeds"),
    ],
)
def test_invalid_spec_is_422_naming_the_field(shared_api, change, field):
    response = shared_api.post(STUDIES, json=tiny_spec(**change))

    assert response.status_code == 422, response.text
    assert field in fields(response)
    assert all(item["message"] for item in response.json()["detail"])
    assert shared_api.get(STUDIES).json()["total"] == 0


def test_every_bad_field_is_named_at_once(shared_api):
    response = shared_api.post(STUDIES, json=tiny_spec(cv={"folds": 1}, search_space={"lr": {"low": 1, "high": 0.1}}))

    assert response.status_code == 422
    assert {"cv.folds", "search_space.lr"} <= set(fields(response))


def test_missing_name_is_named(shared_api):
    spec = tiny_spec()
    del spec["name"]

    response = shared_api.post(STUDIES, json=spec)

    assert response.status_code == 422
    assert fields(response) == ["name"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field"),
    [
        (b"{not json", "application/json", 422, "body"),
        (b"name: [unclosed", "application/yaml", 422, "line 1, column 16"),
        (b"\xff\xfe\x00garbage", "application/json", 422, "body"),
        (b"", "application/json", 422, "body"),
        (b"   ", "application/yaml", 422, "body"),
        (b"[1, 2, 3]", "application/json", 422, "spec"),
        (b"just a string", "application/yaml", 422, "spec"),
        (b"null", "application/json", 422, "spec"),
        (b"<spec/>", "application/xml", 415, "body"),
        (b"a: &x [1, 2]\nb: *x\n", "application/yaml", 422, "body"),
        (b"[" * 5000 + b"]" * 5000, "application/json", 422, "body"),
        (json.dumps(tiny_spec(enqueue_trials=[{"lr": float("nan")}])).encode(), "application/json", 422,
         "enqueue_trials.0.lr"),
    ],
)
def test_malformed_bodies_are_4xx(shared_api, body, content_type, status, field):
    response = shared_api.post(STUDIES, content=body, headers={"Content-Type": content_type})

    assert response.status_code == status, response.text
    assert fields(response)[0] == field


def test_body_over_the_limit_is_413(shared_api):
    padding = "x" * (MAX_BODY_BYTES + 1)
    spec = tiny_spec()
    spec["padding"] = padding

    declared = shared_api.post(STUDIES, json=spec)
    chunked = shared_api.post(STUDIES, content=iter([json.dumps(spec).encode()]),
                       headers={"Content-Type": "application/json"})

    for response in (declared, chunked):
        assert response.status_code == 413, response.text
        assert fields(response) == ["body"]
        assert str(MAX_BODY_BYTES) in response.json()["detail"][0]["message"]
    assert shared_api.get(STUDIES).json()["total"] == 0


def test_dataset_must_be_uploaded_or_builtin(shared_api):
    unknown = shared_api.post(STUDIES, json=tiny_spec(dataset={"id": "nope"}))
    by_path = shared_api.post(STUDIES, json=tiny_spec(dataset={"path": "/etc/passwd.csv"}))

    assert unknown.status_code == 422 and fields(unknown) == ["dataset.id"]
    assert by_path.status_code == 422 and fields(by_path) == ["dataset.path"]


def test_get_study(api):
    created = api.post(STUDIES, json=tiny_spec()).json()

    study = api.get(f"{STUDIES}/{created['id']}").json()

    assert study["id"] == created["id"]
    assert study["spec"]["name"] == "digits-tiny"
    assert study["trials"] == {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0}
    for key in ("best_value", "best_trial", "started_at", "finished_at", "eta_s", "reason"):
        assert study[key] is None
    assert study["created_at"].endswith("+00:00")


def test_progress_follows_the_trials(api, storage):
    created = api.post(STUDIES, json=tiny_spec()).json()
    name = created["optuna_study_name"]

    add_trial(storage, name, value=0.6)
    add_trial(storage, name, state="pruned", steps=[0.1])
    add_trial(storage, name, state="failed", fail_reason="out of memory")
    add_trial(storage, name, state="running")
    running = api.get(f"{STUDIES}/{created['id']}").json()
    add_trial(storage, name, value=0.9)
    done = api.get(f"{STUDIES}/{created['id']}").json()

    assert running["state"] == "running"
    assert running["trials"] == {"complete": 1, "pruned": 1, "failed": 1, "running": 1, "waiting": 0}
    assert running["best_value"] == 0.6 and running["best_trial"] == 0
    assert running["started_at"] is not None and running["eta_s"] is not None
    assert done["state"] == "completed"
    assert done["best_value"] == 0.9 and done["best_trial"] == 4


def test_unknown_ids_are_404(api):
    created = api.post(STUDIES, json=tiny_spec()).json()
    requests = [
        ("GET", f"{STUDIES}/nope"),
        ("GET", f"{STUDIES}/nope/trials"),
        ("GET", f"{STUDIES}/nope/trials/0"),
        ("GET", f"{STUDIES}/nope/best"),
        ("GET", f"{STUDIES}/nope/events"),
        ("POST", f"{STUDIES}/nope/cancel"),
        ("POST", f"{STUDIES}/nope/resume"),
        ("DELETE", f"{STUDIES}/nope"),
        ("GET", f"{STUDIES}/{created['id']}/trials/7"),
        ("GET", "/api/v1/datasets/nope"),
        ("DELETE", "/api/v1/datasets/nope"),
        ("GET", "/api/v1/nothing-here"),
    ]
    for method, url in requests:
        response = api.request(method, url)
        assert response.status_code == 404, (method, url, response.text)
        assert response.json()["detail"][0]["message"]


def test_list_is_paginated_and_filtered(api):
    ids = [api.post(STUDIES, json=tiny_spec(name=f"s{i}")).json()["id"] for i in range(3)]
    api.post(f"{STUDIES}/{ids[1]}/cancel")

    first = api.get(STUDIES, params={"limit": 2}).json()
    rest = api.get(STUDIES, params={"limit": 2, "offset": 2}).json()
    cancelled = api.get(STUDIES, params={"state": "cancelled"}).json()
    queued = api.get(STUDIES, params={"state": "queued", "limit": 1}).json()

    assert first["total"] == 3 and len(first["items"]) == 2 and first["limit"] == 2
    assert rest["total"] == 3 and len(rest["items"]) == 1
    assert {s["id"] for s in first["items"] + rest["items"]} == set(ids)
    assert [s["name"] for s in first["items"] + rest["items"]] == ["s2", "s1", "s0"]  # newest first
    assert [s["id"] for s in cancelled["items"]] == [ids[1]] and cancelled["total"] == 1
    assert queued["total"] == 2 and len(queued["items"]) == 1
    assert "spec" not in first["items"][0]


def test_the_list_filtered_by_state_pages_through_the_studies_in_that_state(api, storage):
    """Studies in every state (from their trials, flags, failures and a timeout): each state's
    filtered list holds exactly the studies whose own answer has that state, newest first,
    page after page, with their count."""
    def submit(name: str, **budget) -> dict:
        return api.post(STUDIES, json=tiny_spec(name=name, budget={"n_trials": 2, **budget})).json()

    queued, running, completed = submit("queued"), submit("running"), submit("completed")
    cancelled = submit("cancelled")
    gave_up, timed_out, also_running, also_completed = submit("gave-up"), submit("timed-out", timeout_s=0.01), \
        submit("also-running"), submit("also-completed")
    add_trial(storage, running["optuna_study_name"], state="running")
    for state in ("complete", "pruned"):
        add_trial(storage, completed["optuna_study_name"], state=state)
    api.post(f"{STUDIES}/{cancelled['id']}/cancel")
    for _ in range(2):
        add_trial(storage, gave_up["optuna_study_name"], state="failed")
    add_trial(storage, timed_out["optuna_study_name"], state="complete")
    add_trial(storage, also_running["optuna_study_name"], state="complete")
    add_trial(storage, also_running["optuna_study_name"], state="failed")
    for _ in range(3):
        add_trial(storage, also_completed["optuna_study_name"], state="complete")
    newest_first = [s["id"] for s in api.get(STUDIES).json()["items"]]
    own = {study_id: api.get(f"{STUDIES}/{study_id}").json()["state"] for study_id in newest_first}

    for state in ("queued", "running", "completed", "failed", "cancelled"):
        pages = [api.get(STUDIES, params={"state": state, "limit": 1, "offset": offset}).json() for offset in range(4)]
        whole = api.get(STUDIES, params={"state": state}).json()
        expected = [study_id for study_id in newest_first if own[study_id] == state]
        assert [s["id"] for page in pages for s in page["items"]] == expected == [s["id"] for s in whole["items"]]
        assert {page["total"] for page in pages} == {whole["total"]} == {len(expected)}
        assert {s["state"] for s in whole["items"]} <= {state}
    assert [own[s["id"]] for s in (queued, running, completed, cancelled, gave_up, timed_out, also_running,
                                   also_completed)] == ["queued", "running", "completed", "cancelled", "failed",
                                                        "completed", "running", "completed"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"state": "sleeping"}, "state"), ({"limit": 0}, "limit"), ({"limit": 101}, "limit"),
     ({"offset": -1}, "offset"), ({"limit": "many"}, "limit")],
)
def test_bad_list_parameters_are_422(shared_api, params, field):
    response = shared_api.get(STUDIES, params=params)

    assert response.status_code == 422
    assert fields(response) == [field]


def test_cancel_and_resume(api):
    study_id = api.post(STUDIES, json=tiny_spec()).json()["id"]

    cancelled = api.post(f"{STUDIES}/{study_id}/cancel")
    seen = api.get(f"{STUDIES}/{study_id}").json()
    resumed = api.post(f"{STUDIES}/{study_id}/resume")

    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert seen["state"] == "cancelled"
    assert resumed.status_code == 200 and resumed.json()["state"] == "queued"


def test_cancel_of_a_finished_study_is_409(api, storage):
    created = api.post(STUDIES, json=tiny_spec(budget={"n_trials": 1})).json()
    add_trial(storage, created["optuna_study_name"], value=0.7)

    response = api.post(f"{STUDIES}/{created['id']}/cancel")

    assert response.status_code == 409
    assert "completed" in response.json()["detail"][0]["message"]
    assert api.get(f"{STUDIES}/{created['id']}").json()["state"] == "completed"


def test_delete_removes_the_optuna_study(api, storage):
    created = api.post(STUDIES, json=tiny_spec()).json()
    add_trial(storage, created["optuna_study_name"], value=0.7)

    response = api.delete(f"{STUDIES}/{created['id']}")

    assert response.status_code == 204 and response.content == b""
    assert api.get(f"{STUDIES}/{created['id']}").status_code == 404
    assert created["optuna_study_name"] not in optuna.get_all_study_names(storage)
    assert api.get(STUDIES).json()["total"] == 0


def test_delete_removes_the_models(api, storage):
    created = api.post(STUDIES, json=tiny_spec()).json()
    other = api.post(STUDIES, json=tiny_spec()).json()
    for study in (created, other):  # what the workers leave: a kept ensemble and a refit job
        ensure_tables(storage.engine)
        with storage.engine.begin() as connection:
            connection.execute(sa.insert(model_archives).values(
                study_name=study["optuna_study_name"], kind="ensemble", trial_number=0, rank_score=0.5,
                cv_loss=0.1, mean_epochs=1.0, archive=b"zip", sha256="0" * 64, summary={}, created_at=utcnow()))
            connection.execute(sa.insert(model_jobs).values(
                study_name=study["optuna_study_name"], job_id="j", state="queued", trial_number=0, holdout=0.0,
                seeds=1, attempts=0, requested_at=utcnow()))

    assert api.delete(f"{STUDIES}/{created['id']}").status_code == 204

    assert model_archive(storage, created["optuna_study_name"], "ensemble") is None
    assert model_job(storage, created["optuna_study_name"]) is None
    assert model_archive(storage, other["optuna_study_name"], "ensemble") is not None  # another study's stays
    assert model_job(storage, other["optuna_study_name"]) is not None


def test_a_study_that_could_not_run_is_retried_by_resume(api, storage):
    created = api.post(STUDIES, json=tiny_spec()).json()
    fail_study(storage, created["optuna_study_name"], "cannot load the dataset: nope.npz: no such file")
    failed = api.get(f"{STUDIES}/{created['id']}").json()

    resumed = api.post(f"{STUDIES}/{created['id']}/resume")

    assert failed["state"] == "failed" and "nope.npz" in failed["reason"]
    assert resumed.status_code == 200 and resumed.json()["state"] == "queued", resumed.text
    assert api.get(f"{STUDIES}/{created['id']}").json()["state"] == "queued"


def test_a_study_that_failed_on_its_trials_is_not_resumed_and_says_why(api, storage):
    created = api.post(STUDIES, json=tiny_spec()).json()
    for _ in range(3):
        add_trial(storage, created["optuna_study_name"], state="failed", fail_reason="TrainingDiverged: loss nan")

    refused = api.post(f"{STUDIES}/{created['id']}/resume")

    assert refused.status_code == 409
    message = refused.json()["detail"][0]["message"]
    assert "failed on its own trials (TrainingDiverged: loss nan)" in message and "submit it as a new study" in message
    assert api.get(f"{STUDIES}/{created['id']}").json()["state"] == "failed"
