"""The service's tables come from Alembic migrations that live beside Optuna's tables."""

from __future__ import annotations

import json
import threading

import optuna
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from hpo.cli import main as hpo_main
from hpo.data import DataError, DatasetStore
from hpo.export import model_job
from hpo.spec import parse_spec
from hpo.studies import create_study, study_spec
from hpo.worker import StudyPicker, WorkerOptions
from hpo.storage import open_storage
from hpo.db import VERSION_TABLE, alembic_config, include_name, make_engine, upgrade
from hpo.db.models import Base
from service.app import create_app
from tests.support.servers import make_settings
from tests.support.studies import add_trial, tiny_spec

SERVICE_TABLES = {"hpo_studies", "hpo_datasets", "hpo_dataset_chunks", "hpo_api_keys", "hpo_logins",
                  "hpo_model_archives", "hpo_model_jobs", "hpo_auto_refits", VERSION_TABLE}


@pytest.fixture
def postgres_template() -> None:
    """Migrations start from an empty database here, not the prepared copy the other tests use."""
    return None


@pytest.fixture
def sqlite_template() -> None:
    """Likewise on SQLite."""
    return None


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_leaves_optuna_alone(database_url):
    storage = open_storage(database_url)  # Optuna first, as when `hpo worker` created the database
    optuna_tables = table_names(database_url)
    storage.engine.dispose()

    upgrade(database_url)
    upgrade(database_url)

    tables = table_names(database_url)
    assert SERVICE_TABLES <= tables
    assert optuna_tables <= tables and "alembic_version" in optuna_tables  # Optuna's own version table
    engine = make_engine(database_url)
    with engine.connect() as connection:
        ours = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        optunas = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    engine.dispose()
    assert ours == ["0007"]
    assert len(optunas) == 1 and optunas != ours
    open_storage(database_url).engine.dispose()  # Optuna still accepts the database


def test_models_match_the_migrations(database_url):
    upgrade(database_url)
    open_storage(database_url).engine.dispose()  # Optuna's tables present too: they must be ignored
    engine = make_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_name": include_name, "compare_type": True, "version_table": VERSION_TABLE}
        )
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()

    assert differences == []


def test_downgrade_removes_only_the_service_tables(database_url):
    upgrade(database_url)
    open_storage(database_url).engine.dispose()
    engine = make_engine(database_url)
    with engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    engine.dispose()

    tables = table_names(database_url)
    assert not ({"hpo_studies", "hpo_datasets", "hpo_dataset_chunks", "hpo_api_keys", "hpo_logins",
                 "hpo_model_jobs", "hpo_model_archives", "hpo_auto_refits"} & tables)
    assert {"studies", "trials"} <= tables


def test_upgrade_from_0001_keeps_the_rows_and_adds_the_keys(database_url):
    upgrade(database_url, "0001")
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO hpo_studies (id, optuna_study_name, name, spec, created_at) "
            "VALUES ('old1', 'old-old1', 'old', '{}', CURRENT_TIMESTAMP)"
        ))
    upgrade(database_url)

    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM hpo_studies")).scalars().all() == ["old1"]
        assert connection.execute(text("SELECT count(*) FROM hpo_api_keys")).scalar() == 0
    engine.dispose()


def test_upgrade_to_0003_moves_the_model_jobs_out_of_the_study_attributes(database_url):
    upgrade(database_url, "0002")
    storage = open_storage(database_url)
    old = {  # model jobs as earlier versions kept them, in the study user attribute hpo:model
        "queued-job": {"state": "queued", "requested_at": "2025-01-01T00:00:00+00:00", "trial_number": 2,
                       "cv_score": 0.8, "holdout": 0.1, "attempts": 0},
        "ready-job": {"state": "ready", "requested_at": "2025-01-02T00:00:00+00:00", "trial_number": 0,
                      "cv_score": 0.7, "holdout": 0.0, "attempts": 1, "archive": {"file": "models/x.hpo.zip"}},
        "failed-job": {"state": "failed", "requested_at": "2025-01-03T00:00:00+00:00", "trial_number": 1,
                       "holdout": 0.0, "attempts": 1, "reason": "ValueError: no"},
        "deleted-job": {"state": "queued", "requested_at": "2025-01-04T00:00:00+00:00", "trial_number": 0},
    }
    for name, job in old.items():
        study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], name)
        storage.set_study_user_attr(study_id, "hpo:model", job)
        storage.set_study_user_attr(study_id, "other", 1)
    storage.set_study_user_attr(storage.get_study_id_from_name("deleted-job"), "hpo:model:cancelled",
                                old["deleted-job"]["requested_at"])

    upgrade(database_url)

    jobs = {name: model_job(storage, name) for name in old}
    assert jobs["deleted-job"] is None
    assert jobs["queued-job"]["state"] == "queued" and jobs["queued-job"]["trial_number"] == 2
    assert jobs["queued-job"]["holdout"] == 0.1 and jobs["queued-job"]["seeds"] == 1
    assert jobs["ready-job"]["state"] == "queued"  # its archive was in the data folder: refitted into the database
    assert jobs["failed-job"]["state"] == "failed" and jobs["failed-job"]["reason"] == "ValueError: no"
    for name in old:
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
        assert attrs == {"other": 1}  # the job attributes and the tombstone are gone
    storage.engine.dispose()


def test_upgrade_to_0006_keeps_stored_forecasting_studies_on_levels(database_url):
    """Specs stored before forecast_target existed were learned as levels; the option's new
    default (difference) must not switch them over when they run on or are refitted."""
    upgrade(database_url, "0005")
    storage = open_storage(database_url)
    old = {
        "series-old": {"task": "forecasting", "training": {"lookback": 4}},
        "series-bare": {"task": "forecasting"},
        "series-new": {"task": "forecasting", "training": {"forecast_target": "difference"}},
        "digits": {"task": "classification", "training": {"max_epochs": 2}},
    }
    for name, spec in old.items():
        storage.set_study_user_attr(
            storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name), "hpo:spec", spec)
    engine = make_engine(database_url)
    with engine.begin() as connection:
        for name, spec in old.items():
            connection.execute(text(
                "INSERT INTO hpo_studies (id, optuna_study_name, name, spec, created_at) "
                "VALUES (:id, :name, :name, :spec, CURRENT_TIMESTAMP)"), {"id": name, "name": name, "spec": json.dumps(spec)})

    upgrade(database_url, "0006")

    with engine.connect() as connection:
        stored = dict(connection.execute(text("SELECT id, spec FROM hpo_studies")).all())
    engine.dispose()
    for name in old:
        attr = storage.get_study_user_attrs(storage.get_study_id_from_name(name))["hpo:spec"]
        row = stored[name] if isinstance(stored[name], dict) else json.loads(stored[name])
        assert attr == row
        expected = {"series-old": "level", "series-bare": "level", "series-new": "difference"}.get(name)
        assert attr.get("training", {}).get("forecast_target") == expected, name
        assert {**attr, "training": None} == {**old[name], "training": None}  # nothing else changed
        assert attr.get("training", {}).get("lookback") == old[name].get("training", {}).get("lookback")
    storage.engine.dispose()


def test_upgrade_to_0007_keeps_stored_studies_on_the_ensemble(database_url):
    """Specs stored before final_model existed served their fold ensemble and nothing else; the
    new default (a refit queued when the study ends) must not start one for them, whether they
    ended before the upgrade or end after it. A study submitted after the upgrade gets it."""
    upgrade(database_url, "0006")
    storage = open_storage(database_url)
    spec = tiny_spec("old", budget={"n_trials": 1})
    engine = make_engine(database_url)
    for name in ("old-ended", "old-running"):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        study.set_user_attr("hpo:spec", {**spec, "name": name})  # as the previous version stored it
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO hpo_studies (id, optuna_study_name, name, spec, created_at) "
                "VALUES (:id, :name, :name, :spec, CURRENT_TIMESTAMP)"), {"id": name, "name": name,
                                                                         "spec": json.dumps({**spec, "name": name})})
    add_trial(storage, "old-ended")

    upgrade(database_url)

    add_trial(storage, "old-running")  # it ends after the upgrade
    new = create_study(storage, parse_spec(tiny_spec("new", budget={"n_trials": 1})))
    add_trial(storage, "new")
    with engine.connect() as connection:
        rows = dict(connection.execute(text("SELECT id, spec FROM hpo_studies")).all())
    engine.dispose()
    for name in ("old-ended", "old-running"):
        attr = storage.get_study_user_attrs(storage.get_study_id_from_name(name))["hpo:spec"]
        row = rows[name] if isinstance(rows[name], dict) else json.loads(rows[name])
        assert attr == row == {**spec, "name": name, "final_model": {"kind": "ensemble"}}
    assert study_spec(new).final_model.kind == "refit"
    picker = StudyPicker(storage, WorkerOptions(database_url=database_url), 0, threading.Event())
    assert picker.pick(storage.get_all_studies()) is None  # all three completed
    assert model_job(storage, "old-ended") is None and model_job(storage, "old-running") is None
    assert model_job(storage, "new")["state"] == "queued"
    storage.engine.dispose()


def old_data_folder(database_url: str, folder, ids=("kept1", "deleted1")) -> bytes:
    """A database at 0004 and a data folder as the previous version kept them: a row in
    hpo_datasets for ``kept1`` only, files in ``folder/datasets/<id>/`` for every id."""
    upgrade(database_url, "0004")
    content = b"text,label\n" + b"".join(b"message %d,%s\n" % (i, b"spam" if i % 2 else b"ham") for i in range(24))
    for dataset_id in ids:
        (folder / "datasets" / dataset_id).mkdir(parents=True)
        (folder / "datasets" / dataset_id / "data.csv").write_bytes(content)
        (folder / "datasets" / dataset_id / "meta.json").write_text(json.dumps({"id": dataset_id}))
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO hpo_datasets (id, name, format, task, options, size_bytes, summary, created_at) "
            "VALUES ('kept1', 'spam.csv', 'csv', 'classification', '{}', :size, '{}', CURRENT_TIMESTAMP)"
        ), {"size": len(content)})
    engine.dispose()
    return content


def test_upgrade_to_0005_then_the_old_data_folder_is_imported(database_url, tmp_path, capsys):
    """After the upgrade, and ``hpo datasets import-folder``, a worker with an empty folder reads
    the old files; a folder whose row was deleted is never brought back."""
    old = tmp_path / "old-data"
    content = old_data_folder(database_url, old)
    upgrade(database_url)
    engine = make_engine(database_url)
    worker = DatasetStore(engine, tmp_path / "worker")
    with pytest.raises(DataError, match="hpo datasets import-folder"):
        worker.path_of("kept1")  # not imported yet: its studies say what to do

    hpo_main(["datasets", "import-folder", str(old), "--database", database_url, "--json"])
    first = json.loads(capsys.readouterr().out)
    hpo_main(["datasets", "import-folder", str(old), "--database", database_url, "--json"])
    again = json.loads(capsys.readouterr().out)

    assert first["imported"] == ["kept1"] and list(first["skipped"]) == ["deleted1"]
    assert again["imported"] == [] and again["present"] == ["kept1"]
    assert worker.path_of("kept1").read_bytes() == content
    with pytest.raises(KeyError):
        worker.get("deleted1")
    engine.dispose()


def test_the_api_imports_its_own_old_data_folder_at_start(database_url, tmp_path):
    content = old_data_folder(database_url, tmp_path / "data", ids=("kept1",))

    with TestClient(create_app(make_settings(database_url, tmp_path / "data"))) as client:
        worker = DatasetStore(client.app.state.engine, tmp_path / "worker")
        assert worker.path_of("kept1").read_bytes() == content
