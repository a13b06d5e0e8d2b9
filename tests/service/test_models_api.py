"""The final model through the API: the fold ensemble kept as trials complete, a refit
queued and run by a worker, download, predict."""

from __future__ import annotations

import datetime as dt
import io
import json
import statistics
import threading
import time
import zipfile
from collections.abc import Iterator

import numpy as np
import optuna
import pytest
import sqlalchemy as sa

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo.data.builtins import _airline, _digits
from hpo.export import load_model, model_archive, run_pending_model_jobs
from hpo.db.models import model_archives, model_jobs
from hpo.samplers import suggest_params
from hpo.studies import study_spec
from hpo.worker import StudyPicker, WorkerOptions, worker_loop
from service.app import create_app
from hpo.settings import Settings
from tests.support.studies import tiny_spec

STUDIES = "/api/v1/studies"


@pytest.fixture
def database_url(sqlite_url) -> str:
    """SQLite only: these tests train real (tiny) models."""
    return sqlite_url


def _work(database_url: str, data_dir, study_name: str) -> None:
    """One worker pass over the study, as ``hpo worker`` would run it, until nothing is left."""
    worker_loop(WorkerOptions(database_url=database_url, data_dir=str(data_dir), study_name=study_name,
                              until_idle=True, poll_interval_s=0.05), 0, threading.Event())


def _digits_spec(name: str, final_model: dict | None = None) -> dict:
    """Digits, 2 trials; the final model is the fold ensemble unless ``final_model`` says otherwise."""
    return tiny_spec(name, search_space={"hidden_size": {"value": 16}, "lr": {"value": 0.01},
                                         "batch_size": {"value": 64}},
                     training={"max_epochs": 3, "patience": 1}, budget={"n_trials": 2},
                     final_model=final_model or {"kind": "ensemble"})


@pytest.fixture
def digits_study(api, database_url, data_dir) -> dict:
    """A digits study whose trials have run (no model yet)."""
    study = api.post(STUDIES, json=_digits_spec("digits-model")).json()
    _work(database_url, data_dir, study["optuna_study_name"])
    return study


@pytest.fixture(scope="module")
def fitted_api(tmp_path_factory) -> Iterator[tuple[TestClient, dict]]:
    """One app whose digits study has a ready model: for the tests that only read it."""
    folder = tmp_path_factory.mktemp("fitted")
    database_url = f"sqlite:///{folder / 'hpo.db'}"
    with TestClient(create_app(Settings(database_url=database_url, data_dir=str(folder / "data")))) as client:
        study = client.post(STUDIES, json=_digits_spec("digits-fitted")).json()
        _work(database_url, folder / "data", study["optuna_study_name"])
        assert client.post(f"{STUDIES}/{study['id']}/model").status_code == 202
        _work(database_url, folder / "data", study["optuna_study_name"])
        assert client.get(f"{STUDIES}/{study['id']}/model").json()["state"] == "ready"
        yield client, study


def test_the_best_trials_fold_ensemble_is_the_model_when_the_study_ends(api, storage, digits_study):
    study_id, name = digits_study["id"], digits_study["optuna_study_name"]
    model_url = f"{STUDIES}/{study_id}/model"

    status = api.get(model_url).json()

    best = optuna.load_study(study_name=name, storage=storage).best_trial
    assert status["state"] == "ready" and status["kind"] == "ensemble", status
    assert status["trial_number"] == best.number and status["learned"] is True
    model = status["model"]
    assert model["kind"] == "ensemble" and model["members"] == 2  # one per fold
    assert model["params"] == best.params and model["cv_score"] == pytest.approx(best.value)
    assert model["learning"]["baseline_name"] == "majority class"
    assert model["learning"]["score"] > model["learning"]["baseline"]
    download = api.get(f"{model_url}/download")
    assert download.status_code == 200 and download.headers["x-model-kind"] == "ensemble"
    assert download.headers["etag"] == f'"{status["archive"]["sha256"]}"'
    local = load_model(download.content)
    assert local.kind == "ensemble" and [m.fold for m in local.manifest.members] == [0, 1]

    x = _digits()[0][:20]
    answer = api.post(f"{STUDIES}/{study_id}/predict", json={"x": x.tolist()})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["kind"] == "ensemble" and body["classes"] == list(range(10))  # ints stay ints
    assert body["labels"] == local.predict(x).tolist()
    np.testing.assert_allclose(body["probabilities"], local.predict_proba(x), rtol=1e-5, atol=1e-7)


def test_a_refit_is_fitted_by_a_worker_then_downloaded_and_used(api, storage, database_url, data_dir,
                                                                digits_study):
    study_id, name = digits_study["id"], digits_study["optuna_study_name"]
    model_url = f"{STUDIES}/{study_id}/model"

    queued = api.post(model_url, json={"kind": "refit", "seeds": 2})
    assert queued.status_code == 202, queued.text
    assert queued.json()["refit"]["state"] == "queued" and not queued.json()["refit"]["auto"]
    assert api.post(model_url).status_code == 409  # one fit at a time
    assert api.get(f"{model_url}/download").headers["x-model-kind"] == "ensemble"  # until the refit is ready
    _work(database_url, data_dir, name)
    status = api.get(model_url).json()

    best = optuna.load_study(study_name=name, storage=storage).best_trial
    assert status["state"] == "ready" and status["kind"] == "refit", status
    epochs = max(1, int(np.ceil(statistics.median(best.user_attrs["fold_best_epochs"]))))
    assert status["epoch"] == status["epochs"] == 2 * epochs and status["seeds"] == 2
    model = status["model"]
    assert model["params"] == best.params and model["members"] == 2 and model["epochs"] == epochs
    assert model["trial_number"] == best.number == status["trial_number"]
    assert model["fold_best_epochs"] == best.user_attrs["fold_best_epochs"]
    assert model["data_fingerprint"].startswith("sha256:")
    assert {"torch", "optuna", "hpo"} <= set(model["versions"])

    download = api.get(f"{model_url}/download")
    assert download.status_code == 200 and download.headers["x-model-kind"] == "refit"
    assert download.headers["content-type"] == "application/zip"
    assert zipfile.ZipFile(io.BytesIO(download.content)).namelist() == ["manifest.json", "model.safetensors"]
    local = load_model(download.content)

    x = _digits()[0][:20]
    body = api.post(f"{STUDIES}/{study_id}/predict", json={"x": x.tolist()}).json()
    assert body["kind"] == "refit" and body["labels"] == local.predict(x).tolist()
    npz = io.BytesIO()
    np.savez(npz, X=x)
    from_file = api.post(f"{STUDIES}/{study_id}/predict", files={"file": ("new.npz", npz.getvalue())})
    assert from_file.status_code == 200, from_file.text
    assert from_file.json()["labels"] == body["labels"]

    assert api.delete(model_url).status_code == 204  # the refit goes: the ensemble is served again
    assert api.get(model_url).json()["kind"] == "ensemble"
    assert api.post(model_url, json={"kind": "ensemble"}).json()["detail"][0]["field"] == "kind"
    assert api.post(model_url, json={"seeds": 11}).json()["detail"][0]["field"] == "seeds"


def _run_trials(storage, database_url: str, data_dir, study_name: str) -> None:
    """Run the study's trials as a worker does, up to the listing that sees it completed (where a
    worker queues the study's own refit), without running any model job."""
    picker = StudyPicker(storage, WorkerOptions(database_url=database_url, data_dir=str(data_dir),
                                                study_name=study_name), 0, threading.Event())
    while (runner := picker.pick(storage.get_all_studies())) is not None:
        runner.run_one()


def test_a_study_queues_its_refit_as_it_ends_and_serves_the_ensemble_until_it_is_ready(api, storage, database_url,
                                                                                       data_dir):
    study = api.post(STUDIES, json=_digits_spec("auto-refit", final_model={"seeds": 2})).json()
    name, url = study["optuna_study_name"], f"{STUDIES}/{study['id']}/model"
    x = _digits()[0][:20]
    _run_trials(storage, database_url, data_dir, name)

    meanwhile = api.get(url).json()

    assert meanwhile["state"] == "ready" and meanwhile["kind"] == "ensemble", meanwhile
    assert meanwhile["refit"]["state"] == "queued" and meanwhile["refit"]["auto"] is True
    assert meanwhile["refit"]["seeds"] == 2 and meanwhile["refit"]["trial_number"] == meanwhile["trial_number"]
    assert list(meanwhile["archives"]) == ["ensemble"]
    assert api.get(f"{url}/download").headers["x-model-kind"] == "ensemble"
    assert api.post(f"{STUDIES}/{study['id']}/predict", json={"x": x.tolist()}).json()["kind"] == "ensemble"
    not_yet = api.get(f"{url}/download", params={"kind": "refit"})
    assert not_yet.status_code == 409 and not_yet.json()["detail"][0]["field"] == "kind"
    assert "refit state: queued" in not_yet.json()["detail"][0]["message"]

    assert run_pending_model_jobs(storage, data_dir)
    ready = api.get(url).json()

    assert ready["state"] == "ready" and ready["kind"] == "refit" and ready["refit"]["state"] == "ready", ready
    assert ready["model"]["members"] == 2 and ready["learned"] is True
    assert set(ready["archives"]) == {"ensemble", "refit"}
    assert ready["archives"]["ensemble"]["learned"] is True and ready["archives"]["refit"]["learned"] is True
    assert api.get(f"{url}/download").headers["x-model-kind"] == "refit"
    ensemble = api.get(f"{url}/download", params={"kind": "ensemble"})
    assert ensemble.headers["x-model-kind"] == "ensemble" and load_model(ensemble.content).kind == "ensemble"
    assert api.post(f"{STUDIES}/{study['id']}/predict", json={"x": x.tolist()}).json()["kind"] == "refit"
    by_kind = api.post(f"{STUDIES}/{study['id']}/predict", params={"kind": "ensemble"}, json={"x": x.tolist()})
    assert by_kind.json()["kind"] == "ensemble"
    assert by_kind.json()["labels"] == load_model(ensemble.content).predict(x).tolist()
    bad_kind = api.get(f"{url}/download", params={"kind": "bagging"})
    assert bad_kind.status_code == 422 and bad_kind.json()["detail"][0]["field"] == "kind"

    _run_trials(storage, database_url, data_dir, name)  # another worker sees the study completed: nothing more
    assert not run_pending_model_jobs(storage, data_dir)


def test_a_failed_refit_leaves_the_ensemble_served_and_says_why(api, storage, database_url, data_dir):
    study = api.post(STUDIES, json=_digits_spec("refit-fails", final_model={"seeds": 1})).json()
    name, url = study["optuna_study_name"], f"{STUDIES}/{study['id']}/model"
    _run_trials(storage, database_url, data_dir, name)
    with storage.engine.begin() as connection:  # the job names a trial that is not there (deleted since, say)
        connection.execute(sa.update(model_jobs).where(model_jobs.c.study_name == name).values(trial_number=99))

    assert run_pending_model_jobs(storage, data_dir)
    status = api.get(url).json()

    assert status["state"] == "ready" and status["kind"] == "ensemble", status
    assert status["refit"]["state"] == "failed" and "trial 99" in status["refit"]["reason"]
    assert status["learned"] is True and list(status["archives"]) == ["ensemble"]
    assert api.get(f"{url}/download").headers["x-model-kind"] == "ensemble"
    assert api.get(f"{url}/download", params={"kind": "refit"}).status_code == 409
    assert api.delete(url, params={"kind": "ensemble"}).status_code == 204  # by kind: the failed refit stays
    assert api.get(url).json()["state"] == "failed"
    assert api.delete(url, params={"kind": "ensemble"}).status_code == 404


def _set_learned(storage, name: str, kind: str, learned: bool) -> None:
    """Record an archive's learning check as ``learned`` (what the fit writes when the model's
    training score is, or is not, better than the majority class)."""
    where = (model_archives.c.study_name == name, model_archives.c.kind == kind)
    with storage.engine.begin() as connection:
        summary = connection.execute(sa.select(model_archives.c.summary).where(*where)).scalar_one()
        connection.execute(sa.update(model_archives).where(*where).values(summary={**summary, "learned": learned}))


def test_a_refit_that_did_not_learn_leaves_the_ensemble_that_did_served(api, storage, database_url, data_dir):
    study = api.post(STUDIES, json=_digits_spec("refit-unlearned", final_model={"seeds": 1})).json()
    name, url = study["optuna_study_name"], f"{STUDIES}/{study['id']}/model"
    _run_trials(storage, database_url, data_dir, name)
    assert run_pending_model_jobs(storage, data_dir)
    _set_learned(storage, name, "refit", False)

    status = api.get(url).json()

    assert status["kind"] == "ensemble" and status["learned"] is True, status
    assert status["refit"]["state"] == "ready" and status["archives"]["refit"]["learned"] is False
    assert api.get(f"{url}/download").headers["x-model-kind"] == "ensemble"
    assert api.get(f"{url}/download", params={"kind": "refit"}).headers["x-model-kind"] == "refit"  # by name
    _set_learned(storage, name, "ensemble", False)  # neither learned: the refit, as for any ready refit
    assert api.get(url).json()["kind"] == "refit"


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"x": np.zeros((2, 8, 3)).tolist()}, "x", "3 features per step; the model was trained on 8"),
    ({"x": np.zeros((2, 5, 8)).tolist()}, "x", "every sequence must have 8 steps"),
    ({"texts": ["hello"]}, "texts", "unknown field; this model reads lengths and x"),
    ({}, "x", "required"),
    ([1, 2], "body", "must be a JSON object"),
])
def test_malformed_predict_inputs_are_422_naming_the_problem(fitted_api, body, field, message):
    api, study = fitted_api
    answer = api.post(f"{STUDIES}/{study['id']}/predict", json=body)
    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["field"] == field and message in problem["message"]


HOSTILE_NUMBERS = ["3.4e38", "-3.4e38", "1e38", "1e400", "NaN", "Infinity", "-Infinity", "9" * 400, "9" * 5000]


def _predict_text(api: TestClient, study: dict, text: str):
    return api.post(f"{STUDIES}/{study['id']}/predict", content=text, headers={"content-type": "application/json"})


@pytest.mark.parametrize("literal", HOSTILE_NUMBERS)
def test_hostile_numbers_in_x_are_422_naming_x(fitted_api, literal):
    api, study = fitted_api
    text = json.dumps({"x": np.zeros((2, 8, 8)).tolist()}).replace("0.0", literal, 1)
    answer = _predict_text(api, study, text)
    assert answer.status_code == 422, answer.text[:300]
    assert answer.json()["detail"][0]["field"].split(".")[0] == "x"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["x", "lengths"]), position=st.integers(0, 15),
       literal=st.sampled_from(HOSTILE_NUMBERS) | st.floats(min_value=1e30, allow_infinity=False).map(repr)
       | st.integers(min_value=2**63).map(str))
def test_hostile_numbers_in_any_numeric_predict_field_are_422_naming_it_or_answered(fitted_api, field, position,
                                                                                   literal):
    """Large but finite values may still have an answer (a saturated network); it is then all numbers."""
    api, study = fitted_api
    x = np.zeros((2, 8, 8)).tolist()
    body = {"x": x, "lengths": [8, 8]}
    if field == "x":
        x[0][position % 8][position // 8] = "__hostile__"
    else:
        body["lengths"][position % 2] = "__hostile__"
    answer = _predict_text(api, study, json.dumps(body).replace('"__hostile__"', literal))
    assert answer.status_code in (200, 422), (field, literal[:40], answer.text[:300])
    if answer.status_code == 422:
        assert answer.json()["detail"][0]["field"].split(".")[0] == field
    else:
        assert np.isfinite(np.array(answer.json()["probabilities"], dtype=float)).all()


@pytest.mark.parametrize("text", ['{"x": ' + "[" * 50_000 + "]" * 50_000 + "}", '{"x": [[[' + "9" * 5000 + "]]]}"])
def test_deep_or_long_predict_bodies_are_422(fitted_api, text):
    api, study = fitted_api
    answer = _predict_text(api, study, text)
    assert answer.status_code == 422, answer.text[:300]
    assert answer.json()["detail"][0]["field"] in ("body", "x")


def test_predict_refuses_bad_files_and_bodies(fitted_api):
    api, study = fitted_api
    url = f"{STUDIES}/{study['id']}/predict"

    wrong_format = api.post(url, files={"file": ("new.csv", b"a,b\n1,2\n")})
    not_json = api.post(url, content=b"{nope", headers={"content-type": "application/json"})
    no_type = api.post(url, content=b"x", headers={"content-type": "text/plain"})
    no_file = api.post(url, files={"other": ("a.npz", b"")})

    assert wrong_format.status_code == 422 and wrong_format.json()["detail"][0]["field"] == "file"
    assert "reads npz files; got csv" in wrong_format.json()["detail"][0]["message"]
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["detail"][0]["message"]
    assert no_type.status_code == 415
    assert no_file.status_code == 422 and no_file.json()["detail"][0]["field"] == "file"


def test_a_failed_fit_says_why(api, storage, data_dir):
    study = api.post(STUDIES, json=tiny_spec("fails")).json()
    url = f"{STUDIES}/{study['id']}/model"
    assert api.post(url, json={"holdout": 0.9}).json()["detail"][0]["field"] == "holdout"
    assert api.post(url, json={"trial_number": 99}).json()["detail"][0]["field"] == "trial_number"
    # A queued job naming a trial that is not there (say, the trials were deleted since):
    with storage.engine.begin() as connection:
        connection.execute(sa.insert(model_jobs).values(
            study_name=study["optuna_study_name"], job_id="j", state="queued", trial_number=99, holdout=0.0,
            seeds=1, attempts=0, requested_at=dt.datetime(2025, 1, 1)))

    assert run_pending_model_jobs(storage, data_dir)

    status = api.get(url).json()
    assert status["state"] == "failed"
    assert "trial 99" in status["reason"] and status["attempts"] == 1
    assert not run_pending_model_jobs(storage, data_dir)  # nothing left to do


def test_a_study_without_completed_trials_has_nothing_to_fit(api):
    study = api.post(STUDIES, json=tiny_spec("nothing-yet")).json()
    answer = api.post(f"{STUDIES}/{study['id']}/model")
    assert answer.status_code == 409
    assert "no completed trial" in answer.json()["detail"][0]["message"]


def test_forecasting_model_predicts_the_next_values_in_passengers(api, database_url, data_dir):
    spec = {"name": "airline-model", "task": "forecasting", "dataset": {"builtin": "airline"},
            "search_space": {"hidden_size": {"value": 8}, "lr": {"value": 0.01}, "batch_size": {"value": 32}},
            "cv": {"folds": 2}, "training": {"max_epochs": 3, "lookback": 6, "horizon": 2},
            "budget": {"n_trials": 1}, "final_model": {"kind": "ensemble"}}
    study = api.post(STUDIES, json=spec).json()
    _work(database_url, data_dir, study["optuna_study_name"])
    assert api.post(f"{STUDIES}/{study['id']}/model", json={"holdout": 0.1}).status_code == 202
    _work(database_url, data_dir, study["optuna_study_name"])
    status = api.get(f"{STUDIES}/{study['id']}/model").json()
    assert status["state"] == "ready" and status["kind"] == "refit", status
    assert status["model"]["training"]["holdout_samples"] > 0
    assert status["model"]["learning"]["baseline_name"] == "persistence"

    series = _airline().values[:30]
    answer = api.post(f"{STUDIES}/{study['id']}/predict", json={"series": series.tolist()})
    local = load_model(api.get(f"{STUDIES}/{study['id']}/model/download").content)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["target"] == "passengers" and body["horizon"] == 2
    np.testing.assert_allclose(body["predictions"], local.predict(series), rtol=1e-6)
    rolling = api.post(f"{STUDIES}/{study['id']}/predict", json={"series": series.tolist(), "rolling": True}).json()
    assert rolling["rolling"] is True and rolling["positions"] == list(range(6, 31))
    np.testing.assert_allclose(rolling["predictions"], local.predict(series, rolling=True), rtol=1e-6)
    np.testing.assert_allclose(rolling["predictions"][-1], body["predictions"], rtol=1e-6)
    csv = "month,passengers\n" + "".join(f"m{i},{v}\n" for i, v in enumerate(series.ravel()))
    from_file = api.post(f"{STUDIES}/{study['id']}/predict", files={"file": ("s.csv", csv.encode())},
                         data={"rolling": "true"}).json()
    assert from_file["predictions"] == rolling["predictions"]
    bad = api.post(f"{STUDIES}/{study['id']}/predict", json={"series": series.tolist(), "rolling": "yes"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "rolling"
    too_short = api.post(f"{STUDIES}/{study['id']}/predict", json={"series": series[:3].ravel().tolist()})
    assert too_short.status_code == 422
    assert too_short.json()["detail"][0] == {
        "field": "series", "message": "series: has 3 rows; the model reads the last 6 (lookback)"}


def test_delete_cancels_a_queued_refit_then_deletes_the_refit_then_the_ensemble(api, storage, database_url,
                                                                               data_dir, digits_study):
    study_id, name = digits_study["id"], digits_study["optuna_study_name"]
    url = f"{STUDIES}/{study_id}/model"
    assert api.post(url).status_code == 202

    cancelled = api.delete(url)

    assert cancelled.status_code == 204 and cancelled.content == b""
    assert api.get(url).json()["kind"] == "ensemble"  # the kept ensemble is the model again
    assert not run_pending_model_jobs(storage, data_dir)  # no worker starts the cancelled refit

    assert api.post(url).status_code == 202
    _work(database_url, data_dir, name)
    assert api.get(url).json()["state"] == "ready" and model_archive(storage, name, "refit") is not None

    assert api.delete(url).status_code == 204
    assert model_archive(storage, name, "refit") is None
    assert api.delete(url).status_code == 204  # then the ensemble

    assert api.get(url).json()["state"] == "none"
    gone = api.delete(url)
    assert gone.status_code == 404 and "no model to cancel or delete" in gone.json()["detail"][0]["message"]
    assert api.get(f"{url}/download").status_code == 409
    assert api.post(f"{STUDIES}/{study_id}/predict", json={"x": [[[0.0] * 8] * 8]}).status_code == 409
    assert api.post(url).status_code == 202  # and a new fit can be asked for


def test_delete_cancels_a_running_fit_at_its_next_epoch(api, storage, data_dir):
    study = api.post(STUDIES, json=tiny_spec("long-fit", training={"max_epochs": 200})).json()
    name = study["optuna_study_name"]
    # A complete trial as a worker records it, less its fold_best_epochs: the fit trains for
    # training.max_epochs, far longer than the test waits.
    optuna_study = optuna.load_study(study_name=name, storage=storage)
    trial = optuna_study.ask()
    suggest_params(trial, study_spec(optuna_study).search_space)
    optuna_study.tell(trial, 0.9)
    url = f"{STUDIES}/{study['id']}/model"
    assert api.post(url).status_code == 202
    epochs_started: list[float] = []

    def should_stop() -> bool:  # the fit polls it before each epoch
        epochs_started.append(time.monotonic())
        return False

    worker = threading.Thread(target=run_pending_model_jobs, args=(storage, data_dir),
                              kwargs={"should_stop": should_stop})
    worker.start()
    deadline = time.monotonic() + 60
    while (status := api.get(url).json())["state"] in ("queued", "running") and status.get("epoch", 0) < 1 \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status["state"] == "running" and status["epochs"] == 200, status.get("reason")

    assert api.delete(url).status_code == 204
    cancelled_at = time.monotonic()

    worker.join(timeout=60)
    assert not worker.is_alive(), "the worker went on fitting a cancelled model"
    # The epoch in progress ends, the worker finds the job gone and starts no other.
    assert len([t for t in epochs_started if t > cancelled_at]) <= 1, f"{len(epochs_started)} epochs of 200"
    assert api.get(url).json()["state"] == "none"  # the worker wrote nothing after the cancel
    assert model_archive(storage, name, "refit") is None
