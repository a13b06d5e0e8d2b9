"""What the answers of :mod:`service.schemas` (and the metrics and pages) share: the API's
prefix, the trial states' names, a stored time in UTC, a trial's duration and last score."""

from __future__ import annotations

import datetime as dt

from optuna.trial import FrozenTrial, TrialState

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


def trial_duration_s(trial: FrozenTrial) -> float | None:
    """Seconds from a trial's start to its end; ``None`` while it runs."""
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def last_reported(trial: FrozenTrial) -> float | None:
    """The score a trial reported for its latest epoch (``None`` before its first)."""
    steps = trial.intermediate_values
    return steps[max(steps)] if steps else None
