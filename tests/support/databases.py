"""Databases for the tests and the benchmarks: a SQLite file in a folder, throwaway PostgreSQL
databases with unique names (trust auth at 127.0.0.1:5432, user postgres; others create theirs at
the same time), and a private PostgreSQL server for tests that stop it."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.services import services_unavailable

POSTGRES_HOST = "127.0.0.1:5432"
POSTGRES_ADMIN_URL = f"postgresql://postgres@{POSTGRES_HOST}/postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server answers at ``POSTGRES_HOST`` (or its driver is missing)."""


@contextlib.contextmanager
def postgres_or_skip() -> Iterator[None]:
    """Turn a ``PostgresUnavailable`` raised inside into ``services_unavailable`` (for fixtures)."""
    try:
        yield
    except PostgresUnavailable as exc:
        services_unavailable(f"PostgreSQL: {exc}")


def sqlite_url(folder: Path | str, name: str = "hpo.db", template: Path | str | None = None) -> str:
    """The URL of a SQLite database file ``name`` in ``folder`` (made on first use, or now as a
    copy of the file ``template``)."""
    path = Path(folder) / name
    if template is not None:
        shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def postgres_admin():
    """A connection (autocommit) to the server's maintenance database.

    Raises:
        PostgresUnavailable: no server, or no driver.
    """
    try:
        import psycopg

        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001 (ImportError, OperationalError: either way there is none)
        lines = str(exc).strip().splitlines()
        raise PostgresUnavailable(lines[0] if lines else type(exc).__name__) from exc


def create_postgres_database(prefix: str = "hpo_test", template: str | None = None) -> str:
    """Create a database with a unique name.

    Args:
        prefix: the name's start; a random suffix follows.
        template: a database to copy (``None``: PostgreSQL's empty default).

    Returns:
        The new database's name.

    Raises:
        PostgresUnavailable: no server.
    """
    name = f"{prefix}_{secrets.token_hex(6)}"
    with postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def drop_postgres_database(name: str) -> None:
    """Drop a database, ending the connections still open on it."""
    with postgres_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_database_url(name: str) -> str:
    """The URL of database ``name`` on the server at ``POSTGRES_HOST``."""
    return f"postgresql://postgres@{POSTGRES_HOST}/{name}"


@contextlib.contextmanager
def postgres_database(prefix: str = "hpo_test", template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database for the ``with`` block, dropped afterwards (connections and all).

    Args:
        prefix: the name's start (``create_postgres_database``).
        template: a database to copy.

    Yields:
        Its URL.

    Raises:
        PostgresUnavailable: no server.
    """
    name = create_postgres_database(prefix, template)
    try:
        yield postgres_database_url(name)
    finally:
        drop_postgres_database(name)


class PrivatePostgres:
    """A PostgreSQL server of a test's own (initdb + pg_ctl on a temporary folder and a free
    port), for tests that stop or restart the server under a running study.

    As root, the server runs as the ``postgres`` user (initdb refuses root). Skips when the
    PostgreSQL binaries are missing.
    """

    def __init__(self, port: int, settings: str = "-c fsync=off"):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
        if not found or not found[-1]:
            services_unavailable("PostgreSQL's initdb and pg_ctl are not installed")
        self.bin = os.path.dirname(found[-1])
        self.port = port
        self.settings = settings  # more ``-c name=value`` for the server (the tests' default: no fsync)
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            import pwd

            try:
                pwd.getpwnam("postgres")
            except KeyError:
                services_unavailable("PostgreSQL: running as root without a postgres user: cannot start a private server")
            if not shutil.which("runuser"):
                services_unavailable("PostgreSQL: running as root without runuser: cannot start a private server")
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self.root = tempfile.mkdtemp(prefix="hpo-pg-")  # not under pytest's root-only tmp folder
        if self._as_postgres:
            shutil.chown(self.root, user="postgres")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_postgres, *args], check=True, capture_output=True, timeout=120)

    def _pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 {self.settings}"
        self._run(f"{self.bin}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", options, *args)

    def start(self) -> PrivatePostgres:
        self._run(f"{self.bin}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        self._pg_ctl("start")
        return self

    def restart(self) -> None:
        """A fast restart: open connections are cut, in-flight transactions rolled back."""
        self._pg_ctl("-m", "fast", "restart")

    def outage(self, down_s: float) -> None:
        """A restart that keeps the server down ``down_s`` seconds (long enough to be noticed)."""
        self._pg_ctl("-m", "fast", "stop")
        time.sleep(down_s)
        self._pg_ctl("start")

    def stop(self) -> None:
        try:
            self._pg_ctl("-m", "immediate", "stop")
        except Exception:  # noqa: BLE001 (already stopped, or never started)
            pass
        shutil.rmtree(self.root, ignore_errors=True)
