"""Worker processes end with their supervisor, even when it is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.processes import Process, hpo

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from Linux's /proc")


def children_of(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_sigkill_of_the_worker_supervisor_ends_its_children(sqlite_url, tmp_path):
    """The children stop as on SIGTERM (after their start-up or current epoch: slow on a busy machine)."""
    supervisor = Process(hpo("worker", "--database", sqlite_url, "--concurrency", "2",
                             "--data-dir", str(tmp_path / "data")), tmp_path / "worker.log")
    try:
        assert wait_for(lambda: len(children_of(supervisor.proc.pid)) >= 2, 120), supervisor.output()
        children = children_of(supervisor.proc.pid)
        os.kill(supervisor.proc.pid, signal.SIGKILL)
        supervisor.proc.wait(30)
        assert wait_for(lambda: not any(alive(pid) for pid in children), 120), \
            f"children {[pid for pid in children if alive(pid)]} outlived their supervisor\n{supervisor.output()}"
    finally:
        supervisor.stop()
