"""Benchmark 3, bookkeeping: what the worker path costs per trial over bare Optuna.

Both sides run the same trivial objective (it returns a number, nothing else), so only
bookkeeping is timed:

- bare: ``optuna.create_study`` + ``study.optimize(objective, n_trials=N)``;
- worker: ``hpo.studies.create_study`` + ``hpo.worker.worker_loop`` (study pick, progress,
  budget check, heartbeat, stale-trial check, model-job poll), with the worker's
  ``Objective`` swapped for the trivial one.

Each side gets a fresh database of the same kind: SQLite (a file, WAL) and PostgreSQL at
127.0.0.1:5432 (a temporary database, dropped afterwards). Random sampler on both sides so
the sampler's own cost does not hide the bookkeeping.

Goal: worker <= 1.2x bare, and <= 15 ms per trial on PostgreSQL.

Run: .venv/bin/python bench/bench_bookkeeping.py [--trials N] [--profile] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import footer, header, median, postgres_database, verdict

GOAL_RATIO = 1.2
GOAL_POSTGRES_MS = 15.0


def _spec(n_trials: int) -> Any:
    from hpo.spec import parse_spec

    return parse_spec({
        "name": "bookkeeping", "dataset": {"builtin": "digits"}, "cv": {"folds": 2},
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
        "training": {"max_epochs": 1, "patience": None}, "budget": {"n_trials": n_trials},
    })


class TrivialObjective:
    """Stands in for ``hpo.objective.Objective``: trains nothing, returns a number."""

    def __init__(self, spec: Any = None, dataset: Any = None, device: Any = None, should_stop: Any = None):
        pass

    def __call__(self, trial: Any) -> float:
        return 0.5


def run_bare(url: str, n_trials: int) -> float:
    import optuna

    from hpo.storage import open_storage

    study = optuna.create_study(storage=open_storage(url), study_name="bare", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    start = time.perf_counter()
    study.optimize(TrivialObjective(), n_trials=n_trials)
    return time.perf_counter() - start


def run_worker(url: str, n_trials: int, profile: bool) -> float:
    import hpo.worker
    from hpo.storage import open_storage
    from hpo.studies import create_study

    spec = _spec(n_trials)
    create_study(open_storage(url), spec)
    hpo.worker.Objective = TrivialObjective  # type: ignore[assignment, misc]
    options = hpo.worker.WorkerOptions(database_url=url, study_name=spec.name, until_idle=True)
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    hpo.worker.worker_loop(options)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
        print(out.getvalue())
    return elapsed


def growth(url: str, name: str) -> str:
    """Milliseconds between consecutive trials' ends, first tenth vs last tenth of the study."""
    import optuna

    ends = sorted(t.datetime_complete for t in optuna.load_study(study_name=name, storage=url).trials)
    gaps = [(b - a).total_seconds() * 1000 for a, b in zip(ends, ends[1:])]
    tenth = max(1, len(gaps) // 10)
    return f"{median(gaps[:tenth]):.1f} ms/trial in the first tenth, {median(gaps[-tenth:]):.1f} in the last"


def compare(kind: str, urls: list[str], n_trials: int, profile: bool) -> dict[str, float]:
    """Bare then worker, each on its own fresh database; per-trial milliseconds."""
    bare_s = run_bare(urls[0], n_trials)
    worker_s = run_worker(urls[1], n_trials, profile)
    bare_ms, worker_ms = 1000 * bare_s / n_trials, 1000 * worker_s / n_trials
    print(f"{kind:10s} bare {bare_ms:7.2f} ms/trial   worker {worker_ms:7.2f} ms/trial   "
          f"ratio {worker_ms / bare_ms:.2f}x", flush=True)
    print(f"{'':10s} bare: {growth(urls[0], 'bare')}; worker: {growth(urls[1], 'bookkeeping')}", flush=True)
    return {"bare_ms": bare_ms, "worker_ms": worker_ms}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials per side (default 1000)")
    parser.add_argument("--profile", action="store_true", help="print where the worker side spends its time")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)
    header(f"Benchmark 3: bookkeeping per trial, worker path vs bare Optuna ({args.trials} trials each)")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="hpo-bench-bookkeeping-") as tmp:
        urls = [f"sqlite:///{Path(tmp) / f'{side}.db'}" for side in ("bare", "worker")]
        results["SQLite"] = compare("SQLite", urls, args.trials, args.profile)
    if not args.skip_postgres:
        with postgres_database() as bare_url, postgres_database() as worker_url:
            if bare_url and worker_url:
                results["PostgreSQL"] = compare("PostgreSQL", [bare_url, worker_url], args.trials, args.profile)
    print()
    for kind, r in results.items():
        ratio = r["worker_ms"] / r["bare_ms"]
        print(f"{kind}: worker/bare {ratio:.2f}x   goal <= {GOAL_RATIO}x: {verdict(ratio <= GOAL_RATIO)}")
    if "PostgreSQL" in results:
        ms = results["PostgreSQL"]["worker_ms"]
        print(f"PostgreSQL: {ms:.1f} ms per trial   goal <= {GOAL_POSTGRES_MS:g} ms: {verdict(ms <= GOAL_POSTGRES_MS)}")
    else:
        print("PostgreSQL: not measured")
    footer("bench_bookkeeping.py", argv)


if __name__ == "__main__":
    main(sys.argv[1:])
