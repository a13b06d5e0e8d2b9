"""``/api/v1/views``: the browser pages' data, aggregated on the server.

The REST resources answer one question each; these routes answer what a page shows
(a study's history columns, a few learning curves, importances, a page of trials), all
read through the app's :class:`~service.trial_cache.TrialCache`, so a study of thousands
of trials opens, pages and streams in milliseconds once read. Studies and trials are the
answers of :mod:`service.schemas`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from optuna.trial import TrialState

from hpo.storage import best_numbers, last_reported, latest_reported_numbers
from hpo.studies import Progress
from service import records
from service.catalog import LoadedStudy, list_page
from service.deps import PageDep, SessionDep, TrialCacheDep
from service.events import event_id_at
from service.routes.studies import LoadedDep
from service.schemas import BestTrial, ErrorResponse, StudyCard, StudyLinks, StudyOnPage, StudyState
from service.web.plots import (
    DEFAULT_CURVE_POINTS, complete_columns, curve_view, pick_curves, pruned_columns, search_space_view,
)

router = APIRouter(prefix="/views", tags=["views"])
ERRORS = {code: {"model": ErrorResponse} for code in (404, 422)}
VIEWS = "/api/v1/views"


def dashboard_url(loaded: LoadedStudy) -> str:
    """Where the study opens in optuna-dashboard: a redirect (admins only), so that no answer
    carries Optuna's internal study id."""
    return f"/studies/{loaded.record.id}/dashboard"


def study_card(loaded: LoadedStudy, prog: Progress, dataset_names: dict[str, str]) -> StudyCard:
    """A study as the studies page lists it: state and counts, plus sampler and dataset."""
    spec = loaded.spec
    return StudyCard.of(
        loaded.record, spec, prog,
        dataset_names=dataset_names,
        sampler=spec.sampler.name,
        pruner=spec.pruner.name,
        cell=spec.model.cell,
        dataset=spec.dataset.builtin or dataset_names.get(spec.dataset.id or "") or spec.dataset.id or spec.dataset.path,
        dataset_kind="builtin" if spec.dataset.builtin else "uploaded",
        dashboard_url=dashboard_url(loaded),
    )


@router.get("/studies", responses=ERRORS, summary="Studies, for the studies page")
def list_study_summaries(session: SessionDep, cache: TrialCacheDep, page: PageDep,
                         state: StudyState | None = None) -> dict[str, Any]:
    """Studies, newest first (optionally in one state), with sampler, dataset and progress."""
    studies, total = list_page(session, cache, limit=page.limit, offset=page.offset, state=state)
    names = records.dataset_names(session, [loaded.record for loaded, _ in studies])  # one query for the page
    items = [study_card(loaded, prog, names) for loaded, prog in studies]
    return {"items": items, "total": total, "limit": page.limit, "offset": page.offset}


@router.get("/studies/{study_id}", responses=ERRORS, summary="A study, for its page")
def study_overview(loaded: LoadedDep, session: SessionDep) -> dict[str, Any]:
    """The study (spec, state, counts), its searched parameters, its complete trials as
    columns (history, parallel coordinates; a sample past 2,000, see ``complete_columns``),
    its pruned ones' last reported scores (the history's "include pruned"), its best trial,
    and the event id to stream from. Read from the database without reading every trial
    (a study of 50,000 trials opens without its full read): the counts, times, best trial
    and event id aggregated in SQL (``LoadedStudy.tally``), then the complete trials'
    values, the sampled ones' parameters, the pruned ones' last scores and the best trial.
    The tally is read first: a trial finishing between the reads is in the columns and, as
    it finished after the event id, sent again by the stream (the page keeps it once)."""
    tally = loaded.tally()
    prog = loaded.progress(tally=tally)
    space = search_space_view(loaded.spec)
    best_trial = loaded.read(numbers=[prog.best_trial]) if prog.best_trial is not None else []
    best = BestTrial.of(loaded.record, loaded.spec, best_trial[0]) if best_trial else None
    study_id = loaded.record.id
    return {
        "study": StudyOnPage.of(loaded.record, loaded.spec, prog, dashboard_url=dashboard_url(loaded),
                                dataset_names=records.dataset_names(session, [loaded.record])),
        "space": space,
        "complete": complete_columns(loaded.complete_values(), [p["name"] for p in space], loaded.spec.direction,
                                     read_params=lambda numbers: loaded.read(numbers=numbers, parts={"params"})),
        "pruned": pruned_columns(last_reported(loaded.storage, loaded.study_id, [TrialState.PRUNED])),
        "best": best,
        "event_id": event_id_at(tally.last_event),
        "links": {
            "curves": f"{VIEWS}/studies/{study_id}/curves",
            "importance": f"{VIEWS}/studies/{study_id}/importance",
            **StudyLinks.of(study_id).model_dump(),
        },
    }


@router.get("/studies/{study_id}/curves", responses=ERRORS, summary="Learning curves of a few trials")
def learning_curves(
    loaded: LoadedDep,
    top: Annotated[int, Query(ge=0, le=100, description="The best complete trials.")] = 10,
    recent: Annotated[int, Query(ge=0, le=100, description="The latest trials that reported an epoch.")] = 10,
    trials: Annotated[str | None, Query(description="Comma-separated trial numbers to include.",
                                        pattern=r"^\d{1,9}(,\d{1,9}){0,49}$")] = None,
    max_points: Annotated[int, Query(ge=2, le=2000, description="Points per curve at most.")] = DEFAULT_CURVE_POINTS,
) -> dict[str, Any]:
    """Per-epoch validation scores of the best, the latest and the asked-for trials, each
    downsampled to ``max_points``; a pruned trial's curve ends where it was stopped. Only
    those trials' per-epoch values are read."""
    asked = [int(n) for n in trials.split(",")] if trials else []
    direction = loaded.spec.direction
    best = best_numbers(loaded.storage, loaded.study_id, maximize=direction == "maximize", limit=top, reported=True)
    latest = latest_reported_numbers(loaded.storage, loaded.study_id, recent)
    read = {t.number: t for t in loaded.read(numbers=sorted({*best, *latest, *asked}))}
    picked = pick_curves(direction, top, [read[n] for n in best], [read[n] for n in latest],
                         [read[n] for n in asked if n in read])
    return {
        "metric": loaded.spec.training.metric,
        "direction": loaded.spec.direction,
        "max_epochs": loaded.spec.training.max_epochs,
        "curves": [curve_view(t, max_points) for t in picked],
    }


@router.get("/studies/{study_id}/importance", responses=ERRORS, summary="Parameter importances")
def param_importance(
    loaded: LoadedDep,
    request: Request,
    complete: Annotated[int | None, Query(ge=0, description="Over the first this many complete trials (in the "
                                                            "order they completed): the ones the page counts.")] = None,
) -> dict[str, Any]:
    """Each searched parameter's share of the score's variation (Optuna's importance
    evaluators), once there are enough complete trials (``MIN_TRIALS_FOR_IMPORTANCE``);
    past ``IMPORTANCE_MAX_TRIALS`` complete trials over an evenly spaced sample of them
    (``sample`` says how many of how many). Cached per trial count (the trials are read
    only when it changed)."""
    states = [TrialState.COMPLETE]
    return request.app.state.importance.get(
        loaded.study, loaded.spec, loaded.count(states), loaded.complete_by_finish,
        lambda numbers: loaded.read(numbers=numbers, states=states, parts={"params", "values"}), n_complete=complete)
