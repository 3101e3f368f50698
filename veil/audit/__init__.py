"""Audit trail: typed events, a durable batched writer, a hash chain with signed checkpoints,
monthly partitions with retention, and verification.

The public surface is re-exported here; everything else is internal to the package.
"""

from veil.audit.canonical import digest_args
from veil.audit.events import AuditEvent, Untokenised
from veil.audit.writer import AuditWriter

__all__ = ["AuditEvent", "AuditWriter", "Untokenised", "digest_args"]
