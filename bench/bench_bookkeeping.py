"""Benchmark 3, bookkeeping: what the worker path costs per trial over bare Optuna.

Every side runs the same trivial objective (it returns a number, nothing else), so only
bookkeeping is timed:

- bare: ``optuna.create_study`` + ``study.optimize(objective, n_trials=N)`` on a storage
  without heartbeats (the reference of the goal);
- worker: ``hpo.studies.create_study`` + ``hpo.worker.worker_loop`` (study pick, progress,
  budget check, Optuna's heartbeat and stale-trial check, model-job poll), with the
  worker's ``Objective`` swapped for the trivial one.

Two more sides, for the record: bare Optuna with the worker's heartbeat settings, and the
worker with heartbeats off. They separate the worker's own bookkeeping from what Optuna's
heartbeat costs (per trial a thread, a database write, and a stale-trial query), which is
what lets a dead worker's trial be failed and retried.

Each run gets a fresh database of the kind measured: SQLite (a file, WAL) and PostgreSQL
at 127.0.0.1:5432 (a temporary database, dropped afterwards). Random sampler everywhere so
the sampler's own cost does not hide the bookkeeping. Sides alternate in rotating order
over ``--rounds`` rounds so the load of a shared machine falls on all of them; the figures
are medians, the ratio the median of the per-round ratios.

Goal: worker <= 1.2x bare, and <= 15 ms per trial on PostgreSQL.

Run: .venv/bin/python -m bench.bench_bookkeeping [--trials N] [--rounds N] [--profile] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import ENSEMBLE_ONLY, footer, header, median, postgres_database, verdict

GOAL_RATIO = 1.2
GOAL_POSTGRES_MS = 15.0
SIDES = ("bare", "worker", "bare, heartbeat", "worker, no heartbeat")


def _spec(n_trials: int) -> Any:
    from hpo.spec import parse_spec

    return parse_spec({
        "name": "bookkeeping", "dataset": {"builtin": "digits"}, "cv": {"folds": 2},
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
        "training": {"max_epochs": 1, "patience": None}, "budget": {"n_trials": n_trials},
        "final_model": ENSEMBLE_ONLY,
    })


class TrivialObjective:
    """Stands in for ``hpo.objective.Objective``: trains nothing, returns a number."""

    def __init__(self, *args: Any, **kwargs: Any):  # whatever the worker builds an Objective with
        pass

    def __call__(self, trial: Any) -> float:
        return 0.5


def run_bare(url: str, n_trials: int, heartbeat: bool) -> float:
    import optuna

    from hpo.storage import open_storage
    from hpo.settings import DEFAULT_GRACE_S, DEFAULT_HEARTBEAT_S

    storage = open_storage(url, heartbeat_interval=DEFAULT_HEARTBEAT_S, grace_period=DEFAULT_GRACE_S) if heartbeat \
        else open_storage(url)
    study = optuna.create_study(storage=storage, study_name="bare", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    start = time.perf_counter()
    study.optimize(TrivialObjective(), n_trials=n_trials)
    return time.perf_counter() - start


def run_worker(url: str, n_trials: int, heartbeat: bool, profile: bool) -> float:
    import torch._dynamo  # noqa: F401  (the worker's start-up imports it: start-up is not bookkeeping)

    import hpo.objective
    import hpo.settings
    import hpo.worker
    from hpo.storage import open_storage
    from hpo.studies import create_study

    spec = _spec(n_trials)
    create_study(open_storage(url), spec)
    hpo.objective.Objective = TrivialObjective  # type: ignore[assignment, misc]  (built at the worker's first trial)
    options = hpo.worker.WorkerOptions(database_url=url, study_name=spec.name, until_idle=True,
                                       heartbeat_interval=hpo.settings.DEFAULT_HEARTBEAT_S if heartbeat else 0)
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
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        print(out.getvalue())
    return elapsed


def growth(url: str, name: str) -> str:
    """Milliseconds between consecutive trials' ends, first tenth vs last tenth of the study."""
    import optuna

    ends = sorted(t.datetime_complete for t in optuna.load_study(study_name=name, storage=url).trials)
    gaps = [(b - a).total_seconds() * 1000 for a, b in zip(ends, ends[1:])]
    tenth = max(1, len(gaps) // 10)
    return f"{median(gaps[:tenth]):.1f} -> {median(gaps[-tenth:]):.1f} ms"


@contextlib.contextmanager
def sqlite_database(folder: Path, name: str) -> Iterator[str]:
    yield f"sqlite:///{folder / f'{name}.db'}"


def run_side(side: str, url: str, n_trials: int, profile: bool) -> tuple[float, str]:
    """One side on a fresh database: milliseconds per trial, and how the gap between trials grew."""
    heartbeat = side in ("worker", "bare, heartbeat")
    if side.startswith("bare"):
        seconds, study = run_bare(url, n_trials, heartbeat), "bare"
    else:
        seconds, study = run_worker(url, n_trials, heartbeat, profile=profile and side == "worker"), "bookkeeping"
    return 1000 * seconds / n_trials, growth(url, study)


def compare(kind: str, database: Any, n_trials: int, rounds: int, profile: bool) -> dict[str, list[float]]:
    """Every side once per round, in rotating order; per-trial milliseconds of each run."""
    ms: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(rounds):
        order = SIDES[r % len(SIDES):] + SIDES[:r % len(SIDES)]
        for side in order:
            with database(f"{side.replace(' ', '').replace(',', '-')}-{r}") as url:
                if url is None:
                    raise SystemExit("PostgreSQL at 127.0.0.1:5432 is needed (or pass --skip-postgres)")
                per_trial, grew = run_side(side, url, n_trials, profile and r == 0)
            ms[side].append(per_trial)
            print(f"{kind:10s} round {r + 1}: {side:21s} {per_trial:7.2f} ms/trial  (gap between trials {grew})",
                  flush=True)
    return ms


def report(kind: str, ms: dict[str, list[float]]) -> float:
    """Print the medians and ratios; return the worker/bare ratio (median of the rounds' ratios)."""
    ratios = {side: [w / b for w, b in zip(ms[side], ms["bare"])] for side in SIDES}
    for side in SIDES:
        print(f"{kind}: {side:21s} {median(ms[side]):6.2f} ms/trial = {median(ratios[side]):.2f}x bare "
              f"(runs: {', '.join(f'{v:.1f}' for v in ms[side])} ms; {', '.join(f'{r:.2f}x' for r in ratios[side])})")
    like_for_like = [w / b for w, b in zip(ms["worker"], ms["bare, heartbeat"])]
    print(f"{kind}: worker vs bare with the same heartbeats: {median(like_for_like):.2f}x "
          f"(rounds: {', '.join(f'{r:.2f}x' for r in like_for_like)})")
    return median(ratios["worker"])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials per run (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side, order rotating (default 3)")
    parser.add_argument("--profile", action="store_true", help="print where the worker side spends its time")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)
    header(f"Benchmark 3: bookkeeping per trial, worker path vs bare Optuna ({args.trials} trials per run, "
           f"{args.rounds} round(s))")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hpo-bench-bookkeeping-") as tmp:
        results["SQLite"] = compare("SQLite", lambda name: sqlite_database(Path(tmp), name), args.trials,
                                    args.rounds, args.profile)
    if not args.skip_postgres:
        results["PostgreSQL"] = compare("PostgreSQL", lambda name: postgres_database(), args.trials, args.rounds,
                                        args.profile)
    print()
    for kind, ms in results.items():
        ratio = report(kind, ms)
        print(f"{kind}: worker/bare {ratio:.2f}x   goal <= {GOAL_RATIO}x: {verdict(ratio <= GOAL_RATIO)}")
    if "PostgreSQL" in results:
        worker_ms = median(results["PostgreSQL"]["worker"])
        print(f"PostgreSQL: worker {worker_ms:.1f} ms per trial   goal <= {GOAL_POSTGRES_MS:g} ms: "
              f"{verdict(worker_ms <= GOAL_POSTGRES_MS)}")
    else:
        print("PostgreSQL: not measured")
    footer("bench_bookkeeping", argv)


if __name__ == "__main__":
    main(sys.argv[1:])
