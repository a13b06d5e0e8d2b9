"""Response shapes of the REST API (they document ``/openapi.json``)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hpo.jsonable import finite
from service.views import record_time

StudyState = Literal["queued", "running", "completed", "cancelled", "failed"]
TrialState = Literal["running", "complete", "pruned", "failed", "waiting"]


class ErrorItem(BaseModel):
    field: str | None = Field(description="Dotted path of the offending field, or null when no one field is at fault.")
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer has this shape."""

    detail: list[ErrorItem]


class StudyLinks(BaseModel):
    self: str
    trials: str
    best: str
    events: str


class TrialCounts(BaseModel):
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int


class StudySummary(BaseModel):
    id: str
    name: str
    optuna_study_name: str
    owner: str | None
    created_at: str
    dataset_id: str | None
    direction: Literal["maximize", "minimize"]
    metric: str
    state: StudyState
    n_trials: int = Field(description="The trial budget.")
    trials: TrialCounts
    best_value: float | None
    best_trial: int | None
    started_at: str | None
    finished_at: str | None
    eta_s: float | None
    reason: str | None = Field(description="Why a study failed or stopped early.")
    links: StudyLinks


class StudyDetail(StudySummary):
    spec: dict[str, Any] = Field(description="The validated spec, defaults filled in.")


class StudyPage(BaseModel):
    items: list[StudySummary]
    total: int
    limit: int
    offset: int


class IntermediateValue(BaseModel):
    step: int
    value: float | None


class TrialOut(BaseModel):
    number: int
    state: TrialState
    value: float | None
    params: dict[str, Any]
    fold_scores: list[float | None] | None
    fold_std: float | None
    fail_reason: str | None
    surplus: bool = Field(description="Started after other workers had used up the budget; not counted.")
    started_at: str | None
    completed_at: str | None
    duration_s: float | None
    last_step: int | None = Field(description="The last epoch reported (pruning step).")
    intermediate_values: list[IntermediateValue] | None = Field(
        default=None, description="Per-epoch validation scores; only with include=intermediate."
    )


class TrialPage(BaseModel):
    items: list[TrialOut]
    total: int
    limit: int
    offset: int


class BestTrial(BaseModel):
    study: str = Field(description="The Optuna study name.")
    study_id: str
    number: int
    value: float | None
    metric: str
    direction: Literal["maximize", "minimize"]
    params: dict[str, Any]
    fold_scores: list[float | None] | None
    fold_std: float | None


class DatasetOut(BaseModel):
    """An uploaded dataset, built from its row (``DatasetOut.model_validate(record)``)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    format: str
    task: str
    options: dict[str, Any]
    size_bytes: int
    summary: dict[str, Any]
    owner: str | None
    created_at: str

    @field_validator("options", mode="before")
    @classmethod
    def _no_options(cls, value: dict[str, Any] | None) -> dict[str, Any]:
        return value or {}

    @field_validator("summary", mode="before")
    @classmethod
    def _json_summary(cls, value: dict[str, Any] | None) -> dict[str, Any]:
        return finite(value or {})

    @field_validator("created_at", mode="before")
    @classmethod
    def _utc_created_at(cls, value: dt.datetime | str) -> str | None:
        return record_time(value) if isinstance(value, dt.datetime) else value


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: str
