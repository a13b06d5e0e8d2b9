"""Hostile numbers in a spec (issue 12, item 5): NaN, infinities, 1e400, integers of hundreds
or thousands of digits, in JSON and YAML, get a 422 naming the field; never a 500."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from hpo.spec import PARAM_NAMES, SearchSpace, StudySpec
from tests.support.studies import tiny_spec

STUDIES = "/api/v1/studies"
PLACEHOLDER = "__hostile_number__"
# Written into the JSON text as they are: Python's json reads NaN and Infinity, as browsers send them.
HOSTILE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 400, "-" + "9" * 400, "9" * 5000,
           "-" + "9" * 5000]


def _numeric(annotation: Any) -> bool:
    return annotation in (int, float) or any(_numeric(a) for a in typing.get_args(annotation))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *typing.get_args(annotation)]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def numeric_paths(model: type[BaseModel] = StudySpec, prefix: str = "") -> list[str]:
    """Every numeric field of the spec, found from the models themselves (a new field is covered too)."""
    paths = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if model is StudySpec and name == "search_space":
            continue  # parameters: below
        nested = _model_of(field.annotation)
        if nested is not None:
            paths += numeric_paths(nested, f"{path}.")
        elif _numeric(field.annotation) and not isinstance(field.annotation, types.GenericAlias):
            paths.append(path)
    for param in PARAM_NAMES:
        if SearchSpace.kind(param) != "categorical":
            paths += [f"search_space.{param}.{key}" for key in ("low", "high", "value", "choices.0")]
            paths.append(f"enqueue_trials.0.{param}")
    return paths


PATHS = numeric_paths()


def hostile_body(path: str, literal: str) -> str:
    """The tiny spec as JSON text with ``literal`` written at ``path``."""
    spec: dict[str, Any] = tiny_spec("hostile")
    keys = path.split(".")
    if keys[0] == "search_space":
        spec["search_space"] = {keys[1]: {"low": 2, "high": 8} if keys[2] in ("low", "high") else {}}
    if keys[0] == "enqueue_trials":
        spec["enqueue_trials"] = [{}]
    node: Any = spec
    for key, following in zip(keys, keys[1:]):
        if isinstance(node, list):
            node = node[int(key)]
            continue
        node = node.setdefault(key, [] if following.isdigit() else {})
    if isinstance(node, list):
        node.append(PLACEHOLDER)
    else:
        node[keys[-1]] = PLACEHOLDER
    return json.dumps(spec).replace(f'"{PLACEHOLDER}"', literal)


def assert_refused_naming(response, path: str) -> None:
    assert response.status_code == 422, (path, response.status_code, response.text[:300])
    named = [item["field"] for item in response.json()["detail"]]
    # A parameter's errors name the parameter (search_space.lr), the others the field itself.
    assert any(path == field or path.startswith(f"{field}.") for field in named if field.count(".") >= 1), \
        (path, named)


def test_every_numeric_field_of_the_spec_is_covered():
    for expected in ("budget.timeout_s", "sampler.seed", "cv.seed", "training.patience", "pruner.p_threshold",
                     "model.num_layers", "search_space.batch_size.value", "enqueue_trials.0.hidden_size"):
        assert expected in PATHS


@pytest.mark.parametrize(("path", "literal"), [
    ("search_space.batch_size.value", "NaN"),
    ("search_space.hidden_size.choices.0", "9" * 400),
    ("search_space.batch_size.value", "1e400"),
    ("model.num_layers", "Infinity"),
    ("enqueue_trials.0.batch_size", "9" * 400),
    ("enqueue_trials.0.hidden_size", "1e400"),
    ("enqueue_trials.0.batch_size", "NaN"),
    ("budget.timeout_s", "Infinity"),
    ("budget.n_trials", "9" * 5000),
    ("cv.seed", "9" * 400),
])
def test_reported_numbers_are_422_naming_the_field(shared_api, path, literal):
    response = shared_api.post(STUDIES, content=hostile_body(path, literal),
                               headers={"content-type": "application/json"})
    assert_refused_naming(response, path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), literal=st.sampled_from(HOSTILE) | st.integers(min_value=2**64).map(str)
       | st.integers(max_value=-(2**64)).map(str))
def test_hostile_numbers_in_any_numeric_field_are_422_naming_it(shared_api, path, literal):
    response = shared_api.post(STUDIES, content=hostile_body(path, literal),
                               headers={"content-type": "application/json"})
    assert_refused_naming(response, path)


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf", "9" * 5000, "-" + "9" * 5000])
def test_yaml_numbers_are_422_naming_the_field(shared_api, value):
    body = f"name: hostile\ndataset: {{builtin: digits}}\nbudget: {{timeout_s: {value}}}\n"
    response = shared_api.post(STUDIES, content=body, headers={"content-type": "application/yaml"})
    assert_refused_naming(response, "budget.timeout_s")


def test_a_deeply_nested_json_body_is_422(shared_api):
    body = '{"name": "x", "enqueue_trials": ' + "[" * 20_000 + "]" * 20_000 + "}"
    response = shared_api.post(STUDIES, content=body, headers={"content-type": "application/json"})
    assert response.status_code in (413, 422)
    assert response.json()["detail"][0]["field"] == "body"


def test_curves_of_a_5000_digit_trial_number_are_422(shared_api):
    study = shared_api.post(STUDIES, json=tiny_spec("curves")).json()
    response = shared_api.get(f"/api/v1/views/studies/{study['id']}/curves", params={"trials": "9" * 5000})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "trials"
