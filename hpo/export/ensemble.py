"""The model served as soon as a study ends: the best trial's fold models, kept as the trials complete.

When a trial completes, its worker calls :func:`keep_if_best` with the trial's trained
fold networks. If the trial ranks above the study's kept ensemble (or there is none and
it ranks at least with the best complete trial), the worker builds the ensemble's archive
and stores it in the database with one conditional statement, which replaces the kept one
only if the new trial ranks higher: of several workers finishing at once, the best wins,
whatever the order of their writes. The model is thus ready the moment the study ends;
it stays served until the study's refit is ready (``final_model.kind: refit``, the default;
``hpo.export.jobs``), and downloadable by name after.

Rank: ``hpo.studies.rank_key``, the one ranking of trials: the higher score (lower, when
the study minimizes), then the lower ``cv_loss`` user attribute, then the fewer mean
``fold_best_epochs``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
import sqlalchemy as sa
import torch
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from hpo.data import Dataset, FoldData
from hpo.db.models import model_archives
from hpo.export.fit import ensemble_model, trial_source
from hpo.export.jobs import archive_row
from hpo.export.store import NO_LOSS, ensure_tables, upsert
from hpo.spec import StudySpec
from hpo.studies import best_of, rank_key

log = logging.getLogger("hpo.export")

Rank = tuple[float, float, float]
KEEP_ERROR_ATTR = "model_keep_error"


def rank(direction: str, value: float, user_attrs: dict[str, Any]) -> Rank:
    """A trial's rank as stored with its ensemble, ``hpo.studies.rank_key`` less the trial
    number (smaller is better; what is missing ranks worst, as ``NO_LOSS``).

    Args:
        direction: the study's ``maximize`` or ``minimize``.
        value: the trial's CV score.
        user_attrs: its user attributes (``cv_loss``, ``fold_best_epochs``).
    """
    key = rank_key(optuna.trial.create_trial(value=value, user_attrs=user_attrs), direction)[:3]
    return tuple(part if math.isfinite(part) else NO_LOSS for part in key)  # type: ignore[return-value]


def _ranks_above(new: Rank, old: Rank) -> bool:
    return new < old


def keep_if_best(
    storage: RDBStorage,
    spec: StudySpec,
    dataset: Dataset,
    trial: optuna.Trial,
    value: float,
    networks: list[torch.nn.Module],
    folds: list[FoldData],
    fold_numbers: list[int],
    fold_epochs: list[int],
) -> bool:
    """Store the trial's fold networks as the study's ensemble if the trial ranks best so far.

    Args:
        storage: the Optuna storage (the archive goes to its database).
        spec: the study spec.
        dataset: the data the folds came from.
        trial: the completing trial (its user attributes already hold its fold summary).
        value: its CV score.
        networks: its trained fold networks.
        folds: each network's fold.
        fold_numbers: each network's fold index.
        fold_epochs: the epoch each network was taken at.

    Returns:
        True when the trial's ensemble was stored.
    """
    if not math.isfinite(value):
        return False
    study_name = trial.study.study_name
    user_attrs = trial.user_attrs
    new = rank(spec.direction, value, user_attrs)
    ensure_tables(storage.engine)
    kept = (model_archives.c.study_name == study_name) & (model_archives.c.kind == "ensemble")
    with storage.engine.connect() as connection:
        row = connection.execute(sa.select(model_archives.c.rank_score, model_archives.c.cv_loss,
                                           model_archives.c.mean_epochs).where(kept)).first()
    if row is not None and not _ranks_above(new, tuple(row)):
        return False
    if row is None:  # none kept (or deleted): only a trial that ranks with the best complete one
        complete = storage.get_all_trials(storage.get_study_id_from_name(study_name), deepcopy=False,
                                          states=(TrialState.COMPLETE,))
        best = best_of(complete, spec.direction)
        if best is not None and best.value is not None and _ranks_above(rank(spec.direction, best.value,
                                                                               best.user_attrs), new):
            return False
    source = trial_source(study_name, spec, trial.number, value, user_attrs)
    model = ensemble_model(spec, dataset, trial.params, networks, folds, fold_numbers=fold_numbers,
                           fold_epochs=fold_epochs, source=source)
    blob, manifest = model.to_bytes()
    written = store_if_better(storage.engine,
                              archive_row(study_name, "ensemble", trial.number, blob, manifest, new))
    if written:
        log.info("study %s: trial %d's %d fold models are the model now", study_name, trial.number, len(networks))
    return bool(written)


def store_if_better(engine: sa.Engine, row: dict[str, Any]) -> bool:
    """Store an ensemble archive row unless the kept one ranks at least as high: one
    conditional statement, so concurrent writers leave the best whatever their order.

    Returns:
        True when ``row`` was stored.
    """
    table = model_archives
    with engine.begin() as connection:
        return bool(upsert(connection, table, row, where=lambda new: sa.or_(
            new.rank_score < table.c.rank_score,
            sa.and_(new.rank_score == table.c.rank_score, sa.or_(
                new.cv_loss < table.c.cv_loss,
                sa.and_(new.cv_loss == table.c.cv_loss, new.mean_epochs < table.c.mean_epochs))))))


def keep_fold_models(storage: RDBStorage, spec: StudySpec, dataset: Dataset, trial: optuna.Trial, value: float,
                     networks: list[torch.nn.Module], folds: list[FoldData], fold_numbers: list[int],
                     fold_epochs: list[int]) -> None:
    """The objective's ``on_complete`` hook: :func:`keep_if_best`, whose failure (a database
    hiccup, say) is logged and stored on the trial, never failing the trial itself."""
    try:
        keep_if_best(storage, spec, dataset, trial, value, networks, folds, fold_numbers, fold_epochs)
    except Exception as exc:  # the trial's score stands; its models are just not kept
        log.warning("trial %d: keeping its fold models failed: %s", trial.number, exc)
        trial.set_user_attr(KEEP_ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:2000])
