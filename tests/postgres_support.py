"""Throwaway PostgreSQL databases for tests (trust auth at 127.0.0.1:5432, user postgres)."""

from __future__ import annotations

import os
import secrets

import pytest

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES_HOST = "127.0.0.1:5432"


def _postgres_unavailable(reason: str) -> None:
    """Skip, unless the run promised PostgreSQL (``HPO_REQUIRE_SERVICES=1``): then fail."""
    if os.environ.get("HPO_REQUIRE_SERVICES") == "1":
        pytest.fail(f"PostgreSQL is required (HPO_REQUIRE_SERVICES=1) but not reachable at {POSTGRES_HOST}: {reason}")
    pytest.skip(f"PostgreSQL not reachable at {POSTGRES_HOST}")


def postgres_admin():
    """A connection to the server's maintenance database.

    Skips the calling test when there is no server, or fails it when the run promised one
    (``HPO_REQUIRE_SERVICES=1``).
    """
    import psycopg

    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _postgres_unavailable(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def create_postgres_database(prefix: str = "hpo_test", template: str | None = None) -> str:
    """Create a database with a random name (a copy of ``template`` when given); returns the name."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def drop_postgres_database(name: str) -> None:
    """Drop a database, ending the connections still open on it."""
    with postgres_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_database_url(name: str) -> str:
    return f"postgresql://postgres@{POSTGRES_HOST}/{name}"
