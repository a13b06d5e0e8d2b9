"""Helpers for the service tests: tiny specs, trials written through Optuna's own API, an app
served in a thread (``hpo`` child processes: ``process_support``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import optuna
import uvicorn
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from hpo.studies import FAIL_REASON_ATTR
from process_support import free_port
from service.config import Settings

MAX_UPLOAD_BYTES = 256 * 1024  # the test apps' limits: small, so 413s are cheap to provoke
MAX_BODY_BYTES = 32 * 1024


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
