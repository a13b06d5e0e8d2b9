"""Soak: worker processes run many short trials while client threads poll the API.

Starts ``hpo serve --workers 0`` (the API) and ``hpo worker --concurrency W`` (the
workers) on one database, submits one study of ``--trials`` short trials (digits, 2 folds,
1 epoch, hidden size 16), and lets ``--pollers`` threads ask ``GET /api/v1/studies/{id}``
and ``GET /api/v1/studies/{id}/trials`` in a loop until the study ends. Then it reports:

- "database is locked" lines in the API's and the workers' logs, and API answers >= 500
  (both must be 0: SQLite's single writer is shared by the workers' writes and the API's
  reads);
- trials lost or counted twice (0): finished trials must be exactly the budget, each
  number once, none left running;
- the API's latency (p50 / p95 / p99 / max) per endpoint under that load;
- trials per second.

With ``--with-key`` an API key is created first and every request carries it (the cost of
checking a key on each request shows in the latency).

    .venv/bin/python -m bench.bench_soak                           # 500 trials, 20 pollers, 2 workers, SQLite
    .venv/bin/python -m bench.bench_soak --trials 40 --pollers 5   # the short version the test suite runs
    .venv/bin/python -m bench.bench_soak --database postgres       # a fresh database at 127.0.0.1:5432, 4 workers
    .venv/bin/python -m bench.bench_soak --database postgresql://user@host/db --workers 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import httpx
import optuna
from optuna.trial import TrialState

from bench.common import ENSEMBLE_ONLY, footer, header, postgres_database, repo_env
from hpo.storage import open_storage
from tests.support.databases import sqlite_url
from tests.support.processes import Process, hpo
from tests.support.servers import ServeProcess

API = "/api/v1"
LOCKED = "database is locked"


def soak_spec(n_trials: int) -> dict[str, Any]:
    """Trials of about a second: the database sees a write every few hundred milliseconds."""
    return {
        "name": "soak",
        "task": "classification",
        "dataset": {"builtin": "digits"},
        "search_space": {"hidden_size": {"value": 16}, "batch_size": {"value": 256}},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "cv": {"folds": 2},
        "training": {"max_epochs": 1, "patience": None},
        "budget": {"n_trials": n_trials},
        "final_model": ENSEMBLE_ONLY,
    }


def poll(url: str, headers: dict[str, str], study_id: str, done: threading.Event,
         samples: dict[str, list[float]], statuses: dict[int, int], lock: threading.Lock) -> None:
    """One polling client: the study, then a page of its trials, as fast as answers come."""
    paths = {"study": f"{API}/studies/{study_id}", "trials": f"{API}/studies/{study_id}/trials?limit=50"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        while not done.is_set():
            for endpoint, path in paths.items():
                start = time.perf_counter()
                try:
                    status = client.get(path).status_code
                except httpx.HTTPError:
                    status = 0
                elapsed = time.perf_counter() - start
                with lock:
                    samples[endpoint].append(elapsed)
                    statuses[status] = statuses.get(status, 0) + 1


def percentiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"n": len(values)}
    cuts = statistics.quantiles(values, n=100)
    return {"n": len(values), "p50_ms": cuts[49] * 1000, "p95_ms": cuts[94] * 1000, "p99_ms": cuts[98] * 1000,
            "max_ms": max(values) * 1000}


def audit(database_url: str, study_name: str, n_trials: int) -> dict[str, int]:
    """What the database holds: finished (counted) trials, duplicates, trials lost or left running."""
    storage = open_storage(database_url)
    try:
        trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               and not t.user_attrs.get("surplus")]
    numbers = [t.number for t in counted]
    return {
        "trials_in_database": len(trials),
        "finished": len(counted),
        "duplicated": len(numbers) - len(set(numbers)),
        "lost": max(0, n_trials - len(set(numbers))),
        "extra": max(0, len(set(numbers)) - n_trials),
        "left_running": sum(t.state == TrialState.RUNNING for t in trials),
        "failed": sum(t.state == TrialState.FAIL and not t.user_attrs.get("surplus") for t in trials),
        "surplus": sum(bool(t.user_attrs.get("surplus")) for t in trials),
    }


def soak(database_url: str, n_trials: int, n_pollers: int, n_workers: int, folder: Path,
         timeout_s: float, with_key: bool = False) -> dict[str, Any]:
    """Run one soak; returns its figures."""
    headers: dict[str, str] = {}
    if with_key:
        from service.keys import create_key

        headers["Authorization"] = f"Bearer {create_key(database_url, 'soak')[1]}"
    api = ServeProcess(database_url, folder / "data", folder / "api.log", workers=0, env=repo_env())
    url = api.url
    workers: Process | None = None
    done = threading.Event()
    samples: dict[str, list[float]] = defaultdict(list)
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    pollers: list[threading.Thread] = []
    try:
        response = httpx.post(f"{url}{API}/studies", json=soak_spec(n_trials), headers=headers, timeout=60)
        response.raise_for_status()
        study = response.json()
        poll_args = (url, headers, study["id"], done, samples, statuses, lock)
        pollers = [threading.Thread(target=poll, args=poll_args, daemon=True) for _ in range(n_pollers)]
        for thread in pollers:
            thread.start()
        started = time.perf_counter()
        workers = Process(hpo("worker", "--concurrency", str(n_workers), "--database", database_url,
                              "--data-dir", str(folder / "data")), folder / "workers.log", env=repo_env())
        state = "queued"
        end = time.monotonic() + timeout_s
        while state not in ("completed", "failed", "cancelled") and time.monotonic() < end:
            time.sleep(1)
            try:
                state = httpx.get(f"{url}{API}/studies/{study['id']}", headers=headers, timeout=60).json()["state"]
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if workers.proc.poll() is not None:
                raise RuntimeError(f"hpo worker exited:\n{workers.output(3000)}")
        wall_s = time.perf_counter() - started
    finally:
        done.set()
        for thread in pollers:
            thread.join(timeout=90)
        if workers is not None:
            workers.stop()
        api.stop()
    logs = "".join(child.log.read_text(errors="replace") for child in (api, workers) if child is not None)
    counts = audit(database_url, study["optuna_study_name"], n_trials)
    return {
        "database": database_url.split("://", 1)[0],
        "trials": n_trials,
        "workers": n_workers,
        "pollers": n_pollers,
        "with_key": with_key,
        "state": state,
        "wall_s": wall_s,
        "trials_per_s": counts["finished"] / wall_s if wall_s else 0.0,
        "database_locked_lines": logs.lower().count(LOCKED),
        "api_5xx": sum(n for status, n in statuses.items() if status >= 500),
        "api_no_answer": statuses.get(0, 0),
        "api_requests": sum(statuses.values()),
        "latency": {endpoint: percentiles(values) for endpoint, values in samples.items()}
        | {"all": percentiles([v for values in samples.values() for v in values])},
        **counts,
    }


def report(result: dict[str, Any]) -> bool:
    """Print the figures; returns whether every invariant held."""
    keyed = ", API key on every request" if result["with_key"] else ""
    print(f"\n{result['trials']} trials, {result['workers']} workers, {result['pollers']} pollers, "
          f"{result['database']}{keyed}: study {result['state']} in {result['wall_s']:.1f} s "
          f"({result['trials_per_s']:.2f} trials/s)")
    checks = {
        '"database is locked" in the logs': result["database_locked_lines"],
        "API answers >= 500": result["api_5xx"],
        "API requests without an answer": result["api_no_answer"],
        "trials lost": result["lost"],
        "trials counted twice": result["duplicated"],
        "trials left running": result["left_running"],
    }
    for name, value in checks.items():
        print(f"  {name:<34} {value:>6}   {'ok' if value == 0 else 'FAILED'}")
    print(f"  finished {result['finished']} of {result['trials']}; failed {result['failed']}, "
          f"surplus {result['surplus']}, {result['trials_in_database']} trials in the database")
    print(f"\n  API latency under load ({result['api_requests']} requests):")
    print(f"  {'endpoint':<10} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for endpoint, stats in result["latency"].items():
        if "p50_ms" in stats:
            print(f"  {endpoint:<10} {stats['n']:>6} {stats['p50_ms']:>8.1f} {stats['p95_ms']:>8.1f} "
                  f"{stats['p99_ms']:>8.1f} {stats['max_ms']:>8.1f}")
    return all(value == 0 for value in checks.values()) and result["state"] == "completed" \
        and result["finished"] == result["trials"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--pollers", type=int, default=20)
    parser.add_argument("--workers", type=int, help="worker processes (default: 2 on SQLite, 4 on PostgreSQL)")
    parser.add_argument("--database", default="sqlite",
                        help="sqlite (a new file), postgres (a new database at 127.0.0.1:5432) or a URL")
    parser.add_argument("--with-key", action="store_true", help="create an API key and send it on every request")
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    header("bench_soak: workers and polling clients on one database")
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hpo-soak-")))
        if args.database == "sqlite":
            database_url = sqlite_url(folder)
        elif args.database == "postgres":
            database_url = stack.enter_context(postgres_database())
            if database_url is None:
                return 2
        else:
            database_url = stack.enter_context(nullcontext(args.database))
        workers = args.workers or (2 if database_url.startswith("sqlite") else 4)
        result = soak(database_url, args.trials, args.pollers, workers, folder, args.timeout_s, args.with_key)
    ok = report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    footer("bench_soak", sys.argv[1:] if argv is None else argv)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
