"""Who is calling: the identity every access decision and audit event is about."""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``via`` records how we know who it is, for the audit trail."""

    name: str
    roles: frozenset[str] = field(default_factory=frozenset)
    tenant: str | None = None
    via: Literal["stdio", "api_key", "jwt", "config", "anonymous"] = "config"
    credential: str | None = None  # the API key id or JWT id it authenticated with (binds sessions)

    @classmethod
    def from_os_user(cls, roles: frozenset[str] = frozenset(), tenant: str | None = None) -> Principal:
        return cls(name=getpass.getuser(), roles=roles, tenant=tenant, via="stdio")
