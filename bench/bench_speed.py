"""Benchmark 1, same work faster: the baseline's six configurations through ``hpo run``.

The reference is ../shared/bench/baseline_digits.py (DataLoader, nn.LSTM, one process,
one thread), run as a subprocess. The same six configurations (5 stratified folds, seed 0,
5 epochs, no pruning, no early stopping) are queued as the trials of a study and run by
``hpo run`` with its default settings (one worker process per core, one PyTorch thread each;
the queued trials start costliest first). Both sides are timed as whole processes,
start-up included, in alternating order (ABBA...) so that the load of a shared machine
falls on both; the figure is the median ratio. Each ``hpo run`` prints its timeline (when
each worker's first trial started, when the last one ended). A third side, the same
study run by one worker process with one thread (``hpo.worker.worker_loop``), separates the
engine's own speed (the same one core as the baseline, per configuration) from what the
second core adds.

Goal: ``hpo run`` >= 2.0x faster, mean CV accuracy equal or better (within 0.01).

Run: .venv/bin/python -m bench.bench_speed [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    PYTHON, Timed, baseline_path, digits_spec, footer, header, hpo_command, load_baseline, median, ratio, repo_env,
    run_timed, verdict, write_spec,
)

GOAL_SPEEDUP = 2.0
ACCURACY_TOLERANCE = 0.01


def run_baseline() -> tuple[Timed, list[dict[str, Any]]]:
    timed = run_timed([PYTHON, str(baseline_path())])
    rows = [json.loads(line) for line in timed.stdout.splitlines() if line.startswith("{")]
    return timed, [r for r in rows if "config" in r]


def run_hpo(folder: Path, spec_path: Path, name: str, study: str, one_worker: bool) -> tuple[Timed, list[dict[str, Any]]]:
    import optuna
    from optuna.trial import TrialState

    storage = f"sqlite:///{folder / f'{name}.db'}"
    if one_worker:
        cmd = [PYTHON, "-m", "bench.bench_speed", "--one-worker", str(spec_path), storage]
    else:
        cmd = hpo_command("run", str(spec_path), "--storage", storage, "--quiet")
    timed = run_timed(cmd, cwd=folder, env=repo_env())
    # Only the trials that ran: two workers racing for the last slot can leave a surplus one.
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(states=(TrialState.COMPLETE,))
    return timed, [
        {"params": t.params, "cv_accuracy": t.value,
         "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
         "started_s": (t.datetime_start - timed.launched_at).total_seconds(),
         "ended_s": (t.datetime_complete - timed.launched_at).total_seconds()}
        for t in trials
    ]


def timeline(timed: Timed, trials: list[dict[str, Any]]) -> str:
    """When, after the launch, the first two trials started (one per worker), the last one
    ended and the process exited; and the order the configurations ran in."""
    starts = sorted(t["started_s"] for t in trials)
    ran = sorted(trials, key=lambda t: t["started_s"])
    return (f"trials started at {', '.join(f'{s:.1f}' for s in starts[:2])} s, last ended at "
            f"{max(t['ended_s'] for t in trials):.1f} s, exit at {timed.wall_s:.1f} s; order "
            + " ".join(f"b{t['params']['batch_size']}/h{t['params']['hidden_size']}" for t in ran))


def one_worker(spec_path: str, storage: str) -> None:
    """Run the study with one worker, one thread, in this process (the third side)."""
    from hpo.spec import load_spec
    from hpo.storage import open_storage
    from hpo.studies import create_study
    from hpo.worker import WorkerOptions, worker_loop

    spec = load_spec(spec_path)
    create_study(open_storage(storage), spec)
    worker_loop(WorkerOptions(database_url=storage, study_name=spec.name, until_idle=True, threads=1))


def same_config(params: dict[str, Any], config: dict[str, Any]) -> bool:
    return all(params.get(k) == v for k, v in config.items())


SIDES = ("baseline", "hpo run", "hpo 1 worker")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three sides, order alternating (default 2)")
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--one-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_worker:
        one_worker(*args.one_worker)
        return
    rounds = 1 if args.quick else max(1, args.rounds)
    header("Benchmark 1: the baseline's six configurations, baseline script vs `hpo run` (defaults)")
    configs = load_baseline().FIXED_CONFIGS
    spec = digits_spec("bench-speed", configs)

    runs: dict[str, list[tuple[Timed, list[dict[str, Any]]]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="hpo-bench-speed-") as tmp:
        folder = Path(tmp)
        spec_path = write_spec(folder, spec)
        for r in range(rounds):
            for side in SIDES if r % 2 == 0 else tuple(reversed(SIDES)):
                load = os.getloadavg()[0]
                if side == "baseline":
                    runs[side].append(run_baseline())
                else:
                    runs[side].append(run_hpo(folder, spec_path, f"{side.replace(' ', '-')}-{r}", spec["name"],
                                              one_worker=side == "hpo 1 worker"))
                timed, trials = runs[side][-1]
                print(f"round {r + 1}: {side:12s} wall {timed.wall_s:6.1f} s  cpu {timed.cpu_s:6.1f} s"
                      f"  (load {load:.1f} before)", flush=True)
                if side != "baseline":
                    print(f"           {timeline(timed, trials)}", flush=True)

    def seconds(side: str, cfg: dict[str, Any]) -> float:
        if side == "baseline":
            return median([next(r["seconds"] for r in rows if r["config"] == cfg) for _, rows in runs[side]])
        return median([next(t["seconds"] for t in trials if same_config(t["params"], cfg)) for _, trials in runs[side]])

    def accuracy(side: str, cfg: dict[str, Any]) -> float:
        if side == "baseline":
            return next(r["cv_accuracy"] for r in runs[side][0][1] if r["config"] == cfg)
        return median([next(t["cv_accuracy"] for t in trials if same_config(t["params"], cfg)) for _, trials in runs[side]])

    print("\nper configuration, seconds (median over rounds); `hpo 1 worker` uses one core like the baseline,"
          "\n`hpo run` trials run two at a time, one per core:")
    print(f"{'batch':>5} {'hidden':>6} {'lr':>7} | {'baseline':>8} {'1 worker':>8} {'ratio':>6} {'hpo run':>8} |"
          f" {'baseline acc':>12} {'hpo acc':>8}")
    for cfg in configs:
        base, one, run = seconds("baseline", cfg), seconds("hpo 1 worker", cfg), seconds("hpo run", cfg)
        print(f"{cfg['batch_size']:>5} {cfg['hidden_size']:>6} {cfg['lr']:>7g} | {base:>8.2f} {one:>8.2f} "
              f"{ratio(base, one):>6} {run:>8.2f} | {accuracy('baseline', cfg):>12.4f} {accuracy('hpo run', cfg):>8.4f}")

    walls = {side: [t.wall_s for t, _ in runs[side]] for side in SIDES}
    speedup = median([b / h for b, h in zip(walls["baseline"], walls["hpo run"])])
    single = median([b / h for b, h in zip(walls["baseline"], walls["hpo 1 worker"])])
    cpu = {side: median([t.cpu_s for t, _ in runs[side]]) for side in SIDES}
    base_mean = float(np.mean([accuracy("baseline", cfg) for cfg in configs]))
    hpo_mean = float(np.mean([accuracy("hpo run", cfg) for cfg in configs]))
    print("\nwhole runs (process start included), median wall / CPU seconds:")
    for side in SIDES:
        print(f"  {side:12s} {median(walls[side]):6.1f} s wall  {cpu[side]:6.1f} s CPU")
    print(f"  hpo 1 worker vs baseline (one core each): {single:.2f}x")
    print(f"  hpo run vs baseline, per round: {', '.join(f'{b / h:.2f}x' for b, h in zip(walls['baseline'], walls['hpo run']))}")
    print(f"  speed-up (median): {speedup:.2f}x   goal >= {GOAL_SPEEDUP}x: {verdict(speedup >= GOAL_SPEEDUP)}")
    print(f"  mean CV accuracy: baseline {base_mean:.4f}, hpo {hpo_mean:.4f} (difference {hpo_mean - base_mean:+.4f})"
          f"   goal equal or better within {ACCURACY_TOLERANCE}: {verdict(hpo_mean >= base_mean - ACCURACY_TOLERANCE)}")
    footer("bench_speed", argv)


if __name__ == "__main__":
    main(sys.argv[1:])
