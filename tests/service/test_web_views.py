"""The browser pages' data (``/api/v1/views``), the pages and their assets, and the mounted
optuna-dashboard, without a browser (``tests/browser`` drives the pages in Chromium)."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import re
import time
from typing import get_args

import httpx
import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState, create_trial

from hpo import spec
from hpo.samplers import suggest_params
from hpo.spec import parse_spec
from hpo.db.models import StudyRecord
from hpo.storage import read_trials, write_trials
from hpo.studies import fail_study, progress, ranked, tally_trials
from service.app import create_app
from service.events import event_id_of
from service.schemas import TrialOut
from service.views import last_reported
from service.web.plots import (
    HISTORY_MAX_POINTS, PARALLEL_LINES, ImportanceCache, complete_columns, curve_view, downsample, pruned_columns,
    spread,
)
from tests.support.databases import sqlite_url
from tests.support.servers import make_settings
from tests.support.studies import tiny_spec
from test_events import named, read_until, sse_events

STUDIES = "/api/v1/studies"
VIEWS = "/api/v1/views/studies"


def run_trial(storage, study: dict, *, state: str = "complete", value: float = 0.5, steps: int = 2,
              folds: int = 2) -> int:
    """One trial as a worker runs it: the spec's parameters, per-epoch reports, per-fold scores."""
    optuna_study = optuna.load_study(study_name=study["optuna_study_name"], storage=storage)
    trial = optuna_study.ask()
    suggest_params(trial, parse_spec(study["spec"]).search_space)
    for step in range(steps):
        trial.report(value * (step + 1) / steps, step)
    if state == "running":
        return trial.number
    trial.set_user_attr("fold_scores", [value] * folds)
    trial.set_user_attr("fold_std", 0.0)
    if state == "pruned":
        optuna_study.tell(trial, state=TrialState.PRUNED)
    else:
        optuna_study.tell(trial, value)
    return trial.number


@pytest.fixture
def study(api) -> dict:
    return api.post(STUDIES, json=tiny_spec(budget={"n_trials": 10})).json()


def test_overview_of_an_empty_study(api, study):
    view = api.get(f"{VIEWS}/{study['id']}").json()

    assert view["study"]["state"] == "queued" and view["study"]["spec"]["cv"]["folds"] == 2
    assert view["study"]["dashboard_url"] == f"/studies/{study['id']}/dashboard"  # no internal Optuna id
    assert view["complete"] == {"number": [], "value": [], "total": 0,
                                "params": {name: [] for name in ("lr", "batch_size", "hidden_size", "dropout",
                                                                 "clip_norm", "weight_decay")}}
    assert view["best"] is None and view["event_id"] == 0
    space = {p["name"]: p for p in view["space"]}
    assert [p["name"] for p in view["space"]][:5] == ["lr", "batch_size", "hidden_size", "dropout", "clip_norm"]
    assert space["hidden_size"]["fixed"] == 16 and space["lr"]["log"] is True
    assert space["batch_size"]["kind"] == "categorical" and space["batch_size"]["choices"] == [128, 256]


def test_overview_columns_best_and_updates(api, storage, study):
    for value in (0.3, 0.9, 0.6):
        run_trial(storage, study, value=value)
    run_trial(storage, study, state="pruned", value=0.1)
    running = run_trial(storage, study, state="running")
    url = f"{VIEWS}/{study['id']}"

    view = api.get(url).json()

    assert view["complete"]["number"] == [0, 1, 2] and view["complete"]["value"] == [0.3, 0.9, 0.6]
    assert len(view["complete"]["params"]["lr"]) == 3
    assert view["best"]["number"] == 1 and view["best"]["fold_scores"] == [0.9, 0.9]
    assert view["study"]["trials"]["running"] == 1 and view["event_id"] > 0
    # A pruned trial: its last reported score, for the history's "include pruned" and the table.
    assert view["pruned"] == {"number": [3], "value": [0.1], "total": 1}
    pruned = api.get(f"{STUDIES}/{study['id']}/trials", params={"state": "pruned"}).json()["items"][0]
    assert pruned["value"] is None and pruned["last_value"] == 0.1 and pruned["last_step"] == 1
    # A running trial is read again; finished ones come from the cache.
    optuna.load_study(study_name=study["optuna_study_name"], storage=storage).tell(running, 0.95)
    view = api.get(url).json()
    assert view["complete"]["number"] == [0, 1, 2, running] and view["best"]["number"] == running
    assert view["study"]["trials"] == api.get(f"{STUDIES}/{study['id']}").json()["trials"]


def test_curves_pick_the_best_the_latest_and_the_asked(api, storage, study):
    for value in (0.1, 0.2, 0.9, 0.3, 0.4):
        run_trial(storage, study, value=value, steps=5)
    run_trial(storage, study, state="pruned", steps=2)

    curves = api.get(f"{VIEWS}/{study['id']}/curves", params={"top": 1, "recent": 1, "trials": "0"}).json()

    assert [c["number"] for c in curves["curves"]] == [0, 2, 5]
    pruned = curves["curves"][-1]
    assert pruned["state"] == "pruned" and pruned["steps"] == [0, 1] and pruned["value"] is None
    assert curves["max_epochs"] == 2 and curves["metric"] == "accuracy"
    thin = api.get(f"{VIEWS}/{study['id']}/curves", params={"top": 1, "recent": 0, "max_points": 3}).json()
    assert thin["curves"][0]["steps"] == [0, 2, 4] and thin["curves"][0]["n_steps"] == 5
    bad = api.get(f"{VIEWS}/{study['id']}/curves", params={"trials": "1;2"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "trials"


def test_downsample_keeps_the_ends():
    assert downsample([0, 1, 2], [1.0, 2.0, 3.0], 5) == ([0, 1, 2], [1.0, 2.0, 3.0])
    steps, values = downsample(list(range(1000)), [float(v) for v in range(1000)], 200)
    assert len(steps) == 200 and steps[0] == 0 and steps[-1] == 999 and values[-1] == 999.0


def best_so_far_steps(columns: dict, direction: str) -> list[tuple[int, float]]:
    """Where the page's best-so-far line steps (study_plots.js: historyTraces)."""
    sign, best, steps = (-1 if direction == "maximize" else 1), None, []
    for number, value in sorted(zip(columns["number"], columns["value"])):
        if value is not None and (best is None or sign * value < sign * best):
            best = value
            steps.append((number, value))
    return steps


def best_lines(columns: dict, direction: str) -> list[int]:
    """The trials the page's parallel coordinates draw (study.js: bestColumns)."""
    sign = -1 if direction == "maximize" else 1
    order = sorted((i for i, v in enumerate(columns["value"]) if v is not None),
                   key=lambda i: sign * columns["value"][i])
    return sorted(columns["number"][i] for i in order[:PARALLEL_LINES])


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_history_columns_past_the_limit_keep_the_best_so_far_line_and_the_best_trials(direction):
    rng = random.Random(7)
    distribution = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}
    trials = []
    for number in range(800):
        state = TrialState.PRUNED if number % 5 == 0 else TrialState.COMPLETE
        value = math.inf if number == 13 else round(rng.random(), 2)  # ties; one not finite
        trial = create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                             params={"lr": 10 ** rng.uniform(-4, -1)}, distributions=distribution)
        trial.number = number
        trials.append(trial)
    by_number = {t.number: t for t in trials}
    read_params = lambda numbers: [by_number[n] for n in numbers]  # noqa: E731
    values = [(t.number, t.value) for t in trials if t.state == TrialState.COMPLETE]
    full = complete_columns(values, ["lr"], direction, read_params, max_points=10_000)
    sample = complete_columns(values, ["lr"], direction, read_params, max_points=400)

    assert full["total"] == sample["total"] == 640 and len(full["number"]) == 640
    assert len(sample["number"]) <= 400 and sample["number"] == sorted(sample["number"])
    assert sample["number"][-1] == full["number"][-1]
    assert best_so_far_steps(sample, direction) == best_so_far_steps(full, direction)
    assert best_lines(sample, direction) == best_lines(full, direction)
    rows = {n: (v, lr) for n, v, lr in zip(full["number"], full["value"], full["params"]["lr"])}
    assert all(rows[n] == (v, lr) for n, v, lr in zip(sample["number"], sample["value"], sample["params"]["lr"]))


def test_pruned_points_past_the_limit_are_spread_evenly_and_counted():
    last_values = [(number, number / 300) for number in range(300)]

    sample = pruned_columns(last_values, max_points=50)

    assert sample["total"] == 300 and len(sample["number"]) == 50
    assert sample["number"] == sorted(sample["number"]) and sample["number"][0] == 0 and sample["number"][-1] == 299
    assert sample["value"] == [n / 300 for n in sample["number"]]
    assert pruned_columns(last_values)["number"] == list(range(300))


def test_importance_needs_eleven_complete_trials_and_follows_the_page_count(api, storage, study):
    """Below 11 complete trials PED-ANOVA's best tenth is one trial: no shares, a reason. A page
    asks over the trials it counts (``complete``): the answer is over those, even once more
    have completed."""
    url = f"{VIEWS}/{study['id']}/importance"
    for value in (0.4, 0.1, 0.7, 0.2):
        run_trial(storage, study, value=value)

    not_yet = api.get(url).json()

    assert not_yet["status"] == "not_enough" and "importances" not in not_yet
    assert "at least 11 complete trials (4 so far)" in not_yet["message"] and "single trial" in not_yet["message"]
    for value in (0.3, 0.9, 0.6, 0.5, 0.8, 0.35, 0.65, 0.45):
        run_trial(storage, study, value=value)
    ready = api.get(url).json()
    assert ready["status"] == "ok" and ready["n_complete"] == 12
    # Fixed parameters (hidden_size here) are not searched, so they have no importance.
    assert set(ready["importances"]) == {"lr", "batch_size", "dropout", "clip_norm"}
    assert ready["fixed"]["hidden_size"] == 16
    assert abs(sum(ready["importances"].values()) - 1) < 1e-6 and ready["sample"] is None  # every trial
    assert api.get(url).json() == ready
    as_counted = api.get(url, params={"complete": 11}).json()  # the page saw 11 complete trials
    assert as_counted["status"] == "ok" and as_counted["n_complete"] == 11
    assert api.get(url, params={"complete": 10}).json()["status"] == "not_enough"
    assert api.get(url, params={"complete": 50}).json()["n_complete"] == 12
    assert api.get(url, params={"complete": -1}).status_code == 422


def test_study_list_filters_by_state(api, storage):
    done = api.post(STUDIES, json=tiny_spec(name="done", budget={"n_trials": 1})).json()
    api.post(STUDIES, json=tiny_spec(name="waiting"))
    run_trial(storage, done, value=0.5)

    everything = api.get(VIEWS).json()
    completed = api.get(VIEWS, params={"state": "completed"}).json()

    assert [s["name"] for s in everything["items"]] == ["waiting", "done"] and everything["total"] == 2
    assert [s["name"] for s in completed["items"]] == ["done"] and completed["total"] == 1
    item = completed["items"][0]
    assert (item["sampler"], item["cell"]) == ("tpe", "lstm")
    assert (item["dataset"], item["dataset_kind"]) == ("digits", "builtin")
    assert item["best_value"] == 0.5 and item["trials"]["complete"] == 1


def test_each_state_filter_lists_the_studies_in_that_state(api, storage):
    """The filter derives states without loading each study: the same as each study's own."""
    studies = [api.post(STUDIES, json=tiny_spec(name=name, budget={"n_trials": 2})).json()
               for name in ("done", "running", "cancelled", "broken", "queued")]
    for _ in range(2):
        run_trial(storage, studies[0], value=0.5)
    run_trial(storage, studies[1], value=0.5)
    api.post(f"{STUDIES}/{studies[2]['id']}/cancel")
    fail_study(storage, studies[3]["optuna_study_name"], "dataset gone")

    everything = api.get(VIEWS).json()["items"]
    assert sorted(s["state"] for s in everything) == ["cancelled", "completed", "failed", "queued", "running"]
    for state in ("queued", "running", "completed", "failed", "cancelled"):
        listed = api.get(VIEWS, params={"state": state}).json()
        assert [s["id"] for s in listed["items"]] == [s["id"] for s in everything if s["state"] == state]
        assert listed["total"] == 1


def test_unknown_study_is_404(api):
    for path in ("", "/curves", "/importance"):
        response = api.get(f"{VIEWS}/nope{path}")
        assert response.status_code == 404, path
        assert response.json()["detail"][0]["field"] == "study_id"


def test_deleted_study_is_forgotten(api, storage, study):
    run_trial(storage, study)
    assert api.get(f"{VIEWS}/{study['id']}").status_code == 200

    api.delete(f"{STUDIES}/{study['id']}")

    assert api.get(f"{VIEWS}/{study['id']}").status_code == 404


def test_pages_and_assets(api, study):
    for path, marker in (("/", "Studies"), ("/new", "New study"), (f"/studies/{study['id']}", "study.js")):
        response = api.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert marker in response.text
        assert '<header class="topbar">' in response.text and '<a href="/dashboard">' in response.text
        assert "__TOPBAR__" not in response.text
    assert "__PLOTLY_VERSION__" not in api.get(f"/studies/{study['id']}").text
    assert api.get("/assets/app.css").headers["content-type"].startswith("text/css")
    assert api.get("/assets/study.js").headers["content-type"].startswith("text/javascript")
    for bad in ("/assets/nope.js", "/assets/.hidden.js", "/assets/..%2Fapi.py", "/assets/api.py"):
        assert api.get(bad).status_code == 404, bad
    plain = api.get("/assets/plotly.min.js", headers={"Accept-Encoding": "identity"})
    zipped = api.get("/assets/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert plain.status_code == 200 and b"plotly" in plain.content[:2000].lower()
    assert zipped.headers["content-encoding"] == "gzip" and "max-age" in zipped.headers["cache-control"]
    assert zipped.content == plain.content  # httpx undid the gzip


def test_optuna_dashboard_is_mounted(api, study):
    meta = api.get("/api/meta")
    summaries = api.get("/api/studies").json()["study_summaries"]
    redirect = api.get(api.get(f"{VIEWS}/{study['id']}").json()["study"]["dashboard_url"], follow_redirects=False)
    assert redirect.status_code == 303
    optuna_id = int(redirect.headers["location"].removeprefix("/dashboard/studies/"))

    assert meta.status_code == 200 and "plotlypy_is_available" in meta.json()
    assert {s["study_id"]: s["study_name"] for s in summaries}[optuna_id] == study["optuna_study_name"]
    page = api.get(f"/dashboard/studies/{optuna_id}")
    assert page.status_code == 200 and "/static/bundle.js" in page.text
    assert api.get("/static/bundle.js").status_code == 200
    assert api.get("/api/v1/nope").status_code == 404  # the API's own namespace is not the dashboard's


def test_optuna_dashboard_is_read_only(api, study):
    optuna_id = int(api.get(f"/studies/{study['id']}/dashboard", follow_redirects=False).headers["location"]
                    .removeprefix("/dashboard/studies/"))
    writes = [api.post("/api/studies", json={"study_name": "behind-its-back", "directions": ["minimize"]}),
              api.delete(f"/api/studies/{optuna_id}"),
              api.post(f"/api/studies/{optuna_id}/rename", json={"study_name": "renamed"}),
              api.put(f"/api/studies/{optuna_id}/note", json={"version": 1, "body": "hi"})]

    for refused in writes:
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
        assert "read-only" in refused.json()["detail"][0]["message"]
    names = [s["study_name"] for s in api.get("/api/studies").json()["study_summaries"]]
    assert names == [study["optuna_study_name"]]  # nothing created, renamed or deleted
    assert api.get(f"{STUDIES}/{study['id']}").status_code == 200
    page = api.get(f"/dashboard/studies/{optuna_id}")
    assert '<link rel="stylesheet" href="/assets/dashboard_readonly.css"></head>' in page.text
    assert int(page.headers["content-length"]) == len(page.content)
    assert "DeleteIcon" in api.get("/assets/dashboard_readonly.css").text


def test_page_events_skip_what_the_overview_had(live_server, storage):
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        study = http.post(STUDIES, json=tiny_spec()).json()
        run_trial(storage, study, value=0.4)
        run_trial(storage, study, value=0.6)
        running = run_trial(storage, study, state="running")
        overview = http.get(f"{VIEWS}/{study['id']}").json()
        url = overview["links"]["events"]  # the REST stream: an EventSource passes the id as a query
        assert url == f"{STUDIES}/{study['id']}/events"

        with http.stream("GET", url, params={"last_event_id": overview["event_id"]}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            opening = read_until(events, lambda seen: bool(named(seen, "study")))
            # Only the running trial: the finished ones are in the overview already.
            assert [t["number"] for t in named(opening, "trial")] == [running]
            optuna.load_study(study_name=study["optuna_study_name"], storage=storage).tell(running, 0.9)
            later = read_until(events, lambda seen: bool(named(seen, "study")))
            trial = named(later, "trial")[0]
            assert (trial["number"], trial["state"], trial["value"]) == (running, "complete", 0.9)
            assert named(later, "study")[0]["best_trial"] == running

        with http.stream("GET", url) as response:  # no id: everything
            opening = read_until(sse_events(response), lambda seen: bool(named(seen, "study")))
            assert [t["number"] for t in named(opening, "trial")] == [0, 1, 2]

        # A reconnecting EventSource sends the Last-Event-ID header, which wins over the query.
        with http.stream("GET", url, params={"last_event_id": overview["event_id"]},
                         headers={"Last-Event-ID": "0"}) as response:
            opening = read_until(sse_events(response), lambda seen: bool(named(seen, "study")))
            assert [t["number"] for t in named(opening, "trial")] == [0, 1, 2]


def test_plotly_bundle_is_the_installed_one():
    from service.web.pages import PLOTLY_JS

    assert PLOTLY_JS.is_file() and PLOTLY_JS.stat().st_size > 1_000_000


def test_the_plotly_bundle_is_gzipped_at_start_up_before_any_page_asks(tmp_path):
    """The study page's largest asset is compressed in the background as the service starts
    (0.13 s of CPU that the first page opened after a start used to wait for)."""
    from service.web.pages import PLOTLY_JS, _plotly_gzipped

    _plotly_gzipped.cache_clear()
    with TestClient(create_app(make_settings(sqlite_url(tmp_path), tmp_path))) as client:
        deadline = time.monotonic() + 10
        while _plotly_gzipped.cache_info().currsize == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _plotly_gzipped.cache_info().currsize == 1  # compressed, and no request asked for it
        response = client.get("/assets/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip" and response.content == PLOTLY_JS.read_bytes()


def test_new_study_form_offers_what_the_spec_accepts(api):
    """Every choice of the form's selects and its script's data come from the spec itself."""
    html = api.get("/new").text

    def options(select_id: str) -> list[str]:
        select = re.search(rf'<select id="{select_id}"[^>]*>(.*?)</select>', html, re.S).group(1)
        return [v for v in re.findall(r'<option value="([^"]*)"', select) if v]

    def default(select_id: str) -> str:
        select = re.search(rf'<select id="{select_id}"[^>]*>(.*?)</select>', html, re.S).group(1)
        return re.search(r'<option value="([^"]*)" selected>', select).group(1)

    assert options("f-task") == options("u-task") == list(get_args(spec.Task))
    assert options("f-model-cell") == list(get_args(spec.Cell)) and default("f-model-cell") == spec.ModelSpec().cell
    assert options("f-sampler-name") == list(get_args(spec.SamplerSpec.model_fields["name"].annotation))
    assert options("f-pruner-name") == list(get_args(spec.PrunerSpec.model_fields["name"].annotation))
    assert default("f-pruner-name") == spec.PrunerSpec().name
    assert options("f-final_model-kind") == ["refit", "ensemble"] and default("f-final_model-kind") == "refit"
    assert options("f-dataset-builtin") == list(spec.BUILTIN_DATASETS)
    data = json.loads(re.search(r'<script type="application/json" id="spec-choices">(.*?)</script>', html, re.S).group(1))
    assert data["metrics_by_task"] == {task: list(m) for task, m in spec.METRICS_BY_TASK.items()}
    assert data["builtin_tasks"] == spec.BUILTIN_DATASETS
    rows = {p["name"]: p for p in data["search_params"]}
    assert list(rows) == list(spec.PARAM_NAMES)  # every dimension, the optional ones included
    optional = [n for n in spec.PARAM_NAMES if spec.SearchSpace.model_fields[n].default is None]
    assert optional == [n for n, p in rows.items() if p["optional"]]
    for name in optional:
        assert rows[name]["mode"] == "default" and rows[name]["default"] == spec.OPTIONAL_PARAM_DEFAULTS[name]
        if spec.SearchSpace.kind(name) == "categorical":
            assert rows[name]["values"] == list(spec.SearchSpace.allowed(name))
    assert rows["weight_decay"]["mode"] == "fixed" and rows["weight_decay"]["value"] == "0"
    assert rows["batch_size"]["mode"] == "default"  # left out, it is fitted to the data
    for field in ("f-cv-folds", "f-cv-repeats", "f-training-max_epochs", "f-training-patience", "f-budget-n_trials"):
        tag = re.search(rf'<input id="{field}"[^>]*>', html).group(0)  # empty: left out, fitted or budgeted
        assert " value=" not in tag and "placeholder=" in tag, tag
    assert "const METRICS = {" not in api.get("/assets/new.js").text  # nothing copied into the script


def test_the_form_says_what_the_readme_says(api):
    """The README's tour says "press *Submit*"; after an upload the picker is above the upload box."""
    html = api.get("/new").text
    script = api.get("/assets/new.js").text

    assert re.search(r'id="submit">Submit</button>', html) and re.search(r'id="yaml-submit">Submit</button>', html)
    assert "Start study" not in html
    assert html.index('id="f-dataset-id"') < html.index('id="upload"') and "selected above." in script


def large_study(api, storage, n_trials: int = 3600) -> tuple[dict, list]:
    """A study past the history's sample size (``HISTORY_MAX_POINTS``), written in bulk: complete
    trials with tied scores (their ranking attributes deciding), pruned ones, a few failed."""
    study = api.post(STUDIES, json=tiny_spec(budget={"n_trials": 1000})).json()  # the cap; more are written
    rng = random.Random(11)
    distributions = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "dropout": FloatDistribution(0.0, 0.5),
                     "clip_norm": FloatDistribution(0.1, 10.0, log=True),
                     "batch_size": CategoricalDistribution([128, 256])}
    start = dt.datetime(2026, 11, 29, 9, 0)
    trials = []
    for number in range(n_trials):
        state = rng.choice([TrialState.COMPLETE] * 6 + [TrialState.PRUNED] * 3 + [TrialState.FAIL])
        epochs = rng.randrange(0 if state == TrialState.FAIL else 1, 6)
        trial = create_trial(
            state=state, value=round(rng.random(), 2) if state == TrialState.COMPLETE else None,
            params={"lr": 10 ** -rng.uniform(1, 4), "dropout": rng.uniform(0, 0.5), "clip_norm": 1.0,
                    "batch_size": rng.choice([128, 256])},
            distributions=distributions, intermediate_values={e: rng.random() for e in range(epochs)},
            user_attrs={"fold_scores": [0.5, 0.5], "cv_loss": rng.choice([0.1, 0.2, 0.3])})
        trial.datetime_start = start + dt.timedelta(seconds=5 * number)
        trial.datetime_complete = trial.datetime_start + dt.timedelta(seconds=rng.uniform(1, 4))
        trials.append(trial)
    write_trials(storage, study["optuna_study_name"], trials)
    return study, optuna.load_study(study_name=study["optuna_study_name"], storage=storage).get_trials()


@pytest.mark.slow
def test_the_first_view_of_a_large_study_is_its_full_reads_view_without_the_full_read(api, storage):
    """Overview, curves, importance and the table's first pages, read narrowly, are what the
    full read of every trial gives; and none of them reads the study into the trial cache."""
    study, full = large_study(api, storage)
    direction = parse_spec(study["spec"]).direction
    by_number = {t.number: t for t in full}
    cache = api.app.state.trial_cache

    view = api.get(f"{VIEWS}/{study['id']}").json()
    curves = api.get(f"{VIEWS}/{study['id']}/curves", params={"top": 10, "recent": 10, "trials": "3,3599"}).json()
    importance = api.get(f"{VIEWS}/{study['id']}/importance").json()
    pages = {(sort, state): api.get(f"{STUDIES}/{study['id']}/trials", params={
        "sort": sort, "limit": 25, "offset": 40, **({"state": state} if state else {})}).json()
        for sort in ("number", "-number") for state in (None, "pruned")}
    one = api.get(f"{STUDIES}/{study['id']}/trials/17").json()

    assert cache.size == 0  # nothing read through the cache
    names = [p["name"] for p in view["space"]]
    assert view["complete"] == complete_columns([(t.number, t.value) for t in full if t.state == TrialState.COMPLETE],
                                                names, direction, lambda ns: [by_number[n] for n in ns])
    assert view["complete"]["total"] > HISTORY_MAX_POINTS > len(view["complete"]["number"])
    assert view["pruned"] == pruned_columns([(t.number, last_reported(t)) for t in full
                                             if t.state == TrialState.PRUNED and t.intermediate_values])
    expected = progress(optuna.load_study(study_name=study["optuna_study_name"], storage=storage),
                        parse_spec(study["spec"]), trials=full)
    assert view["study"]["trials"] == expected.as_dict()["trials"] and view["best"]["number"] == expected.best_trial
    assert view["event_id"] == max(event_id_of(t) for t in full)
    # The curves: the 10 best (ties ranked by their attributes), the 10 latest that reported, the asked.
    reported = [t for t in full if t.intermediate_values]
    wanted = {t.number for t in ranked(reported, direction)[:10]} | \
        {t.number for t in sorted(reported, key=lambda t: -t.number)[:10]} | ({3, 3599} & {t.number for t in reported})
    assert curves["curves"] == [curve_view(by_number[n]) for n in sorted(wanted)]
    searched = [n for n in names if n in ("lr", "batch_size", "dropout", "clip_norm")]
    by_finish = sorted((t for t in full if t.state == TrialState.COMPLETE), key=lambda t: (t.datetime_complete, t.number))
    assert importance["sample"] == {"size": 2000, "of": len(by_finish)}  # past 2,000 complete trials: a sample
    reference = optuna.create_study(direction=direction)
    reference.add_trials(sorted(spread(by_finish, 2000), key=lambda t: t.number))
    assert importance["importances"] == pytest.approx(
        get_param_importances(reference, evaluator=PedAnovaImportanceEvaluator(), params=searched), abs=1e-12)
    for (sort, state), page in pages.items():
        chosen = [t for t in full if state is None or t.state == TrialState.PRUNED]
        chosen.sort(key=lambda t: t.number, reverse=sort.startswith("-"))
        assert page["total"] == len(chosen)
        assert [t["number"] for t in page["items"]] == [t.number for t in chosen[40:65]]
    assert one == json.loads(TrialOut.of(by_number[17], intermediate=True).model_dump_json())


@pytest.mark.slow
def test_a_large_study_held_by_the_cache_is_drawn_from_it_with_the_same_answers(api, storage):
    """Once the cache holds a study (read in full: the start-up warming, a live stream), its
    page's views come from the cached trials (a warm overview of 50,000 trials costs a
    fraction of the narrow reads) and say exactly what the narrow reads said."""
    study, _ = large_study(api, storage, n_trials=400)
    cache = api.app.state.trial_cache
    urls = [f"{VIEWS}/{study['id']}", f"{VIEWS}/{study['id']}/curves?top=10&recent=10&trials=3,399",
            f"{VIEWS}/{study['id']}/importance", f"{STUDIES}/{study['id']}/trials/17"]
    narrow = [api.get(url).json() for url in urls]
    with api.app.state.sessions() as session:
        record = session.get(StudyRecord, study["id"])
    assert not cache.open(record).held

    cache.warm(api.app.state.sessions)  # what the server does at start-up: every study read in full

    loaded = cache.open(record)
    assert loaded.held and loaded.tally() == tally_trials(loaded.storage, loaded.study_id, loaded.spec.direction)
    assert [t.number for t in loaded.read(numbers=[5, 3], states=[TrialState.COMPLETE, TrialState.PRUNED])] == \
        [t.number for t in read_trials(loaded.storage, loaded.study_id, numbers=[5, 3],
                                       states=[TrialState.COMPLETE, TrialState.PRUNED])]
    assert [api.get(url).json() for url in urls] == narrow


def test_importance_past_its_limit_is_over_an_evenly_spaced_sample_and_says_so(api, storage):
    """Past ``max_trials`` complete trials the importances are PED-ANOVA's over an evenly
    spaced sample of them in the order they completed, and the answer says how many of how
    many; a page's count (``complete``) is sampled likewise."""
    study, full = large_study(api, storage, n_trials=400)
    api.app.state.importance = ImportanceCache(max_trials=50)
    direction = parse_spec(study["spec"]).direction
    by_finish = sorted((t for t in full if t.state == TrialState.COMPLETE), key=lambda t: (t.datetime_complete, t.number))
    url = f"{VIEWS}/{study['id']}/importance"

    for counted in (len(by_finish), 120):
        answer = api.get(url, params={"complete": counted}).json()

        assert answer["status"] == "ok" and answer["n_complete"] == counted
        assert answer["sample"] == {"size": 50, "of": counted}
        reference = optuna.create_study(direction=direction)
        reference.add_trials(sorted(spread(by_finish[:counted], 50), key=lambda t: t.number))
        assert answer["importances"] == pytest.approx(get_param_importances(
            reference, evaluator=PedAnovaImportanceEvaluator(), params=list(answer["importances"])), abs=1e-12)
