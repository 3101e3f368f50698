"""The runner: every MCP message, from the agent or from an upstream, takes the same stages.

The order is declared here and nowhere else (docs/architecture.md draws it)::

    from the agent:    authenticate ▸ bind_session ▸ admit ▸ access ▸ untokenise ▸ audit_intent
                       ▸ exchange (the upstream) ▸ tokenise ▸ audit_outcome
    from an upstream:  authenticate ▸ bind_session ▸ admit ▸ tokenise ▸ exchange (the agent)
                       ▸ untokenise (the agent's answer) ▸ audit_intent ▸ audit_outcome

What differs between methods (which upstream, which values are outbound, how the result is
shaped) lives in one ``Handler`` per method (``veil.proxy.methods``); the stages are the same
for all. A stage that refuses sets ``flow.error``; the remaining stages are skipped except the
audit, so every refusal is recorded with its stage and reason, then raised to the caller.
"""

from __future__ import annotations

import logging
import traceback
from typing import TYPE_CHECKING, Any

import anyio

from veil.audit import events as ev
from veil.errors import VeilError
from veil.ops.observe import observe
from veil.policies.model import EXECUTE_UPSTREAM, Decision
from veil.proxy import stages as st
from veil.proxy.flow import Flow, Target

if TYPE_CHECKING:
    from veil.principal import Principal
    from veil.proxy.gateway import Gateway

log = logging.getLogger(__name__)

AGENT_STAGES: tuple[st.Stage, ...] = (
    st.Authenticate(),
    st.BindSession(),
    st.Admit(),
    st.Access(),
    st.Untokenise(),
    st.AuditIntent(),
    st.Exchange(),
    st.Tokenise(),
    st.AuditOutcome(),
)

UPSTREAM_STAGES: tuple[st.Stage, ...] = (
    st.Authenticate(),
    st.BindSession(),
    st.Admit(),
    st.Tokenise(),
    st.Exchange(),
    st.Untokenise(),
    st.AuditIntent(),
    st.AuditOutcome(),
)


class Runner:
    """Runs flows through the stages; one per gateway, shared by every front and the sandbox."""

    def __init__(self, gateway: Gateway) -> None:
        from veil.proxy.methods import HANDLERS

        self.gw = gateway
        self.handlers = HANDLERS

    def handler_for(self, method: str, name: str | None = None) -> Any:
        """The handler of a method; ``tools/call`` of Veil's own tools has its own."""
        if name is not None and f"{method}:{name}" in self.handlers:
            return self.handlers[f"{method}:{name}"]
        return self.handlers.get(method) or self.handlers["*"]

    async def run(self, flow: Flow) -> Flow:
        """Run the flow through its stages; never raises (the outcome is on the flow)."""
        if flow.handler is None:
            flow.handler = self.handler_for(flow.method, getattr(flow.params, "name", None))
        order = AGENT_STAGES if flow.origin == "agent" else UPSTREAM_STAGES
        watch = observe(self.gw, flow)  # stage times, counts, spans (veil/ops/observe.py)
        try:
            for stage in order:
                if flow.refused and not stage.always:
                    continue
                if stage.always:  # shielded: a cancelled caller must not skip the audit
                    with anyio.CancelScope(shield=True), watch.stage(stage.name):
                        await self._step(stage, flow)
                else:
                    with watch.stage(stage.name):
                        await self._step(stage, flow)
            watch.done()
        finally:
            if flow.session is not None and flow.origin == "agent" and flow.is_request:
                flow.session.leave_request(flow.ctx)
        return flow

    async def _step(self, stage: st.Stage, flow: Flow) -> None:
        try:
            await stage(self, flow)
        except VeilError as exc:
            flow.refuse(stage.name, exc)
        except Exception as exc:  # a bug: audited as an internal error, the agent learns nothing more
            # Exception messages may quote data: log where it failed and the type, never the message.
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            log.error(
                "internal error in stage %s of %s: %s at %s:%s",
                stage.name,
                flow.method,
                type(exc).__name__,
                frame.filename,
                frame.lineno,
            )
            flow.refuse(stage.name, VeilError(f"internal error in Veil during {flow.method}; see Veil's log"))
            del exc

    async def call(self, flow: Flow) -> Any:
        """Run the flow and return its result, or raise its refusal (after it was audited)."""
        await self.run(flow)
        if flow.error is not None:
            raise flow.error
        return flow.result

    # -- services for stages and handlers -----------------------------------------------------

    def decide(self, principal: Principal, target: Target) -> Decision:
        policy = self.gw.policy
        if target.kind == "veil":
            return policy.decide_access(principal, EXECUTE_UPSTREAM, target.name or "")
        if target.kind == "resource":
            return policy.decide_resource(principal, target.upstream or "", target.name or "", target.action)
        if target.kind == "prompt":
            return policy.decide_prompt(principal, target.upstream or "", target.name or "", target.action)
        return policy.decide_access(principal, target.upstream or "", target.name or "")

    @staticmethod
    def describe(target: Target) -> str:
        if target.kind == "resource":
            return f"the resource {target.name} of {target.upstream}"
        if target.kind == "veil":
            return f"{target.name}"
        return f"{target.upstream}__{target.name}"

    def event(self, flow: Flow, kind: str, **fields: Any) -> ev.AuditEvent:
        """An audit event about the flow: codes, tokens and digests, never payload text."""
        fields.setdefault("upstream", flow.target.upstream)
        fields.setdefault("tool", flow.target.name if flow.target.kind != "resource" else None)
        fields.setdefault("args_digest", flow.args_digest)
        fields.setdefault("entities", dict(flow.entities))
        fields.setdefault("tokens", list(flow.tokens))
        fields.setdefault("untokenised", list(flow.untokenised))
        fields.setdefault("decision", flow.decision)
        fields.setdefault("rule", flow.rule)
        if flow.session is not None:
            return flow.session.event(kind, **fields)
        p = flow.principal
        return ev.AuditEvent(
            kind=kind,
            principal=p.name if p else None,
            roles=sorted(p.roles) if p else [],
            tenant=p.tenant if p else None,
            policy_version=self.gw.policy.version,
            **fields,
        )

    async def record(self, event: ev.AuditEvent) -> None:
        await self.gw.record(event)

    @staticmethod
    def log_audit_failure(flow: Flow, exc: BaseException) -> None:
        log.error("could not audit %s (%s); the request is refused", flow.method, type(exc).__name__)
