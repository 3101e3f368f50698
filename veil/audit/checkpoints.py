"""Signed checkpoints: an Ed25519 signature over (seq, chain hash at seq, time).

Why: anyone with direct database access can rewrite the whole chain and recompute every hash
(hashing needs no secret). A checkpoint's signature needs the private key, which lives in the
data directory (or the environment), not in the database. A verifier holding only the public
key (``veil audit export-public-key``) can therefore trust every event up to a checkpoint's seq
once the chain up to it recomputes to the signed hash.

Signed message (documented in docs/audit.md)::

    b"veil-audit-checkpoint/v1\\n" + JCS({"hash": <hex of chain hash>, "seq": <seq>, "ts": <UTC ts>})

Every checkpoint is also appended to a file outside the database (``DATA_DIR/audit-checkpoints.jsonl``
or ``audit.checkpoint_file``): whoever owns the tables can delete checkpoint rows together with the
tail they cover, but not lines of a file on another host, so ``veil audit verify`` notices a chain
that ends before the last checkpoint it knows of.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veil.audit import events as ev
from veil.audit.canonical import format_ts, jcs
from veil.audit.chain import append, lock_head, prepare
from veil.errors import ConfigError, VeilError

KEY_FILE = "audit_signing.key"
CHECKPOINT_FILE = "audit-checkpoints.jsonl"
KEY_ENV = "VEIL_AUDIT_SIGNING_KEY"  # base64 of the 32-byte raw Ed25519 private key
MESSAGE_PREFIX = b"veil-audit-checkpoint/v1\n"


@dataclass(frozen=True)
class Checkpoint:
    id: int
    seq: int
    hash: bytes
    ts: datetime
    key_id: str
    public_key: bytes
    signature: bytes


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey | bytes) -> str:
    raw = public if isinstance(public, bytes) else raw_public(public)
    return hashlib.sha256(raw).hexdigest()[:16]


def message(seq: int, chain_hash: bytes, ts: datetime) -> bytes:
    return MESSAGE_PREFIX + jcs({"hash": chain_hash.hex(), "seq": seq, "ts": format_ts(ts)})


def load_signing_key(data_dir: Path, *, create: bool = True, env: Mapping[str, str] | None = None) -> Ed25519PrivateKey:
    """The key from ``VEIL_AUDIT_SIGNING_KEY`` or ``DATA_DIR/audit_signing.key`` (PEM, mode 0600).

    A missing file is created (when ``create``) with a fresh key; a file readable by group or
    others is refused, since whoever reads it can forge checkpoints.
    """
    env = os.environ if env is None else env
    if env.get(KEY_ENV):
        try:
            raw = base64.b64decode(env[KEY_ENV], validate=True)
            return Ed25519PrivateKey.from_private_bytes(raw)
        except ValueError:
            raise ConfigError(
                f"{KEY_ENV} must be the base64 of a 32-byte Ed25519 private key; generate one with "
                "`veil audit checkpoint --init-key` or unset it to use the key file"
            ) from None
    path = Path(data_dir) / KEY_FILE
    if not path.exists():
        if not create:
            raise ConfigError(f"{path}: audit signing key not found; run `veil audit checkpoint` once to create it")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path}: audit signing key is readable by others (mode {mode:o}); run chmod 600 {path}")
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError:
        raise ConfigError(f"{path}: not a PEM private key; move it away to have a new one created") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"{path}: expected an Ed25519 private key, found {type(loaded).__name__}")
    return loaded


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read an Ed25519 public key in PEM form ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: expected an Ed25519 public key, found {type(key).__name__}")
    return key


def make_checkpoint(conn: sa.Connection, key: Ed25519PrivateKey, file: Path | None = None) -> Checkpoint:
    """Sign the current chain head and store it, in ``conn``'s transaction (holding the chain lock),
    and append it to ``file`` when given.

    An ``audit.checkpoint`` event is appended right after, so the trail itself shows when
    checkpoints were made. The file line is written before the commit; that is safe because the
    head it signs was committed earlier (a rolled-back checkpoint leaves a line that still holds).
    """
    head, now = lock_head(conn)
    if head.seq == 0:
        raise VeilError("the audit trail is empty: nothing to checkpoint yet")
    ts = max(now, head.ts)
    pub = raw_public(key.public_key())
    signature = key.sign(message(head.seq, head.hash, ts))
    kid = key_id(pub)
    cid = conn.execute(
        sa.text(
            "INSERT INTO audit_checkpoints (seq, hash, ts, key_id, public_key, signature) "
            "VALUES (:seq, :hash, :ts, :kid, :pub, :sig) RETURNING id"
        ),
        {"seq": head.seq, "hash": head.hash, "ts": ts, "kid": kid, "pub": pub, "sig": signature},
    ).scalar_one()
    event = ev.AuditEvent(
        kind=ev.CHECKPOINT,
        principal="veil",
        id=uuid.uuid4(),
        detail={"checkpoint_id": cid, "seq": head.seq, "hash": head.hash.hex(), "key_id": kid},
    )
    append(conn, [prepare(event)])
    checkpoint = Checkpoint(cid, head.seq, head.hash, ts, kid, pub, signature)
    if file is not None:
        append_to_file(file, checkpoint)
    return checkpoint


def checkpoint_file(data_dir: Path, configured: Path | None = None) -> Path:
    """``audit.checkpoint_file`` when configured, else ``DATA_DIR/audit-checkpoints.jsonl``."""
    return Path(configured) if configured is not None else Path(data_dir) / CHECKPOINT_FILE


def append_to_file(path: Path, cp: Checkpoint) -> None:
    """One JSON line per checkpoint, appended and flushed to disk (O_APPEND: concurrent writers
    never interleave a line)."""
    line = {
        "seq": cp.seq,
        "hash": cp.hash.hex(),
        "ts": format_ts(cp.ts),
        "key_id": cp.key_id,
        "signature": base64.b64encode(cp.signature).decode(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, json.dumps(line, sort_keys=True).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_file(path: Path) -> list[Checkpoint]:
    """The checkpoints of a checkpoint file (``id`` is the line number), in file order."""
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            raw = json.loads(text)
            out.append(
                Checkpoint(
                    number,
                    int(raw["seq"]),
                    bytes.fromhex(raw["hash"]),
                    datetime.fromisoformat(raw["ts"].replace("Z", "+00:00")),
                    str(raw["key_id"]),
                    b"",
                    base64.b64decode(raw["signature"], validate=True),
                )
            )
        except (ValueError, KeyError, TypeError):
            raise VeilError(
                f"{path}:{number}: not a checkpoint line (seq, hash, ts, key_id, signature); "
                "the file was damaged or edited"
            ) from None
    return out


def checkpoints(conn: sa.Connection, lo_seq: int | None = None, hi_seq: int | None = None) -> list[Checkpoint]:
    rows = conn.execute(
        sa.text(
            "SELECT id, seq, hash, ts, key_id, public_key, signature FROM audit_checkpoints "
            "WHERE (CAST(:lo AS bigint) IS NULL OR seq >= :lo) AND (CAST(:hi AS bigint) IS NULL OR seq <= :hi) "
            "ORDER BY seq, id"
        ),
        {"lo": lo_seq, "hi": hi_seq},
    ).all()
    return [
        Checkpoint(r.id, r.seq, bytes(r.hash), r.ts, r.key_id, bytes(r.public_key), bytes(r.signature)) for r in rows
    ]


def signature_valid(cp: Checkpoint, public: Ed25519PublicKey) -> bool:
    """True when ``public`` signed exactly (seq, hash, ts) of ``cp``."""
    try:
        public.verify(cp.signature, message(cp.seq, cp.hash, cp.ts))
    except InvalidSignature:
        return False
    return True
