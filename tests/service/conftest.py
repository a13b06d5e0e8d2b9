"""Fixtures of the service tests: an app on a fresh database (SQLite and PostgreSQL), its
Optuna storage, and a live HTTP server."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
from fastapi.testclient import TestClient  # noqa: E402

from hpo.storage import open_storage  # noqa: E402
from service.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from service_support import LiveServer  # noqa: E402

MAX_UPLOAD_BYTES = 256 * 1024
MAX_BODY_BYTES = 32 * 1024


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def settings(database_url, data_dir) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=str(data_dir),
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_body_bytes=MAX_BODY_BYTES,
        max_page_size=100,
        events_poll_s=0.1,
        events_heartbeat_s=0.5,
    )


@pytest.fixture
def api(settings) -> Iterator[TestClient]:
    """The app (started: migrations applied, storage open) behind a TestClient.

    Server-side exceptions are re-raised in the test, so an unexpected 500 fails loudly.
    """
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def storage(api, database_url):
    """Optuna's storage on the app's database, for writing trials the way a worker does."""
    storage = open_storage(database_url)
    yield storage
    storage.remove_session()
    storage.engine.dispose()


@pytest.fixture
def live_server(settings) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings)) as server:
        yield server
