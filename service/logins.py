"""Browser sign-ins, kept on the server: ``/login`` checks a key and stores a login; the
browser's cookie holds only the login's random token (never the API key).

Only the SHA-256 of a token is stored. A login is valid while its key is unrevoked and
until it expires; revoking the key ends every login made with it at once (the next request,
or the next poll of an open event stream, is refused).
"""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from hpo.db.models import ApiKeyRecord, LoginRecord, utcnow
from service.keys import hash_token

TOKEN_BYTES = 32


def start_login(session: Session, key: ApiKeyRecord, lifetime_s: int) -> str:
    """Record a sign-in with ``key`` (and drop expired ones); commits.

    Args:
        session: the service's database session.
        key: the active key that was just checked.
        lifetime_s: seconds until the login expires.

    Returns:
        The login's token, for the cookie (the only place it exists).
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = utcnow()
    session.execute(delete(LoginRecord).where(LoginRecord.expires_at < now))
    session.add(LoginRecord(token_hash=hash_token(token), key_id=key.id, created_at=now,
                            expires_at=now + dt.timedelta(seconds=lifetime_s)))
    session.commit()
    return token


def find_login(session: Session, token: str) -> ApiKeyRecord | None:
    """The active key behind a login token; ``None`` when the login is unknown, ended or
    expired, or its key was revoked."""
    statement = (select(ApiKeyRecord).join(LoginRecord, LoginRecord.key_id == ApiKeyRecord.id)
                 .where(LoginRecord.token_hash == hash_token(token), LoginRecord.expires_at > utcnow(),
                        ApiKeyRecord.revoked_at.is_(None)))
    return session.scalars(statement).first()


def end_login(session: Session, token: str) -> None:
    """Forget a login (signing out); commits."""
    session.execute(delete(LoginRecord).where(LoginRecord.token_hash == hash_token(token)))
    session.commit()

