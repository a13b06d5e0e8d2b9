"""Benchmark 1, same work faster: the baseline's six configurations through ``hpo run``.

The reference is ../shared/bench/baseline_digits.py (DataLoader, nn.LSTM, one process,
one thread), run as a subprocess. The same six configurations (5 stratified folds, seed 0,
5 epochs, no pruning, no early stopping) are queued as the trials of a study and run by
``hpo run`` with its default settings (one worker process per core). Both sides are timed
as whole processes, start-up included, in alternating order (ABBA...) so that the load of
a shared machine falls on both; the figure is the median ratio.

Goal: ``hpo run`` >= 2.0x faster, mean CV accuracy equal or better (within 0.01).

Run: .venv/bin/python bench/bench_speed.py [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from common import (
    PYTHON, Timed, baseline_path, digits_spec, footer, header, hpo_command, load_baseline, median, ratio, repo_env,
    run_timed, verdict, write_spec,
)

GOAL_SPEEDUP = 2.0
ACCURACY_TOLERANCE = 0.01


def run_baseline() -> tuple[Timed, list[dict[str, Any]]]:
    timed = run_timed([PYTHON, str(baseline_path())])
    rows = [json.loads(line) for line in timed.stdout.splitlines() if line.startswith("{")]
    return timed, [r for r in rows if "config" in r]


def run_hpo(folder: Path, spec_path: Path, round_no: int, study: str) -> tuple[Timed, list[dict[str, Any]]]:
    import optuna

    storage = f"sqlite:///{folder / f'speed-{round_no}.db'}"
    timed = run_timed(hpo_command("run", str(spec_path), "--storage", storage, "--quiet"), cwd=folder, env=repo_env())
    trials = optuna.load_study(study_name=study, storage=storage).trials
    return timed, [
        {"params": t.params, "cv_accuracy": t.value,
         "seconds": (t.datetime_complete - t.datetime_start).total_seconds()}
        for t in trials
    ]


def same_config(params: dict[str, Any], config: dict[str, Any]) -> bool:
    return all(params.get(k) == v for k, v in config.items())


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=2, help="baseline/hpo pairs, alternating order (default 2)")
    parser.add_argument("--quick", action="store_true", help="one round")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else max(1, args.rounds)
    header("Benchmark 1: the baseline's six configurations, baseline script vs `hpo run` (defaults)")
    configs = load_baseline().FIXED_CONFIGS
    spec = digits_spec("bench-speed", configs)

    base_runs: list[tuple[Timed, list[dict[str, Any]]]] = []
    hpo_runs: list[tuple[Timed, list[dict[str, Any]]]] = []
    with tempfile.TemporaryDirectory(prefix="hpo-bench-speed-") as tmp:
        folder = Path(tmp)
        spec_path = write_spec(folder, spec)
        for r in range(rounds):
            sides = ("baseline", "hpo") if r % 2 == 0 else ("hpo", "baseline")
            for side in sides:
                if side == "baseline":
                    base_runs.append(run_baseline())
                else:
                    hpo_runs.append(run_hpo(folder, spec_path, r, spec["name"]))
                timed = (base_runs if side == "baseline" else hpo_runs)[-1][0]
                print(f"round {r + 1}: {side:8s} wall {timed.wall_s:6.1f} s  cpu {timed.cpu_s:6.1f} s", flush=True)

    print("\nper configuration (median over rounds; hpo trials run two at a time, one per core):")
    print(f"{'batch':>5} {'hidden':>6} {'lr':>7} | {'baseline s':>10} {'hpo trial s':>11} {'ratio':>6} |"
          f" {'baseline acc':>12} {'hpo acc':>8}")
    base_accs, hpo_accs = [], []
    for cfg in configs:
        b_secs = [next(r["seconds"] for r in rows if r["config"] == cfg) for _, rows in base_runs]
        h_secs = [next(t["seconds"] for t in trials if same_config(t["params"], cfg)) for _, trials in hpo_runs]
        b_acc = next(r["cv_accuracy"] for r in base_runs[0][1] if r["config"] == cfg)
        h_acc = float(np.median([next(t["cv_accuracy"] for t in trials if same_config(t["params"], cfg))
                                 for _, trials in hpo_runs]))
        base_accs.append(b_acc)
        hpo_accs.append(h_acc)
        print(f"{cfg['batch_size']:>5} {cfg['hidden_size']:>6} {cfg['lr']:>7g} | {median(b_secs):>10.2f} "
              f"{median(h_secs):>11.2f} {ratio(median(b_secs), median(h_secs)):>6} | {b_acc:>12.4f} {h_acc:>8.4f}")

    wall_ratios = [b.wall_s / h.wall_s for (b, _), (h, _) in zip(base_runs, hpo_runs)]
    cpu_ratio = median([b.cpu_s for b, _ in base_runs]) / median([h.cpu_s for h, _ in hpo_runs])
    speedup = median(wall_ratios)
    base_mean, hpo_mean = float(np.mean(base_accs)), float(np.mean(hpo_accs))
    print("\nwhole runs (process start included):")
    print(f"  baseline wall {median([b.wall_s for b, _ in base_runs]):.1f} s, hpo run wall "
          f"{median([h.wall_s for h, _ in hpo_runs]):.1f} s; per-round ratios "
          f"{', '.join(f'{x:.2f}x' for x in wall_ratios)}")
    print(f"  speed-up (median): {speedup:.2f}x   goal >= {GOAL_SPEEDUP}x: {verdict(speedup >= GOAL_SPEEDUP)}")
    print(f"  CPU-seconds ratio baseline/hpo: {cpu_ratio:.2f}x (work done, whatever the core count)")
    print(f"  mean CV accuracy: baseline {base_mean:.4f}, hpo {hpo_mean:.4f} (difference {hpo_mean - base_mean:+.4f})"
          f"   goal equal or better within {ACCURACY_TOLERANCE}: {verdict(hpo_mean >= base_mean - ACCURACY_TOLERANCE)}")
    footer("bench_speed.py", argv)


if __name__ == "__main__":
    main(sys.argv[1:])
