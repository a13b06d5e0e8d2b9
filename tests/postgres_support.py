"""Throwaway PostgreSQL databases for tests (trust auth at 127.0.0.1:5432, user postgres)."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time

import pytest

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES_HOST = "127.0.0.1:5432"


def _postgres_unavailable(reason: str) -> None:
    """Skip, unless the run promised PostgreSQL (``HPO_REQUIRE_SERVICES=1``): then fail."""
    if os.environ.get("HPO_REQUIRE_SERVICES") == "1":
        pytest.fail(f"PostgreSQL is required (HPO_REQUIRE_SERVICES=1) but unavailable: {reason}")
    pytest.skip(f"PostgreSQL unavailable: {reason}")


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


class PrivatePostgres:
    """A PostgreSQL server of a test's own (initdb + pg_ctl on a temporary folder and a free
    port), for tests that stop or restart the server under a running study.

    As root, the server runs as the ``postgres`` user (initdb refuses root). Skips when the
    PostgreSQL binaries are missing.
    """

    def __init__(self, port: int):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
        if not found or not found[-1]:
            _postgres_unavailable("initdb and pg_ctl are not installed")
        self.bin = os.path.dirname(found[-1])
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            import pwd

            try:
                pwd.getpwnam("postgres")
            except KeyError:
                _postgres_unavailable("running as root without a postgres user: cannot start a private server")
            if not shutil.which("runuser"):
                _postgres_unavailable("running as root without runuser: cannot start a private server")
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self.root = tempfile.mkdtemp(prefix="hpo-pg-")  # not under pytest's root-only tmp folder
        if self._as_postgres:
            shutil.chown(self.root, user="postgres")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_postgres, *args], check=True, capture_output=True, timeout=120)

    def _pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
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
