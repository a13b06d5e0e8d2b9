"""API keys: made by ``hpo keys create``, sent as ``Authorization: Bearer <token>``.

A token is ``hpo_<id>_<secret>``: ``id`` is public (listed, revoked by, logged), ``secret``
is 256 random bits. Only the SHA-256 of the whole token is stored, so a copy of the
database gives nobody a usable key; a token is found by its id and its hash compared in
constant time. A key's ``name`` is the owner of what it creates.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, delete, inspect, select
from sqlalchemy.orm import Session

from hpo.storage import normalize_url
from hpo.db import make_engine, make_sessionmaker, upgrade
from hpo.db.models import ApiKeyRecord, LoginRecord, utcnow
from service.views import record_time

TOKEN_PREFIX = "hpo"
ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 8
SECRET_BYTES = 32
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_TOKEN = re.compile(rf"^{TOKEN_PREFIX}_([a-z0-9]{{{ID_LENGTH}}})_([A-Za-z0-9_-]{{16,128}})$")
# Compared against when a token names no key, so that both answers take the same time.
_NO_KEY_HASH = hashlib.sha256(b"no such key").hexdigest()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    """Raises: ValueError naming the accepted pattern."""
    if not NAME_PATTERN.match(name or ""):
        raise ValueError(
            f"--name: {name!r} is not a key name; use 1 to 64 letters, digits or . _ @ - "
            "(starting with a letter or digit)"
        )
    return name


# ---- what the HTTP side asks, once per request ---------------------------------------------


def keys_exist(session: Session) -> bool:
    """Whether any key was ever created (revoked ones count: revoking the last key locks the
    service rather than opening it)."""
    return session.scalar(select(ApiKeyRecord.id).limit(1)) is not None


def find_key(session: Session, token: str) -> ApiKeyRecord | None:
    """The active key of ``token``, or ``None`` for a malformed, unknown or revoked token."""
    match = _TOKEN.match(token or "")
    record = session.get(ApiKeyRecord, match.group(1)) if match else None
    expected = record.key_hash if record is not None else _NO_KEY_HASH
    if not hmac.compare_digest(expected, hash_token(token or "")) or record is None:
        return None
    return None if record.revoked_at is not None else record


# ---- what ``hpo keys`` does ---------------------------------------------------------------------


@contextmanager
def _session(database_url: str) -> Iterator[Session]:
    upgrade(database_url)  # `hpo keys create` may be the first command run on a new database
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


def create_key(database_url: str, name: str, *, admin: bool = False) -> tuple[ApiKeyRecord, str]:
    """Create a key.

    Args:
        database_url: the service's database.
        name: the owner recorded on the studies and datasets the key creates.
        admin: whether the key sees and manages every owner's studies and datasets.

    Returns:
        The stored key and its token (the only time the token exists outside the caller).

    Raises:
        ValueError: for a bad name.
    """
    check_name(name)
    token_id = "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))
    token = f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    record = ApiKeyRecord(id=token_id, name=name, key_hash=hash_token(token), admin=admin, created_at=utcnow())
    with _session(database_url) as session:
        session.add(record)
        session.commit()
    return record, token


def list_keys(database_url: str) -> list[ApiKeyRecord]:
    """Every key, revoked ones included, oldest first."""
    with _session(database_url) as session:
        return list(session.scalars(select(ApiKeyRecord).order_by(ApiKeyRecord.created_at, ApiKeyRecord.id)))


def revoke_key(database_url: str, key_id: str) -> ApiKeyRecord:
    """Revoke a key at once, and end the browser logins made with it (its requests are
    refused from the next one on; its open event streams close at their next poll).

    Raises:
        KeyError: no key has this id.
    """
    with _session(database_url) as session:
        record = session.get(ApiKeyRecord, key_id)
        if record is None:
            raise KeyError(f"no API key with id {key_id!r}; `hpo keys list` shows them")
        if record.revoked_at is None:
            record.revoked_at = utcnow()
        session.execute(delete(LoginRecord).where(LoginRecord.key_id == key_id))
        session.commit()
        return record


def active_key_count(database_url: str) -> int:
    """How many unrevoked keys the database holds, without creating or migrating anything
    (``hpo serve`` asks before it touches the database)."""
    url = normalize_url(database_url)
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if not path or path == ":memory:" or not Path(path).is_file():
            return 0
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(ApiKeyRecord.__tablename__):
            return 0
        with Session(engine) as session:
            return len(session.scalars(select(ApiKeyRecord.id).where(ApiKeyRecord.revoked_at.is_(None))).all())
    finally:
        engine.dispose()


def key_view(record: ApiKeyRecord) -> dict[str, object]:
    """A key as ``hpo keys list`` prints it (never its hash)."""
    return {
        "id": record.id,
        "name": record.name,
        "admin": record.admin,
        "created_at": record_time(record.created_at),
        "revoked_at": record_time(record.revoked_at),
    }
