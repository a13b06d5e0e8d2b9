"""``hpo`` commands in child processes, for the tests and the benchmarks: a free port,
``hpo serve`` waited on until it is ready, clean stops (the child's whole process group).

The benchmarks import it too (``bench/common.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SERVE_READY_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hpo(*args: str) -> list[str]:
    """The command line of ``hpo ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "hpo", *args]


class Process:
    """A child process in its own session (so that it and the workers it spawns end
    together), its output in a log file.

    Args:
        args: the command line.
        log: the file its stdout and stderr go to.
        env: variables added to this process's environment.
        cwd: its working directory (the repository by default).
    """

    def __init__(self, args: list[str], log: Path, *, env: Mapping[str, str] | None = None,
                 cwd: Path | str = REPO):
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(args, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, **(env or {})})

    def output(self, chars: int = 4000) -> str:
        """The end of its log."""
        return self.log.read_text(errors="replace")[-chars:]

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM (``hpo serve`` stops its workers, workers fail their trial cleanly), then
        SIGKILL the whole group if anything lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)  # the group: stragglers the parent did not reap
        self.proc.wait()
        self._log_file.close()


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
        super().__init__(hpo("serve", "--host", "127.0.0.1", "--port", str(self.port), "--database", database_url,
                             "--workers", str(workers), "--data-dir", str(data_dir), *args), log, env=env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + SERVE_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hpo serve exited ({self.proc.returncode}):\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"hpo serve was not ready in {SERVE_READY_TIMEOUT_S} s:\n{self.output()}")

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
