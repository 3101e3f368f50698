"""Envelope encryption of vault values and the keyed HMAC that finds them.

Per entry: a random 256-bit data key encrypts the value with AES-GCM; the associated data binds
the scope, token and entity type, so a row copied onto another token, scope or type fails to
decrypt. The data key is wrapped (AES-GCM) by the master key named by its key id. Erasing an
entry means dropping its wrapped key and ciphertext: nothing can bring the value back.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.errors import TokenError
from veil.tokenizer.keyring import Keyring


def _ad(scope: str, token: str, entity_type: str) -> bytes:
    return "\x1f".join(("veil-vault-v1", scope, token, entity_type)).encode()


class EntryCrypto:
    """Seals and opens vault values with a keyring (thread-safe: no mutable state)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._wrappers = {kid: AESGCM(key) for kid, key in keyring.keys.items()}

    def value_hmac(self, normalised: str) -> bytes:
        """HMAC-SHA256 of a normalised value; deliberately without the scope."""
        return hmac.new(self.keyring.hmac_key, normalised.encode(), hashlib.sha256).digest()

    def seal(self, scope: str, token: str, entity_type: str, value: str) -> tuple[str, bytes, bytes, bytes]:
        """(key id, wrapped data key, nonce, ciphertext) for a new entry."""
        kid = self.keyring.current_id
        dek = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        ad = _ad(scope, token, entity_type)
        ciphertext = AESGCM(dek).encrypt(nonce, value.encode(), ad)
        wrap_nonce = os.urandom(12)
        wrapped = wrap_nonce + self._wrappers[kid].encrypt(wrap_nonce, dek, b"dek\x1f" + kid.encode() + ad)
        return kid, wrapped, nonce, ciphertext

    def open(self, scope: str, token: str, entity_type: str, kid: str, wrapped: bytes, nonce: bytes, ct: bytes) -> str:
        """The value, or TokenError naming the token (never the value) when it cannot be had."""
        wrapper = self._wrappers.get(kid)
        if wrapper is None:
            raise TokenError(
                f"token {token} was encrypted with master key id {kid}, which is not loaded; "
                "add that key to VEIL_MASTER_KEY or the key file (older keys after the current one)"
            )
        ad = _ad(scope, token, entity_type)
        try:
            dek = wrapper.decrypt(wrapped[:12], wrapped[12:], b"dek\x1f" + kid.encode() + ad)
            return AESGCM(dek).decrypt(nonce, ct, ad).decode()
        except InvalidTag:
            raise TokenError(
                f"the vault entry for token {token} failed its integrity check (the row was altered, or "
                "the master key is wrong); it cannot be used. Restore the vault from a backup."
            ) from None
