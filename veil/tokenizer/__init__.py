"""Detection, reversible typed tokens and the encrypted vault (see docs/tokens.md).

The gateway uses ``Tokenizer(engine, keyring, detection, tokens)``: ``tokenize`` on every
upstream result, ``untokenize`` on the arguments of every upstream call. Compliance code uses
``Vault.find_entries`` / ``Vault.erase_entries``.
"""

from __future__ import annotations

from veil.tokenizer.keyring import Keyring
from veil.tokenizer.settings import CustomPattern, DenyList, DetectionSettings, TokenSettings
from veil.tokenizer.tokenizer import Tokenizer
from veil.tokenizer.tokens import TOKEN_RE, Scope, Tokenized, TokenRef, Untokenized
from veil.tokenizer.vault import Vault, VaultEntryInfo

__all__ = [
    "TOKEN_RE",
    "CustomPattern",
    "DenyList",
    "DetectionSettings",
    "Keyring",
    "Scope",
    "TokenRef",
    "TokenSettings",
    "Tokenized",
    "Tokenizer",
    "Untokenized",
    "Vault",
    "VaultEntryInfo",
]
