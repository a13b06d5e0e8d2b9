"""Probes, metrics, the OpenAPI document, and the promise that no input produces a 500."""

from __future__ import annotations

import re

import pytest

from hpo.db import make_engine, make_sessionmaker
from tests.support.studies import add_trial, tiny_spec

STUDIES = "/api/v1/studies"


def test_healthz_and_readyz(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_readyz_is_503_when_the_database_is_gone(api):
    engine = make_engine("postgresql://postgres@127.0.0.1:1/nowhere")  # nothing listens on port 1
    api.app.state.sessions = make_sessionmaker(engine)
    try:
        response = api.get("/readyz")
        health = api.get("/healthz")
    finally:
        engine.dispose()

    assert response.status_code == 503
    assert "unreachable" in response.json()["status"]
    assert health.status_code == 200


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from:\n{text}"
    return float(match.group(1))


def test_metrics(api, storage):
    first = api.post(STUDIES, json=tiny_spec(budget={"n_trials": 5})).json()
    second = api.post(STUDIES, json=tiny_spec(budget={"n_trials": 2})).json()
    third = api.post(STUDIES, json=tiny_spec(budget={"n_trials": 4})).json()
    api.post(f"{STUDIES}/{third['id']}/cancel")
    add_trial(storage, first["optuna_study_name"], value=0.5)
    add_trial(storage, first["optuna_study_name"], state="running")
    add_trial(storage, first["optuna_study_name"], state="failed")
    add_trial(storage, second["optuna_study_name"], value=0.6)
    add_trial(storage, second["optuna_study_name"], state="pruned")

    response = api.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert metric(text, 'hpo_trials{state="complete"}') == 2
    assert metric(text, 'hpo_trials{state="pruned"}') == 1
    assert metric(text, 'hpo_trials{state="failed"}') == 1
    assert metric(text, 'hpo_trials{state="running"}') == 1
    assert metric(text, "hpo_trial_duration_seconds_count") == 3
    assert metric(text, "hpo_trial_duration_seconds_sum") >= 0
    assert metric(text, 'hpo_studies{state="running"}') == 1
    assert metric(text, 'hpo_studies{state="completed"}') == 1
    assert metric(text, 'hpo_studies{state="cancelled"}') == 1
    assert metric(text, 'hpo_studies{state="queued"}') == 0
    assert metric(text, "hpo_queue_depth") == 5 - 1 - 1  # first study: 1 finished, 1 running
    assert metric(text, "hpo_trial_cache_trials") == 5
    assert "# TYPE hpo_trial_duration_seconds summary" in text


def test_openapi_and_docs(shared_api):
    schema = shared_api.get("/openapi.json").json()
    docs = shared_api.get("/docs")

    assert "/api/v1/studies" in schema["paths"] and "/api/v1/datasets" in schema["paths"]
    assert "StudySpec" in schema["components"]["schemas"]
    body = schema["paths"]["/api/v1/studies"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/yaml"}
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


GARBAGE = [
    ("POST", "/api/v1/studies", {"content": b"\x00\x01\x02", "headers": {"Content-Type": "application/json"}}),
    ("POST", "/api/v1/studies", {"content": b"name: x\ndataset: 5\n", "headers": {"Content-Type": "application/yaml"}}),
    ("POST", "/api/v1/studies", {"json": {"name": "x", "dataset": {"builtin": "digits"}, "search_space": []}}),
    ("POST", "/api/v1/studies", {"json": {"name": "x", "dataset": {"builtin": "digits"},
                                          "search_space": {"lr": {"low": "a", "high": None}}}}),
    ("POST", "/api/v1/studies", {"content": b'{"name": "x", "dataset": {"builtin": "digits"}, '
                                             b'"search_space": {"lr": {"low": 1e308, "high": 1e309}}}',
                                 "headers": {"Content-Type": "application/json"}}),
    ("POST", "/api/v1/studies", {"content": b'{"name": "x", "dataset": {"builtin": "digits"}, '
                                             b'"search_space": {"dropout": NaN}}',
                                 "headers": {"Content-Type": "application/json"}}),
    ("POST", "/api/v1/studies", {"json": {"name": "x", "dataset": {"builtin": "digits"}, "sampler": {"name": "grid"}}}),
    ("POST", "/api/v1/studies", {"json": {"name": "x" * 500, "dataset": {"builtin": "digits"}}}),
    ("POST", "/api/v1/studies", {"json": {"name": "x", "dataset": {"id": "../../etc"}}}),
    ("POST", "/api/v1/studies", {"json": {"name": "x", "dataset": {"builtin": "digits"},
                                          "enqueue_trials": [{"lr": "fast"}, "not a dict"]}}),
    ("POST", "/api/v1/studies", {"content": b"name: x\n" * 10, "headers": {"Content-Type": "text/yaml"}}),
    ("POST", "/api/v1/studies", {"content": b"!!python/object:os.system ls",
                                 "headers": {"Content-Type": "application/yaml"}}),
    ("POST", "/api/v1/studies", {"content": b"a: " + b"[" * 30000, "headers": {"Content-Type": "application/yaml"}}),
    ("POST", "/api/v1/studies", {"content": b"name: x\nsearch_space: {lr: {value: " + b"[" * 60 + b"]" * 60 + b"}}",
                                 "headers": {"Content-Type": "text/yaml"}}),
    ("POST", "/api/v1/studies", {"content": b"".join(b" " * i + b"k:\n" for i in range(200)),
                                 "headers": {"Content-Type": "text/yaml"}}),
    ("GET", "/api/v1/studies?limit=99999999999999999999999", {}),
    ("GET", "/api/v1/studies?offset=abc&state=", {}),
    ("GET", "/api/v1/studies/%00", {}),
    ("GET", "/api/v1/datasets/a%00b", {}),
    ("DELETE", "/api/v1/datasets/%FF%FE", {}),
    ("GET", "/api/v1/studies/x%00/events", {"headers": {"Last-Event-ID": "not-a-number"}}),
    ("GET", "/api/v1/studies/" + "x" * 5000, {}),
    ("GET", "/api/v1/datasets?limit=-5", {}),
    ("POST", "/api/v1/datasets", {"content": b"--x\r\nbroken",
                                  "headers": {"Content-Type": "multipart/form-data; boundary=x"}}),
    ("POST", "/api/v1/datasets", {"content": b"garbage", "headers": {"Content-Type": "multipart/form-data"}}),
    ("POST", "/api/v1/datasets", {"files": {"file": ("a.csv", b"text,label\n")}, "data": {"task": ""}}),
    ("PUT", "/api/v1/studies", {}),
    ("POST", "/api/v1/studies/x/cancel", {"json": [1, 2]}),
]


@pytest.mark.parametrize(("method", "url", "kwargs"), GARBAGE, ids=[f"{i}" for i in range(len(GARBAGE))])
def test_garbage_gets_4xx_never_500(shared_api, method, url, kwargs):
    response = shared_api.request(method, url, **kwargs)

    assert 400 <= response.status_code < 500, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and all("field" in d and d["message"] for d in detail)
