"""A study's final model in the database: what is served, and refits as jobs the workers run.

The model a study serves is its refit once that is ready, else the ensemble of its best
trial's fold models that the workers keep as trials complete (``hpo.export.ensemble``), so
a model is served as soon as the study ends. Both archives live in ``hpo_model_archives``
(``hpo.export.store``); refit jobs in ``hpo_model_jobs``, one row per study.

A refit job: a study whose spec says ``final_model.kind: refit`` (the default) queues its
own when it ends (:func:`queue_final_refit`, called by the first worker that sees it
completed; once per study, recorded in ``hpo_auto_refits``); the API (or
:func:`request_model`) inserts one ``queued`` on request. Each gets a fresh ``job_id``; a worker's loop calls :func:`run_pending_model_jobs` between trials and claims
it with one conditional UPDATE (``queued``, or ``running`` with a heartbeat older than
``stale_after_s``, becomes ``running`` under its worker id: exactly one of several racing
workers gets it), fits, and in one transaction sets ``ready`` and stores the archive, or
sets ``failed`` with the reason. Every write of the worker is conditional on the job
still being ``running`` under its worker id and ``job_id``: a job deleted, taken over or
requested again since is never written by that fit again, which drops it at its next
write (each epoch, each heartbeat). A job whose heartbeat stops (its worker died) is taken
over by the next worker that looks, at most ``MAX_ATTEMPTS`` times.

States: ``queued -> running -> ready | failed``; ``running -> queued`` when the worker
stops politely. A request while ``ready`` or ``failed`` starts a new refit.
:func:`delete_model` removes the refit job (and its archive) in any state, or the ensemble.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from hpo.cv import Interrupted
from hpo.data import DatasetStore
from hpo.export.archive import Manifest
from hpo.export.fit import MAX_HOLDOUT, fit_study_model, pick_trial
from hpo.db.models import auto_refits, model_archives, model_jobs
from hpo.export.store import ensure_tables, insert_if_absent, iso, upsert, utcnow
from hpo.settings import DEFAULT_HEARTBEAT_S
from hpo.spec import MAX_SEEDS
from hpo.studies import study_spec

log = logging.getLogger("hpo.export")

DEFAULT_STALE_AFTER_S = 120.0
MAX_ATTEMPTS = 3
_TIMES = ("requested_at", "started_at", "heartbeat_at", "finished_at")


class ModelJobConflict(RuntimeError):
    """A refit of this study is already queued or running."""


def _engine(storage: RDBStorage) -> sa.Engine:
    """The storage's database, with the model tables in it."""
    ensure_tables(storage.engine)
    return storage.engine


def _job_dict(row: Any) -> dict[str, Any]:
    job = dict(row._mapping)
    job.update({name: iso(job[name]) for name in _TIMES})
    return job


def model_job(storage: RDBStorage, study_name: str) -> dict[str, Any] | None:
    """The study's refit job as stored, or None when none was requested (or it was deleted)."""
    with _engine(storage).connect() as connection:
        row = connection.execute(sa.select(model_jobs).where(model_jobs.c.study_name == study_name)).first()
    return None if row is None else _job_dict(row)


def model_status(storage: RDBStorage, study_name: str) -> dict[str, Any] | None:
    """The model the study serves, and its refit, or None when it has neither.

    The study serves its refit once that is ``ready``, else its ensemble (while the refit is
    queued or running, after it failed, or when the refit did not learn and the ensemble did:
    see :func:`_unlearned_beside_a_learned`), else nothing. The top level describes the served
    model (``kind``, ``state: ready``, ``trial_number``, ``cv_score``, ``archive`` with
    ``bytes`` and ``sha256``, ``model``: the summary of its manifest, see
    :func:`model_summary`; a served refit also carries its job's fields); without a served
    model it is the refit's job (``kind: refit``, in the job's state). ``refit`` is the job
    whenever there is one (``auto``: queued by the study itself when it ended); ``archives``
    lists the kinds that can be downloaded or predicted with by name, each with its
    ``trial_number``, ``cv_score``, ``bytes``, ``sha256``, ``learned`` and ``created_at``.
    """
    archive_columns = (model_archives.c.kind, model_archives.c.trial_number, model_archives.c.sha256,
                       sa.func.length(model_archives.c.archive).label("bytes"), model_archives.c.summary,
                       model_archives.c.created_at)
    with _engine(storage).connect() as connection:
        job_row = connection.execute(sa.select(model_jobs).where(model_jobs.c.study_name == study_name)).first()
        auto_job_id = connection.scalar(sa.select(auto_refits.c.job_id).where(auto_refits.c.study_name == study_name))
        stored = {row.kind: row for row in connection.execute(
            sa.select(*archive_columns).where(model_archives.c.study_name == study_name))}
    job = None if job_row is None else {**_job_dict(job_row), "auto": job_row.job_id == auto_job_id}
    # A refit's archive counts only once its job is ready (a new request leaves none behind, see request_model).
    archives = {kind: row for kind, row in stored.items() if kind == "ensemble" or (job or {}).get("state") == "ready"}
    if not archives and job is None:
        return None
    served = "refit" if "refit" in archives and not _unlearned_beside_a_learned(archives) else \
        "ensemble" if "ensemble" in archives else None
    if served == "refit":
        status: dict[str, Any] = {"kind": "refit", **job}  # type: ignore[dict-item]
    elif served == "ensemble":
        ensemble = archives["ensemble"]
        status = {"kind": "ensemble", "state": "ready", "trial_number": ensemble.trial_number,
                  "cv_score": ensemble.summary.get("cv_score"), "finished_at": iso(ensemble.created_at)}
    else:
        status = {"kind": "refit", **job}  # type: ignore[dict-item]
    if served is not None:
        status["archive"] = {"bytes": int(archives[served].bytes), "sha256": archives[served].sha256}
        status["model"] = archives[served].summary
    if job is not None:
        status["refit"] = job
    status["archives"] = {kind: {"trial_number": row.trial_number, "cv_score": row.summary.get("cv_score"),
                                 "bytes": int(row.bytes), "sha256": row.sha256, "learned": row.summary.get("learned"),
                                 "created_at": iso(row.created_at)} for kind, row in archives.items()}
    return status


def _unlearned_beside_a_learned(archives: dict[str, Any]) -> bool:
    """Whether the refit did not learn (its training score no better than the majority class
    or persistence: ``hpo.export.fit.learning_check``) while the ensemble, also stored, did:
    the ensemble is then served, and the refit stays downloadable by name. Decided on the
    training rows alone, as the learning check is."""
    return (archives["refit"].summary.get("learned") is False and "ensemble" in archives
            and archives["ensemble"].summary.get("learned") is not False)


def models_of(storage: RDBStorage, study_names: list[str]) -> dict[str, tuple[str | None, bool]]:
    """For each of these studies that has a refit job or an archive: the job's state (``None``
    without one) and whether an archive (ensemble or refit) is stored, in two queries."""
    if not study_names:
        return {}
    with _engine(storage).connect() as connection:
        jobs = dict(connection.execute(
            sa.select(model_jobs.c.study_name, model_jobs.c.state).where(model_jobs.c.study_name.in_(study_names))).all())
        archived = set(connection.scalars(
            sa.select(model_archives.c.study_name).where(model_archives.c.study_name.in_(study_names))).all())
    return {name: (jobs.get(name), name in archived) for name in set(jobs) | archived}


def model_archive(storage: RDBStorage, study_name: str, kind: str) -> tuple[bytes, str] | None:
    """The stored archive of ``kind`` (``ensemble`` or ``refit``) and its sha256, or None."""
    with _engine(storage).connect() as connection:
        row = connection.execute(
            sa.select(model_archives.c.archive, model_archives.c.sha256)
            .where(model_archives.c.study_name == study_name, model_archives.c.kind == kind)
        ).first()
    return None if row is None else (bytes(row.archive), row.sha256)


def request_model(storage: RDBStorage, study_name: str, *, trial_number: int | None = None,
                  holdout: float = 0.0, seeds: int = 1,
                  stale_after_s: float = DEFAULT_STALE_AFTER_S) -> dict[str, Any]:
    """Queue a refit of the study's best trial (or of ``trial_number``) on all its data.

    Args:
        storage: the Optuna storage.
        study_name: the Optuna study.
        trial_number: fit this complete trial instead of the best one.
        holdout: share of rows held out and scored (see ``hpo.export.fit.holdout_split``).
        seeds: networks trained (one per seed) and averaged.
        stale_after_s: a running refit without a heartbeat for this long may be replaced.

    Returns:
        The queued job.

    Raises:
        KeyError: no such study, or not an hpo study.
        ValueError: no completed trial (or no such one), a holdout outside [0, 0.5] or
            seeds outside 1..10.
        ModelJobConflict: a refit is already queued or running.
    """
    if not 0.0 <= holdout <= MAX_HOLDOUT:
        raise ValueError(f"holdout must be a fraction in [0, {MAX_HOLDOUT}]; got {holdout}")
    if not 1 <= seeds <= MAX_SEEDS:
        raise ValueError(f"seeds must be in 1..{MAX_SEEDS}; got {seeds}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    study_spec(study)
    trial = pick_trial(study, trial_number)
    values = _new_job(study_name, trial, holdout=holdout, seeds=seeds)
    stale_before = utcnow() - dt.timedelta(seconds=stale_after_s)
    active = sa.or_(model_jobs.c.state == "queued",
                    sa.and_(model_jobs.c.state == "running", model_jobs.c.heartbeat_at >= stale_before))
    with _engine(storage).begin() as connection:
        written = upsert(connection, model_jobs, values, where=lambda new: sa.not_(active))
        if written:  # the refit it replaces is no longer served, nor kept
            connection.execute(sa.delete(model_archives).where(model_archives.c.study_name == study_name,
                                                               model_archives.c.kind == "refit"))
    if not written:
        current = model_job(storage, study_name)
        raise ModelJobConflict(f"a model fit of study {study_name!r} is already "
                               f"{current['state'] if current else 'queued'}")
    return model_job(storage, study_name) or {}


def delete_model(storage: RDBStorage, study_name: str, kind: str | None = None) -> dict[str, Any] | None:
    """Cancel the study's refit or delete one of its models.

    ``kind`` ``refit``: the refit job and its archive go, in any state (the ensemble, if
    any, is served). ``ensemble``: the ensemble goes. None: the refit when there is a job,
    else the ensemble. A running refit is cancelled: its worker's next write (the end of the
    epoch in progress, or its next heartbeat) finds the job gone and it stops without
    storing an archive. A study's own refit, once deleted, is not queued again.

    Args:
        storage: the Optuna storage.
        study_name: the Optuna study.
        kind: what to remove (see above).

    Returns:
        What was there (as :func:`model_status` said), or None when there was nothing of that kind.
    """
    status = model_status(storage, study_name)
    if status is None:
        return None
    kind = kind or ("refit" if "refit" in status else "ensemble")
    if (kind == "refit" and "refit" not in status) or (kind == "ensemble" and "ensemble" not in status["archives"]):
        return None
    with _engine(storage).begin() as connection:
        if kind == "refit":
            connection.execute(sa.delete(model_jobs).where(model_jobs.c.study_name == study_name))
        connection.execute(sa.delete(model_archives).where(model_archives.c.study_name == study_name,
                                                           model_archives.c.kind == kind))
    return status


def remove_models(storage: RDBStorage, study_name: str) -> None:
    """Forget every model and job of a study (when the study is deleted)."""
    with _engine(storage).begin() as connection:
        connection.execute(sa.delete(model_jobs).where(model_jobs.c.study_name == study_name))
        connection.execute(sa.delete(model_archives).where(model_archives.c.study_name == study_name))
        connection.execute(sa.delete(auto_refits).where(auto_refits.c.study_name == study_name))


def queue_final_refit(storage: RDBStorage, study_name: str, trial: FrozenTrial, seeds: int) -> dict[str, Any] | None:
    """Queue the refit a study asks for when it ends (``final_model.kind: refit``): once per study.

    One transaction: the study's row in ``hpo_auto_refits`` is inserted unless one exists
    (of several workers racing to queue it, exactly one inserts it), and with it a queued
    job for ``trial``, unless the study has a job already (a refit the user asked for stays
    as it is). So a study's own refit that was deleted or replaced is never queued again.
    A study that ends again (resumed with a larger budget) with another best trial has its
    own refit, still its own and not running, redone for that trial (one conditional UPDATE).

    Args:
        storage: the Optuna storage.
        study_name: the Optuna study.
        trial: the study's best complete trial.
        seeds: networks the refit trains and averages (``final_model.seeds``).

    Returns:
        The job queued, or None when the study had queued its refit before (or had a job).
    """
    now = utcnow()
    job = _new_job(study_name, trial, holdout=0.0, seeds=seeds)
    with _engine(storage).begin() as connection:
        if not insert_if_absent(connection, auto_refits, {"study_name": study_name, "job_id": job["job_id"],
                                                          "trial_number": trial.number, "queued_at": now}):
            return _requeue_for(connection, study_name, trial, job)
        if not insert_if_absent(connection, model_jobs, job):
            return None
    log.info("study %s ended: queued a refit of trial %d (%d seeds)", study_name, trial.number, seeds)
    return model_job(storage, study_name)


def _requeue_for(connection: sa.Connection, study_name: str, trial: FrozenTrial,
                 job: dict[str, Any]) -> dict[str, Any] | None:
    """Point the study's own refit at ``trial`` when it was queued for another one and is
    queued, ready or failed (not running, deleted or replaced): ``job`` replaces it."""
    own = sa.select(auto_refits.c.job_id).where(auto_refits.c.study_name == study_name).scalar_subquery()
    this_study = model_jobs.c.study_name == study_name
    redone = connection.execute(sa.update(model_jobs).where(
        this_study, model_jobs.c.job_id == own, model_jobs.c.trial_number != trial.number,
        model_jobs.c.state.in_(("queued", "ready", "failed"))).values(
        **{k: v for k, v in job.items() if k != "study_name"})).rowcount
    if not redone:
        return None
    connection.execute(sa.update(auto_refits).where(auto_refits.c.study_name == study_name).values(
        job_id=job["job_id"], trial_number=trial.number, queued_at=job["requested_at"]))
    connection.execute(sa.delete(model_archives).where(model_archives.c.study_name == study_name,
                                                       model_archives.c.kind == "refit"))
    log.info("study %s ended again: its refit is redone for trial %d", study_name, trial.number)
    return job


def _new_job(study_name: str, trial: FrozenTrial, *, holdout: float, seeds: int) -> dict[str, Any]:
    """A ``hpo_model_jobs`` row for a refit of ``trial``, queued now under a fresh ``job_id``."""
    return {
        "study_name": study_name, "job_id": secrets.token_hex(8), "state": "queued", "trial_number": trial.number,
        "cv_score": trial.value, "holdout": holdout, "seeds": seeds, "attempts": 0, "worker": None,
        "requested_at": utcnow(), "started_at": None, "heartbeat_at": None, "finished_at": None, "epoch": None,
        "epochs": None, "score": None, "reason": None,
    }


def run_pending_model_jobs(
    storage: RDBStorage,
    data_dir: str | Path,
    *,
    study_name: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
) -> bool:
    """The worker loop's hook: run one pending refit job, if there is one.

    Args:
        storage: the Optuna storage.
        data_dir: this machine's cache of uploaded datasets (``hpo.data.DatasetStore``).
        study_name: only look at this study (``hpo run``); None: every study.
        should_stop: polled every epoch; when true the job goes back to ``queued``.
        heartbeat_s: seconds between heartbeats of the running job.
        stale_after_s: a running job without a heartbeat for this long is taken over.

    Returns:
        True when a job was claimed or given up (whatever its outcome), False when none was pending.
    """
    job = claim_job(storage, study_name=study_name, stale_after_s=stale_after_s)
    if job is None:
        return False
    if job["state"] == "running":
        _ModelFit(storage, job, DatasetStore(storage.engine, data_dir), heartbeat_s, should_stop).run()
    return True


def claim_job(storage: RDBStorage, *, study_name: str | None = None,
              stale_after_s: float = DEFAULT_STALE_AFTER_S) -> dict[str, Any] | None:
    """Claim a pending refit job: a queued one, or a running one whose heartbeat is older
    than ``stale_after_s`` (its worker died; given up as ``failed`` after ``MAX_ATTEMPTS``).

    Each claim is one conditional UPDATE: of several workers racing for a job, exactly one
    gets it.

    Returns:
        The job as claimed (``running`` under a fresh worker id), the job given up
        (``failed``), or None when no job was pending.
    """
    engine = _engine(storage)
    stale_before = utcnow() - dt.timedelta(seconds=stale_after_s)
    pending = sa.or_(model_jobs.c.state == "queued",
                     sa.and_(model_jobs.c.state == "running", model_jobs.c.heartbeat_at < stale_before))
    query = sa.select(model_jobs.c.study_name, model_jobs.c.job_id, model_jobs.c.state, model_jobs.c.attempts) \
        .where(pending).order_by(model_jobs.c.requested_at)
    if study_name is not None:
        query = query.where(model_jobs.c.study_name == study_name)
    with engine.connect() as connection:
        candidates = connection.execute(query).all()
    for candidate in candidates:
        same_job = sa.and_(model_jobs.c.study_name == candidate.study_name, model_jobs.c.job_id == candidate.job_id,
                           pending)
        worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        now = utcnow()
        if candidate.state == "running" and candidate.attempts >= MAX_ATTEMPTS:
            values: dict[str, Any] = {
                "state": "failed", "finished_at": now,
                "reason": f"the fit was interrupted {candidate.attempts} times (its workers stopped or died)"}
        else:
            values = {"state": "running", "worker": worker, "started_at": now, "heartbeat_at": now,
                      "attempts": model_jobs.c.attempts + 1, "epoch": 0, "epochs": None, "score": None,
                      "reason": None}
        with engine.begin() as connection:  # exactly one racing worker matches
            written = connection.execute(sa.update(model_jobs).where(same_job).values(**values)).rowcount
        if not written:
            continue
        job = model_job(storage, candidate.study_name)
        if job is not None and job["job_id"] == candidate.job_id:  # not deleted in the instant since
            return job
    return None


class _ModelFit:
    """One claimed job: fit, heartbeat, archive, final state."""

    def __init__(self, storage: RDBStorage, job: dict[str, Any], datasets: DatasetStore, heartbeat_s: float,
                 should_stop: Callable[[], bool] | None):
        self.storage, self.engine = storage, _engine(storage)
        self.job, self.datasets, self.heartbeat_s = job, datasets, heartbeat_s
        self.study_name = job["study_name"]
        self.should_stop = should_stop
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.lost = False  # another worker took the job over (we looked dead), or it was deleted
        self.ours = sa.and_(model_jobs.c.study_name == job["study_name"], model_jobs.c.job_id == job["job_id"],
                            model_jobs.c.worker == job["worker"], model_jobs.c.state == "running")

    def run(self) -> None:
        beat = threading.Thread(target=self._beat, name="hpo-model-heartbeat", daemon=True)
        beat.start()
        log.info("refitting the model of study %s (trial %s)", self.study_name, self.job["trial_number"])
        try:
            try:
                model = fit_study_model(
                    self.storage, self.study_name, self.datasets, trial_number=self.job["trial_number"],
                    holdout=float(self.job["holdout"]), seeds=int(self.job["seeds"]), on_epoch=self._on_epoch,
                    should_stop=self._stopping,
                )
                blob, manifest = model.to_bytes()
            finally:
                self.done.set()  # no heartbeat may land after the final state
            self._store(blob, manifest)
        except Interrupted:
            self._write_if_ours({"state": "queued", "worker": None}, final=True)
        except Exception as exc:  # the job fails with the reason; the worker goes on
            log.warning("model fit of study %s failed: %s", self.study_name, exc)
            self._write_if_ours({"state": "failed", "finished_at": utcnow(),
                                 "reason": f"{type(exc).__name__}: {exc}"[:2000]}, final=True)

    def _store(self, blob: bytes, manifest: Manifest) -> None:
        """``ready`` and the archive, in one transaction, only while the job is ours."""
        with self.lock, self.engine.begin() as connection:
            if self.lost:
                return
            ready = connection.execute(sa.update(model_jobs).where(self.ours).values(
                state="ready", finished_at=utcnow(), epoch=model_jobs.c.epochs)).rowcount
            if not ready:
                self._lose()
                return
            assert manifest.weights is not None
            upsert(connection, model_archives, archive_row(self.study_name, "refit", self.job["trial_number"],
                                                           blob, manifest))

    def _stopping(self) -> bool:
        return self.lost or (self.should_stop is not None and self.should_stop())

    def _on_epoch(self, epoch: int, epochs: int, score: float) -> None:
        self._write_if_ours({"epoch": epoch, "epochs": epochs, "score": score if score == score else None,
                             "heartbeat_at": utcnow()})

    def _beat(self) -> None:
        while not self.done.wait(self.heartbeat_s):
            try:
                self._write_if_ours({"heartbeat_at": utcnow()})
            except Exception as exc:  # a database hiccup: the next beat tries again
                log.warning("model job heartbeat failed: %s", exc)

    def _write_if_ours(self, values: dict[str, Any], final: bool = False) -> None:
        """Write ``values`` unless the job was taken over, requested again or deleted."""
        with self.lock:
            if self.lost or (self.done.is_set() and not final):
                return
            with self.engine.begin() as connection:
                written = connection.execute(sa.update(model_jobs).where(self.ours).values(**values)).rowcount
            if not written:
                self._lose()

    def _lose(self) -> None:
        self.lost = True
        log.warning("model job of study %s was taken over or removed; dropping this fit", self.study_name)


def archive_row(study_name: str, kind: str, trial_number: int, blob: bytes, manifest: Manifest,
                rank: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> dict[str, Any]:
    """A ``hpo_model_archives`` row for an archive (``rank``: see ``hpo.export.ensemble.rank``)."""
    return {"study_name": study_name, "kind": kind, "trial_number": trial_number, "rank_score": rank[0],
            "cv_loss": rank[1], "mean_epochs": rank[2], "archive": blob, "sha256": hashlib.sha256(blob).hexdigest(),
            "summary": model_summary(manifest), "created_at": utcnow()}


def model_summary(manifest: Manifest) -> dict[str, Any]:
    """What the API shows of a fitted model: its kind, where it came from, what it was
    trained on, and whether it learned (see ``hpo.export.fit.learning_check``)."""
    source = manifest.source or {}
    return {
        "kind": manifest.kind,
        "task": manifest.task,
        "members": len(manifest.members),
        "params": manifest.params,
        "epochs": manifest.training.get("epochs"),
        "epochs_source": manifest.training.get("epochs_source"),
        "fold_best_epochs": source.get("fold_best_epochs"),
        "trial_number": source.get("trial_number"),
        "cv_score": source.get("cv_score"),
        "metric": source.get("metric"),
        "direction": source.get("direction"),
        "training": manifest.training,
        "learning": None if manifest.learning is None else manifest.learning.model_dump(),
        "learned": None if manifest.learning is None else manifest.learning.learned,
        "data_fingerprint": manifest.data_fingerprint,
        "classes": manifest.classes,
        "input": manifest.members[0].preprocessing.get("kind"),
        "versions": manifest.versions,
        "weights_sha256": None if manifest.weights is None else manifest.weights.sha256,
        "created_at": manifest.created_at,
    }
