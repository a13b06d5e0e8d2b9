"""A study read again and again at the cost of what changed since the read before.

Finished trials never change (Optuna refuses to update them) and are never deleted, so a
read after another one needs only the trials that read found unfinished and the trials
newer than any it saw: :func:`read_changes`. The study's :class:`~hpo.studies.Tally` is
carried over from read to read and updated with those trials, so that it always tallies
exactly the trials read (what a page shows together with them). The first read tallies
the trials it found finished in the database (``hpo.storage.Settled``: whatever is read of
them later is what that read found) and adds the unfinished ones it read.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from hpo.storage import Settled, last_trial_id, read_trials, read_trials_after, trial_id_of
from hpo.studies import Tally, is_surplus, tally_trials

UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class StudyReading:
    """What one read of a study found.

    Attributes:
        trials: the trials read, in full and in number order: after another reading, those
            it found unfinished and those newer than any it saw (the only ones that can
            differ from what it found); the first time, the unfinished ones.
        tally: the tally of every trial of the study as read (:meth:`~hpo.studies.Tally.of`
            all of them gives the same).
        unfinished: the trials found running or waiting, by trial id (read again next time).
        last_trial_id: every trial up to this id was read (or tallied) by now.
    """

    trials: list[FrozenTrial]
    tally: Tally
    unfinished: dict[int, FrozenTrial]
    last_trial_id: int


def read_changes(storage: RDBStorage, study_id: int, direction: str,
                 previous: StudyReading | None = None) -> StudyReading:
    """Read a study's trials again after ``previous``: only those that may have changed,
    plus at most one aggregate (the first time; then only when a trial that counted turned
    into a surplus failure, or while no trial has finished, when the failure rules look at
    every trial).

    Args:
        storage: the study's RDB storage.
        study_id: the study's id in it.
        direction: the study's ``maximize`` or ``minimize``.
        previous: the reading before (none: the first).

    Returns:
        The new reading.

    Raises:
        KeyError: no study has that id (any more).
    """
    if previous is None:
        last_id = last_trial_id(storage, study_id)  # before the unfinished trials: newer ones are read next time
        trials = read_trials(storage, study_id, states=UNFINISHED)
        before: dict[int, FrozenTrial] = {}
    else:
        trials = read_trials_after(storage, study_id, previous.last_trial_id, previous.unfinished)
        last_id = max([previous.last_trial_id, *map(trial_id_of, trials)])
        before = previous.unfinished
    unfinished = {trial_id_of(t): t for t in trials if t.state in UNFINISHED}
    if previous is None or not _updatable(previous.tally, before, trials):
        tally = tally_trials(storage, study_id, direction, settled=Settled(last_id, frozenset(unfinished)),
                             plus=list(unfinished.values()))
    else:
        old = [before[i] for i in map(trial_id_of, trials) if i in before]
        kept = dataclasses.replace(previous.tally, counts=previous.tally.counts - Counter(t.state for t in old))
        tally = kept.merged(Tally.of(trials, direction))
    return StudyReading(trials, tally, unfinished, last_id)


def _updatable(tally: Tally, before: dict[int, FrozenTrial], trials: list[FrozenTrial]) -> bool:
    """Whether ``tally`` can be updated with ``trials`` (replacing what ``before`` holds of
    them): once a trial has finished (before, the failure rules need every trial), and
    unless one that counted failed as surplus (the earliest start may have been its)."""
    return bool(tally.finished) and not any(
        t.state is TrialState.FAIL and is_surplus(t) and trial_id_of(t) in before for t in trials)
