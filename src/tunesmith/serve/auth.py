"""API keys: `tunesmith keys create NAME` (printed once, stored as its sha256) or TUNESMITH_API_KEYS.

TUNESMITH_API_KEYS is a comma-separated list of `owner:key` pairs; a bare `key` belongs to owner
"default". The owner is what the key's jobs, files and fine-tuned models belong to.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from tunesmith.serve.db import ApiKey
from tunesmith.serve.errors import APIError


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def env_keys(value: str | None = None) -> dict[str, str]:
    """sha256 -> owner, from TUNESMITH_API_KEYS."""
    value = os.environ.get("TUNESMITH_API_KEYS", "") if value is None else value
    keys = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        owner, _, key = item.rpartition(":")
        keys[hash_key(key)] = owner or "default"
    return keys


def create_key(session: Session, owner: str) -> str:
    key = "sk-ts-" + secrets.token_urlsafe(32)
    session.add(ApiKey(owner=owner, sha256=hash_key(key)))
    session.commit()
    return key


def owner_of(session: Session, key: str) -> str | None:
    digest = hash_key(key)
    for known, owner in env_keys().items():
        if hmac.compare_digest(known, digest):
            return owner
    row = session.scalar(select(ApiKey).where(ApiKey.sha256 == digest))
    return row.owner if row else None


def current_owner(request: Request) -> str:
    """FastAPI dependency: the owner of the request's bearer key, or a 401 in OpenAI's error body."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(
            401, "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.", code="invalid_api_key"
        )
    with request.app.state.sessions() as session:
        owner = owner_of(session, key.strip())
    if owner is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return owner
