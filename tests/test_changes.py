"""A study read again and again (``hpo.changes.read_changes``): each reading tallies exactly
what a full read of every trial tallies, on SQLite and PostgreSQL, through every kind of
change, and reads only the trials that may have changed."""

from __future__ import annotations

import datetime as dt

import optuna
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo.changes import read_changes
from hpo.storage import open_storage, study_storage, trial_id_of, write_trials
from hpo.studies import CV_LOSS_ATTR, FAIL_REASON_ATTR, SURPLUS_ATTR, Tally

START = dt.datetime(2026, 11, 29, 12, 0, 0)  # before the trials this test starts now


def test_readings_tally_what_a_full_read_tallies_and_read_only_what_may_have_changed(storage):
    study = optuna.create_study(study_name="followed", storage=storage, direction="maximize")
    _, study_id = study_storage(study)
    made: dict[str, int] = {}

    def new(name: str, state: TrialState, seconds: float, value: float | None = None, **attrs) -> None:
        trial = create_trial(state=state, value=value, params={"lr": 0.01},
                             distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True)},
                             user_attrs=attrs.get("user_attrs", {}), system_attrs=attrs.get("system_attrs", {}))
        trial.datetime_start = None if state is TrialState.WAITING else START + dt.timedelta(seconds=seconds)
        trial.datetime_complete = START + dt.timedelta(seconds=seconds + 5) if state.is_finished() else None
        made[name] = storage.create_new_trial(study_id, template_trial=trial)

    def finish(name: str, state: TrialState, value: float | None = None) -> None:
        storage.set_trial_state_values(made[name], state, None if value is None else [value])

    steps = [
        lambda: None,  # no trials
        lambda: (new("f0", TrialState.FAIL, 10, user_attrs={FAIL_REASON_ATTR: "boom"}), new("f1", TrialState.FAIL, 11),
                 new("retry", TrialState.WAITING, 0, system_attrs={"failed_trial": 0})),  # none finished yet
        lambda: (new("early", TrialState.RUNNING, 1), new("r1", TrialState.RUNNING, 20),
                 storage.set_trial_intermediate_value(made["r1"], 0, 0.3)),
        lambda: (finish("r1", TrialState.COMPLETE, 0.8), storage.set_trial_intermediate_value(made["early"], 0, 0.2)),
        lambda: None,  # nothing changed
        lambda: (storage.set_trial_state_values(made["retry"], TrialState.RUNNING),
                 new("tie", TrialState.COMPLETE, 30, 0.8, user_attrs={CV_LOSS_ATTR: 0.1}),
                 new("pruned", TrialState.PRUNED, 31), new("r2", TrialState.RUNNING, 40)),
        # the trial that started first fails as surplus: the earliest start is another's
        lambda: (storage.set_trial_user_attr(made["early"], SURPLUS_ATTR, True), finish("early", TrialState.FAIL)),
        lambda: (finish("retry", TrialState.COMPLETE, 0.95), finish("r2", TrialState.PRUNED),
                 new("last", TrialState.RUNNING, 50)),
    ]
    reading = None
    for index, step in enumerate(steps):
        step()
        full = storage.get_all_trials(study_id)
        before = {} if reading is None else reading.unfinished
        last_id = 0 if reading is None else reading.last_trial_id
        reading = read_changes(storage, study_id, "maximize", reading)
        assert reading.tally == Tally.of(full, "maximize"), index
        assert read_changes(storage, study_id, "maximize").tally == reading.tally, index  # a first reading
        if index:
            assert sorted(map(trial_id_of, reading.trials)) == sorted(
                trial_id_of(t) for t in full if trial_id_of(t) in before or trial_id_of(t) > last_id), index
        assert sorted(reading.unfinished) == sorted(trial_id_of(t) for t in full if not t.state.is_finished()), index
    assert reading.tally.best == (made["retry"] - made["f0"], 0.95)
    assert reading.tally.counts[TrialState.FAIL] == 2  # the surplus failure is not counted


@pytest.mark.postgres
def test_reading_what_changed_in_an_old_study_visits_none_of_the_newer_studies_trials(postgres_url):
    """The trials newer than a read of an old study are looked for in that study's range of
    the ``(study_id, trial_id)`` index: PostgreSQL, which cannot know that an old study's
    trials all have low ids, took the trials of every newer study for candidates from the
    primary key (20,000 rows a poll for a study of 50,000 among 1,000 studies). Checked on
    the plans of the very statements the read runs, after ``ANALYZE``."""
    storage = open_storage(postgres_url)
    lr = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}
    for name, n_trials in (("old", 3000), ("new", 1000)):
        optuna.create_study(study_name=name, storage=storage)
        write_trials(storage, name, [create_trial(state=TrialState.COMPLETE, value=0.5, params={"lr": 0.01},
                                                  distributions=lr) for _ in range(n_trials)])
    _, old_id = study_storage(optuna.load_study(study_name="old", storage=storage))
    with storage.engine.begin() as connection:
        connection.execute(sqlalchemy.text("ANALYZE"))  # what autovacuum does after such writes
    statements: list[tuple[str, object]] = []

    def note(connection, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    reading = read_changes(storage, old_id, "minimize")
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", note)
    assert read_changes(storage, old_id, "minimize", reading).trials == []
    sqlalchemy.event.remove(storage.engine, "before_cursor_execute", note)

    def visited(plan: dict) -> int:
        """Rows a plan's nodes read and dropped."""
        return (plan.get("Rows Removed by Filter", 0) + plan.get("Rows Removed by Index Recheck", 0)
                + sum(map(visited, plan.get("Plans", []))))

    connection = storage.engine.raw_connection()
    try:
        cursor = connection.cursor()
        dropped = []
        for statement, parameters in statements:
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            dropped.append(visited(cursor.fetchone()[0][0]["Plan"]))
    finally:
        connection.close()
        storage.engine.dispose()
    assert statements and max(dropped) < 100, dropped
