"""The audit event: one typed record per access, with a stable ``kind`` name.

Events never carry raw PII: values appear only as tokens (pseudonyms scoped to ``scope``),
arguments only as a digest, and messages only after tokenisation. Kinds are stable strings that
reports and ``veil audit`` rely on; add new ones here, never rename.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Stable event kinds.
SESSION_OPEN = "session.open"
SESSION_CLOSE = "session.close"
TOOLS_LIST = "tools.list"
TOOL_CALL = "tool.call"  # a call to an upstream tool (direct or from execute_code)
RESOURCE_READ = "resource.read"
PROMPT_GET = "prompt.get"
NOTIFICATION = "notification.relay"  # upstream log/progress/sampling/elicitation relayed to the agent
CODE_EXECUTE = "code.execute"
AUTH_FAILED = "auth.failed"
POLICY_LOAD = "policy.load"
POLICY_REJECTED = "policy.rejected"
SUBJECT_FIND = "subject.find"
SUBJECT_ERASE = "subject.erase"
RETENTION_DROP = "retention.drop"
CHECKPOINT = "audit.checkpoint"

# Outcomes.
OK = "ok"
DENIED = "denied"
ERROR = "error"


@dataclass
class Untokenised:
    """One token turned back into a real value for an outbound call (the value itself is never here)."""

    token: str
    entity_type: str
    destination: str  # "upstream__tool" plus ":arg.path" when known
    rule: str


@dataclass
class AuditEvent:
    kind: str
    outcome: str = OK
    principal: str | None = None
    roles: list[str] = field(default_factory=list)
    tenant: str | None = None
    session_id: str | None = None
    scope: str | None = None
    upstream: str | None = None
    tool: str | None = None
    args_digest: str | None = None  # sha256 of the canonical JSON of the (tokenised) arguments
    entities: dict[str, int] = field(default_factory=dict)  # entity type -> count tokenised in the result
    tokens: list[str] = field(default_factory=list)  # tokens that appeared in the result
    untokenised: list[Untokenised] = field(default_factory=list)
    decision: str | None = None  # "allow" | "deny"
    rule: str | None = None
    duration_ms: float | None = None
    policy_version: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # tokenised, PII-free extra facts
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
