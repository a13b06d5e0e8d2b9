"""Servers on a free port of 127.0.0.1, waited on until they answer: ``hpo serve`` as a child
process (API and embedded workers, as users run it), or an app served by uvicorn in a thread of
the test (real HTTP, no worker processes), with the test apps' settings."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from hpo.settings import Settings
from tests.support.processes import Process, free_port, hpo

SERVE_READY_TIMEOUT_S = 90
MAX_UPLOAD_BYTES = 256 * 1024  # the test apps' limits: small, so 413s are cheap to provoke
MAX_BODY_BYTES = 32 * 1024


def wait_serve_ready(url: str, process: Process) -> None:
    """Until the ``hpo serve`` at ``url`` (run by ``process``) answers ``/readyz`` with 200.

    Raises:
        RuntimeError: it exited, or was not ready within ``SERVE_READY_TIMEOUT_S`` (with the
            end of its log).
    """
    deadline = time.monotonic() + SERVE_READY_TIMEOUT_S
    # One client for all the polls: each ``httpx.get`` builds a new TLS context (tens of ms of
    # CPU), taken from the server being waited for on a busy machine.
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.proc.poll() is not None:
                raise RuntimeError(f"hpo serve exited ({process.proc.returncode}):\n{process.output()}")
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"hpo serve was not ready in {SERVE_READY_TIMEOUT_S} s:\n{process.output()}")


class ServeProcess(Process):
    """``hpo serve`` on a free port of 127.0.0.1, returned once ``/readyz`` answers 200.

    Args:
        database_url: the service's database.
        data_dir: its data folder.
        log: where its output goes.
        workers: embedded worker processes (``--workers``).
        env: extra environment variables (``HPO_*`` settings).
        args: further ``hpo serve`` options.

    Raises:
        RuntimeError: it exited, or was not ready within ``SERVE_READY_TIMEOUT_S`` (with the
            end of its log).
    """

    def __init__(self, database_url: str, data_dir: Path | str, log: Path, *, workers: int = 0,
                 env: Mapping[str, str] | None = None, args: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        super().__init__(hpo("serve", "--host", "127.0.0.1", "--port", str(self.port), "--database", database_url,
                             "--workers", str(workers), "--data-dir", str(data_dir), *args), log, env=env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        wait_serve_ready(self.url, self)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_settings(database_url: str, data_dir: Path) -> Settings:
    """The test apps' settings: small limits (so 413s and zip bombs are cheap to provoke) and
    fast event polling."""
    return Settings(
        database_url=database_url,
        data_dir=str(data_dir),
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_body_bytes=MAX_BODY_BYTES,
        max_unpacked_bytes=16 * MAX_UPLOAD_BYTES,
        max_page_size=100,
        events_poll_s=0.1,
        events_heartbeat_s=0.5,
    )


class LiveServer:
    """An app served by uvicorn on a free port in a thread: real HTTP, no worker processes."""

    def __init__(self, app: Any):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
