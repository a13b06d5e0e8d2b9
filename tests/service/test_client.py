"""hpo.client.Client against a live server (real HTTP)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
import yaml

from hpo.client import APIError, Client
from hpo.spec import parse_spec
from service_support import add_trial, tiny_spec


@pytest.fixture
def client(live_server):
    with Client(live_server.url, timeout=10) as client:
        yield client


def test_submit_in_every_form(client, tmp_path):
    yaml_path = tmp_path / "spec.yaml"
    yaml_path.write_text(yaml.safe_dump(tiny_spec(name="from-yaml")))
    json_path = tmp_path / "spec.json"
    json_path.write_text(json.dumps(tiny_spec(name="from-json")))

    submitted = [
        client.submit(tiny_spec(name="from-dict")),
        client.submit(parse_spec(tiny_spec(name="from-model"))),
        client.submit(yaml_path),
        client.submit(str(json_path)),
    ]

    assert [s["name"] for s in submitted] == ["from-dict", "from-model", "from-yaml", "from-json"]
    assert all(s["state"] == "queued" for s in submitted)
    assert client.studies()["total"] == 4
    assert client.get(submitted[0]["id"])["spec"]["cv"]["folds"] == 2


def test_refusals_raise_api_error_with_the_fields(client):
    with pytest.raises(APIError) as refused:
        client.submit(tiny_spec(cv={"folds": 1}))
    with pytest.raises(APIError) as missing:
        client.get("nope")

    assert refused.value.status == 422
    assert refused.value.detail[0]["field"] == "cv.folds"
    assert "cv.folds" in str(refused.value)
    assert missing.value.status == 404


def test_study_lifecycle(client, storage):
    study = client.submit(tiny_spec(budget={"n_trials": 2}))
    with pytest.raises(APIError) as early:
        client.best(study["id"])

    assert early.value.status == 409
    assert client.cancel(study["id"])["state"] == "cancelled"
    assert client.resume(study["id"])["state"] == "queued"

    add_trial(storage, study["optuna_study_name"], value=0.7, fold_scores=[0.6, 0.8])
    add_trial(storage, study["optuna_study_name"], value=0.9, fold_scores=[0.9, 0.9])

    assert client.wait(study["id"], timeout_s=10)["state"] == "completed"
    best = client.best(study["id"])
    assert best["number"] == 1 and best["value"] == 0.9 and best["fold_scores"] == [0.9, 0.9]
    trials = client.trials(study["id"], sort="-value", include="intermediate")
    assert [t["value"] for t in trials["items"]] == [0.9, 0.7]
    assert client.trial(study["id"], 0)["value"] == 0.7
    client.delete(study["id"])
    with pytest.raises(APIError):
        client.get(study["id"])


def test_wait_times_out_then_sees_the_end(client, storage):
    study = client.submit(tiny_spec(budget={"n_trials": 1}))

    with pytest.raises(TimeoutError, match="still queued"):
        client.wait(study["id"], poll_s=0.05, timeout_s=0.3)
    threading.Timer(0.3, lambda: add_trial(storage, study["optuna_study_name"], value=0.5)).start()
    final = client.wait(study["id"], progress=True, poll_s=0.05, timeout_s=10)

    assert final["state"] == "completed" and final["best_value"] == 0.5


def test_upload_dataset(client, tmp_path):
    path = tmp_path / "spam.csv"
    path.write_text("text,label\n" + "".join(f"message {i},{'ab'[i % 2]}\n" for i in range(20)))
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")

    dataset = client.upload_dataset(path, "classification", max_length=16)
    with pytest.raises(APIError) as refused:
        client.upload_dataset(empty, "classification")

    assert dataset["name"] == "spam.csv" and dataset["options"] == {"max_length": 16}
    assert client.dataset(dataset["id"])["id"] == dataset["id"]
    assert client.datasets()["total"] == 1
    assert refused.value.status == 422 and refused.value.detail[0]["field"] == "file"
    study = client.submit(tiny_spec(dataset={"id": dataset["id"]}))
    assert study["dataset_id"] == dataset["id"]


def test_api_key_is_sent_as_bearer(live_server):
    with Client(live_server.url, api_key="s3cret") as client:
        assert client.http.headers["Authorization"] == "Bearer s3cret"
    with Client(live_server.url) as client:
        assert "Authorization" not in client.http.headers


def test_connection_errors_stay_connection_errors():
    with Client("http://127.0.0.1:1", timeout=2) as client:  # nothing listens there
        with pytest.raises(httpx.ConnectError):
            client.get("x")


def test_answers_that_are_not_the_apis_json_still_give_api_errors():
    proxy = httpx.Response(502, text="<html>Bad Gateway</html>")
    legacy = httpx.Response(404, json={"detail": "Not Found"})

    assert APIError.from_response(proxy).detail == [{"field": None, "message": "<html>Bad Gateway</html>"}]
    assert APIError.from_response(proxy).status == 502
    assert APIError.from_response(legacy).detail == [{"field": None, "message": "Not Found"}]
