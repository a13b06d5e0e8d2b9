"""StudySpec validation: good specs parse with defaults; every refusal names its field."""

import json
from pathlib import Path

import pytest

from hpo.spec import NAME_PATTERN, SpecError, load_spec, parse_spec, parse_spec_text

STUDIES = sorted(Path(__file__).parent.parent.joinpath("studies").glob("*.yaml"))


def base(**overrides):
    return {"name": "t", "dataset": {"builtin": "digits"}, **overrides}


def fields(data) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return {e["field"]: e["message"] for e in info.value.errors}


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_example_studies_are_valid(path):
    spec = load_spec(path)
    assert spec.name == path.stem


def test_defaults_cover_the_five_hyperparameters():
    spec = parse_spec(base())
    space = spec.search_space
    assert (space.lr.low, space.lr.high, space.lr.log) == (1e-4, 1e-1, True)
    assert space.batch_size.choices == [16, 32, 64, 128, 256]
    assert (space.hidden_size.low, space.hidden_size.high, space.hidden_size.log) == (16, 256, True)
    assert (space.dropout.low, space.dropout.high) == (0.0, 0.5)
    assert (space.clip_norm.low, space.clip_norm.high, space.clip_norm.log) == (0.1, 10.0, True)
    assert spec.cv.strategy == "stratified" and spec.training.metric == "accuracy"
    assert spec.direction == "maximize" and spec.n_trials == 20


def test_partial_range_narrows_the_default_and_scalar_fixes():
    spec = parse_spec(base(search_space={"lr": {"low": 1e-3}, "dropout": 0.1}))
    assert (spec.search_space.lr.low, spec.search_space.lr.high, spec.search_space.lr.log) == (1e-3, 1e-1, True)
    assert spec.search_space.dropout.value == 0.1


def test_lr_low_above_high_names_lr():
    errors = fields(base(search_space={"lr": {"low": 0.1, "high": 0.001}}))
    assert errors == {"search_space.lr": "low (0.1) must be < high (0.001)"}


def test_folds_out_of_range_names_folds():
    assert "cv.folds" in fields(base(cv={"folds": 1}))
    assert "cv.folds" in fields(base(cv={"folds": 21}))


def test_unknown_fields_and_literals_name_accepted_values():
    errors = fields(base(sampler={"name": "bayes"}, pruner={"nmae": "median"}))
    assert "tpe" in errors["sampler.name"] and "grid" in errors["sampler.name"]
    assert errors["pruner.nmae"] == "unknown field"


def test_task_and_metric_must_agree():
    errors = fields({"name": "f", "task": "forecasting", "dataset": {"builtin": "airline"},
                     "cv": {"strategy": "kfold"}, "training": {"metric": "accuracy"}})
    assert "never train on the future" in errors["cv.strategy"]
    assert "rmse | mae" in errors["training.metric"]
    assert "classification dataset" in fields(base(task="regression"))["task"]


def test_minimizing_metrics_set_direction():
    spec = parse_spec({"name": "f", "task": "forecasting", "dataset": {"builtin": "airline"}})
    assert spec.direction == "minimize" and spec.cv.strategy == "timeseries" and spec.training.metric == "rmse"


def test_grid_needs_a_finite_grid_and_a_fitting_budget():
    assert "search_space.lr.grid" in fields(base(sampler={"name": "grid"}))
    spec = parse_spec(base(sampler={"name": "grid", "grid_points": 2}))
    assert spec.grid()["hidden_size"] == [16, 256] and spec.n_trials == 2 * 5 * 2 * 2 * 2
    assert "budget.n_trials" in fields(base(sampler={"name": "grid", "grid_points": 2}, budget={"n_trials": 500}))
    assert "sampler.grid_points" in fields(base(sampler={"name": "grid", "grid_points": 1000}))


def test_a_wall_clock_budget_alone_is_capped_only_by_the_servers_limit():
    assert parse_spec(base(budget={"timeout_s": 60})).with_trial_cap(1000).n_trials == 1000
    assert parse_spec(base(budget={"timeout_s": 60, "n_trials": 7})).with_trial_cap(1000).n_trials == 7
    assert parse_spec(base(budget={})).with_trial_cap(1000).n_trials == 20
    grid = parse_spec(base(sampler={"name": "grid", "grid_points": 2}, budget={"timeout_s": 60}))
    assert grid.with_trial_cap(1000).n_trials == grid.n_trials == 80


def test_out_of_bounds_values_and_bad_enqueued_trials():
    assert "search_space.dropout" in fields(base(search_space={"dropout": {"low": 0.0, "high": 2.0}}))
    errors = fields(base(enqueue_trials=[{"lr": "fast", "momentum": 0.9}]))
    assert "enqueue_trials.0.lr" in errors and "enqueue_trials.0.momentum" in errors
    assert "log range" in fields(base(search_space={"lr": {"low": 0.0, "high": 0.1, "log": True}}))["search_space.lr"]


def test_dataset_source_is_exactly_one():
    assert "dataset" in fields({"name": "t", "dataset": {}})
    assert "dataset" in fields({"name": "t", "dataset": {"builtin": "digits", "id": "abc"}})
    assert parse_spec({"name": "t", "dataset": {"path": "x.npz"}}).dataset.format == "npz"


def test_yaml_and_json_give_the_same_spec_and_bad_text_names_the_line():
    data = base(search_space={"lr": {"low": 1e-3, "high": 1e-2}})
    assert parse_spec_text(json.dumps(data)) == parse_spec(data)
    with pytest.raises(SpecError) as info:
        parse_spec_text("name: t\ndataset: {builtin: digits\n")
    assert info.value.errors[0]["field"].startswith("line ")
    with pytest.raises(SpecError):
        parse_spec_text("- just\n- a list\n")


# ---- property-based: arbitrary input never crashes the parser; every refusal names a field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo.spec import PARAM_NAMES, StudySpec

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["tpe", "grid", "lstm", "digits", "timeseries"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=12)
known_keys = st.sampled_from(list(StudySpec.model_fields) + list(PARAM_NAMES) +
                             ["low", "high", "log", "choices", "value", "grid", "folds", "builtin", "name"])
spec_like = st.recursive(
    scalars,
    lambda inner: st.dictionaries(st.one_of(known_keys, st.text(max_size=5)), st.one_of(inner, values), max_size=6),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(spec_like, st.fixed_dictionaries(
    {"name": st.just("p"), "dataset": st.just({"builtin": "digits"})},
    optional={"search_space": st.dictionaries(st.sampled_from(PARAM_NAMES), values, max_size=4),
              "sampler": st.dictionaries(st.sampled_from(["name", "seed", "grid_points"]), values, max_size=3),
              "cv": st.dictionaries(st.sampled_from(["folds", "strategy", "shuffle"]), values, max_size=3),
              "budget": values, "enqueue_trials": values})))
def test_arbitrary_specs_parse_or_name_a_field(data):
    try:
        spec = parse_spec(data)
    except SpecError as exc:
        assert exc.errors
        for error in exc.errors:
            assert error["field"] and error["message"]
    else:
        assert spec.n_trials >= 1


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_names_a_field(text):
    try:
        parse_spec_text(text)
    except SpecError as exc:
        assert all(e["field"] and e["message"] for e in exc.errors)


@pytest.mark.parametrize("section", ["sampler", "cv", "training"])
@pytest.mark.parametrize("seed", [-2, 2**32])
def test_a_seed_outside_what_the_libraries_accept_is_refused(section, seed):
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "s", "dataset": {"builtin": "digits"}, section: {"seed": seed}})
    assert [e["field"] for e in info.value.errors] == [f"{section}.seed"]


def test_the_largest_seed_runs_on_every_worker():
    from hpo.samplers import make_sampler

    spec = parse_spec({"name": "s", "dataset": {"builtin": "digits"}, "sampler": {"seed": 2**32 - 1}})
    for offset in range(3):  # the worker index is added to the seed
        make_sampler(spec, offset)


@pytest.mark.parametrize("name", ["has space", "-leading-dash", "x" * 129, "", "ünïcode"])
def test_a_bad_study_name_is_refused_in_words_not_a_regex(name):
    with pytest.raises(SpecError) as refused:
        parse_spec({"name": name, "dataset": {"builtin": "digits"}})

    [error] = refused.value.errors
    assert error["field"] == "name"
    assert error["message"] == (f"{name!r} is not a study name: use 1 to 128 letters, digits, '.', '_' or '-', "
                                "starting with a letter or digit")
    assert StudySpec.model_json_schema()["properties"]["name"]["pattern"] == NAME_PATTERN


@pytest.mark.parametrize("timeout_s", [2**64, 1e300, 366 * 24 * 3600 + 1])
def test_a_timeout_beyond_a_year_is_refused_naming_the_field(timeout_s):
    with pytest.raises(SpecError) as refused:
        parse_spec({"name": "t", "dataset": {"builtin": "digits"}, "budget": {"timeout_s": timeout_s}})
    assert refused.value.errors[0]["field"] == "budget.timeout_s"


def test_the_final_model_is_a_3_seed_refit_unless_the_spec_says_otherwise():
    assert parse_spec(base()).final_model.model_dump() == {"kind": "refit", "seeds": 3}
    assert parse_spec(base(final_model={"seeds": 5})).final_model.seeds == 5
    ensemble = parse_spec(base(final_model={"kind": "ensemble"}))
    assert ensemble.model_dump(mode="json")["final_model"] == {"kind": "ensemble", "seeds": None}
    assert parse_spec(ensemble.model_dump(mode="json")).final_model == ensemble.final_model  # as stored


@pytest.mark.parametrize(("final_model", "field", "message"), [
    ({"kind": "bagging"}, "final_model.kind", "'refit' or 'ensemble'"),
    ({"seeds": 0}, "final_model.seeds", "greater than or equal to 1"),
    ({"seeds": 11}, "final_model.seeds", "less than or equal to 10"),
    ({"seeds": True}, "final_model.seeds", "valid integer"),
    ({"seeds": 2.5}, "final_model.seeds", "valid integer"),
    ({"kind": "ensemble", "seeds": 3}, "final_model.seeds", "applies to kind refit"),
    ({"holdout": 0.1}, "final_model.holdout", "unknown field"),
    ("refit", "final_model", "valid dictionary"),
])
def test_a_bad_final_model_names_its_field(final_model, field, message):
    errors = fields(base(final_model=final_model))
    assert list(errors) == [field] and message in errors[field], errors


@pytest.mark.parametrize(("cv", "task", "message"), [
    ({"repeats": 0}, "classification", "greater than or equal to 1"),
    ({"repeats": 11}, "classification", "less than or equal to 10"),
    ({"repeats": "two"}, "classification", "valid integer"),
    ({"repeats": 3, "shuffle": False}, "classification", "with cv.shuffle false every repeat would be the same folds"),
    ({"repeats": 2}, "forecasting", "time-ordered folds are the same every repeat"),
])
def test_bad_cv_repeats_name_the_field_and_what_is_accepted(cv, task, message):
    dataset = {"builtin": "airline"} if task == "forecasting" else {"builtin": "digits"}
    errors = fields(base(task=task, dataset=dataset, cv=cv))
    assert message in errors["cv.repeats"], errors


def test_cv_repeats_are_accepted_for_shuffled_folds_and_default_to_one():
    assert parse_spec(base(cv={"repeats": 3})).cv.repeats == 3
    assert parse_spec(base(task="regression", dataset={"path": "x.npz"}, cv={"repeats": 10})).cv.repeats == 10
    assert parse_spec(base()).cv.repeats == 1
