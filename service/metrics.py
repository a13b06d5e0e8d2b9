"""``/metrics`` in Prometheus' text exposition format (written by ``prometheus_client``),
read from the database at scrape time.

Covers every study in the storage that hpo created (submitted over HTTP or run with the
CLI), since the workers serve them all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from optuna.trial import TrialState
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from hpo.spec import parse_spec
from hpo.studies import SPEC_ATTR, STATES, progress
from service.trial_cache import TrialCache
from service.views import TRIAL_STATE_NAMES, trial_duration_s

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
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


class TotalsCollector:
    """The metric families of one scrape's :class:`Totals` (a ``prometheus_client`` collector)."""

    def __init__(self, totals: Totals):
        self.totals = totals

    def collect(self) -> Iterator[Metric]:
        totals = self.totals
        trials = GaugeMetricFamily("hpo_trials", "Trials in the database, by state.", labels=["state"])
        for state in TRIAL_STATE_NAMES.values():
            trials.add_metric([state], totals.trials[state])
        yield trials
        yield SummaryMetricFamily("hpo_trial_duration_seconds", "Wall time of finished (complete or pruned) trials.",
                                  count_value=totals.duration_count, sum_value=totals.duration_sum_s)
        studies = GaugeMetricFamily("hpo_studies", "Studies in the database, by state.", labels=["state"])
        for state in STATES:
            studies.add_metric([state], totals.studies[state])
        yield studies
        yield GaugeMetricFamily("hpo_queue_depth", "Trials still to run in queued or running studies.",
                                value=totals.queue_depth)
        yield GaugeMetricFamily("hpo_trial_cache_trials", "Trials this API process holds in its trial cache.",
                                value=totals.cached_trials)


def render(totals: Totals) -> str:
    """``totals`` in Prometheus' text format 0.0.4 (:data:`CONTENT_TYPE`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TotalsCollector(totals))
    return generate_latest(registry).decode()
