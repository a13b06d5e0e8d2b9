"""The README's 5-minute tour, run as written against a real ``hpo serve``: every command line
of its code blocks (submit, watch, best by CLI / curl / client / Optuna, local run, upload),
then the model: fit, download, predict over HTTP and offline.

The tour's placeholders get this run's values: ``ID`` and ``NAME`` the submitted study's, the
server's address for ``localhost:8000``, its database for ``sqlite:///hpo.db`` (and as the
commands' default), and a spec that
trains in seconds for ``studies/digits-tpe.yaml`` (named ``digits-tpe`` as that one is)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hpo.client import Client
from hpo.data.builtins import _digits
from hpo.export import load_model
from tests.support.databases import sqlite_url
from tests.support.processes import REPO
from tests.support.servers import ServeProcess
from tests.support.studies import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.service]

TOUR_START = "## A 5-minute tour"
TOUR_END = "## From best parameters to a model"
COMMANDS = ("hpo ", "curl ", "python -c ")
STUDY_TIMEOUT_S = 300


def tour_commands(readme: str) -> list[str]:
    """The command lines of the tour's code blocks (``\\``-continued lines joined)."""
    tour = readme[readme.index(TOUR_START):readme.index(TOUR_END)]
    blocks = re.findall(r"^```\n(.*?)^```", tour, flags=re.S | re.M)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip().startswith(COMMANDS)]


def run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=STUDY_TIMEOUT_S)
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, f"{command}\n{done.stderr}"
    return done


def test_the_readme_tour_runs_as_written(tmp_path):
    assert shutil.which("curl"), "the tour uses curl"
    commands = tour_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert commands[0].startswith("hpo submit studies/digits-tpe.yaml"), commands
    spec = tmp_path / "digits-tpe.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec("digits-tpe", budget={"n_trials": 2})))
    database = sqlite_url(tmp_path)

    with ServeProcess(database, tmp_path / "data", tmp_path / "serve.log", workers=1) as server:
        # The server's database is the commands' default one, as `sqlite:///hpo.db` is for both in the tour.
        env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")} | {
            "HPO_URL": server.url, "HPO_DATABASE_URL": database, "HPO_DATA_DIR": str(tmp_path / "data")}
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # `hpo` and `python` of this venv
        address = server.url.removeprefix("http://")

        def fill(command: str, study: dict | None) -> str:
            command = command.replace("studies/digits-tpe.yaml", str(spec)).replace("my-spec.yaml", str(spec))
            command = command.replace("sqlite:///hpo.db", database)
            command = command.replace("localhost:8000", address).replace("127.0.0.1:8000", address)
            if study is not None:
                command = re.sub(r"\bID\b", study["id"], command)
                command = re.sub(r"\bNAME\b", study["optuna_study_name"], command)
            return command

        outputs = {}
        study = None
        for command in commands:
            done = run(fill(command, study), env)
            outputs[command.split(" #")[0].strip()] = done.stdout  # keyed without the comment
            if study is None:  # the first line submits: its output is the study's id
                study = Client(server.url).get(done.stdout.strip())

        best = json.loads(outputs["hpo best ID --json"])
        assert best["params"]["hidden_size"] == 16 and 0 <= best["value"] <= 1
        assert json.loads(outputs["curl localhost:8000/api/v1/studies/ID/best"])["params"] == best["params"]
        uploads = [c for c in commands if "upload" in c or c.startswith("curl -F")]
        assert len(uploads) == 3, uploads
        listed = outputs["hpo datasets list"]
        assert listed.count("airline_passengers.csv") == 3, listed

        # The model: a worker fits the best configuration; predictions online and offline agree.
        with Client(server.url) as client:
            client.fit_model(study["id"])
            assert client.wait_model(study["id"], timeout_s=STUDY_TIMEOUT_S)["state"] == "ready"
            x, _ = _digits()
            online = client.predict(study["id"], {"x": x[:5]})
            archive = client.download_model(study["id"], tmp_path)
        offline = load_model(archive).predict(np.asarray(x[:5], dtype=np.float32))
        assert online["labels"] == offline.tolist()
