"""The ``hpo`` commands that take a study id, run as real processes against a real server:
they ask the server (``--url`` / ``$HPO_URL``) by default, read a database by study name with
``--storage``, and each refusal says how to do the other."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hpo.client import Client
from tests.support.processes import free_port
from tests.support.studies import add_trial, tiny_spec


def hpo(*args: str, url: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")} | {"HPO_URL": url}
    return subprocess.run([sys.executable, "-m", "hpo", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def test_best_asks_the_server_by_id_and_reads_a_database_by_name(live_server, storage, database_url, tmp_path):
    with Client(live_server.url) as client:
        study = client.submit(tiny_spec("cli-best"))
    add_trial(storage, study["optuna_study_name"], value=0.9, fold_scores=[0.85, 0.95])
    url = live_server.url

    as_json = hpo("best", study["id"], "--json", url=url, cwd=tmp_path)  # the README's tour, step 3
    table = hpo("best", study["id"], url=url, cwd=tmp_path)
    by_name = hpo("best", study["optuna_study_name"], "--storage", database_url, "--json", url=url, cwd=tmp_path)

    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["value"] == 0.9
    assert table.returncode == 0 and "Best trial #0" in table.stdout, table  # a result: stdout
    assert json.loads(by_name.stdout)["params"] == json.loads(as_json.stdout)["params"]


def test_each_refusal_says_how_to_do_the_other(live_server, database_url, tmp_path):
    url = live_server.url

    unknown_id = hpo("best", "no-such-id", url=url, cwd=tmp_path)
    unknown_name = hpo("best", "no-such-name", "--storage", database_url, url=url, cwd=tmp_path)
    nobody_there = hpo("best", "some-id", "--url", f"http://127.0.0.1:{free_port()}", url=url, cwd=tmp_path)

    assert unknown_id.returncode == 1 and "HTTP 404" in unknown_id.stderr
    assert "read a database by study name instead: hpo best NAME --storage URL" in unknown_id.stderr
    assert unknown_name.returncode == 1 and "no study 'no-such-name'" in unknown_name.stderr
    assert f"leave out --storage (server: --url or $HPO_URL, now {url})" in unknown_name.stderr
    assert nobody_there.returncode == 1 and "cannot reach the server at http://127.0.0.1:" in nobody_there.stderr
    assert "--storage URL" in nobody_there.stderr
    for run in (unknown_id, unknown_name, nobody_there):
        assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_cancel_prints_one_line(live_server, tmp_path):
    with Client(live_server.url) as client:
        study = client.submit(tiny_spec("cli-cancel"))

    cancelled = hpo("cancel", study["id"], url=live_server.url, cwd=tmp_path)
    as_json = hpo("cancel", study["id"], "--json", url=live_server.url, cwd=tmp_path)

    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == f"{study['id']} cancelled\n"
    assert json.loads(as_json.stdout)["id"] == study["id"]


def test_datasets_upload_list_show_delete(live_server, storage, tmp_path):
    data = tmp_path / "spam.csv"
    data.write_text("text,label\n" + "".join(f"message {i},{'spam' if i % 3 else 'ham'}\n" for i in range(24)))
    url = live_server.url

    uploaded = hpo("datasets", "upload", str(data), "--task", "classification", url=url, cwd=tmp_path)
    dataset_id = uploaded.stdout.strip()
    listed = hpo("datasets", "list", url=url, cwd=tmp_path)
    listed_json = hpo("datasets", "list", "--json", url=url, cwd=tmp_path)
    shown = hpo("datasets", "show", dataset_id, url=url, cwd=tmp_path)
    refused = hpo("datasets", "upload", str(data), "--task", "classification", "--max-length", "2", url=url,
                  cwd=tmp_path)
    with Client(url) as client:  # a finished study whose model only a refit (which reads the data) can make
        study = client.submit(tiny_spec("cli-needs-data", dataset={"id": dataset_id}, budget={"n_trials": 1}))
    add_trial(storage, study["optuna_study_name"], value=0.9)
    kept = hpo("datasets", "delete", dataset_id, url=url, cwd=tmp_path)
    deleted = hpo("datasets", "delete", dataset_id, "--force", url=url, cwd=tmp_path)
    gone = hpo("datasets", "show", dataset_id, "--json", url=url, cwd=tmp_path)
    series = tmp_path / "yearly.csv"
    series.write_text("year,temp,sales\n" + "".join(f"{1900 + r},{r % 7},{100 + 3 * r}\n" for r in range(30)))
    with_roles = hpo("datasets", "upload", str(series), "--task", "forecasting", "--time-column", "year",
                     "--feature-columns", "temp", "--json", url=url, cwd=tmp_path)

    assert uploaded.returncode == 0 and "dataset: {id: " + dataset_id + "}" in uploaded.stderr, uploaded
    assert dataset_id in listed.stdout and "spam.csv" in listed.stdout, listed
    assert [d["id"] for d in json.loads(listed_json.stdout)["items"]] == [dataset_id]
    assert f"id: {dataset_id}\n" in shown.stdout and "task: classification" in shown.stdout, shown
    assert refused.returncode == 1 and "HTTP 422: max_length" in refused.stderr, refused
    assert kept.returncode == 1 and "HTTP 409" in kept.stderr and f"{study['id']}: no model is stored" in kept.stderr
    assert "--force" in kept.stderr and kept.stdout == "", kept
    assert deleted.stdout == f"{dataset_id} deleted\n"
    assert gone.returncode == 1 and "HTTP 404" in gone.stderr
    summary = json.loads(with_roles.stdout)["summary"]
    assert (summary["columns"], summary["time_column"]) == (["temp", "sales"], "year"), with_roles
