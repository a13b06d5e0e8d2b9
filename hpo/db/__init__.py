"""The project's own tables: engine, sessions, migrations, and the lock around schema creation.

The ``hpo_*`` tables (studies submitted over HTTP, datasets, API keys, and whatever the
engine's workers need next) share the database with Optuna's; Alembic keeps its own
version table (``hpo_alembic_version``) and looks only at ``hpo_*`` tables, so the two
schemas evolve independently. They live in the engine package so that workers can use
them without importing ``service``.

Every process that may create tables (``hpo serve``, ``hpo run``, ``hpo worker``, a
reader) does so inside :func:`schema_lock`, so any number of them may start at the same
moment on a brand-new database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock
from sqlalchemy import Engine, NullPool, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from hpo.db.models import TABLE_PREFIX

if TYPE_CHECKING:  # Alembic (and Mako, Pygments, SQLAlchemy's PostgreSQL dialect) is imported by migrations only
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "hpo_alembic_version"
SQLITE_BUSY_TIMEOUT_S = 60
PG_CONNECT_TIMEOUT_S = 10
# Every PostgreSQL session stores and compares times in UTC, whatever the server's default.
PG_CONNECT_ARGS = {"connect_timeout": PG_CONNECT_TIMEOUT_S, "options": "-c TimeZone=UTC"}
SCHEMA_LOCK_TIMEOUT_S = 300
# Any constant works; it only has to be the same in every process that creates tables.
_PG_SCHEMA_LOCK = 0x68706F  # "hpo"


def normalize_url(url: str) -> str:
    """Pick the psycopg 3 driver for plain ``postgresql://`` URLs (SQLAlchemy defaults to psycopg2).

    Args:
        url: a SQLAlchemy URL.

    Returns:
        The URL, with ``postgresql+psycopg://`` for PostgreSQL.
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL; None for an in-memory database."""
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return None if not path or path == ":memory:" else path


def prepare_sqlite(url: str) -> None:
    """Create the file's folder and switch it to WAL (persistent in the file) so readers
    never block the writer.

    Args:
        url: a ``sqlite:///`` URL.
    """
    path = _sqlite_path(url)
    if path is None:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


@contextmanager
def schema_lock(database_url: str, timeout_s: float = SCHEMA_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold a database-wide lock while tables are created or migrated.

    Creating tables is check-then-create (SQLAlchemy's ``create_all``, Optuna's version
    rows, Alembic's stamp), so two processes starting together on a new database both
    try to create them and one fails. PostgreSQL: a session-level advisory lock (scoped to
    the database). SQLite: a file lock beside the database file (``<file>.lock``; SQLite's
    own write lock cannot be held here, as the creation runs on other connections).

    Args:
        database_url: the database URL.
        timeout_s: how long to wait for another process's schema work.

    Raises:
        filelock.Timeout: SQLite only, the lock was not released within ``timeout_s``.
    """
    url = normalize_url(database_url)
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if path is None:
            yield
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path + ".lock", timeout=timeout_s):
            yield
        return
    if not url.startswith("postgresql"):
        yield
        return
    engine = create_engine(url, poolclass=NullPool, connect_args=PG_CONNECT_ARGS)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            timeout_ms = f"{int(timeout_s * 1000)}"
            connection.execute(text("SELECT set_config('lock_timeout', :ms, false)"), {"ms": timeout_ms})
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_SCHEMA_LOCK})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_SCHEMA_LOCK})
    finally:
        engine.dispose()


def make_engine(database_url: str, *, pool_size: int = 5, max_overflow: int = 10,
                pool_timeout_s: float = 30.0) -> Engine:
    """An engine for ``database_url``: SQLite in WAL mode with a busy timeout, or PostgreSQL via psycopg 3.

    Args:
        database_url: ``sqlite:///path.db`` or ``postgresql://user@host/db``.
        pool_size: connections kept open.
        max_overflow: connections opened beyond ``pool_size`` while all are in use.
        pool_timeout_s: seconds to wait for a free connection before ``sqlalchemy.exc.TimeoutError``.

    Returns:
        The engine (connections are checked before use).
    """
    url = normalize_url(database_url)
    pool = {"pool_pre_ping": True, "pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout_s}
    if url.startswith("sqlite"):
        prepare_sqlite(url)  # WAL (readers never block the workers' writes), folder created
        return create_engine(url, **pool, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})
    return create_engine(url, **pool, connect_args=PG_CONNECT_ARGS)


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """Alembic's filter: the project's tables only (Optuna migrates its own)."""
    if type_ == "table":
        return bool(name) and name.startswith(TABLE_PREFIX)
    return True


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config() -> Config:
    """Alembic's configuration, built in code (no ``alembic.ini`` needed).

    Alembic is imported here, not with this module: every worker and ``hpo run`` imports
    this module, and only migrations need Alembic (~0.3 s of CPU per process start).
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_table", VERSION_TABLE)
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Create or upgrade the project's tables (what ``hpo db upgrade`` runs).

    Safe to run from any number of processes at once (:func:`schema_lock`); leaves
    Optuna's tables alone.

    Args:
        database_url: the database URL.
        revision: the Alembic revision to reach.
    """
    from alembic import command

    with schema_lock(database_url):
        engine = make_engine(database_url)
        try:
            with engine.begin() as connection:
                config = alembic_config()
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
        finally:
            engine.dispose()
