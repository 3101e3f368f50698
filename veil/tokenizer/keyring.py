"""The master key(s) that protect the vault.

Each vault entry has its own random data key; the master key only wraps those data keys (so
erasing one entry's wrapped key and ciphertext crypto-shreds it) and, through HKDF, yields the
HMAC key used to find entries by value. Several master keys can be loaded for rotation: the
current one encrypts, every loaded one decrypts entries tagged with its key id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.errors import ConfigError

log = logging.getLogger(__name__)

ENV_VAR = "VEIL_MASTER_KEY"
KEY_BYTES = 32
_HMAC_INFO = b"veil vault value-hmac v1"


def _decode(text: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where} is not valid base64; it must hold base64 of {KEY_BYTES} random bytes") from None
    if len(raw) != KEY_BYTES:
        raise ConfigError(f"{where} decodes to {len(raw)} bytes; it must be base64 of exactly {KEY_BYTES} bytes")
    return raw


def key_id_of(key: bytes) -> str:
    """A short public fingerprint that names a key in the vault without revealing it."""
    return hashlib.sha256(b"veil key id\x00" + key).hexdigest()[:16]


@dataclass(frozen=True)
class Keyring:
    """``current`` encrypts new entries; ``keys`` (id -> key) decrypts old and new ones."""

    current_id: str
    keys: dict[str, bytes]
    hmac_key: bytes

    @classmethod
    def from_keys(cls, current: bytes, *older: bytes) -> Keyring:
        """Build from raw keys; the HMAC key derives from ``current``'s family (the first key ever
        used is not tracked, so rotation keeps the HMAC key of the *oldest* key passed: pass
        older keys in age order, oldest last, and the HMAC stays stable across rotations)."""
        keys = {key_id_of(k): k for k in (current, *older)}
        root = older[-1] if older else current
        hmac_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HMAC_INFO).derive(root)
        return cls(current_id=key_id_of(current), keys=keys, hmac_key=hmac_key)

    @classmethod
    def load(cls, data_dir: Path | str, key_file: Path | str | None = None) -> Keyring:
        """Read ``VEIL_MASTER_KEY`` or ``key_file``; without either, create ``data_dir/master.key``.

        A key file may hold several lines: the first is the current key, later lines are retired
        keys kept for decryption (oldest last). ``VEIL_MASTER_KEY`` may likewise hold several keys
        separated by commas."""
        env = os.environ.get(ENV_VAR)
        if env:
            keys = [_decode(part, f"${ENV_VAR} (key {i + 1})") for i, part in enumerate(env.split(",")) if part.strip()]
            return cls.from_keys(*keys)
        if key_file is not None:
            path = Path(key_file)
            try:
                lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the master key file {path}: {exc.strerror}. "
                    f"Create it with base64 of {KEY_BYTES} random bytes or set ${ENV_VAR}."
                ) from None
            if not lines:
                raise ConfigError(f"the master key file {path} is empty; it must hold base64 of {KEY_BYTES} bytes")
            return cls.from_keys(*[_decode(ln, f"{path} line {i + 1}") for i, ln in enumerate(lines)])
        path = Path(data_dir) / "master.key"
        if path.exists():
            return cls.load(data_dir, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = os.urandom(KEY_BYTES)
        # Write a private temp file, then link it into place: the key file appears complete or not
        # at all, and a second process starting at the same moment keeps the first one's key.
        tmp = path.with_name(f".master.key.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(key).decode() + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return cls.load(data_dir, path)
        finally:
            tmp.unlink()
        os.chmod(path, 0o600)
        log.warning(
            "no master key configured (%s unset, no key_file): created a new one at %s with mode 0600. "
            "Back it up: the vault cannot be decrypted without it.",
            ENV_VAR,
            path,
        )
        return cls.from_keys(key)
