"""The project's own tables: engine, sessions and migrations.

The ``hpo_*`` tables (studies submitted over HTTP, datasets, API keys, and whatever the
engine's workers need next) share the database with Optuna's; Alembic keeps its own
version table (``hpo_alembic_version``) and looks only at ``hpo_*`` tables, so the two
schemas evolve independently. They live in the engine package so that workers can use
them without importing ``service``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from hpo.storage import SQLITE_BUSY_TIMEOUT_S, normalize_url
from hpo.storage import _prepare_sqlite as prepare_sqlite  # one place knows how to set SQLite up
from hpo.db.models import TABLE_PREFIX

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "hpo_alembic_version"
PG_CONNECT_TIMEOUT_S = 10
# Any constant works; it only has to be the same in every process that migrates.
_PG_MIGRATION_LOCK = 0x68706F  # "hpo"


def make_engine(database_url: str) -> Engine:
    """An engine for ``database_url``: SQLite in WAL mode with a busy timeout, or PostgreSQL via psycopg 3.

    Args:
        database_url: ``sqlite:///path.db`` or ``postgresql://user@host/db``.

    Returns:
        The engine (connections are checked before use).
    """
    url = normalize_url(database_url)
    if url.startswith("sqlite"):
        prepare_sqlite(url)  # WAL (readers never block the workers' writes), folder created
        return create_engine(
            url,
            pool_pre_ping=True,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        )
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S})


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """Alembic's filter: the service's tables only (Optuna migrates its own)."""
    if type_ == "table":
        return bool(name) and name.startswith(TABLE_PREFIX)
    return True


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config() -> Config:
    """Alembic's configuration, built in code (no ``alembic.ini`` needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_table", VERSION_TABLE)
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Create or upgrade the service's tables (what ``hpo db upgrade`` runs).

    Safe to run from several processes at once on PostgreSQL (an advisory lock serializes
    them); leaves Optuna's tables alone.

    Args:
        database_url: the database URL.
        revision: the Alembic revision to reach.
    """
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()
