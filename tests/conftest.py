"""Shared fixtures: a fresh database per test, on SQLite and on PostgreSQL.

How the suite stays fast (CI runs everything, ``slow`` tests included, in well under 15 minutes):

- ``make test`` runs ``pytest -n 2 --dist loadfile`` (pytest-xdist, ``tests/support/scheduling.py``):
  each file runs whole on one of two workers, ``tests/browser/`` as one unit, and the files
  holding a ``slow`` or ``browser`` test start first. So a module-scoped fixture is made once,
  and a test may wait on a subprocess while the other worker uses the second core.
- Mark a test ``slow`` when it takes more than ~5 s on a quiet machine (real training, server
  processes, fault injection): its file is then scheduled first.
- Reuse before you start: ``shared_api`` / ``module_database`` (tests/service/conftest.py) for
  tests that leave nothing behind, the browser tests' session-wide ``server``, a module-scoped
  server or fitted model for tests that only read. A new ``hpo serve`` or ``hpo worker`` process
  costs 3-5 s of CPU (it imports PyTorch).
- A test's database starts as a copy of its folder's prepared one (``sqlite_template``,
  ``postgres_template``: tables made once per session, tests/service/conftest.py), not empty:
  migrating an empty database is what tests/service/test_migrations.py tests, once.
- Tests must not share anything across files but the session fixtures here: two files may run
  at the same moment (ports from ``free_port``, databases with unique names, ``tmp_path``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hpo.storage import open_storage
from tests.support import databases, scheduling
from tests.support.databases import postgres_database, postgres_or_skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    scheduling.long_first(items)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist
def pytest_xdist_make_scheduler(config, log):
    return scheduling.make_scheduler(config, log)


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


@pytest.fixture(scope="session")
def sqlite_template() -> Path | None:
    """The SQLite file new test databases are copied from; ``None``: an empty database.

    A test folder may override it with a prepared one (tables already created) to save time.
    """
    return None


@pytest.fixture
def sqlite_url(tmp_path, sqlite_template) -> str:
    """A new SQLite database file in the test's temporary folder (a copy of ``sqlite_template``
    when there is one)."""
    return databases.sqlite_url(tmp_path, template=sqlite_template)


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
