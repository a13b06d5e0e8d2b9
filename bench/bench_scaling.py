"""Benchmark 4, scaling: trials per hour on one study with 1 and with 2 worker processes.

Every trial of the study costs the same (digits, 3 folds, 3 epochs, all hyperparameters
fixed), so trials per hour measure the workers, not the sampler's luck. Workers are
``hpo.worker.start_worker_processes(n, study_name=..., until_idle=True, threads=t)``;
throughput is counted from the first trial's start to the last trial's end (process
start-up excluded; the whole wall time is printed too). Arms run in alternating order.
A third arm, one process with two intra-op threads (what ``--jobs 1`` and
``--concurrency 1`` gave a worker on 2 cores before every worker got one thread), shows
the other way to use the second core.

Goal: 2 workers >= 1.8x the trials per hour of 1 worker.

Run: .venv/bin/python -m bench.bench_scaling [--trials N] [--rounds N] [--quick] [--postgres]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ENSEMBLE_ONLY, footer, header, median, postgres_database, verdict

GOAL_SCALING = 1.8
ARMS = {"1 worker x 1 thread": (1, 1), "2 workers x 1 thread": (2, 1), "1 worker x 2 threads": (1, 2)}


def _spec(name: str, n_trials: int):
    from hpo.spec import parse_spec

    fixed = {"lr": 0.01, "batch_size": 64, "hidden_size": 64, "dropout": 0.1, "clip_norm": 1.0}
    return parse_spec({
        "name": name, "dataset": {"builtin": "digits"}, "model": {"cell": "lstm"},
        "search_space": {k: {"value": v} for k, v in fixed.items()},
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}, "cv": {"folds": 3},
        "training": {"max_epochs": 3, "patience": None}, "budget": {"n_trials": n_trials},
        "final_model": ENSEMBLE_ONLY,
    })


def run_arm(folder: Path, arm: str, round_no: int, n_trials: int, postgres: bool) -> dict[str, float]:
    if postgres:
        with postgres_database() as url:
            if url is None:
                raise SystemExit("--postgres needs PostgreSQL at 127.0.0.1:5432")
            return _run_arm(folder, url, arm, n_trials)
    workers, threads = ARMS[arm]
    return _run_arm(folder, f"sqlite:///{folder / f'scaling-{round_no}-{workers}-{threads}.db'}", arm, n_trials)


def _run_arm(folder: Path, url: str, arm: str, n_trials: int) -> dict[str, float]:
    import optuna

    from hpo.storage import open_storage
    from hpo.studies import create_study
    from hpo.worker import start_worker_processes

    workers, threads = ARMS[arm]
    spec = _spec("scaling", n_trials)
    create_study(open_storage(url), spec)
    start = time.perf_counter()
    procs = start_worker_processes(workers, url, data_dir=str(folder), study_name=spec.name,
                                   until_idle=True, threads=threads)
    for p in procs:
        p.join()
    wall = time.perf_counter() - start
    trials = [t for t in optuna.load_study(study_name=spec.name, storage=url).trials
              if t.state == optuna.trial.TrialState.COMPLETE]
    busy = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return {"per_hour": 3600 * len(trials) / busy, "wall": wall, "trials": len(trials)}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per run (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each arm, alternating (default 3)")
    parser.add_argument("--quick", action="store_true", help="one round of 6 trials")
    parser.add_argument("--postgres", action="store_true", help="a temporary PostgreSQL database instead of SQLite")
    args = parser.parse_args(argv)
    rounds, n_trials = (1, 6) if args.quick else (max(1, args.rounds), args.trials)
    header(f"Benchmark 4: trials per hour on one study, {n_trials} equal trials per run, {rounds} round(s), "
           f"{'PostgreSQL' if args.postgres else 'SQLite'}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="hpo-bench-scaling-") as tmp:
        for r in range(rounds):
            order = list(ARMS) if r % 2 == 0 else list(reversed(ARMS))
            for arm in order:
                load = os.getloadavg()[0]
                res = run_arm(Path(tmp), arm, r, n_trials, args.postgres)
                results[arm].append(res)
                print(f"round {r + 1}: {arm:22s} {res['per_hour']:7.0f} trials/h   wall {res['wall']:5.1f} s "
                      f"({res['trials']} trials; load {load:.1f} before)", flush=True)
    per_hour = {arm: median([r["per_hour"] for r in runs]) for arm, runs in results.items()}
    one = per_hour["1 worker x 1 thread"]
    print()
    for arm, value in per_hour.items():
        print(f"{arm:22s} {value:7.0f} trials/h   {value / one:.2f}x of 1 worker x 1 thread")
    scaling = per_hour["2 workers x 1 thread"] / one
    each = [two["per_hour"] / single["per_hour"]
            for two, single in zip(results["2 workers x 1 thread"], results["1 worker x 1 thread"])]
    print(f"\nscaling 1 -> 2 workers: {scaling:.2f}x (medians; per round {', '.join(f'{x:.2f}x' for x in each)})"
          f"   goal >= {GOAL_SCALING}x: {verdict(scaling >= GOAL_SCALING)}")
    footer("bench_scaling", argv)


if __name__ == "__main__":
    main(sys.argv[1:])
