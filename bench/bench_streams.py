"""Other requests' latency while many live-event streams are open (issue 12, item 2).

Starts ``hpo serve`` (no workers) on SQLite and, when reachable, PostgreSQL; submits a few
studies; times ``--requests`` sequential ``GET /api/v1/studies`` with no stream open (the
reference), then again with ``--streams`` event streams open on those studies, and prints
p50/p95 and the ratio of the p95s against the goal (within 2x of idle).

    .venv/bin/python -m bench.bench_streams                 # 200 streams, 100 requests
    .venv/bin/python -m bench.bench_streams --streams 50
"""

from __future__ import annotations

import argparse
import socket
import statistics
from collections import Counter
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ENSEMBLE_ONLY, footer, header, postgres_database, verdict
from tests.support.servers import ServeProcess

GOAL_RATIO = 2.0
STUDIES = 4
SPEC = {"name": "bench-streams", "task": "classification", "dataset": {"builtin": "digits"},
        "budget": {"n_trials": 3}, "final_model": ENSEMBLE_ONLY}


def open_stream(url: str, path: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=600)  # a busy machine answers 200 slowly
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def latencies(http: httpx.Client, count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        assert http.get("/api/v1/studies").status_code == 200
        out.append(time.perf_counter() - started)
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def measure(database_url: str, folder: Path, streams: int, requests: int) -> bool:
    with ServeProcess(database_url, folder / "data", folder / "serve.log") as service, \
            httpx.Client(base_url=service.url, timeout=120) as http:
        paths = [http.post("/api/v1/studies", json=SPEC).json()["links"]["events"] for _ in range(STUDIES)]
        latencies(http, 10)  # warm up
        idle = latencies(http, requests)
        socks = [open_stream(service.url, paths[i % len(paths)]) for i in range(streams)]
        try:
            answers = Counter(s.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace") or "closed" for s in socks)
            refused = sum(n for status, n in answers.items() if not status.startswith("HTTP/1.1 200"))
            time.sleep(2)  # every stream polls a few times
            busy = latencies(http, requests)
        finally:
            for sock in socks:
                sock.close()
    ratio = p95(busy) / p95(idle)
    print(f"  idle:            p50 {statistics.median(idle) * 1000:7.1f} ms   p95 {p95(idle) * 1000:7.1f} ms")
    print(f"  {streams} streams open: p50 {statistics.median(busy) * 1000:7.1f} ms   p95 {p95(busy) * 1000:7.1f} ms"
          f"   (streams refused: {refused}: {dict(answers)})")
    print(f"  p95 ratio {ratio:.2f} (goal <= {GOAL_RATIO:g}): {verdict(ratio <= GOAL_RATIO and not refused)}")
    return ratio <= GOAL_RATIO and not refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--database", choices=("both", "sqlite", "postgres"), default="both")
    args = parser.parse_args()
    header(f"GET /api/v1/studies with {args.streams} event streams open")
    ok = True
    if args.database in ("both", "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            print("SQLite")
            ok &= measure(f"sqlite:///{tmp}/hpo.db", Path(tmp), args.streams, args.requests)
    if args.database in ("both", "postgres"):
        with postgres_database() as url, tempfile.TemporaryDirectory() as tmp:
            if url:
                print("PostgreSQL")
                ok &= measure(url, Path(tmp), args.streams, args.requests)
    footer("bench_streams", sys.argv[1:])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
