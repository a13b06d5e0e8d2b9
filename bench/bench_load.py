"""Many users at once: ``--clients`` concurrent clients against ``hpo serve`` with embedded
workers, mixing the requests people make: list studies, get one, submit one, watch one live.

Starts ``hpo serve --workers W`` on a fresh database (SQLite, or PostgreSQL at
127.0.0.1:5432), submits a few small studies for the workers to train, then runs the
clients for ``--duration`` seconds. Each client repeats: pick an operation (weights below),
run it, think for ``--think-s``. An event stream counts from the request to its first
``study`` event, then is held open for ``--stream-s`` seconds (so about a fifth of the
clients are watching at any moment). Prints p50/p95/p99/max and the answers other than 2xx
per operation; fails (exit 1) on any answer >= 500 other than 503, any 503 without
``Retry-After``, or any dropped connection.

    .venv/bin/python -m bench.bench_load                                   # SQLite, 2 workers
    .venv/bin/python -m bench.bench_load --database postgres --workers 4   # PostgreSQL, 4 workers
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import nullcontext
from pathlib import Path

import httpx

from bench import common
from tests.support.servers import ServeProcess

STUDIES = "/api/v1/studies"
# Share of each operation among a client's requests.
WEIGHTS = {"list": 0.40, "get": 0.35, "submit": 0.05, "events": 0.20}
SEED_STUDIES = 4
KEEPALIVE_EXPIRY_S = 2.0


def tiny_spec(name: str, n_trials: int) -> dict:
    """A study that trains in about a second per trial (digits, 2 folds, 1 epoch)."""
    return {"name": name, "task": "classification", "dataset": {"builtin": "digits"},
            "search_space": {"hidden_size": {"value": 16}, "batch_size": {"choices": [128, 256]}},
            "cv": {"folds": 2}, "training": {"max_epochs": 1}, "budget": {"n_trials": n_trials},
            "final_model": common.ENSEMBLE_ONLY}


def percentile(sorted_values: list[float], share: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))] if sorted_values else float("nan")


class Tally:
    """Latencies and outcomes per operation."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.outcomes: dict[str, Counter] = defaultdict(Counter)
        self.bad_503 = 0

    def record(self, op: str, started: float, answer: httpx.Response | Exception) -> None:
        self.latencies[op].append(time.perf_counter() - started)
        if isinstance(answer, Exception):
            self.outcomes[op][type(answer).__name__] += 1
            return
        self.outcomes[op][answer.status_code] += 1
        if answer.status_code == 503 and not answer.headers.get("retry-after"):
            self.bad_503 += 1


async def watch(http: httpx.AsyncClient, study_id: str, hold_s: float, tally: Tally) -> None:
    started = time.perf_counter()
    try:
        async with http.stream("GET", f"{STUDIES}/{study_id}/events") as stream:
            if stream.status_code != 200:
                await stream.aread()
                tally.record("events", started, stream)
                return
            held_until = None
            async for line in stream.aiter_lines():  # keep reading (heartbeats, trials) while watching
                if held_until is None and line == "event: study":
                    tally.record("events", started, stream)
                    held_until = time.monotonic() + hold_s
                if held_until is not None and time.monotonic() >= held_until:
                    break
    except httpx.TransportError as exc:
        tally.record("events", started, exc)


async def client(http: httpx.AsyncClient, ids: list[str], until: float, args: argparse.Namespace,
                 tally: Tally, rng: random.Random) -> None:
    ops, weights = list(WEIGHTS), list(WEIGHTS.values())
    await asyncio.sleep(rng.uniform(0, args.think_s))  # users do not all arrive in the same millisecond
    while time.monotonic() < until:
        op = rng.choices(ops, weights)[0]
        started = time.perf_counter()
        try:
            if op == "events":
                await watch(http, rng.choice(ids), args.stream_s, tally)
            elif op == "list":
                tally.record(op, started, await http.get(STUDIES))
            elif op == "get":
                tally.record(op, started, await http.get(f"{STUDIES}/{rng.choice(ids)}"))
            else:
                answer = await http.post(STUDIES, json=tiny_spec(f"load-{rng.randrange(10**6)}", 1))
                tally.record(op, started, answer)
                if answer.status_code == 201:
                    ids.append(answer.json()["id"])
        except httpx.TransportError as exc:
            tally.record(op, started, exc)
        await asyncio.sleep(rng.expovariate(1 / args.think_s) if args.think_s > 0 else 0)


async def run_clients(url: str, ids: list[str], args: argparse.Namespace) -> Tally:
    tally = Tally()
    # Idle connections are dropped before uvicorn's 5 s keep-alive timeout does (httpx's default is
    # also 5 s: a request sent just as the server closes the connection would fail for no fault of it).
    limits = httpx.Limits(max_connections=args.clients * 2, max_keepalive_connections=args.clients * 2,
                          keepalive_expiry=KEEPALIVE_EXPIRY_S)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        until = time.monotonic() + args.duration
        await asyncio.gather(*(client(http, ids, until, args, tally, random.Random(i)) for i in range(args.clients)))
    return tally


def report(tally: Tally, wall_s: float) -> bool:
    print(f"\n{'operation':<10} {'requests':>8} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  other than 2xx")
    total, failures = 0, 0
    for op in WEIGHTS:
        values = sorted(tally.latencies[op])
        total += len(values)
        others = {k: v for k, v in tally.outcomes[op].items() if not (isinstance(k, int) and 200 <= k < 300)}
        failures += sum(v for k, v in others.items() if not isinstance(k, int) or (k >= 500 and k != 503))
        cells = " ".join(f"{percentile(values, q) * 1000:>6.0f}ms" for q in (0.50, 0.95, 0.99, 1.0))
        print(f"{op:<10} {len(values):>8} {cells}  {dict(others) or '-'}")
    print(f"\n{total} requests in {wall_s:.1f} s ({total / wall_s:.1f}/s); events: time to the first `study` event")
    ok = failures == 0 and tally.bad_503 == 0
    print(f"answers >= 500 other than 503, or dropped connections: {failures}; 503 without Retry-After: "
          f"{tally.bad_503} -> {'OK' if ok else 'FAILED'}")
    return ok


def _traceback_end(lines: list[str]) -> int:
    """The index of a traceback's last line (the exception), given its lines from ``Traceback``."""
    return next((i for i, line in enumerate(lines) if i and not line.startswith((" ", "Traceback"))), len(lines) - 1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--workers", type=int, default=None, help="embedded workers (default: 2 SQLite, 4 PostgreSQL)")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds the clients run")
    parser.add_argument("--think-s", type=float, default=1.0, help="mean pause between a client's requests")
    parser.add_argument("--stream-s", type=float, default=5.0, help="seconds an event stream is watched")
    args = parser.parse_args(argv)
    workers = args.workers if args.workers is not None else (2 if args.database == "sqlite" else 4)
    common.header(f"load: {args.clients} clients for {args.duration:.0f} s on {args.database}, {workers} workers")
    with tempfile.TemporaryDirectory(prefix="bench-load-") as folder, \
            (common.postgres_database() if args.database == "postgres" else nullcontext(None)) as pg_url:
        if args.database == "postgres" and pg_url is None:
            return 1
        url = pg_url or f"sqlite:///{Path(folder) / 'hpo.db'}"
        env = {"HPO_MAX_QUEUED_STUDIES_PER_OWNER": "100000"}  # the submits must not hit the per-owner cap
        with ServeProcess(url, Path(folder) / "data", Path(folder) / "serve.log", workers=workers, env=env) as server:
            ids = [httpx.post(f"{server.url}{STUDIES}", json=tiny_spec(f"seed-{i}", 20), timeout=60).json()["id"]
                   for i in range(SEED_STUDIES)]
            started = time.perf_counter()
            tally = asyncio.run(run_clients(server.url, ids, args))
            wall_s = time.perf_counter() - started
            log = server.log.read_text(errors="replace")
        ok = report(tally, wall_s)
        tracebacks = log.count("Traceback")
        print(f"tracebacks in the server log: {tracebacks}")
        if tracebacks:
            first = log[log.index("Traceback"):].splitlines()
            print("the first one ends:\n  " + "\n  ".join(first[max(0, _traceback_end(first) - 6):_traceback_end(first) + 1]))
    common.footer("bench_load", argv)
    return 0 if ok and tracebacks == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
