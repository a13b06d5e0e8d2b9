"""``/api/v1/studies/{id}/trials``: a study's trials, filtered, sorted and paged."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from service.deps import PageDep
from service.errors import problem
from service.routes.studies import ERRORS, LoadedDep
from service.schemas import TrialOut, TrialPage, TrialState
from service.views import TRIAL_STATES_BY_NAME

router = APIRouter(prefix="/studies", tags=["trials"])
MAX_TRIAL_NUMBER = 2**31 - 1  # Optuna stores trial numbers as a 32-bit INTEGER: larger ones match none

SortKey = Literal["number", "-number", "value", "-value", "best", "duration_s", "-duration_s",
                  "started_at", "-started_at"]


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
    # Ordered and cut in the database (no read of every trial). ``best``: the complete trials
    # ranked as ``/best`` ranks them, then the others by number; otherwise ``-`` is descending
    # and trials without the sorted quantity come last either way.
    shown, total = loaded.page(sort, states=states, limit=page.limit, offset=page.offset)
    items = [TrialOut.of(t, intermediate=include == "intermediate") for t in shown]
    return TrialPage(items=items, total=total, limit=page.limit, offset=page.offset)


@router.get("/{study_id}/trials/{number}", response_model=TrialOut, responses=ERRORS, summary="One trial")
def get_trial(loaded: LoadedDep, number: int) -> TrialOut:
    """One trial by its number, with its per-epoch scores."""
    for trial in loaded.read(numbers=[number]) if 0 <= number <= MAX_TRIAL_NUMBER else []:
        return TrialOut.of(trial, intermediate=True)
    raise problem(404, f"study {loaded.record.id!r} has no trial number {number}", field="number")
