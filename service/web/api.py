"""``/api/v1/views``: the browser pages' data, aggregated on the server.

The REST resources (``/api/v1/studies``, ``.../trials``, ``.../events``) read a study in
full on every request; these routes answer the same questions through the per-process
:class:`~service.web.trial_cache.TrialCache`, so a study of thousands of trials opens,
pages and streams in milliseconds once read. Shapes reuse :mod:`service.views`.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import StreamingResponse
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from service.catalog import LoadedStudy, StudyNotFound
from service.deps import PageDep, SessionDep, SettingsDep, StorageDep
from service.errors import problem
from service.events import _ms as event_watermark_ms
from service.events import snapshot_reader, study_events
from service.records import all_studies, page_of_studies
from service.routes.trials import SortKey, sort_trials
from service.schemas import ErrorResponse, StudyState, TrialState
from service.views import TRIAL_STATES_BY_NAME, best_view, study_view, trial_view
from service.web.plots import (
    DEFAULT_CURVE_POINTS, ImportanceCache, complete_columns, curve_view, pick_curves, search_space_view,
)
from service.web.trial_cache import TrialCache

router = APIRouter(prefix="/views", tags=["views"])
ERRORS = {code: {"model": ErrorResponse} for code in (404, 422)}
VIEWS = "/api/v1/views"
DASHBOARD_PREFIX = "/dashboard"
_cache_lock = threading.Lock()


def trial_cache_of(app: FastAPI) -> TrialCache:
    """The app's trial cache (made on first use, over the app's Optuna storage)."""
    state = app.state
    with _cache_lock:
        cache = getattr(state, "web_trial_cache", None)
        if cache is None or cache.backend is not state.storage:
            cache = state.web_trial_cache = TrialCache(state.storage)
            state.web_importance = ImportanceCache()
        return cache


def get_trial_cache(request: Request) -> TrialCache:
    return trial_cache_of(request.app)


CacheDep = Annotated[TrialCache, Depends(get_trial_cache)]


def get_loaded(study_id: str, session: SessionDep, cache: CacheDep) -> LoadedStudy:
    try:
        return cache.load(session, study_id)
    except StudyNotFound as exc:
        raise problem(404, str(exc), field="study_id") from None


LoadedDep = Annotated[LoadedStudy, Depends(get_loaded)]


def read_trials(cache: TrialCache, loaded: LoadedStudy) -> list[FrozenTrial]:
    trials = loaded.study.get_trials(deepcopy=False)
    cache.note_size(loaded, len(trials))
    return trials


def prefetch(app: FastAPI, study_id: str) -> None:
    """Read a study into the cache (run while the browser loads the page's scripts, so that
    the first read of a large study overlaps with them)."""
    cache = trial_cache_of(app)
    with app.state.sessions() as session:
        try:
            read_trials(cache, cache.load(session, study_id))
        except StudyNotFound:
            pass  # the page itself says so


def dashboard_url(storage: BaseStorage, loaded: LoadedStudy) -> str:
    return f"{DASHBOARD_PREFIX}/studies/{storage.get_study_id_from_name(loaded.record.optuna_study_name)}"


def summary_view(loaded: LoadedStudy, storage: BaseStorage) -> dict[str, Any]:
    """A study as the studies page lists it: state and counts, plus sampler and dataset."""
    spec = loaded.spec
    dataset = spec.dataset.builtin or spec.dataset.id or spec.dataset.path
    return {
        **study_view(loaded.record, spec, loaded.progress()),
        "sampler": spec.sampler.name,
        "pruner": spec.pruner.name,
        "cell": spec.model.cell,
        "dataset": dataset,
        "dataset_kind": "builtin" if spec.dataset.builtin else "uploaded",
        "dashboard_url": dashboard_url(storage, loaded),
    }


@router.get("/studies", responses=ERRORS, summary="Studies, for the studies page")
def list_study_summaries(session: SessionDep, storage: StorageDep, cache: CacheDep, page: PageDep,
                         state: StudyState | None = None) -> dict[str, Any]:
    """Studies, newest first (optionally in one state), with sampler, dataset and progress."""
    items = []
    if state is None:
        rows, total = page_of_studies(session, page.limit, page.offset)
    else:
        rows, total = all_studies(session), None
    for record in rows:
        try:
            loaded = cache.open(record)
        except StudyNotFound:
            continue
        read_trials(cache, loaded)
        items.append(summary_view(loaded, storage))
    if state is not None:
        matching = [item for item in items if item["state"] == state]
        total, items = len(matching), page.window(matching)
    return {"items": items, "total": total, "limit": page.limit, "offset": page.offset}


@router.get("/studies/{study_id}", responses=ERRORS, summary="A study, for its page")
def study_overview(loaded: LoadedDep, storage: StorageDep, cache: CacheDep) -> dict[str, Any]:
    """The study (spec, state, counts), its searched parameters, its complete trials as
    columns (history, parallel coordinates), its best trial, and the event id to stream from."""
    prog = loaded.progress()
    trials = read_trials(cache, loaded)  # read after the progress: it holds every trial the progress saw
    space = search_space_view(loaded.spec)
    best_trial = next((t for t in trials if t.number == prog.best_trial), None)
    best = best_view(loaded.record, loaded.spec, best_trial) if best_trial is not None else None
    study_id = loaded.record.id
    return {
        "study": {**study_view(loaded.record, loaded.spec, prog, with_spec=True),
                  "dashboard_url": dashboard_url(storage, loaded)},
        "space": space,
        "complete": complete_columns(trials, [p["name"] for p in space]),
        "best": best,
        "event_id": max((event_watermark_ms(t) for t in trials), default=0),
        "links": {
            "events": f"{VIEWS}/studies/{study_id}/events",
            "curves": f"{VIEWS}/studies/{study_id}/curves",
            "importance": f"{VIEWS}/studies/{study_id}/importance",
            "trials": f"{VIEWS}/studies/{study_id}/trials",
            "best": f"/api/v1/studies/{study_id}/best",
        },
    }


@router.get("/studies/{study_id}/curves", responses=ERRORS, summary="Learning curves of a few trials")
def learning_curves(
    loaded: LoadedDep,
    cache: CacheDep,
    top: Annotated[int, Query(ge=0, le=100, description="The best complete trials.")] = 10,
    recent: Annotated[int, Query(ge=0, le=100, description="The latest trials that reported an epoch.")] = 10,
    trials: Annotated[str | None, Query(description="Comma-separated trial numbers to include.",
                                        pattern=r"^\d+(,\d+){0,49}$")] = None,
    max_points: Annotated[int, Query(ge=2, le=2000, description="Points per curve at most.")] = DEFAULT_CURVE_POINTS,
) -> dict[str, Any]:
    """Per-epoch validation scores of the best, the latest and the asked-for trials, each
    downsampled to ``max_points``; a pruned trial's curve ends where it was stopped."""
    numbers = [int(n) for n in trials.split(",")] if trials else []
    all_trials = read_trials(cache, loaded)
    picked = pick_curves(all_trials, loaded.spec.direction, top=top, recent=recent, numbers=numbers)
    return {
        "metric": loaded.spec.training.metric,
        "direction": loaded.spec.direction,
        "max_epochs": loaded.spec.training.max_epochs,
        "curves": [curve_view(t, max_points) for t in picked],
    }


@router.get("/studies/{study_id}/importance", responses=ERRORS, summary="Parameter importances")
def param_importance(loaded: LoadedDep, cache: CacheDep, request: Request) -> dict[str, Any]:
    """Each searched parameter's share of the score's variation (Optuna's importance
    evaluators), once there are at least two complete trials; cached per trial count."""
    trials = read_trials(cache, loaded)
    return request.app.state.web_importance.get(loaded.study, loaded.spec, trials)


@router.get("/studies/{study_id}/trials", responses=ERRORS, summary="A page of trials, for the trial table")
def trial_table(loaded: LoadedDep, cache: CacheDep, page: PageDep, state: TrialState | None = None,
                sort: SortKey = "number") -> dict[str, Any]:
    """Like ``GET /api/v1/studies/{id}/trials``, from the cache."""
    trials = read_trials(cache, loaded)
    if state is not None:
        trials = [t for t in trials if t.state == TRIAL_STATES_BY_NAME[state]]
    ordered = sort_trials(trials, sort, loaded.spec.direction)
    items = [trial_view(t) for t in page.window(ordered)]
    return {"items": items, "total": len(ordered), "limit": page.limit, "offset": page.offset}


@router.get("/studies/{study_id}/trials/{number}", responses=ERRORS, summary="One trial, for the trial panel")
def one_trial(loaded: LoadedDep, cache: CacheDep, number: int) -> dict[str, Any]:
    """A trial with its per-fold and per-epoch scores."""
    for trial in read_trials(cache, loaded):
        if trial.number == number:
            return trial_view(trial, intermediate=True)
    raise problem(404, f"study {loaded.record.id!r} has no trial number {number}", field="number")


@router.get(
    "/studies/{study_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 404: {"model": ErrorResponse}},
    summary="Live events, for the study page",
)
def study_page_events(
    request: Request,
    loaded: LoadedDep,
    cache: CacheDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Query(description="Skip trials finished by this event id "
                                                          "(the overview's `event_id`).")] = None,
) -> StreamingResponse:
    """The events of ``GET /api/v1/studies/{id}/events``, read through the cache. A page
    opened from the overview passes its ``event_id`` (``EventSource`` cannot send the
    ``Last-Event-ID`` header on its first connection) and gets only what changed since."""
    study_id, sessions = loaded.record.id, request.app.state.sessions

    def load() -> LoadedStudy:
        with sessions() as session:
            return cache.load(session, study_id)

    read = snapshot_reader(load, lambda s: study_view(s.record, s.spec, s.progress()))
    header_id = request.headers.get("last-event-id")
    stream = study_events(request, read, poll_s=settings.events_poll_s, heartbeat_s=settings.events_heartbeat_s,
                          last_event_id=header_id or last_event_id)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
