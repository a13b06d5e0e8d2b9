"""Shared fixtures: a fresh database per test, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES_HOST = "127.0.0.1:5432"


def _postgres_unavailable(reason: str) -> None:
    """Skip, unless the run promised PostgreSQL (``HPO_REQUIRE_SERVICES=1``): then fail."""
    if os.environ.get("HPO_REQUIRE_SERVICES") == "1":
        pytest.fail(f"PostgreSQL is required (HPO_REQUIRE_SERVICES=1) but not reachable at {POSTGRES_HOST}: {reason}")
    pytest.skip(f"PostgreSQL not reachable at {POSTGRES_HOST}")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped afterwards, connections and all)."""
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _postgres_unavailable(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    name = f"hpo_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@{POSTGRES_HOST}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A new SQLite database file in the test's temporary folder."""
    return f"sqlite:///{tmp_path / 'hpo.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request) -> str:
    """A fresh database, once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")
