"""API keys in Postgres: created once, stored hashed, revoked and expired keys refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from veil.auth.keys import KEY_RE, create_key, list_keys, revoke_key, verify_key
from veil.errors import AuthError


def _reason(engine, key: str) -> str:
    with pytest.raises(AuthError) as info:
        verify_key(engine, key)
    assert key not in info.value.message
    return info.value.reason


@pytest.mark.req("auth:api-keys")
def test_create_and_verify(engine):
    key_id, key = create_key(engine, "alice", ["support", "admin", "support"], tenant="acme", description="laptop")
    assert KEY_RE.match(key) and key.startswith(f"veil_{key_id}_")
    principal = verify_key(engine, key)
    assert (principal.name, principal.roles, principal.tenant, principal.via) == (
        "alice",
        frozenset({"support", "admin"}),
        "acme",
        "api_key",
    )
    info = next(k for k in list_keys(engine) if k.key_id == key_id)
    assert info.roles == ("admin", "support") and info.description == "laptop"
    assert info.last_used_at is not None


@pytest.mark.req("auth:api-keys")
def test_secret_is_stored_hashed(engine):
    key_id, key = create_key(engine, "bob")
    secret = key.split("_", 2)[2]
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM api_keys WHERE key_id = :k"), {"k": key_id}).mappings().one()
    for value in row.values():
        if isinstance(value, bytes | memoryview | str):
            raw = bytes(value) if not isinstance(value, str) else value.encode()
            assert secret.encode() not in raw
    assert len(bytes(row["key_hash"])) == 32 and len(bytes(row["key_salt"])) == 16


@pytest.mark.req("auth:api-keys")
def test_wrong_unknown_malformed(engine):
    _key_id, key = create_key(engine, "carol")
    wrong_secret = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert _reason(engine, wrong_secret) == "unknown_key"
    assert _reason(engine, f"veil_{'a' * 12}_{'b' * 43}") == "unknown_key"
    assert _reason(engine, "veil_short_secret") == "malformed"


@pytest.mark.req("auth:api-keys")
def test_revoked_key_is_refused_at_once(engine):
    key_id, key = create_key(engine, "dave")
    assert verify_key(engine, key).name == "dave"
    assert revoke_key(engine, key_id) is True
    assert _reason(engine, key) == "revoked"
    assert revoke_key(engine, "nosuchkey123") is False


@pytest.mark.req("auth:api-keys")
def test_expired_key_is_refused(engine):
    _id, key = create_key(engine, "erin", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert _reason(engine, key) == "expired"
    _id, fresh = create_key(engine, "erin", expires_at=datetime.now(UTC) + timedelta(days=1))
    assert verify_key(engine, fresh).name == "erin"
