"""Shared fixtures: a fresh database per test, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hpo.storage import open_storage
from tests.support import databases
from tests.support.databases import postgres_database, postgres_or_skip


@pytest.fixture(scope="session")
def postgres_template() -> str | None:
    """The database new test databases are copied from; ``None``: PostgreSQL's empty default.

    A test folder may override it with a prepared one (tables already created) to save time.
    """
    return None


@pytest.fixture
def postgres_url(postgres_template) -> Iterator[str]:
    """A new PostgreSQL database (dropped afterwards, connections and all)."""
    with postgres_or_skip(), postgres_database(template=postgres_template) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A new SQLite database file in the test's temporary folder."""
    return databases.sqlite_url(tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request) -> str:
    """A fresh database, once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def storage(database_url):
    """Optuna's storage (``hpo.storage.open_storage``) on the test's database, for writing
    trials the way a worker does."""
    storage = open_storage(database_url)
    yield storage
    storage.remove_session()
    storage.engine.dispose()


@pytest.fixture
def dataset_store(sqlite_url, tmp_path):
    """Uploaded datasets (``hpo.data.DatasetStore``) in a migrated SQLite database, cached
    under ``tmp_path / "data"``."""
    from hpo.data import DatasetStore
    from hpo.db import make_engine, upgrade

    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    yield DatasetStore(engine, tmp_path / "data")
    engine.dispose()
