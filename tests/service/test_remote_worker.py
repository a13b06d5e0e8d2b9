"""A worker needs only the database URL: docker-compose.yml's commands, run as they are (no
Docker engine here), on PostgreSQL; the worker in a network namespace of its own (another
machine: it reaches PostgreSQL over a veth pair) with an empty data folder of its own trains
an uploaded dataset and fits the model the API then serves."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import yaml

from hpo.client import Client
from tests.support.databases import POSTGRES_HOST, postgres_database, postgres_or_skip
from tests.support.netns import NetworkNamespace, TcpRelay, netns_unavailable
from tests.support.processes import REPO, Process, free_port
from tests.support.servers import wait_serve_ready
from tests.support.studies import tiny_spec

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
STUDY_TIMEOUT_S = 240
HPO_SERVICES = ("api", "worker")


def compose_command(service: str, **replace: str) -> list[str]:
    """A compose service's command as this interpreter runs it, with ``--flag value`` replaced."""
    args = shlex.split(COMPOSE["services"][service]["command"])
    assert args[0] == "hpo"
    for flag, value in replace.items():
        args[args.index(flag) + 1] = value
    return [sys.executable, "-m", "hpo", *args[1:]]


def compose_env(service: str, database_url: str) -> dict[str, str]:
    env = dict(COMPOSE["services"][service]["environment"])
    assert set(env) == {"HPO_DATABASE_URL"}  # nothing but the database URL
    return {**env, "HPO_DATABASE_URL": database_url}


def test_the_compose_services_share_nothing_but_the_database_url():
    for service in HPO_SERVICES:
        assert "volumes" not in COMPOSE["services"][service], service
        assert "--data-dir" not in COMPOSE["services"][service]["command"], service
    assert set(COMPOSE["volumes"]) == {"pg-data"}  # PostgreSQL's own


def small_npz() -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(60) % 2
    x = rng.normal(size=(60, 8, 2)).astype(np.float32) + y[:, None, None].astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, X=x, y=y)
    return buffer.getvalue(), x


def reaches(namespace: NetworkNamespace | None, host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` opens from inside the namespace."""
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=3).close()"
    args = [sys.executable, "-c", code]
    return subprocess.run(namespace.command(args) if namespace else args, capture_output=True, timeout=30).returncode == 0


@pytest.mark.slow  # two processes start (PyTorch imported), one trial and one refit: ~30 s on 2 busy cores
@pytest.mark.service
@pytest.mark.postgres
def test_a_worker_with_only_the_database_url_trains_an_upload_and_fits_the_served_model(tmp_path):
    why_not = netns_unavailable()
    if why_not and os.environ.get("HPO_REQUIRE_SERVICES") == "1":  # CI runs as root, where it works
        pytest.fail(f"required (HPO_REQUIRE_SERVICES=1) but unavailable: a network namespace: {why_not}")
    content, x = small_npz()
    (tmp_path / "upload.npz").write_bytes(content)
    api_dir, worker_dir = tmp_path / "api", tmp_path / "worker"
    api_dir.mkdir()
    worker_dir.mkdir()  # the worker's own data folder (hpo-data/ inside it) starts empty
    with contextlib.ExitStack() as stack:
        stack.enter_context(postgres_or_skip())
        database_url = stack.enter_context(postgres_database())
        port = free_port()
        api = Process(compose_command("api", **{"--port": str(port)}), tmp_path / "api.log",
                      env=compose_env("api", database_url), cwd=api_dir)
        stack.callback(api.stop)
        namespace = None if why_not else stack.enter_context(NetworkNamespace())
        host = namespace.host_ip if namespace else "127.0.0.1"
        relay = stack.enter_context(TcpRelay(host, host_and_port(POSTGRES_HOST)))
        if namespace:
            assert not reaches(namespace, *host_and_port(POSTGRES_HOST))  # its 127.0.0.1 is its own
            assert reaches(namespace, host, relay.port)
        url = f"http://127.0.0.1:{port}"
        wait_serve_ready(url, api)
        client = stack.enter_context(Client(url))
        dataset = client.upload_dataset(tmp_path / "upload.npz", "classification")
        study = client.submit(tiny_spec(dataset={"id": dataset["id"]}, budget={"n_trials": 1}))

        command = compose_command("worker")
        worker = Process(namespace.command(command) if namespace else command, tmp_path / "worker.log",
                         env=compose_env("worker", database_url.replace(POSTGRES_HOST, f"{host}:{relay.port}")),
                         cwd=worker_dir)
        stack.callback(worker.stop)
        done = client.wait(study["id"], poll_s=0.5, timeout_s=STUDY_TIMEOUT_S)
        assert done["state"] == "completed", worker.output()
        model = client.wait_model(study["id"], poll_s=0.5, timeout_s=STUDY_TIMEOUT_S)  # its own refit
        assert model["state"] == "ready" and model["kind"] == "refit", (model, worker.output())
        assert model["refit"]["auto"] is True
        predicted = client.predict(study["id"], {"x": x[:3]})

    assert len(predicted["labels"]) == 3
    fetched = worker_dir / "hpo-data" / "cache" / hashlib.sha256(content).hexdigest()
    assert fetched.read_bytes() == content  # fetched from the database into its own folder
    if why_not:
        pytest.skip(f"passed, but the worker shared this machine's network: no network namespace ({why_not})")


def host_and_port(host_port: str) -> tuple[str, int]:
    host, port = host_port.rsplit(":", 1)
    return host, int(port)
