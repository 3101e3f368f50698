"""Detection, reversible typed tokens and the encrypted vault (see docs/tokens.md).

The gateway uses ``Tokenizer(engine, keyring, detection, tokens)``: ``tokenize`` on every
upstream result, ``untokenize`` on the arguments of every upstream call. Compliance code uses
``Vault.find_entries`` / ``Vault.erase_entries``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from veil.tokenizer.settings import CustomPattern, DenyList, DetectionSettings, TokenSettings
from veil.tokenizer.tokens import (
    TOKEN_RE,
    Deadline,
    Scope,
    Tokenized,
    TokenizeMode,
    TokenRef,
    Untokenized,
    WouldBlock,
)

if TYPE_CHECKING:
    from veil.tokenizer.keyring import Keyring
    from veil.tokenizer.tokenizer import Tokenizer
    from veil.tokenizer.vault import Vault, VaultEntryInfo

# Loaded on first use: importing veil.tokenizer.settings (the policy loader, `veil policy lint`)
# must not pay for Presidio and spaCy.
_LAZY = {
    "Keyring": "veil.tokenizer.keyring",
    "Tokenizer": "veil.tokenizer.tokenizer",
    "Vault": "veil.tokenizer.vault",
    "VaultEntryInfo": "veil.tokenizer.vault",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'veil.tokenizer' has no attribute {name!r}")


__all__ = [
    "TOKEN_RE",
    "CustomPattern",
    "Deadline",
    "DenyList",
    "DetectionSettings",
    "Keyring",
    "Scope",
    "TokenRef",
    "TokenSettings",
    "TokenizeMode",
    "Tokenized",
    "Tokenizer",
    "Untokenized",
    "Vault",
    "VaultEntryInfo",
    "WouldBlock",
]
