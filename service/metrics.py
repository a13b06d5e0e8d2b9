"""``/metrics`` in Prometheus' text exposition format, read from the database at scrape time.

Covers every study in the storage that hpo created (submitted over HTTP or run with the
CLI), since the workers serve them all.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from optuna.trial import TrialState

from hpo.spec import parse_spec
from hpo.studies import SPEC_ATTR, STATES, progress
from service.trial_cache import TrialCache
from service.views import TRIAL_STATE_NAMES, trial_duration_s

log = logging.getLogger("service")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINISHED_TRIAL_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class Totals:
    trials: Counter = field(default_factory=Counter)
    studies: Counter = field(default_factory=Counter)
    duration_sum_s: float = 0.0
    duration_count: int = 0
    queue_depth: int = 0
    cached_trials: int = 0


def collect(cache: TrialCache) -> Totals:
    """Count trials by state, finished trials' durations, studies by state and the work queued."""
    totals = Totals()
    for frozen in cache.backend.get_all_studies():
        if SPEC_ATTR not in frozen.user_attrs:
            continue
        try:
            spec = parse_spec(frozen.user_attrs[SPEC_ATTR])
            study = cache.study(frozen.study_name)
            trials = study.get_trials(deepcopy=False)
            prog = progress(study, spec)
        except (KeyError, ValueError):  # deleted meanwhile, or a spec this version cannot read
            continue
        for trial in trials:
            totals.trials[TRIAL_STATE_NAMES[trial.state]] += 1
            duration = trial_duration_s(trial)
            if trial.state in FINISHED_TRIAL_STATES and duration is not None:
                totals.duration_sum_s += duration
                totals.duration_count += 1
        totals.studies[prog.state] += 1
        if prog.runnable:
            totals.queue_depth += prog.n_trials - prog.finished - prog.running
    totals.cached_trials = cache.size
    return totals


def render(totals: Totals) -> str:
    lines = [
        "# HELP hpo_trials Trials in the database, by state.",
        "# TYPE hpo_trials gauge",
        *(f'hpo_trials{{state="{s}"}} {totals.trials[s]}' for s in TRIAL_STATE_NAMES.values()),
        "# HELP hpo_trial_duration_seconds Wall time of finished (complete or pruned) trials.",
        "# TYPE hpo_trial_duration_seconds summary",
        f"hpo_trial_duration_seconds_sum {totals.duration_sum_s:.6f}",
        f"hpo_trial_duration_seconds_count {totals.duration_count}",
        "# HELP hpo_studies Studies in the database, by state.",
        "# TYPE hpo_studies gauge",
        *(f'hpo_studies{{state="{s}"}} {totals.studies[s]}' for s in STATES),
        "# HELP hpo_queue_depth Trials still to run in queued or running studies.",
        "# TYPE hpo_queue_depth gauge",
        f"hpo_queue_depth {totals.queue_depth}",
        "# HELP hpo_trial_cache_trials Trials this API process holds in its trial cache.",
        "# TYPE hpo_trial_cache_trials gauge",
        f"hpo_trial_cache_trials {totals.cached_trials}",
    ]
    return "\n".join(lines) + "\n"
