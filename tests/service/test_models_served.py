"""The final model through a real ``hpo serve`` (embedded worker, real HTTP): the fold
ensemble is served when the study ends, and predict refuses what it cannot answer."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from hpo.client import Client
from tests.support.servers import ServeProcess

pytestmark = pytest.mark.service


def test_a_variable_length_model_refuses_padding_without_lengths_and_keeps_int_labels(database_url, tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 11, size=80)
    sequences = [rng.normal(size=(n, 2)) for n in lengths]
    labels = np.where([s[:, 0].mean() > 0 for s in sequences], 7, 3)  # integer labels, not 0-based
    path = tmp_path / "ragged.npz"
    np.savez(path, values=np.concatenate(sequences), lengths=lengths, y=labels)
    padded = np.zeros((5, 10, 2))
    for i in range(5):
        padded[i, : lengths[i]] = sequences[i]

    with ServeProcess(database_url, tmp_path / "data", tmp_path / "serve.log", workers=1) as server, \
            Client(server.url, timeout=30) as client:
        dataset = client.upload_dataset(path, "classification")
        study = client.submit({
            "name": "ragged", "task": "classification", "dataset": {"id": dataset["id"]},
            "search_space": {"hidden_size": 8, "lr": 0.01, "batch_size": 32}, "cv": {"folds": 2},
            "training": {"max_epochs": 2}, "budget": {"n_trials": 2}})
        assert client.wait(study["id"], poll_s=0.5, timeout_s=300)["state"] == "completed"
        status = client.model(study["id"])
        refused = httpx.post(f"{server.url}/api/v1/studies/{study['id']}/predict", json={"x": padded.tolist()})
        answer = client.predict(study["id"], {"x": padded, "lengths": lengths[:5]})
        ragged = client.predict(study["id"], {"x": [s.tolist() for s in sequences[:5]]})

    assert status["state"] == "ready" and status["kind"] == "ensemble", status
    assert status["model"]["members"] == 2 and isinstance(status["learned"], bool)
    assert refused.status_code == 422
    [problem] = refused.json()["detail"]
    assert problem["field"] == "lengths" and "required" in problem["message"]
    assert answer["classes"] == [3, 7] and set(answer["labels"]) <= {3, 7}
    assert all(type(label) is int for label in answer["labels"])
    assert answer["labels"] == ragged["labels"] and answer["kind"] == "ensemble"
