"""What the console needs from the rest of Veil, gathered once: the database, the audit writer its
own events go through, the authenticator (the gateway's identities), the vault (subject requests),
the policy file in force and the keys that check the audit chain.

Built either from a config file (``veil console``: a process of its own, with its own audit
writer on the same hash chain) or from a running gateway (mounted under ``/console`` by
``veil serve --http``: the gateway's engine, writer, policy store and vault are shared, so an
erasure also empties the gateway's token cache at once).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.audit.writer import AuditWriter
from veil.auth import Authenticator
from veil.config import VeilConfig
from veil.errors import ConfigError

CONSOLE_ROLES = frozenset({"admin", "security", "compliance"})
ROLLOUT_ROLES = frozenset({"security"})


@dataclass
class ConsoleServices:
    engine: sa.Engine
    audit: AuditWriter
    authenticator: Authenticator
    policy_path: Path
    data_dir: Path
    checkpoint_file: Path | None = None
    public_key: Ed25519PublicKey | None = None
    vault: Any = None  # veil.tokenizer.vault.Vault, or None when no master key exists
    vault_problem: str = ""
    upstreams: list[str] = field(default_factory=list)
    policy_version: Callable[[], str | None] = lambda: None  # the version in force, for audit events
    secure_cookies: bool = True
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()

    @classmethod
    def from_config(cls, config: VeilConfig) -> ConsoleServices:
        """A standalone console: its own engine and audit writer on the gateway's database."""
        from veil import db
        from veil.audit.checkpoints import checkpoint_file, load_signing_key

        url = db.resolve_url(config.database_url, config.data_dir)
        engine = db.create_engine(url)
        writer = AuditWriter(engine, batch_max_delay_ms=config.audit.batch_max_delay_ms)
        writer.start()
        try:
            public_key = load_signing_key(config.data_dir, create=False).public_key()
        except ConfigError:
            public_key = None
        vault, problem = _vault(engine, config)
        services = cls(
            engine=engine,
            audit=writer,
            authenticator=Authenticator(engine, config.auth),
            policy_path=Path(config.policy).resolve(),
            data_dir=config.data_dir,
            checkpoint_file=checkpoint_file(config.data_dir, config.audit.checkpoint_file),
            public_key=public_key,
            vault=vault,
            vault_problem=problem,
            upstreams=sorted(config.upstreams),
        )
        services.policy_version = services._file_version
        services.closers += [engine.dispose, writer.close]
        return services

    @classmethod
    def from_gateway(cls, gateway: Any) -> ConsoleServices:
        """The console inside ``veil serve --http``: everything shared with the running gateway."""
        from veil.audit.checkpoints import checkpoint_file, load_signing_key

        cfg = gateway.config
        try:
            public_key = load_signing_key(cfg.data_dir, create=False).public_key()
        except ConfigError:
            public_key = None
        return cls(
            engine=gateway.engine,
            audit=gateway.audit,
            authenticator=Authenticator(gateway.engine, cfg.auth),
            policy_path=Path(gateway.policies.path).resolve(),
            data_dir=cfg.data_dir,
            checkpoint_file=checkpoint_file(cfg.data_dir, cfg.audit.checkpoint_file),
            public_key=public_key,
            vault=gateway.tokenizer.vault,
            upstreams=sorted(cfg.upstreams),
            policy_version=lambda: gateway.policy.version,
        )

    def _file_version(self) -> str | None:
        import hashlib

        try:
            return hashlib.sha256(self.policy_path.read_bytes()).hexdigest()
        except OSError:
            return None


def _vault(engine: sa.Engine, config: VeilConfig) -> tuple[Any, str]:
    """The vault, searched by the gateway's keyed HMAC; never a fresh key (it would match nothing)."""
    from veil.tokenizer.keyring import Keyring
    from veil.tokenizer.vault import Vault

    key_file = config.key_file or config.data_dir / "master.key"
    if not os.environ.get("VEIL_MASTER_KEY") and not Path(key_file).exists():
        return None, (
            f"no master key in {config.data_dir} (and VEIL_MASTER_KEY is not set): start the console with the "
            "gateway's config so the vault can be searched"
        )
    return Vault(engine, Keyring.load(config.data_dir, config.key_file)), ""
