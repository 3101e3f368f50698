"""Signed checkpoints: verify with the public key; forged or stale ones fail."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.audit import AuditWriter
from veil.audit.canonical import chain_hash
from veil.audit.checkpoints import KEY_ENV, load_signing_key, make_checkpoint
from veil.audit.verify import verify
from veil.errors import ConfigError

from .conftest import tamper, tool_event

pytestmark = pytest.mark.req("audit:checkpoints")


def write(engine: sa.Engine, n: int, start: int = 0) -> None:
    with AuditWriter(engine) as writer:
        for i in range(start, start + n):
            writer.record_sync(tool_event(i))


def test_key_file_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    key = load_signing_key(tmp_path, env={})
    path = tmp_path / "audit_signing.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_signing_key(tmp_path, env={})
    assert again.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_signing_key(tmp_path, env={})


def test_key_from_environment(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    loaded = load_signing_key(tmp_path, env={KEY_ENV: base64.b64encode(raw).decode()})
    assert loaded.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    assert not (tmp_path / "audit_signing.key").exists()
    with pytest.raises(ConfigError, match=KEY_ENV):
        load_signing_key(tmp_path, env={KEY_ENV: "not base64!"})


def test_checkpoint_verifies_with_the_public_key(fresh_engine: sa.Engine) -> None:
    key = Ed25519PrivateKey.generate()
    write(fresh_engine, 5)
    with fresh_engine.begin() as conn:
        cp = make_checkpoint(conn, key)
    write(fresh_engine, 3, 5)
    with fresh_engine.connect() as conn:
        result = verify(conn, public_key=key.public_key())
        kind = conn.execute(sa.text("SELECT kind FROM audit_events WHERE seq = 6")).scalar_one()
    assert cp.seq == 5 and kind == "audit.checkpoint"
    assert result.ok
    assert [(c.checkpoint.seq, c.ok) for c in result.checkpoints] == [(5, True)]


def test_forged_checkpoint_fails(fresh_engine: sa.Engine) -> None:
    key = Ed25519PrivateKey.generate()
    write(fresh_engine, 4)
    with fresh_engine.begin() as conn:
        cp = make_checkpoint(conn, key)
        conn.execute(
            sa.text(
                "INSERT INTO audit_checkpoints (seq, hash, ts, key_id, public_key, signature) "
                "VALUES (:seq, :hash, now(), :kid, :pub, :sig)"
            ),
            {"seq": 3, "hash": b"\x01" * 32, "kid": cp.key_id, "pub": cp.public_key, "sig": b"\x02" * 64},
        )
    with fresh_engine.connect() as conn:
        result = verify(conn, public_key=key.public_key())
    assert not result.ok
    assert [(c.checkpoint.seq, c.ok) for c in result.checkpoints] == [(3, False), (4, True)]
    assert "signature does not verify" in result.checkpoints[0].note


def test_checkpoint_by_another_key_is_not_trusted(fresh_engine: sa.Engine) -> None:
    write(fresh_engine, 2)
    with fresh_engine.begin() as conn:
        make_checkpoint(conn, Ed25519PrivateKey.generate())
    with fresh_engine.connect() as conn:
        result = verify(conn, public_key=Ed25519PrivateKey.generate().public_key())
    assert not result.ok and "different key" in result.checkpoints[0].note


def test_whole_chain_rewrite_is_caught_by_the_checkpoint(fresh_engine: sa.Engine) -> None:
    """Someone with DB access edits a row and recomputes every later hash and the head."""
    key = Ed25519PrivateKey.generate()
    write(fresh_engine, 6)
    with fresh_engine.begin() as conn:
        make_checkpoint(conn, key)
    tamper(fresh_engine, "UPDATE audit_events SET principal = 'mallory' WHERE seq = 2")
    with fresh_engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM audit_events ORDER BY seq")).mappings().all()
    prev = bytes(32)
    for row in rows:
        digest = chain_hash(prev, row)
        tamper(
            fresh_engine,
            "UPDATE audit_events SET prev_hash = :p, hash = :h WHERE seq = :s",
            p=prev,
            h=digest,
            s=row["seq"],
        )
        prev = digest
    tamper(fresh_engine, "UPDATE audit_chain_head SET hash = :h", h=prev)
    with fresh_engine.connect() as conn:
        result = verify(conn, public_key=key.public_key())
    assert result.problem is None  # the chain itself is consistent again...
    assert not result.ok  # ...but no longer hashes to what was signed
    assert "no longer hashes" in result.checkpoints[0].note


def test_writer_makes_periodic_checkpoints(fresh_engine: sa.Engine) -> None:
    key = Ed25519PrivateKey.generate()
    with AuditWriter(fresh_engine, batch_max_events=1, signing_key=key, checkpoint_every_events=5) as writer:
        for i in range(12):
            writer.record_sync(tool_event(i))
    with fresh_engine.connect() as conn:
        result = verify(conn, public_key=key.public_key())
    assert result.ok
    assert len(result.checkpoints) == 2
