"""Final fits as jobs that workers run, coordinated through Optuna's storage alone.

A job is the study user attribute ``hpo:model``. The API (or ``request_model``) sets it to
``queued``; a worker's loop calls :func:`run_pending_model_jobs` between trials, claims
the job (writes ``running`` with its own worker id, waits a moment, reads it back: the
last writer wins, the others back off), fits, writes the archive to
``DATA_DIR/models/<study>.hpo.zip`` (temporary file, then rename) and sets ``ready`` with
the model's metadata, or ``failed`` with the reason. While it runs the job carries the
epoch and a heartbeat; a job whose heartbeat stops (its worker died) is taken over by the
next worker that looks, at most ``MAX_ATTEMPTS`` times.

States: ``queued -> running -> ready | failed``; ``running -> queued`` when the worker
stops politely. A request while ``ready`` or ``failed`` starts a new fit.
:func:`delete_model` removes the job in any state, and the archive with it; it also writes
the job's ``requested_at`` to ``hpo:model:cancelled``, which no worker ever writes, so a
worker's write racing the deletion cannot bring the job back: that job reads as no job, is
never claimed, and its worker drops the fit at its next write (each epoch, each heartbeat).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage

from hpo.cv import Interrupted
from hpo.export.archive import ARCHIVE_SUFFIX, Manifest
from hpo.export.fit import MAX_HOLDOUT, fit_study_model, pick_trial
from hpo.settings import DEFAULT_HEARTBEAT_S
from hpo.studies import study_spec

if TYPE_CHECKING:
    from hpo.storage import FrozenStudy

log = logging.getLogger("hpo.export")

MODEL_ATTR = "hpo:model"
CANCELLED_ATTR = "hpo:model:cancelled"  # the requested_at of the last job deleted
MODELS_DIR = "models"
JOB_STATES = ("queued", "running", "ready", "failed")
ACTIVE_STATES = ("queued", "running")
DEFAULT_STALE_AFTER_S = 120.0
DEFAULT_CLAIM_SETTLE_S = 0.5
MAX_ATTEMPTS = 3
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class ModelJobConflict(RuntimeError):
    """A fit of this study is already queued or running."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def model_path(data_dir: str | Path, study_name: str) -> Path:
    """Where a study's model archive lives: ``DATA_DIR/models/<study>.hpo.zip`` (a study
    name unsafe as a file name is replaced by its sha256)."""
    safe = study_name if _SAFE_NAME.match(study_name) and ".." not in study_name else (
        "study-" + hashlib.sha256(study_name.encode()).hexdigest()[:32])
    return Path(data_dir) / MODELS_DIR / f"{safe}{ARCHIVE_SUFFIX}"


def remove_model(data_dir: str | Path, study_name: str) -> None:
    """Delete a study's archive, if any."""
    model_path(data_dir, study_name).unlink(missing_ok=True)


def model_job(storage: BaseStorage, study_name: str) -> dict[str, Any] | None:
    """The study's model job as stored (see the module docstring), or None when never requested.

    Raises:
        KeyError: no such study.
    """
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(study_name))
    job = attrs.get(MODEL_ATTR)
    if not isinstance(job, dict) or job.get("state") not in JOB_STATES or _cancelled(job, attrs):
        return None
    return job


def _cancelled(job: dict[str, Any], attrs: dict[str, Any]) -> bool:
    """Whether ``job`` is one that :func:`delete_model` removed (``attrs``: the study's user attributes)."""
    requested_at = job.get("requested_at")
    return requested_at is not None and attrs.get(CANCELLED_ATTR) == requested_at


def request_model(storage: BaseStorage, study_name: str, *, trial_number: int | None = None,
                  holdout: float = 0.0) -> dict[str, Any]:
    """Queue a final fit of the study's best trial (or of ``trial_number``).

    Args:
        storage: the Optuna storage.
        study_name: the Optuna study.
        trial_number: fit this complete trial instead of the best one.
        holdout: share of rows held out and scored (see ``hpo.export.fit.holdout_split``).

    Returns:
        The queued job.

    Raises:
        KeyError: no such study, or not an hpo study.
        ValueError: no completed trial (or no such one), or a holdout outside [0, 0.5].
        ModelJobConflict: a fit is already queued or running.
    """
    if not 0.0 <= holdout <= MAX_HOLDOUT:
        raise ValueError(f"holdout must be a fraction in [0, {MAX_HOLDOUT}]; got {holdout}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    study_spec(study)
    trial = pick_trial(study, trial_number)
    current = model_job(storage, study_name)
    if current is not None and current["state"] in ACTIVE_STATES and not _stale(current, DEFAULT_STALE_AFTER_S):
        raise ModelJobConflict(f"a model fit of study {study_name!r} is already {current['state']}")
    job = {
        "state": "queued",
        "requested_at": _iso(_now()),
        "trial_number": trial.number,
        "cv_score": trial.value,
        "holdout": holdout,
        "attempts": 0,
    }
    study.set_user_attr(MODEL_ATTR, job)
    return job


def delete_model(storage: BaseStorage, data_dir: str | Path, study_name: str) -> dict[str, Any] | None:
    """Cancel a study's fit or delete its model: the job goes (:func:`model_job` says None
    again) and so does the archive.

    A queued job is removed before any worker starts it. A running fit is cancelled: its
    worker reads the job before each of its writes, finds it gone (or marked cancelled, if
    a write of its own raced the deletion) at the end of the epoch in progress or at its
    next heartbeat, and stops without writing an archive. A fit finishing in that very
    instant may leave its archive file behind; it is never served (the state is ``none``)
    and the next fit replaces it.

    Args:
        storage: the Optuna storage.
        data_dir: the data folder the archives are in.
        study_name: the Optuna study.

    Returns:
        The job as it was, or None when there was none (nothing is changed then).

    Raises:
        KeyError: no such study.
    """
    job = model_job(storage, study_name)
    if job is None:
        return None
    study_id = storage.get_study_id_from_name(study_name)
    if job.get("requested_at") is not None:
        storage.set_study_user_attr(study_id, CANCELLED_ATTR, job["requested_at"])
    # Optuna's storages cannot delete a user attribute: null reads as "no job" everywhere.
    storage.set_study_user_attr(study_id, MODEL_ATTR, None)
    remove_model(data_dir, study_name)
    return job


def _stale(job: dict[str, Any], stale_after_s: float) -> bool:
    """A running job whose worker has not beaten for ``stale_after_s`` seconds."""
    if job.get("state") != "running":
        return False
    try:
        beat = dt.datetime.fromisoformat(job["heartbeat_at"])
    except (KeyError, TypeError, ValueError):
        return True
    return (_now() - beat).total_seconds() > stale_after_s


def run_pending_model_jobs(
    storage: BaseStorage,
    data_dir: str | Path,
    *,
    study_name: str | None = None,
    studies: list[FrozenStudy] | None = None,
    should_stop: Callable[[], bool] | None = None,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    claim_settle_s: float = DEFAULT_CLAIM_SETTLE_S,
) -> bool:
    """The worker loop's hook: run one pending model job, if there is one.

    Args:
        storage: the Optuna storage.
        data_dir: the data folder shared with the API (datasets in, archives out).
        study_name: only look at this study (``hpo run``); None: every study.
        studies: the storage's study listing, when the caller already has it.
        should_stop: polled every epoch; when true the job goes back to ``queued``.
        heartbeat_s: seconds between heartbeats of the running job.
        stale_after_s: a running job without a heartbeat for this long is taken over.
        claim_settle_s: wait between claiming and reading the claim back.

    Returns:
        True when a job was claimed (whatever its outcome), False when none was pending.
    """
    for frozen in storage.get_all_studies() if studies is None else studies:
        name = frozen.study_name
        job = frozen.user_attrs.get(MODEL_ATTR)
        if (study_name is not None and name != study_name) or not isinstance(job, dict) \
                or _cancelled(job, frozen.user_attrs):
            continue
        if job.get("state") != "queued" and not _stale(job, stale_after_s):
            continue
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:  # deleted since the listing
            continue
        if job.get("state") == "running" and int(job.get("attempts", 0)) >= MAX_ATTEMPTS:
            storage.set_study_user_attr(study_id, MODEL_ATTR, {
                **job, "state": "failed", "finished_at": _iso(_now()),
                "reason": f"the fit was interrupted {job['attempts']} times (its workers stopped or died)",
            })
            continue
        claimed = _claim(storage, study_id, job, claim_settle_s)
        if claimed is None:
            continue
        _ModelFit(storage, study_id, name, claimed, Path(data_dir), heartbeat_s, should_stop).run()
        return True
    return False


def _claim(storage: BaseStorage, study_id: int, job: dict[str, Any], settle_s: float) -> dict[str, Any] | None:
    """Write ``running`` with a fresh worker id, wait, read back: the job is ours if our id stayed.

    Nothing is written unless the job is still as listed (not deleted, requested again or
    claimed since).
    """
    attrs = storage.get_study_user_attrs(study_id)
    if attrs.get(MODEL_ATTR) != job or _cancelled(job, attrs):
        return None
    now = _iso(_now())
    worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    running = {**job, "state": "running", "worker": worker, "started_at": now, "heartbeat_at": now,
               "attempts": int(job.get("attempts", 0)) + 1, "epoch": 0, "epochs": None, "score": None}
    running.pop("reason", None)
    storage.set_study_user_attr(study_id, MODEL_ATTR, running)
    time.sleep(settle_s)
    attrs = storage.get_study_user_attrs(study_id)
    current = attrs.get(MODEL_ATTR)
    ours = isinstance(current, dict) and current.get("worker") == worker and not _cancelled(current, attrs)
    return running if ours else None


class _ModelFit:
    """One claimed job: fit, heartbeat, archive, final state."""

    def __init__(self, storage: BaseStorage, study_id: int, study_name: str, job: dict[str, Any], data_dir: Path,
                 heartbeat_s: float, should_stop: Callable[[], bool] | None):
        self.storage, self.study_id, self.study_name = storage, study_id, study_name
        self.job, self.data_dir, self.heartbeat_s = job, data_dir, heartbeat_s
        self.should_stop = should_stop
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.lost = False  # another worker took the job over (we looked dead) or the study is gone

    def run(self) -> None:
        beat = threading.Thread(target=self._beat, name="hpo-model-heartbeat", daemon=True)
        beat.start()
        log.info("fitting the model of study %s (trial %s)", self.study_name, self.job.get("trial_number"))
        path = model_path(self.data_dir, self.study_name)
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        try:
            try:
                model = fit_study_model(
                    self.storage, self.study_name, self.data_dir, trial_number=self.job.get("trial_number"),
                    holdout=float(self.job.get("holdout") or 0.0), on_epoch=self._on_epoch,
                    should_stop=self._stopping,
                )
                archive = model.save(partial)
            finally:
                self.done.set()  # no heartbeat may land after the final state
            self._write_if_ours(lambda job: self._ready(job, partial, path, archive, model), final=True)
        except Interrupted:
            self._write_if_ours(lambda job: {**job, "state": "queued", "worker": None}, final=True)
        except Exception as exc:  # the job fails with the reason; the worker goes on
            log.warning("model fit of study %s failed: %s", self.study_name, exc)
            self._write_if_ours(lambda job: {**job, "state": "failed", "finished_at": _iso(_now()),
                                             "reason": f"{type(exc).__name__}: {exc}"[:2000]}, final=True)
        finally:
            partial.unlink(missing_ok=True)

    @staticmethod
    def _ready(job: dict[str, Any], partial: Path, path: Path, archive: dict[str, Any], model: Any) -> dict[str, Any]:
        os.replace(partial, path)  # only once the job is known to still be ours
        return {**job, "state": "ready", "finished_at": _iso(_now()), "epoch": job.get("epochs"),
                "archive": {"file": f"{MODELS_DIR}/{path.name}", **archive}, "model": model_summary(model.manifest)}

    def _stopping(self) -> bool:
        return self.lost or (self.should_stop is not None and self.should_stop())

    def _on_epoch(self, epoch: int, epochs: int, score: float) -> None:
        self.job = {**self.job, "epoch": epoch, "epochs": epochs, "score": score if score == score else None}
        self._write_if_ours(lambda job: {**job, "heartbeat_at": _iso(_now())})

    def _beat(self) -> None:
        while not self.done.wait(self.heartbeat_s):
            try:
                self._write_if_ours(lambda job: {**job, "heartbeat_at": _iso(_now())})
            except Exception as exc:  # a database hiccup: the next beat tries again
                log.warning("model job heartbeat failed: %s", exc)

    def _write_if_ours(self, update: Callable[[dict[str, Any]], dict[str, Any]], final: bool = False) -> None:
        """Write ``update(job)`` unless another worker took the job over (or it was removed)."""
        with self.lock:
            if self.lost or (self.done.is_set() and not final):
                return
            try:
                attrs = self.storage.get_study_user_attrs(self.study_id)
            except KeyError:  # the study was deleted
                attrs = {}
            current = attrs.get(MODEL_ATTR)
            if not isinstance(current, dict) or current.get("worker") != self.job["worker"] \
                    or _cancelled(current, attrs):
                self.lost = True
                log.warning("model job of study %s was taken over or removed; dropping this fit", self.study_name)
                return
            self.storage.set_study_user_attr(self.study_id, MODEL_ATTR, update(self.job))


def model_summary(manifest: Manifest) -> dict[str, Any]:
    """What the API shows of a fitted model: where it came from and what it was trained on."""
    source = manifest.source or {}
    return {
        "task": manifest.task,
        "params": manifest.params,
        "epochs": manifest.training.get("epochs"),
        "epochs_source": manifest.training.get("epochs_source"),
        "fold_best_epochs": source.get("fold_best_epochs"),
        "trial_number": source.get("trial_number"),
        "cv_score": source.get("cv_score"),
        "metric": source.get("metric"),
        "direction": source.get("direction"),
        "training": manifest.training,
        "data_fingerprint": manifest.data_fingerprint,
        "classes": manifest.target.class_names,
        "input": manifest.preprocessing.get("kind"),
        "versions": manifest.versions,
        "created_at": manifest.created_at,
    }
