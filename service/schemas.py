"""The answers of the REST API: each built here, once, from what it describes (they also
document ``/openapi.json``). Times are ISO 8601 with an offset (UTC); non-finite numbers
(a diverged fold's NaN) become ``null``: JSON has no NaN.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Literal, Self

from optuna.trial import FrozenTrial, TrialState as OptunaTrialState
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hpo.data.store import DatasetInfo
from hpo.db.models import StudyRecord
from hpo.jsonable import finite, utc_time
from hpo.spec import StudySpec
from hpo.studies import FAIL_REASON_ATTR, Progress, is_surplus
from service.views import API_PREFIX, TRIAL_STATE_NAMES, last_reported, record_time, trial_duration_s

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

    @classmethod
    def of(cls, study_id: str) -> Self:
        """The REST addresses of study ``study_id``."""
        base = f"{API_PREFIX}/studies/{study_id}"
        return cls(self=base, trials=f"{base}/trials", best=f"{base}/best", events=f"{base}/events")


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
    dataset_name: str | None = Field(description="The built-in dataset's name or the uploaded file's name "
                                                 "(null once that upload is deleted, or for a dataset.path).")
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

    @classmethod
    def of(cls, record: StudyRecord, spec: StudySpec, prog: Progress, /, *, dataset_names: Mapping[str, str],
           **extra: Any) -> Self:
        """A study's identity, state and counts.

        Args:
            record: the study's row.
            spec: its validated spec.
            prog: its progress (:func:`hpo.studies.progress`).
            dataset_names: uploaded datasets' names by id (:func:`service.records.dataset_names`).
            extra: the fields a subclass adds.

        Returns:
            The answer.
        """
        return cls(
            id=record.id,
            name=record.name,
            optuna_study_name=record.optuna_study_name,
            owner=record.owner,
            created_at=record_time(record.created_at),
            dataset_id=record.dataset_id,
            dataset_name=spec.dataset.builtin or dataset_names.get(record.dataset_id or ""),
            direction=spec.direction,
            metric=spec.training.metric,
            **prog.as_dict(),
            links=StudyLinks.of(record.id),
            **extra,
        )


class StudyDetail(StudySummary):
    spec: dict[str, Any] = Field(description="The validated spec, defaults filled in.")

    @classmethod
    def of(cls, record: StudyRecord, spec: StudySpec, prog: Progress, /, *, dataset_names: Mapping[str, str],
           **extra: Any) -> Self:
        """A study's identity, state and counts, and its spec (see :meth:`StudySummary.of`)."""
        return super().of(record, spec, prog, dataset_names=dataset_names, spec=record.spec, **extra)


class StudyCard(StudySummary):
    """A study as the studies page lists it (``/api/v1/views/studies``)."""

    sampler: str
    pruner: str
    cell: str
    dataset: str | None = Field(description="The dataset's name (a deleted upload's id; or a path).")
    dataset_kind: Literal["builtin", "uploaded"]
    dashboard_url: str


class StudyOnPage(StudyDetail):
    """A study as its page shows it (``/api/v1/views/studies/{id}``)."""

    dashboard_url: str


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
    last_value: float | None = Field(description="The score reported for that epoch: where a pruned trial "
                                                 "stopped (an inner-validation score, not a CV score).")
    intermediate_values: list[IntermediateValue] | None = Field(
        default=None, description="Per-epoch validation scores; only with include=intermediate."
    )

    @classmethod
    def of(cls, trial: FrozenTrial, *, intermediate: bool = False) -> Self:
        """A trial: parameters, CV score and per-fold scores, state, timing.

        Args:
            trial: the trial.
            intermediate: also its per-epoch scores (left unset otherwise, so that an answer
                built with ``exclude_unset`` leaves the field out).

        Returns:
            The answer.
        """
        attrs = trial.user_attrs
        steps = trial.intermediate_values
        per_epoch = {"intermediate_values": [IntermediateValue(step=s, value=finite(v))
                                             for s, v in sorted(steps.items())]} if intermediate else {}
        return cls(
            number=trial.number,
            state=TRIAL_STATE_NAMES[trial.state],
            value=finite(trial.value) if trial.state == OptunaTrialState.COMPLETE else None,
            params=finite(dict(trial.params)),
            fold_scores=finite(attrs.get("fold_scores")),
            fold_std=finite(attrs.get("fold_std")),
            fail_reason=attrs.get(FAIL_REASON_ATTR),
            surplus=is_surplus(trial),
            started_at=utc_time(trial.datetime_start),
            completed_at=utc_time(trial.datetime_complete),
            duration_s=trial_duration_s(trial),
            last_step=max(steps) if steps else None,
            last_value=finite(last_reported(trial)),
            **per_epoch,
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

    @classmethod
    def of(cls, record: StudyRecord, spec: StudySpec, trial: FrozenTrial) -> Self:
        """The best trial of a study (the caller picks it: :func:`hpo.studies.ranked`).

        Args:
            record: the study's row.
            spec: its validated spec.
            trial: its best complete trial.

        Returns:
            The answer.
        """
        attrs = trial.user_attrs
        return cls(
            study=record.optuna_study_name,
            study_id=record.id,
            number=trial.number,
            value=finite(trial.value),
            metric=spec.training.metric,
            direction=spec.direction,
            params=finite(dict(trial.params)),
            fold_scores=finite(attrs.get("fold_scores")),
            fold_std=finite(attrs.get("fold_std")),
        )


class DatasetOut(DatasetInfo):
    """An uploaded dataset, built from its row (``DatasetOut.model_validate(record)``): the
    store's record and its owner."""

    model_config = ConfigDict(from_attributes=True)

    owner: str | None

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
