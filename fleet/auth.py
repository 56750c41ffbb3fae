"""Operator API tokens: random, shown once, stored only as their SHA-256.

Tokens carry 256 random bits, so a fast hash is enough (no password stretching
needed); lookups are by hash, so the plaintext never reaches the database.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time

from sqlalchemy import select

from fleet.db import Database
from fleet.models import ApiToken

log = logging.getLogger(__name__)

TOKEN_PREFIX = "eft_"  # noqa: S105 - a marker, not a secret


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(db: Database, name: str) -> str:
    """Create a token named `name`; return the plaintext (the only time it exists)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.session() as s:
        s.add(ApiToken(name=name[:64], token_sha256=hash_token(token), created_at=time.time()))
    log.info("api token created name=%s", name)
    return token


def check_token(db: Database, token: str) -> str | None:
    """The token's name if it is known and not revoked, else None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    with db.session() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.token_sha256 == hash_token(token)))
        if row is None or row.revoked:
            return None
        return row.name
