"""``/api/v1/studies/{id}/trials``: a study's trials, filtered, sorted and paged."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from optuna.trial import FrozenTrial

from hpo.studies import ranked
from service.deps import PageDep
from service.errors import problem
from service.routes.studies import ERRORS, LoadedDep
from service.schemas import TrialOut, TrialPage, TrialState
from service.views import TRIAL_STATES_BY_NAME, trial_duration_s

router = APIRouter(prefix="/studies", tags=["trials"])
MAX_TRIAL_NUMBER = 2**31 - 1  # Optuna stores trial numbers as a 32-bit INTEGER: larger ones match none

SortKey = Literal["number", "-number", "value", "-value", "best", "duration_s", "-duration_s",
                  "started_at", "-started_at"]


def sort_trials(trials: list[FrozenTrial], sort: str, direction: str) -> list[FrozenTrial]:
    """Trials ordered by ``sort`` (``-`` for descending; ``best``: the complete trials ranked as
    ``/best`` ranks them, then the others by number). Trials without the sorted quantity come
    last either way. (By number, pages are cut in the database: ``LoadedStudy.page_by_number``.)"""
    if sort == "best":
        best_first = ranked(trials, direction)
        chosen = {t.number for t in best_first}
        return best_first + sorted((t for t in trials if t.number not in chosen), key=lambda t: t.number)
    descending, name = sort.startswith("-"), sort.lstrip("-")
    quantity = {
        "value": lambda t: t.value,
        "duration_s": trial_duration_s,
        "started_at": lambda t: t.datetime_start,
    }[name]
    present = [t for t in trials if quantity(t) is not None]
    absent = [t for t in trials if quantity(t) is None]
    return sorted(present, key=lambda t: (quantity(t), t.number), reverse=descending) + absent


@router.get("/{study_id}/trials", response_model=TrialPage, response_model_exclude_unset=True, responses=ERRORS,
            summary="A study's trials")
def list_trials(
    loaded: LoadedDep,
    page: PageDep,
    state: TrialState | None = None,
    sort: SortKey = "number",
    include: Annotated[Literal["intermediate"] | None, Query(description="`intermediate`: per-epoch scores")] = None,
) -> TrialPage:
    """Trials with their parameters, CV score, per-fold scores, state and timing."""
    states = None if state is None else [TRIAL_STATES_BY_NAME[state]]
    if sort.lstrip("-") == "number":  # ordered and cut in the database: no read of every trial
        shown, total = loaded.page_by_number(states=states, descending=sort.startswith("-"), limit=page.limit,
                                             offset=page.offset)
    else:
        trials = loaded.study.get_trials(deepcopy=False)
        if states is not None:
            trials = [t for t in trials if t.state in states]
        ordered = sort_trials(trials, sort, loaded.spec.direction)
        shown, total = page.window(ordered), len(ordered)
    items = [TrialOut.of(t, intermediate=include == "intermediate") for t in shown]
    return TrialPage(items=items, total=total, limit=page.limit, offset=page.offset)


@router.get("/{study_id}/trials/{number}", response_model=TrialOut, responses=ERRORS, summary="One trial")
def get_trial(loaded: LoadedDep, number: int) -> TrialOut:
    """One trial by its number, with its per-epoch scores."""
    for trial in loaded.read(numbers=[number]) if 0 <= number <= MAX_TRIAL_NUMBER else []:
        return TrialOut.of(trial, intermediate=True)
    raise problem(404, f"study {loaded.record.id!r} has no trial number {number}", field="number")
