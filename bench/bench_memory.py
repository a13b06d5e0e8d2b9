"""Benchmark 5, memory: peak resident memory of a worker on each built-in dataset.

For each example study (studies/digits-tpe.yaml, sms-spam-gru.yaml, airline-forecast.yaml)
a fresh process runs the worker loop (``hpo.worker.worker_loop``, one thread) on a one-trial
copy of it, whose trial is the largest configuration the study's search space admits
(largest hidden size and batch), trained for 2 epochs (memory peaks in the first). The
process then reports its peak RSS (``VmHWM``, the same as ``ru_maxrss``). The reference is
a process that only imports the worker (torch, Optuna, scikit-learn: the fixed part).

Goal: <= 1 GiB per worker.

Run: .venv/bin/python -m bench.bench_memory [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import PYTHON, REPO, footer, header, repo_env, run_timed, verdict

GOAL_MIB = 1024
STUDIES = {"digits": "digits-tpe.yaml", "sms_spam": "sms-spam-gru.yaml", "airline": "airline-forecast.yaml"}


def _peak_mib() -> float:
    """This process's peak resident memory in MiB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _largest(spec: dict[str, Any]) -> dict[str, Any]:
    """The study's biggest configuration: the largest value of every searched parameter."""
    from hpo.spec import parse_spec

    space = parse_spec(spec).search_space
    config: dict[str, Any] = {}
    for name, param in space.items():
        if param.value is not None:
            config[name] = param.value
        elif param.choices is not None:
            config[name] = max(param.choices)
        else:
            config[name] = int(param.high) if space.kind(name) == "int" else param.high
    return config


def child(spec_path: str, storage: str) -> None:
    """Run one trial as a worker does and print the peak RSS (runs in its own process)."""
    if spec_path == "-":
        import hpo.worker  # noqa: F401  (the imports alone)

        print(json.dumps({"peak_mib": _peak_mib()}))
        return
    import optuna

    from hpo.spec import load_spec
    from hpo.storage import open_storage
    from hpo.studies import create_study
    from hpo.worker import WorkerOptions, worker_loop

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(spec_path)
    create_study(open_storage(storage), spec)
    worker_loop(WorkerOptions(database_url=storage, study_name=spec.name, until_idle=True, threads=1))
    trial = optuna.load_study(study_name=spec.name, storage=storage).trials[0]
    print(json.dumps({"peak_mib": _peak_mib(), "state": trial.state.name, "value": trial.value,
                      "params": trial.params}))


def measure(args: list[str]) -> dict[str, Any]:
    out = run_timed([PYTHON, "-m", "bench.bench_memory", "--child", *args], env=repo_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the measured trial (default 2)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return
    import yaml

    header("Benchmark 5: peak RSS of a worker running one trial of each built-in dataset")
    imports = measure(["-", "-"])["peak_mib"]
    print(f"{'imports only':36s} {imports:7.0f} MiB")
    worst = imports
    with tempfile.TemporaryDirectory(prefix="hpo-bench-memory-") as tmp:
        for dataset, filename in STUDIES.items():
            spec = yaml.safe_load((REPO / "studies" / filename).read_text())
            spec.update(name=f"memory-{dataset}", budget={"n_trials": 1}, pruner={"name": "none"},
                        enqueue_trials=[_largest(spec)])
            spec["training"] = {**spec.get("training", {}), "max_epochs": args.epochs}
            spec_path = Path(tmp) / f"{dataset}.json"
            spec_path.write_text(json.dumps(spec))
            result = measure([str(spec_path), f"sqlite:///{Path(tmp) / f'{dataset}.db'}"])
            worst = max(worst, result["peak_mib"])
            shown = {k: v for k, v in result["params"].items() if k in ("hidden_size", "batch_size")}
            print(f"{f'{dataset} ({filename})':36s} {result['peak_mib']:7.0f} MiB   trial {result['state'].lower()}, "
                  f"{shown}", flush=True)
    print(f"\nworst worker: {worst:.0f} MiB   goal <= {GOAL_MIB} MiB: {verdict(worst <= GOAL_MIB)}")
    footer("bench_memory", argv)


if __name__ == "__main__":
    main(sys.argv[1:])
