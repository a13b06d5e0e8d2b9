"""Schemathesis sends what the OpenAPI schema allows, and much that it does not, to a live
server: no request may get a 5xx (a refusal is a 4xx naming what was wrong)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from service.app import create_app  # noqa: E402
from hpo.storage import open_storage  # noqa: E402
from tests.support.servers import LiveServer, make_settings  # noqa: E402
from tests.support.studies import add_trial, tiny_spec  # noqa: E402

pytestmark = pytest.mark.slow
API = "/api/v1"
EXAMPLES_PER_OPERATION = 15


@pytest.fixture(scope="module")
def fuzzed_server(module_database) -> Iterator[LiveServer]:
    """A live server (no workers) on a fresh database, shared by every generated request."""
    url, folder = module_database
    with LiveServer(create_app(make_settings(url, folder / "data"))) as server:
        server.known_ids = known_ids(server.url, url)
        yield server


def known_ids(server_url: str, database_url: str) -> dict[str, str]:
    """A study with trials and an uploaded dataset, so that requests naming them reach past
    the 404 into the routes' own handling."""
    csv = "text,label\n" + "".join(f"message {i},{'spam' if i % 2 else 'ham'}\n" for i in range(24))
    dataset = httpx.post(f"{server_url}{API}/datasets", files={"file": ("s.csv", csv.encode())},
                         data={"task": "classification"}).json()
    study = httpx.post(f"{server_url}{API}/studies", json=tiny_spec("fuzzed", budget={"n_trials": 5})).json()
    storage = open_storage(database_url)
    for i, state in enumerate(["complete", "complete", "pruned", "failed", "running"]):
        add_trial(storage, study["optuna_study_name"], state=state, value=0.5 + i / 10, steps=[0.4, 0.5 + i / 10],
                  fold_scores=[0.5, 0.6])
    storage.engine.dispose()
    return {"study_id": study["id"], "dataset_id": dataset["id"]}


@pytest.fixture(scope="module")
def api_schema(fuzzed_server):
    # Event streams of an existing study never end by themselves: not something to fuzz.
    return schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json").exclude(path_regex=r"/events$")


def fuzz_targets(schema, ids: dict[str, str]) -> list[tuple[Any, dict[str, str]]]:
    """Each operation with generated path parameters, and again naming the existing study or
    dataset when it takes one; deletions last, so that the other requests still find them."""
    targets = []
    for operation in (result.ok() for result in schema.get_all_operations()):
        targets.append((operation, {}))
        known = {name: value for name, value in ids.items() if f"{{{name}}}" in operation.path}
        if known:
            targets.append((operation, known))
    return sorted(targets, key=lambda target: (target[0].method.upper() == "DELETE", bool(target[1])))


# schemathesis' own pytest loader (``schemathesis.pytest.from_fixture``) fails on pytest 9
# ("'Function' object has no attribute '_nodeid'"), so each operation's Hypothesis test is
# built here from its case strategy: valid requests and invalid ones alike.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_request_gets_a_server_error(fuzzed_server, api_schema, mode):
    failures = []
    for operation, path_parameters in fuzz_targets(api_schema, fuzzed_server.known_ids):

        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])
        def no_server_error(case):
            case.call_and_validate(checks=[not_a_server_error], timeout=30)

        try:
            no_server_error()
        except Unsatisfiable:
            continue  # nothing of this operation can be made invalid (no parameters, or free strings)
        except Exception as exc:  # noqa: BLE001 (gather every operation's failure, then fail once)
            failures.append(f"{operation.label} {path_parameters or ''}: {exc}")
    assert not failures, "\n\n".join(failures)
