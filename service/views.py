"""Plain-data views of studies, trials and datasets, as the API returns them.

Times are ISO 8601 with an offset (UTC). Non-finite numbers (a diverged fold's NaN) become
``null``: JSON has no NaN.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpo.jsonable import finite, utc_time
from hpo.spec import StudySpec
from hpo.studies import FAIL_REASON_ATTR, Progress, is_surplus
from hpo.db.models import StudyRecord

API_PREFIX = "/api/v1"
TRIAL_STATE_NAMES: dict[TrialState, str] = {
    TrialState.RUNNING: "running",
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.WAITING: "waiting",
}
TRIAL_STATES_BY_NAME = {name: state for state, name in TRIAL_STATE_NAMES.items()}


def record_time(value: dt.datetime | None) -> str | None:
    """A time stored by the service (UTC; SQLite hands it back without its zone)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat()


def study_links(study_id: str) -> dict[str, str]:
    base = f"{API_PREFIX}/studies/{study_id}"
    return {"self": base, "trials": f"{base}/trials", "best": f"{base}/best", "events": f"{base}/events"}


def study_view(record: StudyRecord, spec: StudySpec, prog: Progress, *, with_spec: bool = False) -> dict[str, Any]:
    """A study's identity, state and counts (and its spec when ``with_spec``)."""
    view = {
        "id": record.id,
        "name": record.name,
        "optuna_study_name": record.optuna_study_name,
        "owner": record.owner,
        "created_at": record_time(record.created_at),
        "dataset_id": record.dataset_id,
        "direction": spec.direction,
        "metric": spec.training.metric,
        **prog.as_dict(),
        "links": study_links(record.id),
    }
    if with_spec:
        view["spec"] = record.spec
    return view


def trial_duration_s(trial: FrozenTrial) -> float | None:
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def trial_view(trial: FrozenTrial, *, intermediate: bool = False) -> dict[str, Any]:
    """A trial: parameters, CV score and per-fold scores, state, timing (and per-epoch scores)."""
    attrs = trial.user_attrs
    steps = trial.intermediate_values
    view = {
        "number": trial.number,
        "state": TRIAL_STATE_NAMES[trial.state],
        "value": finite(trial.value) if trial.state == TrialState.COMPLETE else None,
        "params": finite(dict(trial.params)),
        "fold_scores": finite(attrs.get("fold_scores")),
        "fold_std": finite(attrs.get("fold_std")),
        "fail_reason": attrs.get(FAIL_REASON_ATTR),
        "surplus": is_surplus(trial),
        "started_at": utc_time(trial.datetime_start),
        "completed_at": utc_time(trial.datetime_complete),
        "duration_s": trial_duration_s(trial),
        "last_step": max(steps) if steps else None,
    }
    if intermediate:
        view["intermediate_values"] = [{"step": s, "value": finite(v)} for s, v in sorted(steps.items())]
    return view


def best_view(record: StudyRecord, spec: StudySpec, trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {
        "study": record.optuna_study_name,
        "study_id": record.id,
        "number": trial.number,
        "value": finite(trial.value),
        "metric": spec.training.metric,
        "direction": spec.direction,
        "params": finite(dict(trial.params)),
        "fold_scores": finite(attrs.get("fold_scores")),
        "fold_std": finite(attrs.get("fold_std")),
    }
