"""``hpo`` commands in child processes, for the tests and the benchmarks: the command line,
a free port, clean stops (the child's whole process group)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
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
        """Send ``sig`` to its whole process group (gone already: nothing to do)."""
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
