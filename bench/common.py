"""What every benchmark here shares: paths, the machine, timed subprocesses, specs, databases.

The machine these run on is small (2 cores) and shared, so no benchmark trusts one absolute
time: each one measures its reference in the same run, interleaved with the measured side,
and prints the ratio. Every benchmark ends with the command that reproduces it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import databases
from tests.support.databases import PostgresUnavailable
from tests.support.processes import REPO
from tests.support.processes import hpo as hpo_command  # noqa: F401  (``python -m hpo ARGS``, this interpreter)

# Optuna flags heartbeats and its stale-trial callback as experimental; the worker uses both.
warnings.filterwarnings("ignore", message=r".*experimental")

PYTHON = sys.executable
# CI clones the repository with the shared folder beside it.
BASELINE = REPO.parent / "shared" / "bench" / "baseline_digits.py"

# A benchmark's studies serve their fold ensemble and fit no refit at the end (the spec's
# default since issue #11): the work they time is the trials', as before that default and as
# the baselines do (docs/performance.md).
ENSEMBLE_ONLY: dict[str, Any] = {"kind": "ensemble"}

# Ranges that admit every configuration of the baseline's FIXED_CONFIGS (queued as trials).
SEARCH_RANGES: dict[str, dict[str, Any]] = {
    "lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True},
    "batch_size": {"choices": [16, 32, 64, 128]},
    "hidden_size": {"low": 16, "high": 256, "log": True},
    "dropout": {"low": 0.0, "high": 0.5},
    "clip_norm": {"low": 0.1, "high": 10.0, "log": True},
}


def baseline_path() -> Path:
    """The hand-written reference script, ``<repo>/../shared/bench/baseline_digits.py``.

    Raises:
        SystemExit: naming the path looked at, when it is missing.
    """
    if not BASELINE.is_file():
        raise SystemExit(
            f"baseline not found at {BASELINE}: these benchmarks compare against "
            "../shared/bench/baseline_digits.py, next to the repository (clone shared/ beside it)"
        )
    return BASELINE


def load_baseline() -> Any:
    """The baseline script as a module (for its ``cv_accuracy`` and ``FIXED_CONFIGS``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("baseline_digits", baseline_path())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def machine() -> str:
    """One line: cores, CPU model, Python, torch."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} cores (nproc), {model}, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f} at start")


def header(title: str) -> None:
    print(f"== {title}")
    print(f"machine: {machine()}", flush=True)


def footer(script: str, argv: Sequence[str]) -> None:
    """Print the command that reproduces this run (from the repository root).

    Args:
        script: the benchmark's module name in ``bench`` (``bench_speed``).
        argv: its arguments.
    """
    args = " ".join(shlex.quote(a) for a in argv)
    print(f"\nreproduce: cd {REPO} && .venv/bin/python -m bench.{script}{' ' + args if args else ''}")


@dataclass
class Timed:
    """A finished subprocess: wall-clock seconds, CPU seconds of it and its children, output,
    and the local time it was launched at (to place its trials' timestamps)."""

    wall_s: float
    cpu_s: float
    stdout: str
    stderr: str
    launched_at: dt.datetime


def run_timed(cmd: Sequence[str], cwd: Path | str | None = None, timeout_s: float | None = None,
              env: dict[str, str] | None = None) -> Timed:
    """Run ``cmd`` to the end and time it, process start included.

    Raises:
        RuntimeError: when it exits non-zero (with the end of its stderr).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched_at = dt.datetime.now()
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return Timed(wall, cpu, proc.stdout, proc.stderr, launched_at)


def repo_env() -> dict[str, str]:
    """Environment that imports this checkout's ``hpo`` from any working directory."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def write_spec(folder: Path, spec: dict[str, Any]) -> Path:
    """Write a spec as JSON (valid YAML, and floats such as 3e-4 stay numbers)."""
    path = folder / f"{spec['name']}.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def digits_spec(name: str, configs: list[dict[str, Any]], epochs: int = 5, folds: int = 5) -> dict[str, Any]:
    """The baseline's protocol as a spec: digits, k stratified folds (seed 0), fixed epochs,
    no pruning, no early stopping, and ``configs`` queued as the study's trials."""
    return {
        "name": name,
        "task": "classification",
        "dataset": {"builtin": "digits"},
        "model": {"cell": "lstm"},
        "search_space": SEARCH_RANGES,
        "pruner": {"name": "none"},
        "cv": {"folds": folds, "strategy": "stratified", "seed": 0},
        "training": {"max_epochs": epochs, "patience": None, "metric": "accuracy"},
        "budget": {"n_trials": len(configs)},
        "enqueue_trials": configs,
        "final_model": ENSEMBLE_ONLY,
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio(reference: float, measured: float) -> str:
    """``reference / measured`` as ``2.31x`` (how many times faster the measured side is)."""
    return f"{reference / measured:.2f}x" if measured > 0 else "inf"


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


@contextlib.contextmanager
def postgres_database() -> Iterator[str | None]:
    """A new, empty PostgreSQL database (dropped afterwards), or None when the server at
    127.0.0.1:5432 cannot be reached (the caller reports it and goes on)."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(databases.postgres_database(prefix="hpo_bench"))
        except PostgresUnavailable as exc:
            print(f"PostgreSQL not reachable ({str(exc)[:120]})")
            url = None
        yield url
