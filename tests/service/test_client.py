"""hpo.client.Client against a live server (real HTTP)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import yaml

from hpo.cli import main
from hpo.client import APIError, Client
from hpo.data.builtins import _digits
from hpo.export import load_model
from hpo.spec import parse_spec
from hpo.worker import WorkerOptions, worker_loop
from tests.support.studies import add_trial, tiny_spec


@pytest.fixture
def client(live_server):
    with Client(live_server.url, timeout=10) as client:
        yield client


@pytest.fixture
def worker(settings) -> Iterator[None]:
    """A worker next to the live server, as ``hpo worker`` runs one (in a thread)."""
    stop = threading.Event()
    options = WorkerOptions(database_url=settings.database_url, data_dir=settings.data_dir, poll_interval_s=0.05)
    thread = threading.Thread(target=worker_loop, args=(options, 0, stop))
    thread.start()
    yield
    stop.set()
    thread.join(timeout=60)


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


def test_model_fit_wait_download_predict_delete(client, worker, live_server, tmp_path, capsys):
    spec = tiny_spec("client-model", search_space={"hidden_size": {"value": 16}, "lr": {"value": 0.01},
                                                   "batch_size": {"value": 64}}, budget={"n_trials": 1},
                     final_model={"kind": "ensemble"})  # no refit until one is asked for
    study = client.submit(spec)
    study_id = study["id"]
    assert client.model(study_id)["state"] == "none"
    assert client.wait_model(study_id, timeout_s=5)["state"] == "none"  # nothing asked for: nothing to wait for
    client.wait(study_id, poll_s=0.1, timeout_s=120)
    assert client.model(study_id)["kind"] == "ensemble"  # the best trial's fold models, kept as it completed

    queued = client.fit_model(study_id, holdout=0.2, seeds=2)
    with pytest.raises(APIError) as bad_holdout:
        client.fit_model(study_id, holdout=0.9)
    ready = client.wait_model(study_id, poll_s=0.1, timeout_s=120)

    refit = queued["refit"]
    assert refit["state"] == "queued" and refit["trial_number"] == 0 and refit["holdout"] == 0.2
    assert queued["kind"] == "ensemble" and refit["seeds"] == 2 and refit["auto"] is False  # served meanwhile
    assert bad_holdout.value.status == 422 and bad_holdout.value.detail[0]["field"] == "holdout"
    assert ready["state"] == "ready" and ready["kind"] == "refit", ready.get("reason")
    assert ready["model"]["trial_number"] == 0 and ready["model"]["training"]["holdout_samples"] > 0
    assert ready["model"]["members"] == 2
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    path = client.download_model(study_id, downloads)  # a folder: the file gets the server's name for it
    assert path == downloads / f"{study['optuna_study_name']}.hpo.zip"
    assert list(downloads.iterdir()) == [path]  # no partial file left over
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ready["archive"]["sha256"]
    model = load_model(path)

    x = _digits()[0][:5]
    answer = client.predict(study_id, {"x": x})  # a NumPy array goes as lists
    with pytest.raises(APIError) as bad_input:
        client.predict(study_id, {"x": x[:, :, :3]})

    assert answer["labels"] == model.predict(x).tolist()
    np.testing.assert_allclose(answer["probabilities"], model.predict_proba(x), rtol=1e-5, atol=1e-7)
    assert bad_input.value.status == 422 and bad_input.value.detail[0]["field"] == "x"

    # `hpo model download|fit --url` go through the same client.
    main(["model", "download", study_id, "--url", live_server.url, "--out", str(tmp_path / "cli.hpo.zip")])
    printed = capsys.readouterr()
    assert printed.out.strip() == str(tmp_path / "cli.hpo.zip") and "model kind: refit (2 network(s))" in printed.err
    assert (tmp_path / "cli.hpo.zip").read_bytes() == path.read_bytes()
    main(["model", "fit", study_id, "--url", live_server.url, "--wait"])
    assert json.loads(capsys.readouterr().out)["state"] == "ready"

    client.delete_model(study_id)  # the refit: the ensemble is served again
    assert client.model(study_id)["kind"] == "ensemble"
    client.delete_model(study_id)
    assert client.model(study_id)["state"] == "none"
    with pytest.raises(APIError) as not_ready:
        client.download_model(study_id, tmp_path / "gone.hpo.zip")
    with pytest.raises(APIError) as nothing_left:
        client.delete_model(study_id)
    assert not_ready.value.status == 409 and "model state: none" in str(not_ready.value)
    assert not (tmp_path / "gone.hpo.zip").exists()
    assert nothing_left.value.status == 404
