"""Uploading datasets: good files are kept and usable by studies; bad ones leave nothing behind."""

from __future__ import annotations

import datetime as dt
import io
import os
import pickle
import resource
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from hpo.data import load_dataset
from hpo.db.models import DatasetRecord, dataset_chunks, model_archives
from hpo.export import delete_model, request_model
from hpo.spec import parse_spec
from hpo.studies import fail_study, set_cancelled
from service import datasets
from service.app import create_app
from tests.support.servers import MAX_UPLOAD_BYTES
from tests.support.studies import add_trial, tiny_spec

DATASETS = "/api/v1/datasets"
STUDIES = "/api/v1/studies"


def text_csv(rows: int = 24) -> bytes:
    lines = ["text,label"]
    for i in range(rows):
        label = "spam" if i % 2 else "ham"
        lines.append(f"\"{'win money now' if i % 2 else 'see you at lunch'} {i}\",{label}")
    return ("\n".join(lines) + "\n").encode()


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def good_npz() -> bytes:
    rng = np.random.default_rng(0)
    return npz_bytes(X=rng.normal(size=(20, 6, 2)).astype(np.float32), y=np.arange(20) % 2)


def stored_files(data_dir: Path) -> list[Path]:
    """Every file kept under the data folder (empty folders do not count)."""
    return [p for p in Path(data_dir).rglob("*") if p.is_file()] if Path(data_dir).exists() else []


def stored_chunks(client) -> int:
    """Rows of dataset bytes in the app's database."""
    with client.app.state.engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(dataset_chunks)).scalar_one()


def upload(client, name: str, content: bytes, **form):
    form.setdefault("task", "classification")
    return client.post(DATASETS, files={"file": (name, content)}, data=form)


def test_upload_list_get_delete(api, data_dir):
    response = upload(api, "spam.csv", text_csv())

    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["name"] == "spam.csv" and dataset["format"] == "csv" and dataset["task"] == "classification"
    assert dataset["size_bytes"] == len(text_csv())
    assert dataset["summary"]["n_samples"] == 24
    assert response.headers["location"] == f"{DATASETS}/{dataset['id']}"
    assert api.get(f"{DATASETS}/{dataset['id']}").json() == dataset
    listed = api.get(DATASETS).json()
    assert listed["total"] == 1 and listed["items"] == [dataset]
    assert stored_chunks(api) == 1 and len(stored_files(data_dir)) == 1  # the API's cached copy

    deleted = api.delete(f"{DATASETS}/{dataset['id']}")

    assert deleted.status_code == 204
    assert api.get(f"{DATASETS}/{dataset['id']}").status_code == 404
    assert stored_files(data_dir) == [] and stored_chunks(api) == 0


def test_upload_npz_with_options(api):
    response = upload(api, "seq.bin", good_npz(), format="npz")
    text = upload(api, "reviews.tsv", text_csv().replace(b",", b"\t"), max_length="16")

    assert response.status_code == 201, response.text
    assert response.json()["format"] == "npz" and response.json()["summary"]["n_features"] == 2
    assert text.status_code == 201, text.text
    assert text.json()["format"] == "tsv" and text.json()["options"] == {"max_length": 16}


def test_study_on_an_uploaded_dataset(api):
    dataset = upload(api, "spam.csv", text_csv()).json()

    study = api.post(STUDIES, json=tiny_spec(dataset={"id": dataset["id"]}))
    wrong_task = api.post(STUDIES, json=tiny_spec(
        task="regression", dataset={"id": dataset["id"]}, cv={"folds": 2, "strategy": "kfold"},
    ))

    assert study.status_code == 201, study.text
    assert study.json()["dataset_id"] == dataset["id"]
    assert wrong_task.status_code == 422
    assert [e["field"] for e in wrong_task.json()["detail"]] == ["task"]
    assert "classification" in wrong_task.json()["detail"][0]["message"]


def test_studies_name_their_datasets_in_one_query(api):
    """The studies list, the page's list, a study and its page name the dataset, not its id;
    a page of studies reads the names of all its uploads in one query."""
    uploads = [upload(api, name, text_csv()).json() for name in ("spam.csv", "notes.csv")]
    for dataset in (*uploads, uploads[0]):
        api.post(STUDIES, json=tiny_spec(dataset={"id": dataset["id"]}))
    builtin = api.post(STUDIES, json=tiny_spec()).json()
    statements: list[str] = []
    listen = lambda conn, cursor, statement, *rest: statements.append(statement)  # noqa: E731
    sa.event.listen(api.app.state.engine, "before_cursor_execute", listen)
    try:
        listed = api.get(STUDIES).json()["items"]
        cards = api.get("/api/v1/views/studies").json()["items"]
    finally:
        sa.event.remove(api.app.state.engine, "before_cursor_execute", listen)

    names = {u["id"]: u["name"] for u in uploads}
    assert [s["dataset_name"] for s in listed] == ["digits", "spam.csv", "notes.csv", "spam.csv"]
    assert [c["dataset"] for c in cards] == ["digits", "spam.csv", "notes.csv", "spam.csv"]
    assert all(s["dataset_name"] == names.get(s["dataset_id"], "digits") for s in listed)
    assert sum("hpo_datasets" in s for s in statements) == 2  # one per list, not one per study
    study = listed[1]
    assert api.get(f"{STUDIES}/{study['id']}").json()["dataset_name"] == "spam.csv"
    assert api.get(f"/api/v1/views/studies/{study['id']}").json()["study"]["dataset_name"] == "spam.csv"
    assert api.get(f"{STUDIES}/{builtin['id']}").json()["dataset_name"] == "digits"


def test_a_dataset_in_use_cannot_be_deleted(api, data_dir):
    dataset = upload(api, "spam.csv", text_csv()).json()
    study = api.post(STUDIES, json=tiny_spec(dataset={"id": dataset["id"]})).json()

    refused = api.delete(f"{DATASETS}/{dataset['id']}")
    api.post(f"{STUDIES}/{study['id']}/cancel")
    allowed = api.delete(f"{DATASETS}/{dataset['id']}")

    assert refused.status_code == 409
    assert study["id"] in refused.json()["detail"][0]["message"]
    assert allowed.status_code == 204
    assert stored_chunks(api) == 0 and stored_files(data_dir) == []


def test_a_dataset_a_finished_study_needs_for_its_model_is_kept_unless_forced(api, data_dir):
    """A finished study with a complete trial but no stored model can only get one from a
    refit, which reads the data: deleting it is refused (409 naming the study) unless
    forced; a queued refit needs it too; a stored archive does not."""
    storage = api.app.state.storage
    dataset = upload(api, "spam.csv", text_csv()).json()
    study = api.post(STUDIES, json=tiny_spec(dataset={"id": dataset["id"]}, budget={"n_trials": 1})).json()
    add_trial(storage, study["optuna_study_name"], value=0.9)
    assert api.get(f"{STUDIES}/{study['id']}").json()["state"] == "completed"
    url = f"{DATASETS}/{dataset['id']}"

    no_model = api.delete(url)
    request_model(storage, study["optuna_study_name"])
    refit_queued = api.delete(url)
    delete_model(storage, study["optuna_study_name"])
    with storage.engine.begin() as connection:  # the workers' kept ensemble, as stored when the trial completed
        connection.execute(model_archives.insert().values(
            study_name=study["optuna_study_name"], kind="ensemble", trial_number=0, rank_score=0.9, cv_loss=0.1,
            mean_epochs=1.0, archive=b"zip", sha256="0" * 64, summary={}, created_at=dt.datetime(2026, 1, 1)))
    archived = api.delete(url)

    for refused, why in ((no_model, "no model is stored yet"), (refit_queued, "its refit is queued")):
        assert refused.status_code == 409, refused.text
        error = refused.json()["detail"][0]
        assert error["field"] == "dataset_id" and f"{study['id']}: {why}" in error["message"]
        assert "force=true" in error["message"]
    assert archived.status_code == 204 and stored_chunks(api) == 0 and stored_files(data_dir) == []


def test_a_needed_dataset_is_deleted_when_forced(api, data_dir):
    storage = api.app.state.storage
    dataset = upload(api, "spam.csv", text_csv()).json()
    study = api.post(STUDIES, json=tiny_spec(dataset={"id": dataset["id"]}, budget={"n_trials": 1})).json()
    add_trial(storage, study["optuna_study_name"], value=0.9)
    unfinished = api.post(STUDIES, json=tiny_spec(dataset={"id": dataset["id"]})).json()

    still_running = api.delete(f"{DATASETS}/{dataset['id']}", params={"force": "true"})
    api.post(f"{STUDIES}/{unfinished['id']}/cancel")
    forced = api.delete(f"{DATASETS}/{dataset['id']}", params={"force": "true"})

    assert still_running.status_code == 409 and unfinished["id"] in still_running.json()["detail"][0]["message"]
    assert forced.status_code == 204 and stored_chunks(api) == 0 and stored_files(data_dir) == []


def test_a_study_whose_dataset_was_deleted_cannot_resume(api):
    dataset = upload(api, "spam.csv", text_csv()).json()
    study = api.post(STUDIES, json=tiny_spec(dataset={"id": dataset["id"]})).json()
    api.post(f"{STUDIES}/{study['id']}/cancel")
    assert api.delete(f"{DATASETS}/{dataset['id']}").status_code == 204

    resumed = api.post(f"{STUDIES}/{study['id']}/resume")

    assert resumed.status_code == 409, resumed.text
    assert resumed.json()["detail"][0]["field"] == "dataset.id"
    assert dataset["id"] in resumed.json()["detail"][0]["message"]
    assert api.get(f"{STUDIES}/{study['id']}").json()["state"] == "cancelled"  # left as it was


def test_a_study_failed_for_its_deleted_dataset_cannot_be_retried(api):
    dataset = upload(api, "spam.csv", text_csv()).json()
    study = api.post(STUDIES, json=tiny_spec(dataset={"id": dataset["id"]})).json()
    api.post(f"{STUDIES}/{study['id']}/cancel")
    assert api.delete(f"{DATASETS}/{dataset['id']}").status_code == 204
    fail_study(api.app.state.storage, study["optuna_study_name"], "the study cannot run: dataset deleted")
    set_cancelled(api.app.state.storage, study["optuna_study_name"], False)  # as a worker leaves it

    retried = api.post(f"{STUDIES}/{study['id']}/resume")

    assert retried.status_code == 409, retried.text
    assert retried.json()["detail"][0]["field"] == "dataset.id"
    assert api.get(f"{STUDIES}/{study['id']}").json()["state"] == "failed"  # its reason kept


def test_a_dataset_deleted_twice_at_once_is_deleted_once(api, data_dir):
    """Both requests found the row; the one that locks it second finds nothing to delete (404)."""
    dataset = upload(api, "spam.csv", text_csv()).json()
    app = api.app
    with app.state.sessions() as first, app.state.sessions() as second:
        rows = [session.get(DatasetRecord, dataset["id"]) for session in (first, second)]
        datasets.delete(first, app.state.trial_cache, app.state.dataset_store, rows[0])
        with pytest.raises(KeyError):
            datasets.delete(second, app.state.trial_cache, app.state.dataset_store, rows[1])
    assert stored_chunks(api) == 0 and stored_files(data_dir) == []


def _object_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, X=np.array([{"a": 1}, [1, 2]], dtype=object), y=np.array([0, 1]))
    return buffer.getvalue()


def _nan_npz() -> bytes:
    x = np.ones((20, 6, 2), dtype=np.float32)
    x[3, 2, 1] = np.nan
    return npz_bytes(X=x, y=np.arange(20) % 2)


def _inf_npz() -> bytes:
    x = np.ones((20, 6, 2), dtype=np.float32)
    x[5, 0, 0] = np.inf
    return npz_bytes(X=x, y=np.arange(20) % 2)


def _lying_header_npz() -> bytes:
    """An .npy header declaring 10^12 x 10^6 floats over a few bytes of data: absurd dimensions."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10**12, 10**6, 1)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("X.npy", header.getvalue() + bytes(64))
        zf.writestr("y.npy", npz_member(np.arange(20) % 2))
    return buffer.getvalue()


def npz_member(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _zip_bomb_npz() -> bytes:
    """A few KB that would unpack to 64 MiB of zeros (well over the test app's upload limit)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, X=np.zeros((1024, 1024, 16), dtype=np.float32), y=np.arange(1024) % 2)
    return buffer.getvalue()


def _wide_series(columns: int, rows: int = 3) -> bytes:
    """A forecasting CSV of ``rows`` rows, ``columns`` numeric columns wide."""
    header = ",".join(f"c{i}" for i in range(columns))
    return "\n".join([header] + [",".join(["1.5"] * columns)] * rows).encode()


BAD_UPLOADS = {
    "nan-npz": ("nan.npz", _nan_npz(), 422),
    "pickled-object-npz": ("objects.npz", _object_npz(), 422),
    "raw-pickle-as-npz": ("evil.npz", pickle.dumps({"x": 1}), 422),
    "non-utf8-csv": ("latin.csv", "text,label\ncafé crème,1\nthé,0\n".encode("latin-1") * 4, 422),
    "empty-file": ("empty.csv", b"", 422),
    "header-only-csv": ("header.csv", b"text,label\n", 422),
    "unknown-format": ("data.xlsx", b"PK\x03\x04", 422),
    "inf-npz": ("inf.npz", _inf_npz(), 422),
    "rows-mismatch-npz": ("mismatch.npz", npz_bytes(X=np.ones((20, 6, 2)), y=np.arange(19) % 2), 422),
    "ragged-object-npz": ("ragged.npz", npz_bytes(X=np.array([np.ones(3), np.ones(5)], dtype=object),
                                                  y=np.array([0, 1])), 422),
    "missing-y-npz": ("no-y.npz", npz_bytes(X=np.ones((20, 6, 2))), 422),
    "absurd-dimensions-npz": ("liar.npz", _lying_header_npz(), 422),
    "zip-bomb-npz": ("bomb.npz", _zip_bomb_npz(), 422),
    "single-class-npz": ("one.npz", npz_bytes(X=np.ones((20, 6, 2)), y=np.zeros(20, dtype=int)), 422),
    "single-class-csv": ("one.csv", b"text,label\n" + b"".join(b"msg %d,ham\n" % i for i in range(24)), 422),
    "ragged-csv": ("ragged.csv", b"text,label\nhello,ham\nbye,spam,extra,cells\n" * 8, 422),
    "binary-junk-csv": ("junk.csv", bytes(range(256)) * 16, 422),
    "non-numeric-series": ("series.csv", b"t,v\n1,2\n2,three\n3,4\n" * 8, 422, {"task": "forecasting"}),
    "too-wide-series": ("wide.csv", _wide_series(1001), 422, {"task": "forecasting"}),
    "unsorted-times": ("years.csv", b"year,v\n1901,1\n1900,2\n" + b"".join(b"%d,3\n" % y for y in range(1902, 1920)),
                       422, {"task": "forecasting", "time_column": "year"}),
    "just-over-the-limit": ("big.csv", b"x" * (MAX_UPLOAD_BYTES + 1), 413),
    "far-over-the-limit": ("huge.csv", b"x" * (MAX_UPLOAD_BYTES + 2 * 2**20), 413),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_are_refused_and_leave_nothing(shared_api, case):
    filename, content, status, *form = BAD_UPLOADS[case]
    data_dir = Path(shared_api.app.state.settings.data_dir)

    response = upload(shared_api, filename, content, **(form[0] if form else {}))

    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail[0]["field"] in ("file", "body", *(form[0] if form else {})) and detail[0]["message"]
    assert shared_api.get(DATASETS).json()["total"] == 0
    assert stored_files(data_dir) == [] and stored_chunks(shared_api) == 0


@pytest.mark.parametrize(
    ("form", "field"),
    [({"task": "astrology"}, "task"), ({"format": "xls"}, "format"), ({"max_length": "2"}, "max_length"),
     ({"max_length": "long"}, "max_length")],
)
def test_bad_upload_fields_are_422(shared_api, form, field):
    response = upload(shared_api, "spam.csv", text_csv(), **form)

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["detail"]] == [field]
    assert shared_api.get(DATASETS).json()["total"] == 0


def test_upload_needs_a_file_and_a_task(shared_api):
    no_file = shared_api.post(DATASETS, data={"task": "classification"})
    no_task = shared_api.post(DATASETS, files={"file": ("spam.csv", text_csv())})
    not_multipart = shared_api.post(DATASETS, json={"task": "classification"})

    assert no_file.status_code == 422 and [e["field"] for e in no_file.json()["detail"]] == ["file"]
    assert no_task.status_code == 422 and [e["field"] for e in no_task.json()["detail"]] == ["task"]
    assert not_multipart.status_code == 422


def test_file_names_cannot_reach_outside_the_data_folder(shared_api, tmp_path):
    response = upload(shared_api, "../../../../tmp/escape.csv", text_csv())

    assert response.status_code == 201, response.text
    assert response.json()["name"] == "escape.csv"
    assert shared_api.delete(f"{DATASETS}/{response.json()['id']}").status_code == 204


def test_an_upload_left_staged_by_a_killed_api_is_removed_at_start(settings):
    """``kill -9`` during validation leaves ``.staging/upload-*``; the next start removes it, and
    keeps a fresh entry (another process's upload in progress)."""
    staging = Path(settings.data_dir) / ".staging"
    left = staging / "upload-killed"
    left.mkdir(parents=True)
    (left / "data.csv").write_bytes(b"text,label\nhello,ham\n")
    long_ago = time.time() - 3600
    os.utime(left / "data.csv", (long_ago, long_ago))
    os.utime(left, (long_ago, long_ago))
    in_progress = staging / "upload-in-progress"
    in_progress.mkdir()

    with TestClient(create_app(settings)):
        assert not left.exists()
        assert in_progress.exists()


def test_a_full_data_disk_is_507_and_keeps_nothing(api, data_dir):
    """The file size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ) makes every write past 64 KiB
    fail with EFBIG, as a full disk fails with ENOSPC."""
    content = b"text,label\n" + b"".join(b"message number %d,ham\n" % i for i in range(6000))
    assert 64 * 1024 < len(content) <= MAX_UPLOAD_BYTES
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        response = upload(api, "big.csv", content)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    assert response.status_code == 507, response.text
    assert "no space left" in response.json()["detail"][0]["message"]
    assert api.get(DATASETS).json()["total"] == 0
    assert stored_files(data_dir) == [] and stored_chunks(api) == 0


def _huge_series_csv() -> bytes:
    return b"t,v\n" + b"".join(b"%d,%d.5e200\n" % (i, 1 + i % 7) for i in range(40))


@pytest.mark.parametrize(
    ("filename", "content", "task", "message"),
    [
        ("huge.npz", npz_bytes(X=np.ones((20, 6, 2)), y=np.linspace(1e199, 1e200, 20)), "regression",
         "y holds values up to 1e+200 in magnitude; targets must lie within"),
        ("nan.npz", npz_bytes(X=np.ones((20, 6, 2)), y=np.where(np.arange(20) == 4, np.nan, 1.0)), "regression",
         "y contains NaN (1 values)"),
        ("huge.csv", _huge_series_csv(), "forecasting",
         "target column 'v' holds values up to 7.5e+200 in magnitude; targets must lie within"),
    ],
)
def test_targets_that_cannot_train_are_refused_at_upload(shared_api, filename, content, task, message):
    """Targets near 1e200 are finite, but their squared errors overflow: every trial would score inf."""
    response = upload(shared_api, filename, content, task=task)

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["field"] == "file" and message in error["message"], error
    assert shared_api.get(DATASETS).json()["total"] == 0


def test_a_series_upload_says_its_columns_roles_and_a_year_column_is_no_input(api, data_dir):
    yearly = "year,temp,sales\n" + "".join(f"{1900 + r},{r % 7},{100 + 3 * r}\n" for r in range(30))
    plain = upload(api, "yearly.csv", yearly.encode(), task="forecasting").json()
    assert plain["summary"]["columns"] == ["year", "temp", "sales"]  # as before: every numeric column an input

    response = upload(api, "yearly.csv", yearly.encode(), task="forecasting", time_column="year",
                      feature_columns="temp")

    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["options"] == {"time_column": "year", "feature_columns": ["temp"]}
    summary = dataset["summary"]
    assert (summary["target"], summary["feature_columns"], summary["time_column"]) == ("sales", ["temp"], "year")
    assert summary["columns"] == ["temp", "sales"] and "year" in summary["dropped_columns"]
    spec = parse_spec({"name": "y", "task": "forecasting", "dataset": {"id": dataset["id"]},
                       "training": {"lookback": 4}})
    assert load_dataset(spec, api.app.state.dataset_store).fold(np.arange(10), np.arange(12, 20)).n_features == 2

    refused = upload(api, "yearly.csv", yearly.encode(), task="forecasting", time_column="when")
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["field"] == "time_column"
    assert "no time column 'when'" in refused.json()["detail"][0]["message"]
