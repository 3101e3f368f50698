"""The runner's stages: small units, each doing one thing to a ``Flow``.

A stage is an object with a ``name``, an ``always`` flag (audit stages run even after a refusal)
and ``async __call__(runner, flow)``. It reads and writes the flow, and talks to the rest of Veil
only through the runner's narrow services (``runner.gw.policy``, ``runner.tokenizer``,
``runner.record``) and the method's ``Handler`` (``veil.proxy.methods``). A stage that refuses
raises a ``VeilError``; the runner turns it into ``flow.refuse(stage.name, error)``.

The order the stages run in is declared in one place: ``veil.proxy.runner``.
"""

from __future__ import annotations

import functools
import json
import time
from typing import TYPE_CHECKING, Any, Protocol

from veil.audit import digest_args
from veil.audit import events as ev
from veil.errors import AccessDenied, AuthError, FlowDenied, InvalidArguments, TokenizeBudgetExceeded
from veil.proxy.flow import Flow
from veil.proxy.pipeline import SANDBOX

if TYPE_CHECKING:
    from veil.proxy.runner import Runner


class Stage(Protocol):
    name: str
    always: bool

    async def __call__(self, runner: Runner, flow: Flow) -> None: ...


class Authenticate:
    """Who is asking. Agent flows: the transport's binding says (HTTP requests were authenticated,
    and refusals audited, before the MCP layer); upstream flows and calls from execute_code
    belong to the session they arrived on."""

    name = "authenticate"
    always = False

    async def __call__(self, runner: Runner, flow: Flow) -> None:
        if flow.principal is not None:
            return
        if flow.session is not None:
            flow.principal = flow.session.principal
            return
        if flow.binding is None:
            raise AuthError("no identity for this message")
        flow.principal = await flow.binding.principal(flow.ctx)


class BindSession:
    """Which agent session the flow belongs to; a session of another identity is refused."""

    name = "bind_session"
    always = False

    async def __call__(self, runner: Runner, flow: Flow) -> None:
        if flow.session is None and flow.handler.binds_session:
            assert flow.principal is not None and flow.binding is not None
            flow.session = await flow.binding.session(flow.ctx, flow.principal)
        if flow.session is not None and flow.origin == "agent" and flow.is_request:
            await flow.session.enter_request(flow.ctx)


class Admit:
    """Limits and routing: the message is small enough and names something that exists."""

    name = "admit"
    always = False

    async def __call__(self, runner: Runner, flow: Flow) -> None:
        limit = runner.gw.config.limits.max_message_bytes
        if flow.origin == "agent" and flow.params is not None:
            size = len(json.dumps(_wire(flow.params), default=str))
            if size > limit:
                raise InvalidArguments(
                    f"{flow.method} parameters are {size} bytes, over limits.max_message_bytes ({limit}); "
                    "send less data per call"
                )
        await flow.handler.resolve(runner, flow)


class Access:
    """May this principal do this to this target (tools, resources, prompts, execute_code)?"""

    name = "access"
    always = False

    async def __call__(self, runner: Runner, flow: Flow) -> None:
        target = flow.target
        if target.kind == "none" or flow.origin != "agent":
            return
        assert flow.principal is not None
        decision = runner.decide(flow.principal, target)
        if not decision.allowed:
            raise AccessDenied(
                f"principal '{flow.principal.name}' may not {target.action} {runner.describe(target)} "
                f"(policy rule '{decision.rule}': {decision.reason})",
                rule=decision.rule,
            )
        if target.kind in ("resource", "prompt"):
            flow.decision, flow.rule = "allow", decision.rule


class Untokenise:
    """Turn tokens in outbound values back into real values where the flow policy allows it.

    Outbound values are the agent's arguments to an upstream, and the agent's answers to an
    upstream's sampling or elicitation request; the destination is always the upstream."""

    name = "untokenise"
    always = False

    async def __call__(self, runner: Runner, flow: Flow) -> None:
        value = flow.handler.outbound(flow)
        if value is None:
            return
        assert flow.session is not None and flow.principal is not None
        flow.args_digest = flow.args_digest or digest_args(value)
        upstream = flow.target.upstream or ""
        tool = flow.handler.destination(flow)
        policy = runner.gw.policy
        rules: dict[str, str] = {}
        # The agent only ever sees tokens, so a raw value in what it sends is its own (a guess,
        # typed PII): probing an echoing upstream is an equality oracle no gateway can close.
        # Counted by type on the audit row (never values; detection only, no vault writes, no
        # links to the scope's tokens) so reports can show probing sessions. Visibility, not a
        # block: the call goes on as the policy says. docs/threat-model.md, "Residual risks".
        # A count that runs out of its budget (a huge argument) is marked incomplete on the row
        # and the call goes on: the agent's own arguments are not upstream data, and refusing a
        # large write because a visibility count was slow would break honest work.
        try:
            raw = await runner.gw.pipeline.tokenize_value(flow.session, value, "agent", mode=SANDBOX)
        except TokenizeBudgetExceeded:
            flow.detail["agent_raw_pii_incomplete"] = True
        else:
            if raw.entities:
                flow.detail["agent_raw_pii"] = dict(sorted(raw.entities.items()))

        def decide(ref: Any, path: str) -> None:
            d = policy.decide_flow(flow.principal, ref, upstream, tool, path)
            if not d.allowed:
                raise FlowDenied(
                    f"policy rule '{d.rule}' does not allow a {ref.entity_type} value ({ref.token}) to be sent "
                    f"to {upstream}__{tool}, argument '{path}': {d.reason}. Nothing was sent upstream.",
                    rule=d.rule,
                    entity_type=ref.entity_type,
                )
            rules[ref.token] = d.rule

        # Each value is written the way its argument needs (policy `substitution`, see substitute.py).
        untokenize = functools.partial(runner.gw.tokenizer.untokenize, destination=f"{upstream}__{tool}")

        def context(path: str) -> str:
            return flow.handler.substitution(flow, path) or policy.substitute_context(upstream, tool, path)[0]

        untok = await runner.gw.inline_or_thread(untokenize, value, flow.session.scope, decide, context)
        flow.outbound = untok.value
        flow.untokenised = [
            ev.Untokenised(
                token=ref.token,
                entity_type=ref.entity_type,
                destination=f"{upstream}__{tool}:{path}",
                rule=rules.get(ref.token, ""),
            )
            for ref, path in untok.used
        ]
        if flow.untokenised:
            flow.decision = "allow"
            flow.rule = ",".join(sorted({u.rule for u in flow.untokenised}))


class AuditIntent:
    """Make the intent durable before anything leaves Veil; if it cannot be, nothing is sent."""

    name = "audit_intent"
    always = False

    async def __call__(self, runner: Runner, flow: Flow) -> None:
        if not flow.handler.leaves:
            return
        event = runner.event(
            flow,
            ev.INTENT,
            outcome=ev.PENDING,
            detail={"method": flow.method, "for": flow.kind, "via": flow.via},
        )
        await runner.record(event)  # AuditUnavailable: refused here, nothing was sent
        flow.intent = event.id


class Exchange:
    """The one stage that talks to the other side: an upstream (agent flows) or the agent
    (upstream flows). Everything before it decided whether and what to send."""

    name = "exchange"
    always = False

    async def __call__(self, runner: Runner, flow: Flow) -> None:
        await flow.handler.exchange(runner, flow)


class Tokenise:
    """Replace personal data in what came from an upstream by tokens, and filter listings by
    access, before the agent (or the sandbox) sees it."""

    name = "tokenise"
    always = False

    async def __call__(self, runner: Runner, flow: Flow) -> None:
        await flow.handler.shape(runner, flow)


class AuditOutcome:
    """Record what happened, refused or not. Runs for every flow, shielded from cancellation;
    if it cannot be written the agent gets an error, never an unaudited result."""

    name = "audit_outcome"
    always = True

    async def __call__(self, runner: Runner, flow: Flow) -> None:
        detail: dict[str, Any] = {"method": flow.method, "via": flow.via, **flow.detail, **flow.error_detail()}
        if flow.intent is not None:
            detail["intent"] = str(flow.intent)
        event = runner.event(
            flow,
            flow.kind,
            outcome=flow.outcome,
            duration_ms=(time.perf_counter() - flow.started) * 1000,
            detail=detail,
        )
        try:
            await runner.record(event)
        except Exception as exc:
            runner.log_audit_failure(flow, exc)
            flow.refuse(self.name, _unavailable())
            flow.result = None


def _unavailable() -> Any:
    from veil.errors import AuditUnavailable

    return AuditUnavailable("the audit trail cannot be written, so Veil refuses the request (fail closed)")


def _wire(params: Any) -> Any:
    if hasattr(params, "model_dump"):
        return params.model_dump(mode="json", by_alias=True, exclude_none=True)
    return params
