"""Final models in the database (SQLite and PostgreSQL): refit jobs on their own table,
claimed with one conditional UPDATE, and the fold ensemble kept only when a trial ranks higher."""

from __future__ import annotations

import datetime as dt
import math
import random
import threading

import numpy as np
import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from hpo.data.builtins import load_builtin
from hpo.export import (
    ModelJobConflict, claim_job, delete_model, model_archive, model_job, model_status, remove_models, request_model,
)
from hpo.export.ensemble import keep_if_best, rank, store_if_better
from hpo.export.jobs import _ModelFit
from hpo.db.models import auto_refits, model_archives, model_jobs
from hpo.export.store import NO_LOSS, ensure_tables, utcnow
from hpo.samplers import suggest_params
from hpo.spec import parse_spec
from hpo.studies import best_of, create_study, rank_key, ranked, study_spec
from hpo.train import trial_architecture
from hpo.worker import StudyPicker, WorkerOptions

SPEC = parse_spec({"name": "stored", "dataset": {"builtin": "digits"}, "model": {"cell": "gru"},
                   "cv": {"folds": 2}, "search_space": {"hidden_size": 8, "lr": 0.01, "batch_size": 64},
                   "training": {"max_epochs": 2}})


def _study_with_a_trial(storage, name: str) -> optuna.Study:
    study = create_study(storage, SPEC, study_name=name)
    trial = study.ask()
    trial.suggest_int("hidden_size", 8, 8)
    study.tell(trial, 0.5)
    return study


def _ended_study(storage, name: str, **final_model) -> optuna.Study:
    """A study whose one-trial budget is spent (completed), its spec's final_model as given."""
    spec = SPEC.model_copy(update={"budget": SPEC.budget.model_copy(update={"n_trials": 1})})
    if final_model:
        spec = parse_spec({**spec.model_dump(mode="json"), "final_model": final_model})
    study = create_study(storage, spec, study_name=name)
    trial = study.ask()
    suggest_params(trial, spec.search_space)
    study.tell(trial, 0.5)
    return study


def _workers_look(storage, database_url: str, workers: int = 1) -> None:
    """``workers`` workers list the studies at the same moment, as each does between trials."""
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def look() -> None:
        picker = StudyPicker(storage, WorkerOptions(database_url=database_url), 0, threading.Event())
        barrier.wait()
        try:
            assert picker.pick(storage.get_all_studies()) is None  # nothing left to run
        except BaseException as exc:  # noqa: BLE001 (reported in the test's thread)
            errors.append(exc)

    threads = [threading.Thread(target=look) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _auto_rows(storage, name: str) -> list:
    with storage.engine.connect() as connection:
        return connection.execute(sa.select(auto_refits).where(auto_refits.c.study_name == name)).all()


def test_workers_racing_at_a_studys_end_queue_its_refit_exactly_once(storage, database_url):
    _ended_study(storage, "ended")

    _workers_look(storage, database_url, workers=6)

    job = model_job(storage, "ended")
    assert job["state"] == "queued" and job["seeds"] == 3 and job["trial_number"] == 0 and job["holdout"] == 0.0
    assert [row.job_id for row in _auto_rows(storage, "ended")] == [job["job_id"]]
    status = model_status(storage, "ended")
    assert status["refit"]["auto"] is True and status["state"] == "queued"  # no ensemble kept by hand here
    _workers_look(storage, database_url, workers=2)  # workers started later look again
    assert model_job(storage, "ended")["job_id"] == job["job_id"]


def test_a_deleted_or_replaced_own_refit_is_not_queued_again(storage, database_url):
    _ended_study(storage, "deleted", seeds=2)
    _workers_look(storage, database_url)
    assert delete_model(storage, "deleted")["refit"]["auto"] is True

    _workers_look(storage, database_url)

    assert model_job(storage, "deleted") is None
    request_model(storage, "deleted", seeds=5)  # the user's own
    mine = model_job(storage, "deleted")
    _workers_look(storage, database_url)
    assert model_job(storage, "deleted") == mine and model_status(storage, "deleted")["refit"]["auto"] is False
    remove_models(storage, "deleted")  # the study is deleted: nothing of it is left
    assert _auto_rows(storage, "deleted") == []


def test_a_refit_asked_for_before_the_study_ended_is_kept_and_an_ensemble_study_queues_none(storage, database_url):
    _ended_study(storage, "asked", seeds=2)
    asked = request_model(storage, "asked", seeds=4)
    _ended_study(storage, "ensemble", kind="ensemble")

    _workers_look(storage, database_url)

    assert model_job(storage, "asked")["job_id"] == asked["job_id"] and model_job(storage, "asked")["seeds"] == 4
    assert model_job(storage, "ensemble") is None and _auto_rows(storage, "ensemble") == []


def test_a_study_that_ends_again_with_another_best_trial_redoes_its_own_refit(storage, database_url):
    study = _ended_study(storage, "resumed", seeds=2)
    _workers_look(storage, database_url)
    first = model_job(storage, "resumed")
    _set_job(storage, "resumed", state="ready")
    spec = parse_spec({**study_spec(study).model_dump(mode="json"), "budget": {"n_trials": 2}})
    create_study(storage, spec, study_name="resumed")  # resumed with a larger budget
    trial = study.ask()
    suggest_params(trial, spec.search_space)
    study.tell(trial, 0.9)  # the new best

    _workers_look(storage, database_url, workers=3)

    again = model_job(storage, "resumed")
    assert again["trial_number"] == 1 and again["state"] == "queued" and again["job_id"] != first["job_id"]
    assert model_status(storage, "resumed")["refit"]["auto"] is True
    _workers_look(storage, database_url)
    assert model_job(storage, "resumed")["job_id"] == again["job_id"]  # once per best trial


def _set_job(storage, name: str, **values) -> None:
    with storage.engine.begin() as connection:
        connection.execute(sa.update(model_jobs).where(model_jobs.c.study_name == name).values(**values))


def test_one_worker_wins_a_contested_claim(storage):
    _study_with_a_trial(storage, "contested")
    request_model(storage, "contested")
    won: list[dict] = []
    barrier = threading.Barrier(6)

    def claim() -> None:
        barrier.wait()
        job = claim_job(storage)
        if job is not None:
            won.append(job)

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(won) == 1 and won[0]["state"] == "running" and won[0]["attempts"] == 1
    assert model_job(storage, "contested")["worker"] == won[0]["worker"]
    with pytest.raises(ModelJobConflict, match="already running"):
        request_model(storage, "contested")


def test_a_job_whose_worker_died_is_taken_over_then_given_up(storage):
    _study_with_a_trial(storage, "orphaned")
    request_model(storage, "orphaned")
    first = claim_job(storage)
    assert claim_job(storage) is None  # still beating: left alone

    _set_job(storage, "orphaned", heartbeat_at=utcnow() - dt.timedelta(hours=1))
    second = claim_job(storage)
    assert second["state"] == "running" and second["attempts"] == 2 and second["worker"] != first["worker"]

    _set_job(storage, "orphaned", heartbeat_at=utcnow() - dt.timedelta(hours=1), attempts=3)
    given_up = claim_job(storage)
    assert given_up["state"] == "failed" and "interrupted 3 times" in given_up["reason"]
    assert claim_job(storage) is None


def test_a_deleted_or_requested_again_job_is_never_written_by_its_old_fit(storage, tmp_path):
    _study_with_a_trial(storage, "raced")
    request_model(storage, "raced")
    claimed = claim_job(storage)
    fit = _ModelFit(storage, claimed, tmp_path, heartbeat_s=60, should_stop=None)

    assert delete_model(storage, "raced")["kind"] == "refit"
    assert model_status(storage, "raced") is None
    again = request_model(storage, "raced", seeds=2)
    fit._write_if_ours({"epoch": 5, "heartbeat_at": utcnow()})  # the old fit's next write

    assert fit.lost
    now = model_job(storage, "raced")
    assert now["job_id"] == again["job_id"] and now["state"] == "queued" and now["epoch"] is None


def _row(name: str, trial_number: int, rank_: tuple[float, float, float]) -> dict:
    return {"study_name": name, "kind": "ensemble", "trial_number": trial_number, "rank_score": rank_[0],
            "cv_loss": rank_[1], "mean_epochs": rank_[2], "archive": b"zip", "sha256": "0" * 64,
            "summary": {"cv_score": rank_[0]}, "created_at": utcnow()}


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]])
def test_the_kept_ensemble_is_the_best_whatever_the_order_of_the_writes(storage, order):
    ensure_tables(storage.engine)
    # As stored (hpo.studies.rank_key less the number): smaller is better, part by part.
    ranks = [(-0.70, 0.2, 2.0), (-0.80, 0.5, 3.0), (-0.80, 0.3, 6.0), (-0.80, 0.3, 4.0), (-0.79, 0.1, 1.0)]
    written = [store_if_better(storage.engine, _row("ordered", i, ranks[i])) for i in order]

    with storage.engine.connect() as connection:
        kept = connection.execute(sa.select(model_archives.c.trial_number)).scalar_one()
    assert kept == 3  # highest score, then lowest cv_loss, then fewest epochs
    assert written[0]  # the first write always lands
    assert not store_if_better(storage.engine, _row("ordered", 9, ranks[3]))  # a tie does not replace


def test_rank_orders_by_score_then_loss_then_epochs():
    assert rank("maximize", 0.9, {"cv_loss": 0.2, "fold_best_epochs": [2, 4]}) == (-0.9, 0.2, 3.0)
    assert rank("minimize", 1.5, {}) == (1.5, NO_LOSS, NO_LOSS)


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_ranked_and_best_of_order_as_the_whole_rank_key_does(direction):
    """They compare scores first and the whole key only among ties: the order must be the
    plain sort by ``rank_key`` (ties on score, loss and epochs; missing and non-finite parts)."""
    rng = random.Random(5)
    trials = []
    for number in range(300):
        attrs = {"cv_loss": rng.choice([0.1, 0.2, math.nan, None]), "fold_best_epochs": rng.choice([[1, 3], [2], [], None])}
        value = rng.choice([0.5, 0.7, 0.7, -0.0, 0.0, math.inf, -math.inf, round(rng.random(), 1)])
        state = TrialState.PRUNED if number % 7 == 0 else TrialState.COMPLETE
        trial = optuna.trial.create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                                          user_attrs={k: v for k, v in attrs.items() if v is not None})
        trial.number = number
        trials.append(trial)
    rng.shuffle(trials)
    expected = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: rank_key(t, direction))

    assert [t.number for t in ranked(trials, direction)] == [t.number for t in expected]
    assert best_of(trials, direction).number == expected[0].number


def test_a_worker_keeps_the_best_trials_fold_models(storage):
    dataset = load_builtin("digits")
    rows = np.arange(dataset.n_samples)
    folds = [dataset.fold(rows[rows % 2 == 0], rows[rows % 2 == 1]), dataset.fold(rows[rows % 2 == 1], rows[:10])]
    study = create_study(storage, SPEC, study_name="kept")

    def complete(value: float, cv_loss: float) -> bool:
        trial = study.ask()
        params = suggest_params(trial, SPEC.search_space)
        trial.set_user_attr("cv_loss", cv_loss)
        trial.set_user_attr("fold_best_epochs", [1, 1])
        networks = [trial_architecture(fold, params, SPEC.model).build() for fold in folds]
        kept = keep_if_best(storage, SPEC, dataset, trial, value, networks, folds, [0, 1], [1, 1])
        study.tell(trial, value)
        return kept

    assert complete(0.6, 0.9)
    assert not complete(0.5, 0.1)  # a lower score
    assert complete(0.6, 0.8)  # the same score, a lower validation loss
    status = model_status(storage, "kept")
    assert status["kind"] == "ensemble" and status["state"] == "ready" and status["trial_number"] == 2
    assert status["model"]["members"] == 2 and status["model"]["learned"] in (True, False)
    blob, sha256 = model_archive(storage, "kept", "ensemble")
    assert status["archive"] == {"bytes": len(blob), "sha256": sha256}

    assert delete_model(storage, "kept")["kind"] == "ensemble" and model_status(storage, "kept") is None
    assert not complete(0.55, 0.1)  # none kept, but not the best trial either
    assert complete(0.7, 0.5)
