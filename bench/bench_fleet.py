"""Benchmark: fleets of 8 to 64 worker processes on one PostgreSQL study, direct or through
``hpo storage-proxy``.

Each worker process runs ``hpo.worker.worker_loop`` (study pick, progress read, budget
check, Optuna's heartbeat and stale-trial check, the claim) with the worker's objective
swapped for a trivial one that trains nothing, so the bookkeeping is what is measured
(``--trial-ms`` makes each trial wait that long first, without using CPU, as a trial
training elsewhere would). The workers are forked from this process after PyTorch and the
worker's modules are imported, so 64 of them start in seconds and share that memory.

Per arm: a fresh database on a PostgreSQL server of the benchmark's own (``initdb`` in a
temporary folder, fsync on, ``max_connections`` 100 as PostgreSQL ships; ``--shared``
uses a fresh database on the server at 127.0.0.1:5432 instead, which other processes
share); one study of ``--trials`` trials; W worker processes until the study ends.
Printed per arm:

- trials/s over the middle 80 % of the completions (ramp-up and tail left out) and the
  whole wall time;
- claim latency (``Study.ask`` in the workers: stale-trial check excluded) p50 / p95;
- connections to the study's database (``pg_stat_activity``): most at once, and the most
  waiting on a lock at once;
- errors: warnings the workers logged (e.g. "database unavailable") and workers that died;
- lost / duplicated: trial numbers claimed by two workers, or told twice, or left running;
  complete trials short of the budget (must all be 0; surplus trials, failed with the
  reason "budget already used up", are counted apart);
- CPU: the workers', the proxy's and PostgreSQL's CPU seconds per trial, and the host's
  CPU use (100 % = every core busy), over the same middle 80 %, to tell the host's CPU
  saturating from the database's contention.

Run: .venv/bin/python -m bench.bench_fleet [--workers 8 16 32 64] [--trials N] [--proxy]
     [--trial-ms MS] [--shared]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import ENSEMBLE_ONLY, footer, header, median
from tests.support.databases import PrivatePostgres, postgres_database
from tests.support.processes import free_port

STUDY = "fleet"
HEARTBEAT_S = 10
GRACE_S = 30


def _spec(n_trials: int) -> Any:
    from hpo.spec import parse_spec

    return parse_spec({
        "name": STUDY, "dataset": {"builtin": "digits"}, "cv": {"folds": 2},
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
        "training": {"max_epochs": 1, "patience": None}, "budget": {"n_trials": n_trials},
        "final_model": ENSEMBLE_ONLY,
    })


class TrivialObjective:
    """Stands in for ``hpo.objective.Objective``: trains nothing; waits ``TRIAL_S`` (no CPU)."""

    TRIAL_S = 0.0

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __call__(self, trial: Any) -> float:
        if self.TRIAL_S:
            time.sleep(self.TRIAL_S)
        return 0.5


# ---- the processes -----------------------------------------------------------------------


def _worker_main(url: str, index: int, out: str) -> None:
    """One worker process: ``worker_loop`` until the study ends, its claims and tells recorded."""
    import logging

    import optuna
    import optuna.study._optimize as optimize_module

    import hpo.worker

    warnings: Counter[str] = Counter()

    class CountWarnings(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings[record.getMessage()[:160]] += 1

    for name in ("", "optuna", "hpo"):
        logging.getLogger(name).addHandler(CountWarnings(level=logging.WARNING))
    claims: list[tuple[int, float]] = []
    told: list[tuple[int, float, float]] = []  # number, when, this process's CPU seconds by then
    ask, tell = optuna.Study.ask, optimize_module._tell_with_warning

    def timed_ask(self: Any, fixed_distributions: Any = None) -> Any:
        start = time.perf_counter()
        trial = ask(self, fixed_distributions)
        claims.append((trial.number, time.perf_counter() - start))
        return trial

    def counted_tell(*args: Any, **kwargs: Any) -> Any:
        answer = tell(*args, **kwargs)
        trial, usage = kwargs["trial"], os.times()
        told.append((trial if isinstance(trial, int) else trial.number, time.time(), usage.user + usage.system))
        return answer

    optuna.Study.ask = timed_ask  # type: ignore[method-assign]
    optimize_module._tell_with_warning = counted_tell  # type: ignore[assignment]
    error = None
    try:
        hpo.worker.worker_loop(hpo.worker.WorkerOptions(database_url=url, study_name=STUDY, until_idle=True,
                                                        heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S),
                               index)
    except BaseException as exc:  # noqa: BLE001 (reported, not raised: the arm goes on)
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
    Path(out).write_text(json.dumps({"claims": claims, "told": told, "warnings": warnings, "error": error}))


def _proxy_main(url: str, port: int) -> None:
    from hpo.storage import serve_proxy

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = serve_proxy(url, "127.0.0.1", port, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    stop.wait()
    server.stop(0).wait()


# ---- what the machine and the database did ----------------------------------------------


def _host_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _process_cpu(pid: int) -> float:
    """CPU seconds of a live process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu(postmaster: int | None) -> float:
    """CPU seconds of a PostgreSQL server: its live processes and those that ended (its
    backends, whose time the postmaster collected). ``None``: every ``postgres`` process."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        pid, ppid = int(stat.parent.name), int(rest[1])
        if comm != "postgres" and not comm.startswith("postgres"):
            continue
        if postmaster is not None and pid != postmaster and ppid != postmaster:
            continue
        total += float(rest[11]) + float(rest[12])  # utime, stime
        if postmaster is None or pid == postmaster:
            total += float(rest[13]) + float(rest[14])  # cutime, cstime: ended children
    return total / tick


class Sampler:
    """Every 0.2 s in a thread: ``pg_stat_activity`` for one database, the host's CPU, the
    PostgreSQL server's and the proxy's CPU seconds (``samples``: time first)."""

    def __init__(self, admin_url: str, database: str, postmaster: int | None, proxy_pid: int | None):
        import psycopg

        self._connection = psycopg.connect(admin_url, autocommit=True)
        self._database = database
        self._postmaster, self._proxy_pid = postmaster, proxy_pid
        self.connections = 0
        self.lock_waits = 0
        self.samples: list[tuple[float, float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        query = ("select count(*), count(*) filter (where wait_event_type = 'Lock') "
                 "from pg_stat_activity where datname = %s")
        while not self._stop.wait(0.2):
            connections, waits = self._connection.execute(query, (self._database,)).fetchone()
            self.connections = max(self.connections, connections)
            self.lock_waits = max(self.lock_waits, waits)
            busy, total = _host_cpu()
            proxy = _process_cpu(self._proxy_pid) if self._proxy_pid else 0.0
            self.samples.append((time.time(), busy, total, _postgres_cpu(self._postmaster), proxy))

    def between(self, low: float, high: float) -> tuple[float, float, float]:
        """Host CPU use (0-1), PostgreSQL's and the proxy's CPU seconds from ``low`` to ``high``."""
        inside = [s for s in self.samples if low <= s[0] <= high] or self.samples[-1:]
        first, last = inside[0], inside[-1]
        host = (last[1] - first[1]) / (last[2] - first[2]) if last[2] > first[2] else 0.0
        return host, last[3] - first[3], last[4] - first[4]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._connection.close()


@contextlib.contextmanager
def database(private: PrivatePostgres | None) -> Iterator[str]:
    """A fresh database on the private server, or on the shared one."""
    if private is None:
        with postgres_database(prefix="hpo_fleet") as url:
            yield url
        return
    import psycopg

    name = f"fleet_{time.monotonic_ns()}"
    with psycopg.connect(private.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield private.url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(private.url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _wait_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise SystemExit(f"the storage proxy did not listen on port {port} within {timeout_s:g} s")


# ---- one arm ------------------------------------------------------------------------------


def run_arm(url: str, admin_url: str, postmaster: int | None, workers: int, n_trials: int, proxy: bool,
            folder: Path) -> dict[str, Any]:
    import optuna

    from hpo.storage import open_storage
    from hpo.studies import SURPLUS_ATTR, create_study

    create_study(open_storage(url), _spec(n_trials))
    fork = mp.get_context("fork")
    proxy_proc, worker_url = None, url
    if proxy:
        port = free_port()
        proxy_proc = fork.Process(target=_proxy_main, args=(url, port))
        proxy_proc.start()
        _wait_port(port)
        worker_url = f"grpc://127.0.0.1:{port}"
    sampler = Sampler(admin_url, url.rsplit("/", 1)[1], postmaster, proxy_proc.pid if proxy_proc else None)
    start = time.time()
    procs = [fork.Process(target=_worker_main, args=(worker_url, i, str(folder / f"worker-{i}.json")))
             for i in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.time() - start
    sampler.stop()
    if proxy_proc is not None:
        os.kill(proxy_proc.pid, signal.SIGTERM)
        proxy_proc.join()

    reports = []
    for i, p in enumerate(procs):
        path = folder / f"worker-{i}.json"
        reports.append(json.loads(path.read_text()) if path.exists()
                       else {"claims": [], "told": [], "warnings": {}, "error": f"exit code {p.exitcode}"})
    claimed = Counter(number for r in reports for number, _ in r["claims"])
    told = Counter(number for r in reports for number, _, _ in r["told"])
    trials = optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    surplus = sum(1 for t in trials if t.user_attrs.get(SURPLUS_ATTR))
    unfinished = sum(1 for t in trials if not t.state.is_finished())
    complete = sum(1 for t in trials if t.state.name == "COMPLETE")
    # The steady part: the middle 80 % of the completions (start-up and the tail left out).
    ends = sorted(end for r in reports for _, end, _ in r["told"])
    low, high = (ends[len(ends) // 10], ends[(9 * len(ends)) // 10]) if ends else (0.0, 0.0)
    in_window = sum(1 for end in ends if low <= end <= high)
    worker_cpu = 0.0
    for r in reports:
        inside = [cpu for _, end, cpu in r["told"] if low <= end <= high]
        worker_cpu += inside[-1] - inside[0] if inside else 0.0
    host_cpu, pg_cpu, proxy_cpu = sampler.between(low, high)
    latencies = sorted(seconds for r in reports for _, seconds in r["claims"])
    warnings: Counter[str] = Counter()
    for r in reports:
        warnings.update(r["warnings"])
    return {
        "workers": workers, "proxy": proxy, "wall_s": wall, "trials": len(trials),
        "per_s": in_window / (high - low) if high > low else 0.0,
        "claim_p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0.0,
        "claim_p95_ms": 1000 * latencies[(95 * len(latencies)) // 100] if latencies else 0.0,
        "connections": sampler.connections, "lock_waits": sampler.lock_waits,
        "warnings": sum(warnings.values()), "warning_kinds": dict(warnings.most_common(3)),
        "died": [r["error"] for r in reports if r["error"]],
        "claimed_twice": sum(1 for n in claimed.values() if n > 1),
        "told_twice": sum(1 for n in told.values() if n > 1),
        "claimed_not_told": len(set(claimed) - set(told)),
        "left_unfinished": unfinished, "short_of_budget": max(0, n_trials - complete),
        "duplicate_numbers": len(trials) - len({t.number for t in trials}),
        "surplus": surplus, "states": dict(states),
        "worker_cpu_ms": 1000 * worker_cpu / max(1, in_window),
        "proxy_cpu_ms": 1000 * proxy_cpu / max(1, in_window),
        "pg_cpu_ms": 1000 * pg_cpu / max(1, in_window),
        "host_cpu": host_cpu,
        "load": os.getloadavg()[0],
    }


def print_arm(res: dict[str, Any]) -> None:
    lost = res["claimed_not_told"] + res["left_unfinished"] + res["short_of_budget"]
    duplicated = res["claimed_twice"] + res["told_twice"] + res["duplicate_numbers"]
    used = (res["worker_cpu_ms"] + res["proxy_cpu_ms"] + res["pg_cpu_ms"]) * res["per_s"] / 1000  # this fleet's cores
    print(f"{'proxy ' if res['proxy'] else 'direct'} {res['workers']:3d} workers: {res['per_s']:6.1f} trials/s  "
          f"claim p50 {res['claim_p50_ms']:6.1f} ms p95 {res['claim_p95_ms']:7.1f} ms  "
          f"connections {res['connections']:3d} (lock waits {res['lock_waits']:2d})  "
          f"errors {res['warnings']} warnings, {len(res['died'])} died  lost {lost} duplicated {duplicated} "
          f"surplus {res['surplus']}  CPU/trial: workers {res['worker_cpu_ms']:.1f} ms, proxy "
          f"{res['proxy_cpu_ms']:.1f} ms, PostgreSQL {res['pg_cpu_ms']:.1f} ms = {used:.2f} cores busy "
          f"(proxy {res['proxy_cpu_ms'] * res['per_s'] / 1000:.2f}); host CPU {100 * res['host_cpu']:.0f} %  "
          f"wall {res['wall_s']:.1f} s  load {res['load']:.1f}", flush=True)
    for kind, n in res["warning_kinds"].items():
        print(f"      {n:5d} x {kind}")
    for error in res["died"][:3]:
        print(f"      died: {error}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 16, 32, 64], help="fleet sizes")
    parser.add_argument("--trials", type=int, default=400, help="trials per arm (default 400)")
    parser.add_argument("--trial-ms", type=float, default=0.0, help="each trial waits this long, no CPU")
    parser.add_argument("--proxy", action="store_true", help="also each fleet through hpo storage-proxy")
    parser.add_argument("--shared", action="store_true", help="the shared server at 127.0.0.1:5432")
    parser.add_argument("--max-connections", type=int, default=100, help="the private server's (default 100)")
    args = parser.parse_args(argv)
    header(f"Benchmark fleet: {args.trials} trials of {args.trial_ms:g} ms on one PostgreSQL study, "
           f"{'shared' if args.shared else 'private'} server, fleets of {args.workers}"
           f"{' direct and via the proxy' if args.proxy else ' direct'}")
    import optuna

    import hpo.objective
    import hpo.worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    hpo.worker.import_training_libraries()  # once here: the forked workers share it
    TrivialObjective.TRIAL_S = args.trial_ms / 1000
    hpo.objective.Objective = TrivialObjective  # type: ignore[assignment, misc]  (built at a worker's first trial)
    private = None
    if not args.shared:
        private = PrivatePostgres(free_port(), settings=f"-c max_connections={args.max_connections}").start()
    try:
        admin_url = private.url if private else "postgresql://postgres@127.0.0.1:5432/postgres"
        postmaster = int(Path(private.data, "postmaster.pid").read_text().split()[0]) if private else None
        results = []
        for workers in args.workers:
            for proxy in ([False, True] if args.proxy else [False]):
                with tempfile.TemporaryDirectory(prefix="hpo-bench-fleet-") as tmp, database(private) as url:
                    res = run_arm(url, admin_url, postmaster, workers, args.trials, proxy, Path(tmp))
                results.append(res)
                print_arm(res)
    finally:
        if private is not None:
            private.stop()
    bad = [r for r in results if r["claimed_twice"] + r["told_twice"] + r["duplicate_numbers"] + r["claimed_not_told"]
           + r["left_unfinished"] + r["short_of_budget"]]
    print(f"\nlost or duplicated trials: {'none' if not bad else f'in {len(bad)} arm(s)'}; "
          f"median host CPU {100 * median([r['host_cpu'] for r in results]):.0f} %")
    footer("bench_fleet", argv)
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
