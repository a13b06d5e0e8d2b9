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
from service.db import upgrade  # noqa: E402
from postgres_support import create_postgres_database, drop_postgres_database, postgres_database_url  # noqa: E402
from service_support import MAX_BODY_BYTES, MAX_UPLOAD_BYTES, LiveServer  # noqa: E402


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


def make_settings(database_url: str, data_dir: Path) -> Settings:
    """Small limits (so 413s and zip bombs are cheap to provoke) and fast event polling."""
    return Settings(
        database_url=database_url,
        data_dir=str(data_dir),
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_body_bytes=MAX_BODY_BYTES,
        max_unpacked_bytes=16 * MAX_UPLOAD_BYTES,
        max_page_size=100,
        events_poll_s=0.1,
        events_heartbeat_s=0.5,
    )


@pytest.fixture
def settings(database_url, data_dir) -> Settings:
    return make_settings(database_url, data_dir)


@pytest.fixture
def api(settings) -> Iterator[TestClient]:
    """The app (started: migrations applied, storage open) behind a TestClient.

    Server-side exceptions are re-raised in the test, so an unexpected 500 fails loudly.
    """
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_api(request, tmp_path_factory) -> Iterator[TestClient]:
    """One app per module and database: for tests of refusals, which must leave nothing behind."""
    folder = tmp_path_factory.mktemp("shared")
    database = None
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'hpo.db'}"
    else:
        database = create_postgres_database(template=request.getfixturevalue("postgres_template"))
        url = postgres_database_url(database)
    try:
        with TestClient(create_app(make_settings(url, folder / "data"))) as client:
            yield client
    finally:
        if database:
            drop_postgres_database(database)


@pytest.fixture
def storage(database_url):
    """Optuna's storage on the app's database, for writing trials the way a worker does."""
    storage = open_storage(database_url)
    yield storage
    storage.remove_session()
    storage.engine.dispose()


@pytest.fixture
def live_server(settings) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A PostgreSQL database with Optuna's and the service's tables made once; each test's
    database is a copy (much faster than creating the tables every time)."""
    name = create_postgres_database(prefix="hpo_test_template")
    try:
        url = postgres_database_url(name)
        upgrade(url)
        storage = open_storage(url)
        storage.engine.dispose()
        yield name
    finally:
        drop_postgres_database(name)
