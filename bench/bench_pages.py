"""How fast a study of 5,000 trials opens in the browser pages, against the 2 s goal.

Writes a study of ``--trials`` trials (per-epoch values, per-fold scores; about 40 %
pruned) through Optuna's API into a temporary SQLite database, starts ``hpo serve``
(no workers) on a free port, and times the requests the study page makes when it opens:
the overview, then curves, importance and the first page of the trial table in parallel
(as the browser does), and the first live event. Cold = the first open right after the
server answers (its trial cache still being warmed, as after a restart); warm = the same
page opened again (median of ``--repeat``). A script's view, ``GET /api/v1/studies/{id}``
plus the first page of ``.../trials``, is timed too. With Chromium installed, the page
itself is also timed from navigation until every panel is drawn.

    .venv/bin/python -m bench.bench_pages              # 5,000 trials (~2-3 min to write them)
    .venv/bin/python -m bench.bench_pages --keep /tmp/bench-pages   # keep the database, reuse it next time
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from hpo.storage import open_storage
from tests.support.databases import sqlite_url
from tests.support.servers import ServeProcess

GOAL_S = 2.0
CHROMIUM = Path("/usr/bin/chromium")
SPEC = {
    "name": "bench-pages",
    "task": "classification",
    "dataset": {"builtin": "digits"},
    "cv": {"folds": 5},
    "training": {"max_epochs": 20},
}
DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "batch_size": CategoricalDistribution([16, 32, 64, 128, 256]),
    "hidden_size": IntDistribution(16, 256, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
    "clip_norm": FloatDistribution(0.1, 10.0, log=True),
    "weight_decay": CategoricalDistribution([0.0]),
}


def serve(workdir: Path) -> ServeProcess:
    """``hpo serve`` (no workers) on the study's database, once it is ready."""
    # The default limit of trials a study may ask for (1,000) is below the study's size.
    return ServeProcess(sqlite_url(workdir), workdir, workdir / "serve.log",
                        env={"HPO_MAX_N_TRIALS": "100000"})


def synthetic_trial(rng: random.Random, number: int, start: dt.datetime, max_epochs: int, folds: int):
    """A plausible trial: the score depends mostly on lr; pruned ones stop after 1-6 epochs,
    complete ones run to max_epochs or stop early."""
    params = {
        "lr": 10 ** rng.uniform(-4, -1), "batch_size": rng.choice([16, 32, 64, 128, 256]),
        "hidden_size": int(round(2 ** rng.uniform(4, 8))), "dropout": rng.uniform(0, 0.5),
        "clip_norm": 10 ** rng.uniform(-1, 1), "weight_decay": 0.0,
    }
    quality = 1 - abs(math.log10(params["lr"]) + 2.5) / 3 - 0.1 * params["dropout"]
    pruned = rng.random() < 0.4
    epochs = rng.randint(1, 6) if pruned else rng.randint(max(1, max_epochs // 2), max_epochs)
    curve = {e: quality * (1 - math.exp(-(e + 1) / 4)) + rng.gauss(0, 0.01) for e in range(epochs)}
    final = curve[epochs - 1]
    fold_scores = [min(1.0, final + rng.gauss(0, 0.01)) for _ in range(folds)]
    trial = create_trial(
        state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
        value=None if pruned else statistics.mean(fold_scores),
        params=params, distributions=DISTRIBUTIONS, intermediate_values=curve,
        user_attrs={"fold_scores": fold_scores, "fold_std": statistics.pstdev(fold_scores)},
    )
    trial.datetime_start = start + dt.timedelta(seconds=7 * number)
    trial.datetime_complete = trial.datetime_start + dt.timedelta(seconds=rng.uniform(2, 6))
    return trial


def make_study(workdir: Path, n_trials: int) -> str:
    """Submit the spec (the service's row) and write the trials through Optuna. Returns the study id."""
    marker = workdir / "study.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info["n_trials"] == n_trials:
            print(f"  reusing the study in {workdir} ({n_trials} trials)")
            return info["id"]
        raise SystemExit(f"{workdir} holds a study of {info['n_trials']} trials; pick another --keep folder")
    with serve(workdir) as server:
        spec = {**SPEC, "budget": {"n_trials": n_trials}}
        study = httpx.post(f"{server.url}/api/v1/studies", json=spec, timeout=60).raise_for_status().json()
    started = time.perf_counter()
    storage = open_storage(sqlite_url(workdir))
    optuna_study = optuna.load_study(study_name=study["optuna_study_name"], storage=storage)
    rng = random.Random(0)
    t0 = dt.datetime.now() - dt.timedelta(seconds=7 * n_trials)
    batch = 250
    for first in range(0, n_trials, batch):
        optuna_study.add_trials([synthetic_trial(rng, n, t0, SPEC["training"]["max_epochs"], SPEC["cv"]["folds"])
                                 for n in range(first, min(first + batch, n_trials))])
        print(f"\r  writing trials through Optuna: {min(first + batch, n_trials)}/{n_trials}", end="", flush=True)
    print(f"\r  wrote {n_trials} trials through Optuna in {time.perf_counter() - started:.1f} s" + " " * 20)
    marker.write_text(json.dumps({"id": study["id"], "n_trials": n_trials}))
    return study["id"]


def timed_get(client: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    client.get(path).raise_for_status()
    return time.perf_counter() - started


def first_live_event(client: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    with client.stream("GET", path) as response:
        for line in response.iter_lines():
            if line.startswith("event: study"):
                return time.perf_counter() - started
    raise RuntimeError("the event stream ended without a study event")


def open_study_page(url: str, study_id: str) -> dict[str, float]:
    """The study page's data requests, in the order and concurrency the page makes them."""
    views = f"/api/v1/views/studies/{study_id}"
    with httpx.Client(base_url=url, timeout=120) as client:
        started = time.perf_counter()
        t_overview = time.perf_counter()
        overview = client.get(views).raise_for_status().json()
        t_overview = time.perf_counter() - t_overview
        rest = [f"{views}/curves?top=10&recent=10", f"{views}/importance",
                f"{overview['links']['trials']}?limit=25&offset=0&sort=-number"]
        with ThreadPoolExecutor(len(rest) + 1) as pool:
            events = pool.submit(first_live_event, client,
                                 f"{overview['links']['events']}?last_event_id={overview['event_id']}")
            durations = list(pool.map(lambda p: timed_get(client, p), rest))
            t_events = events.result()
        total = time.perf_counter() - started
    return {"total": total, "overview": t_overview, "curves": durations[0], "importance": durations[1],
            "trials": durations[2], "first_event": t_events}


def rest_reference(url: str, study_id: str) -> float:
    with httpx.Client(base_url=url, timeout=300) as client:
        started = time.perf_counter()
        client.get(f"/api/v1/studies/{study_id}").raise_for_status()
        client.get(f"/api/v1/studies/{study_id}/trials?limit=25&sort=-number").raise_for_status()
        return time.perf_counter() - started


def browser_open(url: str, study_id: str) -> tuple[float, float] | None:
    """Seconds from navigation start until all panels but the parallel coordinates are
    drawn, and until every panel is, in Chromium (None without it). Read from the page's
    own performance marks: a busy main thread would delay any polling from outside."""
    if not CHROMIUM.exists():
        return None
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}/studies/{study_id}")  # once, so plotly.min.js is in the browser's cache
        page.wait_for_selector("body[data-loaded]", timeout=120_000)
        page.reload()
        page.wait_for_selector("body[data-loaded]", timeout=120_000)
        ready, loaded = page.evaluate("""() => ["hpo:ready", "hpo:loaded"].map(
            (name) => performance.getEntriesByName(name)[0].startTime / 1000)""")
        browser.close()
    return ready, loaded


def describe(run: dict[str, float]) -> str:
    return (f"overview {run['overview']:.2f} s, then in parallel: curves {run['curves']:.2f} s, "
            f"importance {run['importance']:.2f} s, trial table {run['trials']:.2f} s, "
            f"first live event {run['first_event']:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5, help="warm openings timed (median reported)")
    parser.add_argument("--keep", type=Path, help="folder for the database, kept and reused across runs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        workdir = (args.keep or Path(tmp)).resolve()  # the server runs in the repository
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"bench_pages: a study of {args.trials} trials on SQLite ({workdir / 'hpo.db'})")
        study_id = make_study(workdir, args.trials)
        with serve(workdir) as server:
            cold = open_study_page(server.url, study_id)
            warm_runs = [open_study_page(server.url, study_id) for _ in range(args.repeat)]
            warm = sorted(warm_runs, key=lambda r: r["total"])[len(warm_runs) // 2]
            reference = rest_reference(server.url, study_id)
            page_s = browser_open(server.url, study_id)
            summary = httpx.get(f"{server.url}/api/v1/views/studies/{study_id}", timeout=60).json()["study"]

    counts = summary["trials"]
    print(f"  trials: {counts['complete']} complete, {counts['pruned']} pruned")
    print(f"  study page data, cold (right after the server answers): {cold['total']:.2f} s = "
          f"{cold['total'] / GOAL_S:.2f} x the {GOAL_S:g} s goal")
    print(f"      {describe(cold)}")
    print(f"  study page data, warm (median of {args.repeat}): {warm['total']:.2f} s = "
          f"{warm['total'] / GOAL_S:.2f} x the {GOAL_S:g} s goal")
    print(f"      {describe(warm)}")
    print(f"  a script's view (GET /studies/{{id}} + /trials?limit=25), warm: {reference:.2f} s = "
          f"{reference / GOAL_S:.2f} x the goal")
    if page_s is None:
        print(f"  in the browser: skipped ({CHROMIUM} not found)")
    else:
        ready, loaded = page_s
        print(f"  in headless Chromium (software WebGL), warm: navigation until the header, history, curves, "
              f"importance, folds and table are drawn {ready:.2f} s = {ready / GOAL_S:.2f} x the {GOAL_S:g} s goal; "
              f"until the parallel coordinates are too {loaded:.2f} s = {loaded / GOAL_S:.2f} x")


if __name__ == "__main__":
    main()
