"""API keys: created once, shown once, stored as a salted HMAC, revocable at any time.

Format ``veil_<key_id>_<secret>``: ``key_id`` (12 lowercase base32 characters) finds the row,
``secret`` (43 URL-safe characters, 256 bits) is checked against ``HMAC-SHA256(salt, secret)``
with a constant-time comparison. Revocation and expiry are checked on every request, so a
revoked key stops working at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from veil.auth.errors import EXPIRED, MALFORMED, REVOKED, UNKNOWN_KEY, auth_error
from veil.principal import Principal

PREFIX = "veil_"
KEY_RE = re.compile(r"^veil_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ApiKeyInfo:
    """A key's row without its secret or hash: what ``veil keys list`` shows."""

    key_id: str
    principal: str
    roles: tuple[str, ...]
    tenant: str | None
    description: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


def _digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode("ascii"), hashlib.sha256).digest()


def looks_like_key(credential: str) -> bool:
    return credential.startswith(PREFIX)


def create_key(
    engine: sa.Engine,
    principal: str,
    roles: list[str] | tuple[str, ...] = (),
    *,
    tenant: str | None = None,
    expires_at: datetime | None = None,
    description: str | None = None,
) -> tuple[str, str]:
    """Store a new key and return ``(key_id, key)``; the key is never retrievable again."""
    if not principal:
        raise ValueError("an API key needs a principal name")
    key_id = base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()[:12]
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO api_keys (key_id, key_salt, key_hash, principal, roles, tenant, description, expires_at)"
                " VALUES (:key_id, :salt, :hash, :principal, :roles, :tenant, :description, :expires_at)"
            ),
            {
                "key_id": key_id,
                "salt": salt,
                "hash": _digest(salt, secret),
                "principal": principal,
                "roles": sorted(set(roles)),
                "tenant": tenant,
                "description": description,
                "expires_at": expires_at,
            },
        )
    return key_id, f"{PREFIX}{key_id}_{secret}"


def list_keys(engine: sa.Engine) -> list[ApiKeyInfo]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT key_id, principal, roles, tenant, description, created_at, expires_at, revoked_at,"
                " last_used_at FROM api_keys ORDER BY created_at, key_id"
            )
        ).all()
    return [ApiKeyInfo(r[0], r[1], tuple(r[2]), *r[3:]) for r in rows]


def revoke_key(engine: sa.Engine, key_id: str) -> bool:
    """Revoke a key; False when no such key exists (revoking twice keeps the first time)."""
    with engine.begin() as conn:
        found = conn.execute(sa.text("SELECT 1 FROM api_keys WHERE key_id = :k"), {"k": key_id}).first()
        conn.execute(
            sa.text("UPDATE api_keys SET revoked_at = now() WHERE key_id = :k AND revoked_at IS NULL"), {"k": key_id}
        )
    return found is not None


def verify_key(engine: sa.Engine, credential: str, *, now: datetime | None = None) -> Principal:
    """The principal a key stands for, or ``AuthError`` (reason: malformed, unknown_key, revoked, expired)."""
    m = KEY_RE.match(credential)
    if m is None:
        raise auth_error(
            MALFORMED, "malformed API key: expected veil_<key id>_<secret> as created by `veil keys create`"
        )
    key_id, secret = m.groups()
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT key_salt, key_hash, principal, roles, tenant, expires_at, revoked_at,"
                " last_used_at < now() - interval '60 seconds' OR last_used_at IS NULL"
                " FROM api_keys WHERE key_id = :k"
            ),
            {"k": key_id},
        ).first()
    # Compare even when the row is missing, so timing does not tell which key ids exist.
    salt, stored = (bytes(row[0]), bytes(row[1])) if row else (b"\0" * 16, b"\0" * 32)
    if not hmac.compare_digest(_digest(salt, secret), stored) or row is None:
        raise auth_error(UNKNOWN_KEY, "unknown API key: check the key, or create one with `veil keys create`")
    _salt, _hash, principal, roles, tenant, expires_at, revoked_at, stale = row
    if revoked_at is not None:
        raise auth_error(REVOKED, f"API key {key_id} was revoked: ask for a new key")
    if expires_at is not None and expires_at <= (now or datetime.now(UTC)):
        raise auth_error(EXPIRED, f"API key {key_id} has expired: ask for a new key")
    if stale:  # a write at most once a minute per key, not one per request
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE api_keys SET last_used_at = now() WHERE key_id = :k"), {"k": key_id})
    return Principal(name=principal, roles=frozenset(roles), tenant=tenant, via="api_key", credential=f"key:{key_id}")
