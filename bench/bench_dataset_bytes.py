"""Uploaded datasets in the database: peak memory of an upload and of a worker's fetch of a
file near the upload limit, on SQLite and PostgreSQL.

- upload: ``hpo serve --workers 0`` (its own process) receives an NPZ of ``--mib`` MiB (random
  floats, incompressible) over HTTP; the figure is the growth of its peak RSS (``VmHWM``)
  from before the upload (server ready) to after it. This includes validating the file, which
  loads its arrays (memory in proportion to the file, as any training on it does).
- fetch: a fresh process with an empty data folder copies the file from the database into
  its cache (``DatasetStore.path_of``, what a worker does before loading a study's data); the
  figure is the growth of its peak RSS over its own peak after the imports.

``--code DIR`` runs the API from another checkout (e.g. the previous version, for the
upload's before/after; there was no fetch then).

Run: .venv/bin/python -m bench.bench_dataset_bytes [--mib 99] [--skip-postgres] [--code DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import PYTHON, REPO, footer, header, postgres_database, run_timed
from tests.support.databases import sqlite_url
from tests.support.processes import Process, free_port, hpo

MiB = 2**20


def peak_mib(pid: int | str = "self") -> float:
    """A process's peak resident memory (``VmHWM``) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/PID/status")


def write_npz(path: Path, mib: float) -> int:
    rows = int(mib * MiB / (16 * 16 * 4))
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, X=rng.normal(size=(rows, 16, 16)).astype(np.float32), y=np.arange(rows) % 2)
    path.write_bytes(buffer.getvalue())
    return path.stat().st_size


def child_fetch(database_url: str, dataset_id: str, data_dir: str) -> None:
    """Fetch one dataset into an empty folder; print peak RSS after the imports and after the fetch."""
    from hpo.data import DatasetStore
    from hpo.db import make_engine

    engine = make_engine(database_url)
    store = DatasetStore(engine, data_dir)
    store.get(dataset_id)  # connected, tables read: only the fetch remains
    before = peak_mib()
    start = time.perf_counter()
    path = store.path_of(dataset_id)
    print(json.dumps({"before_mib": before, "after_mib": peak_mib(), "seconds": time.perf_counter() - start,
                      "bytes": path.stat().st_size}))


def measure(database_url: str, upload: Path, folder: Path, code: Path) -> dict[str, float]:
    """Upload through a fresh ``hpo serve`` (from ``code``), then fetch in a fresh process."""
    port = free_port()
    env = {"PYTHONPATH": str(code), "HPO_MAX_UPLOAD_BYTES": str(100 * MiB)}
    server = Process(hpo("serve", "--port", str(port), "--workers", "0", "--database", database_url,
                         "--data-dir", str(folder / "api")), folder / "serve.log", env=env, cwd=folder)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or server.proc.poll() is not None:
                raise RuntimeError(f"hpo serve did not start:\n{server.output()}")
            time.sleep(0.3)
        before = peak_mib(server.proc.pid)
        start = time.perf_counter()
        with upload.open("rb") as file:
            answer = httpx.post(f"{url}/api/v1/datasets", data={"task": "classification"},
                                files={"file": (upload.name, file)}, timeout=600)
        seconds = time.perf_counter() - start
        answer.raise_for_status()
        after = peak_mib(server.proc.pid)
    finally:
        server.stop()
    result = {"upload_before_mib": before, "upload_after_mib": after, "upload_s": seconds}
    if code == REPO:
        fetched = run_timed([PYTHON, "-m", "bench.bench_dataset_bytes", "--child", database_url,
                             answer.json()["id"], str(folder / "worker")], cwd=REPO, timeout_s=600)
        out = json.loads(fetched.stdout.strip().splitlines()[-1])
        assert out["bytes"] == upload.stat().st_size
        result.update({"fetch_before_mib": out["before_mib"], "fetch_after_mib": out["after_mib"],
                       "fetch_s": out["seconds"]})
    return result


def report(name: str, result: dict[str, float]) -> None:
    grown = result["upload_after_mib"] - result["upload_before_mib"]
    print(f"{name:<11} upload: API peak RSS {result['upload_before_mib']:.0f} -> {result['upload_after_mib']:.0f} "
          f"MiB (+{grown:.0f}) in {result['upload_s']:.1f} s")
    if "fetch_s" in result:
        grown = result["fetch_after_mib"] - result["fetch_before_mib"]
        print(f"{'':<11} fetch:  worker peak RSS {result['fetch_before_mib']:.0f} -> {result['fetch_after_mib']:.0f} "
              f"MiB (+{grown:.0f}) in {result['fetch_s']:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_fetch(*argv[1:4])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=99.0, help="size of the uploaded file (limit: 100)")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose hpo serve takes the upload")
    args = parser.parse_args(argv)
    header("dataset bytes in the database: peak memory of an upload and of a fetch")
    with tempfile.TemporaryDirectory(prefix="hpo-bench-bytes-") as tmp:
        folder = Path(tmp)
        upload = folder / "near-limit.npz"
        size = write_npz(upload, args.mib)
        print(f"file: {upload.name}, {size / MiB:.1f} MiB; API code: {args.code}; load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        (folder / "sqlite").mkdir()
        report("SQLite", measure(sqlite_url(folder / "sqlite"), upload, folder / "sqlite", args.code.resolve()))
        if not args.skip_postgres:
            with postgres_database() as url:
                if url is not None:
                    (folder / "pg").mkdir()
                    report("PostgreSQL", measure(url, upload, folder / "pg", args.code.resolve()))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    footer("bench_dataset_bytes", argv)


if __name__ == "__main__":
    main()
