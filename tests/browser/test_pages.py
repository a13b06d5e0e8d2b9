"""The pages in a real browser against a real ``hpo serve``: submit through the form, watch
a study grow live, see validation errors inline, cancel a running study."""

from __future__ import annotations

import random
import re
import time

import httpx
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import create_trial

from hpo.storage import write_trials
from hpo.studies import fail_study, set_cancelled
from service.web.plots import IMPORTANCE_MAX_TRIALS
from tests.support.studies import add_trial, tiny_spec

pytestmark = pytest.mark.browser

STUDY_TIMEOUT_MS = 90_000


def set_param_fixed(page, name: str, value: str) -> None:
    page.select_option(f"#f-search_space-{name}-mode", "fixed")
    page.fill(f"#f-search_space-{name}-value", value)


def test_submit_through_the_form_lands_on_the_study_page(server, page, api, tmp_path):
    page.goto(f"{server.url}/new")
    page.fill("#f-name", "browser-form")
    page.fill("#f-cv-folds", "2")
    page.fill("#f-training-max_epochs", "2")
    page.fill("#f-budget-n_trials", "3")
    set_param_fixed(page, "hidden_size", "16")
    set_param_fixed(page, "batch_size", "128")
    # The optional dimensions: searched among ticked values, fixed, or left at their default.
    page.select_option("#f-search_space-summary-mode", "choices")
    page.check("#f-search_space-summary-choice-0")
    page.check("#f-search_space-summary-choice-1")
    page.select_option("#f-search_space-optimizer-mode", "fixed")
    page.select_option("#f-search_space-optimizer-value", label="adamw")
    assert page.is_visible("#f-search_space-lr_schedule-mode")
    page.fill("#f-final_model-seeds", "4")  # sent only with a refit
    page.select_option("#f-final_model-kind", "ensemble")
    page.screenshot(path=tmp_path / "new-filled.png", full_page=True)

    page.click("#submit")

    page.wait_for_url(re.compile(r"/studies/[a-z0-9]+$"))
    page.wait_for_function("document.querySelector('#study-name').textContent === 'browser-form'")
    study_id = page.url.rsplit("/", 1)[1]
    space = api.get(f"/studies/{study_id}").json()["spec"]["search_space"]
    assert space["summary"]["choices"] == ["last", "mean"] and space["optimizer"]["value"] == "adamw"
    assert space["lr_schedule"] is None and space["weight_decay"]["value"] == 0  # defaults, not sent
    assert api.get(f"/studies/{study_id}").json()["spec"]["final_model"] == {"kind": "ensemble", "seeds": None}
    # The header follows the study to its end without a reload.
    page.wait_for_selector("#study-state .badge.completed", timeout=STUDY_TIMEOUT_MS)
    page.wait_for_selector("#best-json")
    assert '"hidden_size": 16' in page.text_content("#best-json")
    assert f"/api/v1/studies/{study_id}/best" in page.text_content("#snippet-curl")
    assert f'.best("{study_id}")' in page.text_content("#snippet-python")
    dashboard = page.get_attribute("#dashboard-link", "href")
    assert dashboard == f"/studies/{study_id}/dashboard"  # no internal Optuna id in the page
    opened = page.request.get(f"{server.url}{dashboard}")
    assert opened.ok and re.search(r"/dashboard/studies/\d+$", opened.url)
    page.screenshot(path=tmp_path / "study-completed.png", full_page=True)

    page.goto(server.url)
    page.wait_for_selector(f'tr[data-study-id="{study_id}"]')
    page.click('#state-filters button[data-state="completed"]')
    page.wait_for_selector(f'tr[data-study-id="{study_id}"] .badge.completed')
    page.screenshot(path=tmp_path / "studies.png", full_page=True)


def counts(page) -> tuple[int, int]:
    """(trial table rows, points on the history plot)."""
    return page.evaluate("""() => [
        document.querySelectorAll('#trials tbody tr').length,
        Number(document.querySelector('#history').dataset.points || 0),
    ]""")


def test_table_and_history_grow_without_a_reload(server, page, api, tmp_path):
    study = api.post("/studies", json=tiny_spec("browser-live", budget={"n_trials": 4})).json()
    # Held back until the page is open, so that the page sees every trial arrive.
    assert api.post(f"/studies/{study['id']}/cancel").status_code == 200
    page.goto(f"{server.url}/studies/{study['id']}")
    page.wait_for_selector("#study-state .badge.cancelled")
    page.wait_for_selector("#live.on")
    page.evaluate("window.__noReload = 'still here'")
    before = counts(page)

    page.click("#resume")

    seen = [before]
    deadline = time.monotonic() + STUDY_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        seen.append(counts(page))
        if seen[-1][0] >= 4 and seen[-1][1] == 4:
            break
        page.wait_for_timeout(100)
    page.screenshot(path=tmp_path / "study-growing.png", full_page=True)
    rows, points = seen[-1]
    assert rows >= 4 and points == 4, f"the table/history reached {seen[-1]}; seen {sorted(set(seen))}"
    assert before[1] == 0 and rows > before[0]
    assert all(a[1] <= b[1] for a, b in zip(seen, seen[1:])), "history points must only grow"
    assert page.evaluate("window.__noReload") == "still here"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert page.url.endswith(f"/studies/{study['id']}")
    page.wait_for_selector("#study-state .badge.completed", timeout=STUDY_TIMEOUT_MS)
    page.wait_for_function(
        "[...document.querySelectorAll('#trials tbody .badge')].every(b => b.textContent !== 'running')")
    page.screenshot(path=tmp_path / "study-finished.png", full_page=True)


def test_invalid_field_is_named_next_to_it(server, page, tmp_path):
    page.goto(f"{server.url}/new")
    page.fill("#f-name", "browser-invalid")
    page.fill("#f-cv-folds", "1")

    page.click("#submit")

    error = page.locator('[data-field="cv.folds"] .field-error')
    error.wait_for()
    assert "cv.folds" in error.text_content()
    assert page.locator('[data-field="cv.folds"]').get_attribute("class").count("has-error") == 1
    assert page.url.endswith("/new")
    page.screenshot(path=tmp_path / "new-invalid.png", full_page=True)


def test_cancel_a_running_study(server, page, api, tmp_path):
    spec = tiny_spec("browser-cancel", training={"max_epochs": 30, "patience": None}, budget={"n_trials": 50})
    study = api.post("/studies", json=spec).json()
    page.goto(f"{server.url}/studies/{study['id']}")
    page.wait_for_selector("#study-state .badge.running", timeout=STUDY_TIMEOUT_MS)

    page.click("#cancel")

    page.wait_for_selector("#study-state .badge.cancelled")
    page.wait_for_selector("#resume:not(.hidden)")
    assert page.is_hidden("#cancel")
    assert api.get(f"/studies/{study['id']}").json()["state"] == "cancelled"
    page.screenshot(path=tmp_path / "study-cancelled.png", full_page=True)


def test_an_uploaded_series_shows_its_column_roles(server, page, tmp_path):
    yearly = tmp_path / "yearly.csv"
    yearly.write_text("year,temp,sales\n" + "".join(f"{1900 + r},{r % 7},{100 + 3 * r}\n" for r in range(30)))
    unsorted = tmp_path / "unsorted.csv"
    unsorted.write_text("year,sales\n1901,1\n1900,2\n" + "".join(f"{1902 + r},{r}\n" for r in range(20)))
    page.goto(f"{server.url}/new")
    page.click("#upload summary")
    page.select_option("#u-task", "forecasting")
    page.fill("#u-time", "year")

    page.set_input_files("#u-file", str(unsorted))
    page.click("#u-submit")
    error = page.locator('[data-upload-field="time_column"] .field-error')
    error.wait_for()
    assert "goes back in time at line 3" in error.text_content()

    page.set_input_files("#u-file", str(yearly))
    page.click("#u-submit")

    page.wait_for_function("document.querySelector('#u-status').textContent.includes('Columns:')")
    roles = "target sales · inputs: temp, sales · time: year (orders the rows, not an input)"
    assert roles in page.text_content("#u-status")
    # The hint under the picker follows once the picker has the new dataset (read after the upload's answer).
    page.wait_for_function(f"document.querySelector('#dataset-roles').textContent === {roles!r}")
    page.screenshot(path=tmp_path / "new-upload-roles.png", full_page=True)


def test_retry_a_study_that_could_not_run(server, page, api, storage, tmp_path):
    """A study failed because it could not run (as a worker fails one whose data file it lacks)
    shows why and a Retry button; retrying runs it to the end, without a reload."""
    spec = tiny_spec("browser-retry", search_space={"hidden_size": {"value": 8}, "batch_size": {"value": 256}},
                     training={"max_epochs": 1}, budget={"n_trials": 1})
    study = api.post("/studies", json=spec).json()
    assert api.post(f"/studies/{study['id']}/cancel").status_code == 200  # failed before the worker starts it
    reason = "the study cannot run: dataset file missing on worker w1"
    fail_study(storage, study["optuna_study_name"], reason)
    set_cancelled(storage, study["optuna_study_name"], False)  # as a worker leaves a study it fails
    page.goto(f"{server.url}/studies/{study['id']}")
    page.wait_for_selector("#study-state .badge.failed")
    assert reason in page.text_content("#head-message")
    assert page.text_content("#resume") == "Retry study" and page.is_visible("#resume")
    page.evaluate("window.__noReload = 'still here'")

    page.click("#resume")

    page.wait_for_selector("#study-state .badge.completed", timeout=STUDY_TIMEOUT_MS)
    assert page.text_content("#head-message") == "" and page.is_hidden("#resume")
    assert page.evaluate("window.__noReload") == "still here"
    assert api.get(f"/studies/{study['id']}").json()["trials"]["complete"] == 1
    page.screenshot(path=tmp_path / "study-retried.png", full_page=True)


def test_the_dashboard_offers_no_control_that_would_write(server, page, api, tmp_path):
    """optuna-dashboard is read-only here (its writes are 405): its create, rename, delete and
    edit controls are on the page but hidden."""
    study = api.post("/studies", json=tiny_spec("browser-dashboard")).json()
    assert api.post(f"/studies/{study['id']}/cancel").status_code == 200  # the worker stays free
    page.goto(f"{server.url}/dashboard")
    page.wait_for_selector(f"text={study['optuna_study_name']}")
    page.wait_for_selector("button:has-text('Reload')")

    controls = {icon: page.locator(f"button:has(svg[data-testid='{icon}'])")
                for icon in ("AddBoxIcon", "DriveFileRenameOutlineIcon", "DeleteIcon")}
    assert page.locator("button:has-text('Create')").count() == 1
    for icon, buttons in controls.items():
        assert buttons.count() >= 1, icon  # optuna-dashboard still draws them ...
        assert all(not b.is_visible() for b in buttons.all()), icon  # ... hidden
    page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
    optuna_id = page.request.get(f"{server.url}/studies/{study['id']}/dashboard").url.rsplit("/", 1)[1]
    page.goto(f"{server.url}/dashboard/studies/{optuna_id}/note")
    edit = page.locator("button:has(svg[data-testid='EditIcon'])")
    edit.first.wait_for(state="attached")
    assert not edit.first.is_visible()
    refused = page.request.delete(f"{server.url}/api/studies/{optuna_id}")
    assert refused.status == 405 and api.get(f"/studies/{study['id']}").status_code == 200


def test_study_page_history_importance_folds_and_sorting(api_only_server, page, api_only_storage, tmp_path):
    """Pruned trials in the history on request and with their last score in the table; no
    importance shares below 11 complete trials; the per-fold chart zoomed to its scores; the
    score column sorted best first; header, history and importance counts that agree live."""
    server, storage = api_only_server, api_only_storage  # every trial is written here, in this order
    searched_as_written = {"hidden_size": {"value": 16}, "batch_size": {"choices": [16, 32]}, "dropout": {"value": 0.1},
                           "clip_norm": {"value": 1.0}}  # add_trial suggests lr and batch_size
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
        study = api.post("/studies", json=tiny_spec("browser-history", search_space=searched_as_written,
                                                    budget={"n_trials": 40})).json()
    name = study["optuna_study_name"]
    for value in (0.81, 0.86, 0.83, 0.9):
        add_trial(storage, name, value=value, steps=[value - 0.1, value], fold_scores=[value - 0.01, value + 0.01])
    add_trial(storage, name, state="pruned", steps=[0.3, 0.42])
    for value in (0.5, 0.6, 0.7, 0.55, 0.65, 0.75):
        add_trial(storage, name, value=value, fold_scores=[value, value])
    page.goto(f"{server.url}/studies/{study['id']}")
    page.wait_for_selector("body[data-loaded]")

    assert "at least 11 complete trials (10 so far)" in page.text_content("#importance")
    assert page.locator("#importance .placeholder").count() == 1  # no bars, no percentages
    history = page.locator("#history")
    assert (history.get_attribute("data-points"), history.get_attribute("data-pruned")) == ("10", "0")
    page.check("#history-pruned")
    page.wait_for_selector('#history[data-pruned="1"]')
    assert "10 complete trials · 1 pruned" in page.text_content("#history-hint")
    assert page.text_content('#trials tr[data-number="4"] .last-value').startswith("0.42")
    low, high = page.evaluate("document.getElementById('folds').layout.yaxis.range")
    assert 0.85 < low < 0.89 and 0.91 < high < 0.95, (low, high)  # the best trial's folds: 0.89 and 0.91

    def rows() -> list[int]:
        return page.evaluate("[...document.querySelectorAll('#trials tbody tr')].map(r => Number(r.dataset.number))")

    score = page.locator("#trials th", has_text="accuracy")
    score.click()
    page.wait_for_function("document.querySelector('#trials tbody tr').dataset.number === '3'")
    assert rows()[:4] == [3, 1, 2, 0] and score.get_attribute("aria-sort") == "descending"
    page.locator("#trials th", has_text="accuracy").click()
    page.wait_for_function("document.querySelector('#trials tbody tr').dataset.number === '4'")
    assert rows()[:3] == [4, 5, 8]  # worst first (the pruned trial's last score is the lowest)

    # Live: every count the page shows agrees with the header's (the importance says when it is catching up).
    page.evaluate("""() => {
        window.__counts = [];
        const complete = (id) => (document.getElementById(id).textContent.match(/(\\d+) complete/) || [])[1];
        new MutationObserver(() => window.__counts.push([complete('facts'), complete('history-hint'),
                                                         document.getElementById('importance-hint').textContent]))
            .observe(document.querySelector('main'), {subtree: true, childList: true, characterData: true});
    }""")
    add_trial(storage, name, value=0.85, fold_scores=[0.85, 0.85])
    page.wait_for_function("document.getElementById('importance-hint').textContent.endsWith('over 11 complete trials')",
                           timeout=60_000)
    assert "11 complete" in page.text_content("#facts") and page.text_content("#history-hint").startswith("11 complete")
    assert page.locator("#importance .placeholder").count() == 0 and "%" in page.text_content("#importance")
    for header, hint, importance in page.evaluate("window.__counts"):
        assert header == hint or hint is None, page.evaluate("window.__counts")
        assert importance == "" or f"over {header} complete" in importance or "updating" in importance
    page.screenshot(path=tmp_path / "study-history.png", full_page=True)


def test_study_page_shows_cv_repeats_and_curves_longer_than_the_stored_max_epochs(api_only_server, page,
                                                                                   api_only_storage):
    """A study's stored spec may say fewer epochs than its trials ran (max_epochs fitted to the
    data): the learning curves' axis reaches the longest curve. Repeated CV shows in the facts.
    The trials are written here, on the service without a worker: a worker could claim the
    study before a cancel and suggest its own batch sizes, which Optuna then refuses to change."""
    server, storage = api_only_server, api_only_storage
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
        study = api.post("/studies", json=tiny_spec("browser-repeats", cv={"folds": 2, "repeats": 3})).json()
    add_trial(storage, study["optuna_study_name"], value=0.8, steps=[0.1 * i for i in range(1, 8)],
              fold_scores=[0.8] * 6)
    page.goto(f"{server.url}/studies/{study['id']}")
    page.wait_for_selector("body[data-loaded]")
    assert "2 folds × 3 repeats" in page.text_content("#facts")
    low, high = page.evaluate("document.getElementById('curves').layout.xaxis.range")
    assert high >= 7, (low, high)  # 7 epochs reported; the stored spec says max_epochs 2


def test_importance_over_a_sample_says_so(api_only_server, page, api_only_storage):
    """Past the server's limit (2,000 complete trials) the importance panel says that its
    shares are over a sample, and of how many trials."""
    server, storage = api_only_server, api_only_storage
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
        study = api.post("/studies", json=tiny_spec("browser-sampled", budget={"n_trials": 1000})).json()
    rng = random.Random(5)
    distributions = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "dropout": FloatDistribution(0.0, 0.5),
                     "clip_norm": FloatDistribution(0.1, 10.0, log=True),
                     "batch_size": CategoricalDistribution([128, 256])}
    write_trials(storage, study["optuna_study_name"], [create_trial(
        value=rng.random(), distributions=distributions,
        params={"lr": 10 ** -rng.uniform(1, 4), "dropout": rng.uniform(0, 0.5), "clip_norm": 1.0,
                "batch_size": rng.choice([128, 256])}) for _ in range(IMPORTANCE_MAX_TRIALS + 100)])
    page.goto(f"{server.url}/studies/{study['id']}")
    page.wait_for_selector("body[data-loaded]", timeout=120_000)

    assert page.text_content("#importance-hint") == \
        f"PED-ANOVA over a sample of {IMPORTANCE_MAX_TRIALS} of {IMPORTANCE_MAX_TRIALS + 100} complete trials"
    assert "%" in page.text_content("#importance")
