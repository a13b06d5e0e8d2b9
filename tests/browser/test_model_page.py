"""The study page's Model panel in a real browser against a real ``hpo serve``: the best
trial's fold ensemble appears when the study ends, a study's own refit replaces it once
ready, a refit reaches ``ready`` without a reload, download the archives and open them,
delete them, cancel a queued refit, see why a refit failed and that a model did not learn."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from hpo.data.builtins import _digits
from hpo.export import load_model
from test_pages import STUDY_TIMEOUT_MS
from tests.support.studies import tiny_spec

pytestmark = pytest.mark.browser

FIT_TIMEOUT_MS = 90_000
PHONE = {"width": 390, "height": 844}


def model_state(page) -> str:
    return page.get_attribute("#model", "data-state")


def wait_model_state(page, state: str, timeout_ms: int = FIT_TIMEOUT_MS, of: str = "state") -> None:
    """Wait until the panel shows ``state``: the served model's (``of="state"``), the kind
    served (``"kind"``) or the refit's (``"refit"``)."""
    page.wait_for_selector(f'#model[data-{of}="{state}"]', timeout=timeout_ms)


def record_states(page, of: str = "state") -> None:
    """From now on, ``window.__modelStates`` lists the states the panel shows (``data-<of>``),
    in order (the current one first)."""
    page.evaluate("""(of) => {
        const panel = document.querySelector('#model');
        window.__modelStates = [panel.dataset[of]];
        new MutationObserver(() => {
            const states = window.__modelStates;
            if (states[states.length - 1] !== panel.dataset[of]) states.push(panel.dataset[of]);
        }).observe(panel, {attributes: true, attributeFilter: [`data-${of}`]});
    }""", of)


def test_fit_follow_download_delete_and_cancel(server, page, api, tmp_path):
    spec = tiny_spec("browser-model", search_space={"hidden_size": {"value": 8}, "batch_size": {"value": 128}},
                     training={"max_epochs": 1}, budget={"n_trials": 2}, final_model={"kind": "ensemble"})
    study = api.post("/studies", json=spec).json()
    study_id = study["id"]
    # Held back until the page is open, so that the page sees a study without a complete trial.
    assert api.post(f"/studies/{study_id}/cancel").status_code == 200
    page.goto(f"{server.url}/studies/{study_id}")
    wait_model_state(page, "none", 10_000)
    assert page.is_disabled("#model-fit")
    assert "No complete trial yet" in page.text_content("#model-why")
    page.screenshot(path=tmp_path / "model-unavailable.png", full_page=True)

    page.click("#resume")
    page.wait_for_selector("#study-state .badge.completed", timeout=STUDY_TIMEOUT_MS)
    wait_model_state(page, "ready", 20_000)  # the best trial's fold models, kept as it completed
    assert "fold ensemble (2 fold models" in page.text_content("#model-kind")
    assert page.locator("#model-not-learned").count() == 0
    with page.expect_download() as started:
        page.click("#model-download")
    ensemble = load_model(started.value.path())
    assert ensemble.kind == "ensemble" and len(ensemble.members) == 2
    page.evaluate("window.__noReload = 'still here'")

    # A refusal is said next to the button; nothing is queued.
    page.click("details.model-refit summary")
    page.fill("#model-holdout", "0.9")
    page.click("#model-fit")
    page.wait_for_selector("#model-message:not(:empty)")
    assert "holdout" in page.text_content("#model-message")
    assert "Traceback" not in page.text_content("#model-card")
    assert api.get(f"/studies/{study_id}/model").json()["kind"] == "ensemble"

    record_states(page, of="refit")
    page.fill("#model-holdout", "0.2")
    page.fill("#model-seeds", "2")
    page.click("#model-fit")
    page.wait_for_selector('#model:not([data-refit="none"])')
    page.screenshot(path=tmp_path / "model-fitting.png", full_page=True)
    wait_model_state(page, "ready", of="refit")
    states = page.evaluate("window.__modelStates")
    # A worker may claim the job before the panel's first poll: "running" can come first.
    assert states[0] == "none" and states[1] in ("queued", "running") and states[-1] == "ready", states
    assert set(states[1:]) <= {"queued", "running", "ready"}, states
    assert model_state(page) == "ready"  # the ensemble was served all along
    assert page.text_content("#model-message") == ""
    assert page.evaluate("window.__noReload") == "still here"  # followed by polling, not reloads
    page.screenshot(path=tmp_path / "model-ready.png", full_page=True)

    status = api.get(f"/studies/{study_id}/model").json()
    best = api.get(f"/studies/{study_id}/best").json()
    panel = page.text_content("#model")
    assert status["state"] == "ready" and status["kind"] == "refit" and status["trial_number"] == best["number"]
    assert f"#{best['number']}" in panel and "holdout" in panel
    assert "refit on all data (2 seeds" in page.text_content("#model-kind")
    assert page.text_content("#model-state") == "ready"
    assert page.get_attribute("#model-download", "href") == status["links"]["download"]

    with page.expect_download() as started:
        page.click("#model-download")
    download = started.value
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    assert path.name == f"{study['optuna_study_name']}.hpo.zip"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == status["archive"]["sha256"]
    assert zipfile.ZipFile(path).namelist() == ["manifest.json", "model.safetensors"]
    model = load_model(path)
    assert model.kind == "refit" and len(model.members) == 2
    assert model.manifest.source["trial_number"] == best["number"]
    assert model.manifest.params == best["params"]
    assert len(model.predict(_digits()[0][:3])) == 3

    # Phone width: the panel fits without scrolling sideways.
    page.set_viewport_size(PHONE)
    card = page.locator("#model-card")
    card.screenshot(path=tmp_path / "model-ready-phone.png")
    assert page.evaluate("(() => { const c = document.querySelector('#model-card'); "
                         "return c.scrollWidth <= c.clientWidth && c.getBoundingClientRect().right <= innerWidth; })()")
    page.set_viewport_size({"width": 1280, "height": 800})

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#model-delete")  # the refit goes: the ensemble is served again
    page.wait_for_function("document.querySelector('#model-kind')?.textContent.startsWith('fold ensemble')",
                           timeout=10_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#model-delete")
    wait_model_state(page, "none", 10_000)
    assert api.get(f"/studies/{study_id}/model").json()["state"] == "none"
    assert api.get(f"/studies/{study_id}/model/download").status_code == 409

    # Cancel at once: queued still, or just claimed by the worker (then it stops at its next epoch).
    page.fill("#model-holdout", "0")
    page.click("#model-fit")
    page.click("#model-cancel")
    wait_model_state(page, "none", 10_000)
    page.wait_for_timeout(2500)  # a worker's look at the jobs later, nothing came back
    assert api.get(f"/studies/{study_id}/model").json()["state"] == "none"
    assert model_state(page) == "none"
    page.screenshot(path=tmp_path / "model-cancelled.png", full_page=True)


def test_the_studys_own_refit_is_followed_then_served_and_the_ensemble_stays_downloadable(server, page, api,
                                                                                         tmp_path):
    # Ten seeds of a wider network: a refit that trains long enough to be seen while it does.
    spec = tiny_spec("browser-model-own", search_space={"hidden_size": {"value": 128}, "batch_size": {"value": 16}},
                     training={"max_epochs": 2}, budget={"n_trials": 1}, final_model={"seeds": 10})
    study = api.post("/studies", json=spec).json()
    page.goto(f"{server.url}/studies/{study['id']}")
    page.wait_for_selector("#study-state .badge.completed", timeout=STUDY_TIMEOUT_MS)

    page.wait_for_selector("#model-meanwhile", timeout=20_000)  # the ensemble served, the refit under way
    assert page.get_attribute("#model", "data-kind") == "ensemble"
    assert page.get_attribute("#model", "data-refit") in ("queued", "running")
    page.screenshot(path=tmp_path / "model-own-refit.png", full_page=True)
    wait_model_state(page, "refit", of="kind")

    assert "refit on all data (10 seeds" in page.text_content("#model-kind")
    status = api.get(f"/studies/{study['id']}/model").json()
    assert status["refit"]["auto"] is True and set(status["archives"]) == {"ensemble", "refit"}
    with page.expect_download() as started:
        page.click("#model-download-ensemble")
    assert load_model(started.value.path()).kind == "ensemble"


def test_a_failed_fit_says_why_and_can_be_asked_for_again(server, page, api, tmp_path):
    rows = "".join(f"{'buy now cheap pills' if i % 2 else 'see you at lunch'} {i},{'ab'[i % 2]}\n" for i in range(24))
    dataset = api.post("/datasets", files={"file": ("notes.csv", ("text,label\n" + rows).encode())},
                       data={"task": "classification"}).json()
    spec = tiny_spec("browser-model-failed", dataset={"id": dataset["id"]}, training={"max_epochs": 1},
                     search_space={"hidden_size": {"value": 8}, "batch_size": {"value": 16}}, budget={"n_trials": 1},
                     final_model={"kind": "ensemble"})
    study = api.post("/studies", json=spec).json()
    page.goto(f"{server.url}/studies/{study['id']}")
    page.wait_for_selector("#study-state .badge.completed", timeout=STUDY_TIMEOUT_MS)
    # Its data gone, the study's best trial cannot be refitted.
    assert api.delete(f"/datasets/{dataset['id']}", params={"force": "true"}).status_code == 204
    wait_model_state(page, "ready", 20_000)  # its fold ensemble
    page.click("details.model-refit summary")
    page.wait_for_selector("#model-fit:enabled")

    page.click("#model-fit")

    wait_model_state(page, "failed", of="refit")
    reason = api.get(f"/studies/{study['id']}/model").json()["refit"]["reason"]
    assert reason and reason in page.text_content("#model-reason")
    assert "The fold ensemble is served" in page.text_content("#model-reason")
    assert model_state(page) == "ready" and page.get_attribute("#model", "data-kind") == "ensemble"
    assert page.text_content("#model-fit") == "Fit again"
    page.screenshot(path=tmp_path / "model-failed.png", full_page=True)
    page.set_viewport_size(PHONE)
    page.locator("#model-card").screenshot(path=tmp_path / "model-failed-phone.png")
    page.set_viewport_size({"width": 1280, "height": 800})

    before = api.get(f"/studies/{study['id']}/model").json()["refit"]
    record_states(page, of="refit")

    page.click("#model-fit")

    page.wait_for_function("window.__modelStates.length > 2 && window.__modelStates.slice(-1)[0] === 'failed'", timeout=FIT_TIMEOUT_MS)
    assert page.evaluate("window.__modelStates")[1] in ("queued", "running")  # a new fit was started
    after = api.get(f"/studies/{study['id']}/model").json()["refit"]
    assert after["state"] == "failed" and after["requested_at"] > before["requested_at"]  # a new fit


def test_a_model_that_did_not_learn_is_flagged(server, page, api):
    rng = __import__("random").Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    # Labels that the texts do not predict, three quarters of them "a": nothing to learn.
    rows = "".join(f"{' '.join(rng.choice(words) for _ in range(4))},{'a' if rng.random() < 0.75 else 'b'}\n"
                   for _ in range(40))
    dataset = api.post("/datasets", files={"file": ("noise.csv", ("text,label\n" + rows).encode())},
                       data={"task": "classification"}).json()
    spec = tiny_spec("browser-model-noise", dataset={"id": dataset["id"]}, training={"max_epochs": 1},
                     search_space={"hidden_size": {"value": 8}, "batch_size": {"value": 16}, "lr": {"value": 1e-6}},
                     budget={"n_trials": 1}, final_model={"kind": "ensemble"})
    study = api.post("/studies", json=spec).json()
    page.goto(f"{server.url}/studies/{study['id']}")
    page.wait_for_selector("#study-state .badge.completed", timeout=STUDY_TIMEOUT_MS)
    wait_model_state(page, "ready", 20_000)

    status = api.get(f"/studies/{study['id']}/model").json()
    assert status["learned"] is False
    flag = page.text_content("#model-not-learned")
    assert "did not learn" in flag and "majority class" in flag
