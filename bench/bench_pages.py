"""How a study of 50,000 trials and a server of 1,000 studies open in the browser pages,
against the goals: first view < 2 s cold, trial pages < 200 ms, a cheap live stream, a fast
studies list.

Writes one study of ``--trials`` trials (per-epoch values, per-fold scores; about 40 %
pruned) and ``--studies`` - 1 small ones (``--small-trials`` trials each) straight into the
database (``hpo.storage.write_trials``: Optuna's tables, in bulk; no training), SQLite by
default or a new PostgreSQL database with ``--postgres``. Then, each against a freshly
started ``hpo serve`` (no workers):

- the study page in headless Chromium, cold (navigation as soon as the server answers,
  its caches empty) and warm (reloaded): seconds until the header, history, curves,
  importance, folds and table are drawn, and until the parallel coordinates are too;
- the page's data requests, cold and warm (median of ``--repeat``);
- ``GET /api/v1/studies/{id}/trials`` pages (first, deep, by value, best, by state): p50, p95;
- the live stream: ``--streams`` streams open on the large study (as its page opens them)
  for ``--window`` seconds: the server's CPU per poll, and on PostgreSQL the rows and
  transactions per poll;
- the studies list (first page, a deep page, filtered by state) with ``--studies`` studies.

    .venv/bin/python -m bench.bench_pages                    # 50,000 trials, 1,000 studies, SQLite
    .venv/bin/python -m bench.bench_pages --postgres         # the same on PostgreSQL
    .venv/bin/python -m bench.bench_pages --keep /tmp/bench-pages   # keep the SQLite database, reuse it
    .venv/bin/python -m bench.bench_pages --postgres --keep /tmp/bench-pages-pg   # keep the PostgreSQL one
    .venv/bin/python -m bench.bench_pages --trials 5000 --studies 20   # the earlier, smaller case
    .venv/bin/python -m bench.bench_pages --keep /tmp/bench-pages --only trials lists   # some parts only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import sqlalchemy as sa
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from hpo.storage import open_storage, write_trials
from tests.support.databases import (
    create_postgres_database, postgres_admin, postgres_database, postgres_database_url, sqlite_url,
)
from tests.support.servers import ServeProcess

GOAL_S = 2.0
PAGE_GOAL_S = 0.2
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
TRIAL_PAGES = [  # what the table and scripts ask for: first pages, a deep page, sorted, filtered
    "limit=25&offset=0&sort=-number", "limit=25&offset=0&sort=number", "limit=25&offset=25000&sort=number",
    "limit=25&offset=0&sort=-value", "limit=25&offset=0&sort=best", "limit=100&offset=0&sort=-duration_s",
    "limit=25&offset=0&sort=-number&state=pruned", "limit=25&offset=100&sort=-value&state=complete",
    "limit=25&offset=20000&sort=best", "limit=25&offset=0&sort=-started_at",
]
STUDY_PAGES = ["limit=25&offset=0", "limit=25&offset=500", "limit=25&offset=0&state=completed"]
PARTS = ("browser", "data", "trials", "lists", "stream")


def serve(url: str, workdir: Path) -> ServeProcess:
    """``hpo serve`` (no workers) on the database, once it is ready."""
    # The default limits of trials a study may ask for (1,000) and of unfinished studies per
    # owner (20) are below what is written here.
    return ServeProcess(url, workdir, workdir / "serve.log",
                        env={"HPO_MAX_N_TRIALS": "1000000", "HPO_MAX_QUEUED_STUDIES_PER_OWNER": "100000"})


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


def write_study(storage, optuna_name: str, n_trials: int, rng: random.Random, progress: bool) -> None:
    """``n_trials`` synthetic trials, written in batches straight into Optuna's tables."""
    t0 = dt.datetime.now() - dt.timedelta(seconds=7 * n_trials)
    batch = 2500
    for first in range(0, n_trials, batch):
        write_trials(storage, optuna_name, [
            synthetic_trial(rng, n, t0, SPEC["training"]["max_epochs"], SPEC["cv"]["folds"])
            for n in range(first, min(first + batch, n_trials))])
        if progress:
            print(f"\r  writing trials: {min(first + batch, n_trials)}/{n_trials}", end="", flush=True)


def make_studies(url: str, workdir: Path, n_trials: int, n_studies: int, small_trials: int) -> str:
    """The large study first (the oldest), then the small ones (each complete). Returns the
    large study's id; reuses what an earlier run with the same sizes wrote (``--keep``)."""
    marker = workdir / "studies.json"
    sizes = {"n_trials": n_trials, "n_studies": n_studies, "small_trials": small_trials}
    if marker.exists():
        info = json.loads(marker.read_text())
        if {k: info.get(k) for k in sizes} == sizes:
            print(f"  reusing the studies in {workdir}")
            return info["id"]
        raise SystemExit(f"{workdir} holds other studies ({info}); pick another --keep folder")
    started = time.perf_counter()
    storage = open_storage(url)
    rng = random.Random(0)
    with serve(url, workdir) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        def submit(name: str, budget: int) -> dict:
            spec = {**SPEC, "name": name, "budget": {"n_trials": budget}}
            return client.post("/api/v1/studies", json=spec).raise_for_status().json()

        large = submit("bench-pages", n_trials)
        write_study(storage, large["optuna_study_name"], n_trials, rng, progress=True)
        print(f"\r  wrote {n_trials} trials in {time.perf_counter() - started:.1f} s" + " " * 20)
        for i in range(n_studies - 1):
            small = submit(f"bench-small-{i}", small_trials)
            write_study(storage, small["optuna_study_name"], small_trials, rng, progress=False)
            print(f"\r  small studies: {i + 2}/{n_studies}", end="", flush=True)
    print(f"\r  wrote {n_studies} studies in {time.perf_counter() - started:.1f} s" + " " * 20)
    if storage.engine.dialect.name == "postgresql":
        # What autovacuum does to a production PostgreSQL after such writes; it is off on this
        # machine, and without the statistics the planner reads a 20-trial study's per-epoch
        # values with a sequential scan of every study's (60 ms each instead of 0.1 ms).
        with storage.engine.begin() as connection:
            connection.execute(sa.text("ANALYZE"))
    storage.engine.dispose()
    marker.write_text(json.dumps({**sizes, "id": large["id"]}))
    return large["id"]


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
    with httpx.Client(base_url=url, timeout=300) as client:
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


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def timed_pages(server: ServeProcess, paths: list[str], rounds: int) -> tuple[dict[str, list[float]], float]:
    """Each path ``rounds`` times, in turn (warm: after one untimed round), and the server's
    CPU seconds per request (what the other tenants of a busy machine do not inflate)."""
    times: dict[str, list[float]] = {p: [] for p in paths}
    with httpx.Client(base_url=server.url, timeout=300) as client:
        for path in paths:
            client.get(path).raise_for_status()
        cpu0 = cpu_s(server.proc.pid)
        for _ in range(rounds):
            for path in paths:
                times[path].append(timed_get(client, path))
    return times, (cpu_s(server.proc.pid) - cpu0) / (rounds * len(paths))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(server: ServeProcess, limit_s: float = 300.0) -> float:
    """Wait until the server uses under 5 % of a core for 3 s in a row (the start-up warming of
    its trial cache, which reads every study in full once no request came for 1 s, is over):
    the streams' cost is then theirs alone. Returns the seconds waited."""
    started, quiet = time.perf_counter(), 0
    while quiet < 3 and time.perf_counter() < started + limit_s:
        before = cpu_s(server.proc.pid)
        time.sleep(1.0)
        quiet = quiet + 1 if cpu_s(server.proc.pid) - before < 0.05 else 0
    return time.perf_counter() - started


def postgres_counters(url: str) -> tuple[int, int] | None:
    """Transactions and rows read so far in the database (PostgreSQL's statistics), or None."""
    if not url.startswith("postgresql"):
        return None
    with postgres_admin() as admin:
        admin.execute("SELECT pg_stat_clear_snapshot()")
        row = admin.execute("SELECT xact_commit + xact_rollback, tup_returned + tup_fetched FROM pg_stat_database "
                            "WHERE datname = %s", (url.rsplit("/", 1)[1],)).fetchone()
    return int(row[0]), int(row[1])


def stream_cost(server: ServeProcess, url: str, study_id: str, n_streams: int, window_s: float) -> dict[str, float]:
    """Open ``n_streams`` event streams on the study as its page does (from the event id of
    the data it drew), wait until each has had its first events, then measure the server
    over ``window_s`` seconds of polls."""
    stop = threading.Event()
    ready = threading.Barrier(n_streams + 1)
    event_id = httpx.get(f"{server.url}/api/v1/views/studies/{study_id}", timeout=300).json()["event_id"]

    def listen() -> None:
        with contextlib.suppress(httpx.TransportError), httpx.Client(base_url=server.url, timeout=None) as client, \
                client.stream("GET", f"/api/v1/studies/{study_id}/events?last_event_id={event_id}") as response:
            waiting = True
            for line in response.iter_lines():  # until the server stops
                if waiting and line.startswith("event: study"):
                    ready.wait()
                    waiting = False
                if stop.is_set():
                    return

    threads = [threading.Thread(target=listen, daemon=True) for _ in range(n_streams)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=600)
    time.sleep(1.0)  # past the first events' reads
    cpu0, db0, t0 = cpu_s(server.proc.pid), postgres_counters(url), time.perf_counter()
    time.sleep(window_s)
    cpu1, db1, t1 = cpu_s(server.proc.pid), postgres_counters(url), time.perf_counter()
    stop.set()
    polls = (t1 - t0) / 0.5  # HPO_EVENTS_POLL_S's default
    out = {"cpu_share": (cpu1 - cpu0) / (t1 - t0), "cpu_ms_per_poll": 1000 * (cpu1 - cpu0) / polls}
    if db0 and db1:
        out |= {"xacts_per_poll": (db1[0] - db0[0]) / polls, "rows_per_poll": (db1[1] - db0[1]) / polls}
    return out


@contextlib.contextmanager
def chromium():
    """A headless Chromium page (None without Chromium)."""
    if not CHROMIUM.exists():
        yield None
        return
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield browser.new_page(viewport={"width": 1280, "height": 800})
        browser.close()


def drawn(page, url: str | None = None) -> tuple[float, float]:
    """Seconds from navigation start until all panels but the parallel coordinates are
    drawn, and until every panel is (the page's own performance marks: a busy main thread
    would delay any polling from outside)."""
    if url:
        page.goto(url)
    else:
        page.reload()
    page.wait_for_selector("body[data-loaded]", timeout=300_000)
    return tuple(page.evaluate("""() => ["hpo:ready", "hpo:loaded"].map(
        (name) => performance.getEntriesByName(name)[0].startTime / 1000)"""))


def x_goal(seconds: float, goal: float = GOAL_S) -> str:
    return f"{seconds:.2f} s = {seconds / goal:.2f} x the {goal:g} s goal"


def describe(run: dict[str, float]) -> str:
    return (f"overview {run['overview']:.2f} s, then in parallel: curves {run['curves']:.2f} s, "
            f"importance {run['importance']:.2f} s, trial table {run['trials']:.2f} s, "
            f"first live event {run['first_event']:.2f} s")


def measure(url: str, workdir: Path, study_id: str, args: argparse.Namespace) -> None:
    """What ``--only`` names: the page in the browser against one server, the rest against another."""
    if "browser" in args.only:
        measure_browser(url, workdir, study_id, args)
    with serve(url, workdir) as server:
        if "data" in args.only:  # first: cold
            measure_data(server, study_id, args)
        if "trials" in args.only:
            measure_trials(server, study_id, args)
        if "lists" in args.only:
            measure_lists(server, args)
        if "stream" in args.only:
            settled = wait_idle(server)
            print(f"  live stream: measured once the server is idle (its trial cache warmed), after {settled:.0f} s")
        for n_streams in args.streams if "stream" in args.only else ():
            cost = stream_cost(server, url, study_id, n_streams, args.window)
            line = (f"  live stream, {n_streams} open on the large study: server CPU {100 * cost['cpu_share']:.0f} % "
                    f"of a core, {cost['cpu_ms_per_poll']:.1f} ms per poll (0.5 s)")
            if "rows_per_poll" in cost:
                line += f"; per poll {cost['xacts_per_poll']:.1f} transactions, {cost['rows_per_poll']:.0f} rows read"
            print(line)


def measure_browser(url: str, workdir: Path, study_id: str, args: argparse.Namespace) -> None:
    """The study page in headless Chromium, cold (as soon as a new server answers) and warm."""
    with chromium() as page:
        if page is None:
            print(f"  in the browser: skipped ({CHROMIUM} not found)")
            return
        with serve(url, workdir) as server:  # the page opened as soon as the server answers
            cold = drawn(page, f"{server.url}/studies/{study_id}")
            warm = sorted(drawn(page) for _ in range(args.repeat))[args.repeat // 2]
    print(f"  study page in headless Chromium (software WebGL), cold: header, history, curves, importance, "
          f"folds and table drawn {x_goal(cold[0])}; parallel coordinates too {cold[1]:.2f} s")
    print(f"      warm (median of {args.repeat} reloads): {x_goal(warm[0])}; parallel coordinates {warm[1]:.2f} s")


def measure_data(server: ServeProcess, study_id: str, args: argparse.Namespace) -> None:
    """The study page's data requests, cold (the server just started) and warm."""
    cpu0 = cpu_s(server.proc.pid)
    cold_data = open_study_page(server.url, study_id)
    cold_data["cpu"] = cpu_s(server.proc.pid) - cpu0
    runs = [open_study_page(server.url, study_id) for _ in range(args.repeat)]
    warm_data = sorted(runs, key=lambda r: r["total"])[len(runs) // 2]
    print(f"  study page data, cold: {x_goal(cold_data['total'])}; server CPU {cold_data['cpu']:.2f} s (start-up "
          f"warming included)\n      {describe(cold_data)}")
    print(f"  study page data, warm (median of {args.repeat}): {x_goal(warm_data['total'])}\n"
          f"      {describe(warm_data)}")


def measure_trials(server: ServeProcess, study_id: str, args: argparse.Namespace) -> None:
    """``GET .../trials`` pages of every kind: p50, p95, and the server's CPU per request."""
    trials, cpu = timed_pages(server, [f"/api/v1/studies/{study_id}/trials?{q}" for q in TRIAL_PAGES], args.rounds)
    p50, p95 = percentiles([t for ts in trials.values() for t in ts])
    print(f"  GET .../trials, {len(TRIAL_PAGES)} kinds of page x {args.rounds}: p50 {1000 * p50:.0f} ms, "
          f"p95 {1000 * p95:.0f} ms (goal < {1000 * PAGE_GOAL_S:.0f} ms); server CPU {1000 * cpu:.0f} ms per request")
    print_each(trials, lambda query: query.rsplit("?", 1)[1])


def measure_lists(server: ServeProcess, args: argparse.Namespace) -> None:
    """The studies list (REST and the page's view): first page, a deep page, filtered by state."""
    lists, cpu = timed_pages(server, [f"/api/v1/{p}?{q}" for p in ("studies", "views/studies") for q in STUDY_PAGES],
                             args.rounds)
    p50, p95 = percentiles([t for ts in lists.values() for t in ts])
    print(f"  studies list ({args.studies} studies): p50 {1000 * p50:.0f} ms, p95 {1000 * p95:.0f} ms; "
          f"server CPU {1000 * cpu:.0f} ms per request")
    print_each(lists, lambda query: query.removeprefix("/api/v1/"))


def print_each(times: dict[str, list[float]], shown: Callable[[str], str]) -> None:
    """One line per request: what ``shown`` keeps of its address, its median and its slowest."""
    for query, ts in times.items():
        print(f"      {shown(query):<50} p50 {1000 * statistics.median(ts):.0f} ms, max {1000 * max(ts):.0f} ms")


def kept_postgres_database(workdir: Path) -> str:
    """The URL of the PostgreSQL database ``--keep`` names (``workdir/postgres-database``),
    created on the first run and kept for the next (drop it by hand)."""
    marker = workdir / "postgres-database"
    if not marker.exists():
        (workdir / "studies.json").unlink(missing_ok=True)
        marker.write_text(create_postgres_database("hpo_bench_pages"))
    return postgres_database_url(marker.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50_000, help="trials of the large study")
    parser.add_argument("--studies", type=int, default=1000, help="studies in all (the large one included)")
    parser.add_argument("--small-trials", type=int, default=20, help="trials of each small study")
    parser.add_argument("--postgres", action="store_true", help="a new PostgreSQL database instead of SQLite")
    parser.add_argument("--repeat", type=int, default=3, help="warm openings timed (median reported)")
    parser.add_argument("--rounds", type=int, default=5, help="timed requests of each kind of page")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 50], help="event streams open at once")
    parser.add_argument("--window", type=float, default=10.0, help="seconds the streams' cost is measured over")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to measure (default: all): the page in the browser, its data requests, "
                             "trial pages, the studies list, the live stream")
    parser.add_argument("--keep", type=Path, help="folder for the SQLite database (with --postgres: the name of "
                                                  "the PostgreSQL one), kept and reused across runs")
    args = parser.parse_args()

    print(f"bench_pages: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start")
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        workdir = (args.keep or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if not args.postgres:
            database = contextlib.nullcontext(sqlite_url(workdir))
        elif args.keep:
            database = contextlib.nullcontext(kept_postgres_database(workdir))
        else:
            (workdir / "studies.json").unlink(missing_ok=True)  # a new database each time
            database = postgres_database("hpo_bench_pages")
        with database as url:
            print(f"  a study of {args.trials} trials and {args.studies - 1} of {args.small_trials} on "
                  f"{'PostgreSQL' if args.postgres else 'SQLite'} ({url})")
            study_id = make_studies(url, workdir, args.trials, args.studies, args.small_trials)
            measure(url, workdir, study_id, args)
    print(f"  load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
