"""Optuna RDB storage from a URL: SQLite tuned for several processes, PostgreSQL via psycopg 3."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

DEFAULT_STORAGE = "sqlite:///hpo.db"
SQLITE_BUSY_TIMEOUT_S = 60


def normalize_url(url: str) -> str:
    """Pick the psycopg 3 driver for plain ``postgresql://`` URLs (SQLAlchemy defaults to psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _prepare_sqlite(url: str) -> None:
    """Create the file's folder and switch it to WAL (persistent in the file) so readers
    never block the writer."""
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if not path or path == ":memory:":
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def open_storage(
    url: str = DEFAULT_STORAGE,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int = 3,
) -> RDBStorage:
    """Open (and create the tables of) an Optuna RDB storage.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path.db`` or ``postgresql://user@host/db``.
        heartbeat_interval: seconds between a running trial's heartbeats; ``None`` disables
            heartbeats (and stale-trial recovery).
        grace_period: seconds without a heartbeat after which a running trial is failed and
            a copy of it is queued again (defaults to Optuna's 2 x interval).
        max_retry: how many times one stale trial is re-queued.

    Returns:
        The storage.
    """
    url = normalize_url(url)
    engine_kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        _prepare_sqlite(url)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    heartbeat: dict = {}
    if heartbeat_interval:
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
