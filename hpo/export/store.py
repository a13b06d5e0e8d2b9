"""The final models' tables (defined in ``hpo.db.models``), beside Optuna's in the same database.

- ``hpo_model_archives``: a study's model archives, one row per kind: ``ensemble`` (the
  best trial's fold models, written by the worker that trained them) and ``refit`` (written
  by the worker that ran a refit job). The archive bytes live in the row, so that a worker
  on any machine writes them where the API serves them: the database is the only shared state.
- ``hpo_model_jobs``: refit jobs, one row per study, claimed with one conditional UPDATE.
- ``hpo_auto_refits``: the refit each study queued for itself when it ended, one row per study.

Workers create them on first use (:func:`ensure_tables`); Alembic migrations 0003 and 0007
create the same tables (0003 also moves the jobs that older versions kept in study user
attributes).
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from hpo.db import schema_lock
from hpo.db.models import auto_refits, model_archives, model_jobs

# A rank part that is missing or not finite (stored as a number both databases compare): ranks worst.
NO_LOSS = 1e300
_ready: set[str] = set()
_ready_lock = threading.Lock()


def utcnow() -> dt.datetime:
    """Now, as the naive UTC these tables store."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def iso(moment: dt.datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 with its offset."""
    return None if moment is None else moment.replace(tzinfo=dt.UTC).isoformat(timespec="milliseconds")


def ensure_tables(engine: sa.Engine) -> None:
    """Create the model tables when missing (once per process and database), under the
    schema lock that every process creating tables holds (``hpo.db.schema_lock``)."""
    key = engine.url.render_as_string(hide_password=False)
    if key in _ready:
        return
    with _ready_lock:
        if key in _ready:
            return
        with schema_lock(key):
            model_archives.metadata.create_all(engine, tables=[model_archives, model_jobs, auto_refits], checkfirst=True)
        _ready.add(key)


def upsert(connection: sa.Connection, table: sa.Table, values: dict[str, Any], where: Any = None) -> int:
    """Insert ``values``, or update the row with the same primary key (only where ``where``
    holds, ``excluded`` naming the new values): one statement. Returns the rows written."""
    insert = (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(table)
    statement = insert.values(**values)
    keys = [c.name for c in table.primary_key]
    statement = statement.on_conflict_do_update(
        index_elements=keys,
        set_={name: statement.excluded[name] for name in values if name not in keys},
        where=None if where is None else where(statement.excluded),
    ).returning(table.c[keys[0]])
    # Counted from RETURNING: a DO UPDATE whose WHERE is false may still report a rowcount of 1 (psycopg).
    return len(connection.execute(statement).all())


def insert_if_absent(connection: sa.Connection, table: sa.Table, values: dict[str, Any]) -> bool:
    """Insert ``values`` unless a row with the same primary key exists: one statement; of
    several connections racing to insert the same key, exactly one does. Returns whether it did."""
    insert = (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(table)
    statement = insert.values(**values).on_conflict_do_nothing().returning(table.primary_key.columns[0])
    return bool(connection.execute(statement).all())
