"""The flow: one MCP message travelling through the runner, filled in stage by stage.

A stage never skips the ones after it by raising: it sets ``flow.error`` (with its own name in
``flow.stage``) and later stages see the refusal. The audit stages run for every flow, so a
refusal at any stage is recorded with the stage and the reason (mitmproxy's ``flow.error``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from veil.audit import events as ev
from veil.errors import AccessDenied, AuditUnavailable, AuthError, FlowDenied, TokenError, VeilError

if TYPE_CHECKING:
    from veil.principal import Principal
    from veil.proxy.session import AgentSession

Origin = Literal["agent", "upstream"]

# A refusal is "denied" (policy, identity, token) rather than "error" (something broke).
_DENIED = (AccessDenied, AuthError, FlowDenied, TokenError)


@dataclass
class Target:
    """What a message is about, for access rules and the audit row.

    ``kind`` is ``tool`` | ``resource`` | ``prompt`` | ``veil`` (Veil's own tools) or ``none``
    (ping, listings: access applies to each listed item instead); ``action`` says what is done
    with it (``call``, ``read``, ``subscribe``, ``get``, ``complete``…)."""

    kind: str = "none"
    upstream: str | None = None
    name: str | None = None  # tool or prompt name (without prefix) or resource URI
    action: str = ""


@dataclass
class Flow:
    method: str  # the MCP method, e.g. "tools/call" or "notifications/message"
    origin: Origin
    params: Any = None  # the typed params as received (tokens, never raw values, from the agent)
    ctx: Any = None  # the SDK's request context (agent flows)
    handler: Any = None  # the method's Handler (veil.proxy.methods)
    binding: Any = None  # the transport's Binding (agent flows): who is asking, which session
    via: str = "direct"  # "direct" | "code" (a call made by execute_code)
    principal: Principal | None = None
    session: AgentSession | None = None
    target: Target = field(default_factory=Target)
    outbound: Any = None  # what leaves for an upstream, with real values (never audited or logged)
    inbound: Any = None  # what came back from the other side, before tokenisation
    result: Any = None  # what the agent (or, for upstream flows, the upstream) gets
    error: VeilError | None = None
    stage: str | None = None  # the stage that refused or failed
    outcome: str = ev.OK
    decision: str | None = None
    rule: str | None = None
    args_digest: str | None = None
    entities: dict[str, int] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    untokenised: list[ev.Untokenised] = field(default_factory=list)
    intent: uuid.UUID | None = None  # id of the durable intent event, once written
    detail: dict[str, Any] = field(default_factory=dict)  # codes, counts, digests: never text
    started: float = field(default_factory=time.perf_counter)

    event_kind: str | None = None  # set by a handler when one method audits as several kinds

    @property
    def kind(self) -> str:
        """The audit event kind of the outcome row."""
        return self.event_kind or self.handler.kind

    @property
    def is_request(self) -> bool:
        """An agent request (it has an id and a response stream), not a notification."""
        return self.ctx is not None and self.ctx.request_id is not None

    @property
    def refused(self) -> bool:
        return self.error is not None

    def refuse(self, stage: str, error: VeilError, outcome: str | None = None) -> None:
        """Record why the flow stops here; the first refusal wins."""
        if self.error is not None:
            return
        self.error = error
        self.stage = stage
        self.outcome = outcome or (ev.DENIED if isinstance(error, _DENIED) else ev.ERROR)
        if isinstance(error, AccessDenied | FlowDenied) and error.rule:
            self.decision, self.rule = "deny", error.rule
        if isinstance(error, AuditUnavailable):
            self.outcome = ev.ERROR

    def error_detail(self) -> dict[str, Any]:
        """The refusal as codes for the audit row: error class, JSON-RPC code, stage."""
        if self.error is None:
            return {}
        out: dict[str, Any] = {"error": type(self.error).__name__, "code": self.error.code, "stage": self.stage}
        reason = getattr(self.error, "reason", None)
        if isinstance(reason, str):
            out["reason"] = reason  # AuthError's stable reason code
        if isinstance(self.error, FlowDenied) and self.error.entity_type:
            out["entity_type"] = self.error.entity_type
        return out
