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
from hpo.settings import Settings  # noqa: E402
from hpo.db import upgrade  # noqa: E402
from tests.support.databases import (  # noqa: E402
    create_postgres_database, drop_postgres_database, postgres_database, postgres_database_url, postgres_or_skip,
    sqlite_url)
from tests.support.servers import LiveServer, make_settings  # noqa: E402


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


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
def module_database(request, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A fresh database (URL) and folder per test module, once on SQLite and once on PostgreSQL."""
    folder = tmp_path_factory.mktemp("shared")
    if request.param == "sqlite":
        yield sqlite_url(folder, template=request.getfixturevalue("sqlite_template")), folder
        return
    template = request.getfixturevalue("postgres_template")
    with postgres_or_skip(), postgres_database(template=template) as url:
        yield url, folder


@pytest.fixture(scope="module")
def shared_api(module_database) -> Iterator[TestClient]:
    """One app per module and database: for tests of refusals, which must leave nothing behind."""
    url, folder = module_database
    with TestClient(create_app(make_settings(url, folder / "data"))) as client:
        yield client


@pytest.fixture
def live_server(settings) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings)) as server:
        yield server


def prepare_tables(url: str) -> None:
    """Create the service's and Optuna's tables, as an app's first start does."""
    upgrade(url)
    storage = open_storage(url)
    storage.remove_session()
    storage.engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """A SQLite file with Optuna's and the service's tables made once; each test's database is
    a copy (an app's first start on an empty file runs every migration)."""
    folder = tmp_path_factory.mktemp("sqlite-template")
    prepare_tables(sqlite_url(folder, "template.db"))
    return folder / "template.db"


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A PostgreSQL database with Optuna's and the service's tables made once; each test's
    database is a copy (much faster than creating the tables every time)."""
    with postgres_or_skip():
        name = create_postgres_database(prefix="hpo_test_template")
    try:
        prepare_tables(postgres_database_url(name))
        yield name
    finally:
        drop_postgres_database(name)
