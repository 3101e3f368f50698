"""The audit event: one typed record per access, with a stable ``kind`` name.

Events never carry raw PII, nor any text from an upstream or the agent: values appear only as
tokens (pseudonyms scoped to ``scope``), arguments and URIs only as digests, refusals only as
error class, JSON-RPC code and the runner stage that refused (``detail.error``, ``detail.code``,
``detail.stage``). Kinds are stable strings that reports and ``veil audit`` rely on; add new
ones here, never rename.

Every flow that sends something out of Veil writes an ``INTENT`` event (outcome ``pending``)
and makes it durable before anything is sent; its outcome event names it in ``detail.intent``.
An intent without an outcome is an unfinished call (Veil stopped in between).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Stable event kinds.
SESSION_OPEN = "session.open"
SESSION_CLOSE = "session.close"
INITIALIZE = "session.initialize"
INTENT = "call.intent"  # durable before anything leaves Veil; see detail.method and detail.for
REQUEST = "request"  # any other agent request (server/discover, unknown methods)
PING = "ping"
TOOLS_LIST = "tools.list"
TOOL_CALL = "tool.call"  # a call to an upstream tool (direct or from execute_code)
RESOURCES_LIST = "resources.list"  # resources/list and resources/templates/list
RESOURCE_READ = "resource.read"
RESOURCE_SUBSCRIBE = "resource.subscribe"  # resources/subscribe and unsubscribe
PROMPTS_LIST = "prompts.list"
PROMPT_GET = "prompt.get"
COMPLETION = "completion.complete"
SET_LEVEL = "logging.set_level"
NOTIFICATION = "notification.relay"  # upstream log/progress/sampling/elicitation relayed to the agent
AGENT_NOTIFICATION = "notification.agent"  # from the agent: initialized, cancelled, progress, roots/list_changed
CODE_EXECUTE = "code.execute"
AUTH_FAILED = "auth.failed"
POLICY_LOAD = "policy.load"
POLICY_REJECTED = "policy.rejected"
SUBJECT_FIND = "subject.find"
SUBJECT_ERASE = "subject.erase"
RETENTION_DROP = "retention.drop"
CHECKPOINT = "audit.checkpoint"
CONSOLE_LOGIN = "console.login"  # a browser logged in to (or out of) the web console
CONSOLE_VIEW = "console.view"  # a console page seen: page name, filter names, query digest
CONSOLE_EXPORT = "console.export"  # audit events or a report downloaded from the console
POLICY_ROLLOUT = "policy.rollout"  # a policy written from the console (who, old and new sha256)

# Outcomes.
OK = "ok"
DENIED = "denied"
ERROR = "error"
PENDING = "pending"  # an intent


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
    detail: dict[str, Any] = field(default_factory=dict)  # codes, counts, digests: never free text
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
