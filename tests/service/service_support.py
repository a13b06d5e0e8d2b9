"""Helpers for the service tests: tiny specs, trials written through Optuna's own API, a live
server, ``hpo`` child processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import uvicorn
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from hpo.studies import FAIL_REASON_ATTR

MAX_UPLOAD_BYTES = 256 * 1024  # the test apps' limits: small, so 413s are cheap to provoke
MAX_BODY_BYTES = 32 * 1024


def tiny_spec(name: str = "digits-tiny", **overrides: Any) -> dict[str, Any]:
    """A spec that trains in seconds: digits, 2 folds, 2 epochs, hidden size fixed at 16, large
    batches, 3 trials."""
    spec: dict[str, Any] = {
        "name": name,
        "task": "classification",
        "dataset": {"builtin": "digits"},
        "search_space": {"hidden_size": {"value": 16}, "batch_size": {"choices": [128, 256]}},
        "cv": {"folds": 2},
        "training": {"max_epochs": 2},
        "budget": {"n_trials": 3},
    }
    spec.update(overrides)
    return spec


def add_trial(
    storage: BaseStorage,
    study_name: str,
    *,
    state: str = "complete",
    value: float = 0.5,
    lr: float | None = None,
    steps: list[float] = (),
    fold_scores: list[float] | None = None,
    fail_reason: str | None = None,
) -> int:
    """Run one trial by hand through Optuna (ask / report / tell), as a worker would.

    Returns:
        The trial's number.
    """
    study = optuna.load_study(study_name=study_name, storage=storage)
    if lr is not None:
        study.enqueue_trial({"lr": lr})
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.suggest_categorical("batch_size", [16, 32])
    for step, score in enumerate(steps):
        trial.report(score, step)
    if fold_scores is not None:
        trial.set_user_attr("fold_scores", fold_scores)
        finite = [s for s in fold_scores if s == s]
        trial.set_user_attr("fold_std", float(max(finite) - min(finite)) / 2 if finite else None)
    if state == "running":
        return trial.number
    if state == "failed":
        trial.set_user_attr(FAIL_REASON_ATTR, fail_reason or "it broke")
        study.tell(trial, state=TrialState.FAIL)
    elif state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, value)
    return trial.number


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


REPO = Path(__file__).resolve().parents[2]


def hpo(*args: str) -> list[str]:
    """The command line of ``hpo ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "hpo", *args]


class Process:
    """A child process in its own session, so that it and the workers it spawns end together."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM (workers fail their trial cleanly), then SIGKILL the whole group if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)  # the group: stragglers the parent did not reap
        self.proc.wait()
        self._log_file.close()
