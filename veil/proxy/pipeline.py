"""The call pipeline: the one path every upstream tool call takes, direct or from execute_code.

    access check ─▶ validate arguments ─▶ untokenise (per-token flow decision) ─▶ upstream call
        ─▶ tokenise result ─▶ audit (durable before the result is returned)

The stages fill in a ``CallRecord`` instead of jumping past each other with exceptions: a
refused or failed call still reaches the audit stage with its outcome, rule and reason, and
only then is the error raised to the caller. If the audit event cannot be written, the call
fails closed: the agent gets an error, never an unaudited result.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import jsonschema
import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from veil.audit import digest_args
from veil.audit import events as ev
from veil.errors import (
    AccessDenied,
    FlowDenied,
    InvalidArguments,
    TokenError,
    UpstreamError,
    VeilError,
)
from veil.proxy.shaping import from_wire, protect, restore, to_wire, withhold_binary

if TYPE_CHECKING:
    from veil.proxy.session import AgentSession

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
ProgressRelay = Callable[[float, float | None, str | None], Awaitable[None]]


@dataclass
class CallRecord:
    """Everything the audit stage needs to know about one call, filled in stage by stage."""

    upstream: str
    tool: str
    via: str  # "direct" | "code"
    started: float = field(default_factory=time.perf_counter)
    args_digest: str | None = None
    decision: str | None = None
    rule: str | None = None
    outcome: str = ev.OK
    error: VeilError | None = None
    entities: dict[str, int] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    untokenised: list[ev.Untokenised] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def fail(self, error: VeilError, outcome: str = ev.ERROR) -> None:
        self.error = error
        self.outcome = outcome
        self.detail.setdefault("error", type(error).__name__)
        self.detail.setdefault("message", error.message)


class Pipeline:
    """Runs tool calls for agent sessions; shared by the front server and the sandbox bridge."""

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway

    async def call_tool(
        self,
        session: AgentSession,
        upstream: str,
        tool: str,
        arguments: dict[str, Any] | None,
        *,
        via: str = "direct",
        progress: ProgressRelay | None = None,
    ) -> types.CallToolResult:
        """Call ``upstream``'s ``tool`` for the session; returns the tokenised result or raises."""
        record = CallRecord(upstream=upstream, tool=tool, via=via)
        policy = self.gw.policy
        result: types.CallToolResult | None = None
        try:
            result = await self._run(session, policy, record, arguments or {}, progress)
        except VeilError as exc:
            if record.error is None:
                record.fail(exc)
        except Exception as exc:  # a bug: audit it as an internal error, tell the agent nothing more
            # Exception messages may quote data: log where it failed and the type, never the message.
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            log.error(
                "internal error in the call pipeline for %s__%s: %s at %s:%s",
                upstream,
                tool,
                type(exc).__name__,
                frame.filename,
                frame.lineno,
            )
            record.fail(VeilError(f"internal error in Veil while calling {upstream}__{tool}; see Veil's log"))
            del exc
        # Shielded: a caller cancelled mid-call (e.g. an execute_code timeout) must not skip the audit.
        with anyio.CancelScope(shield=True):
            await self._audit(session, policy, record)
        if record.error is not None:
            raise record.error
        assert result is not None
        return result

    async def _run(
        self,
        session: AgentSession,
        policy: Any,
        record: CallRecord,
        arguments: dict[str, Any],
        progress: ProgressRelay | None,
    ) -> types.CallToolResult:
        upstream, tool = record.upstream, record.tool
        record.args_digest = digest_args(arguments)

        access = policy.decide_access(session.principal, upstream, tool)
        if not access.allowed:
            record.decision, record.rule = "deny", access.rule
            record.fail(
                AccessDenied(
                    f"principal '{session.principal.name}' may not call {upstream}__{tool} "
                    f"(policy rule '{access.rule}': {access.reason})",
                    rule=access.rule,
                ),
                ev.DENIED,
            )
            raise record.error  # type: ignore[misc]

        entry = await session.find_tool(upstream, tool)
        self._validate(entry.tool, arguments, upstream, tool)

        decisions: dict[str, tuple[str, str]] = {}

        def decide(ref: Any, path: str) -> None:
            d = policy.decide_flow(session.principal, ref, upstream, tool, path)
            if not d.allowed:
                record.decision, record.rule = "deny", d.rule
                raise FlowDenied(
                    f"policy rule '{d.rule}' does not allow a {ref.entity_type} value ({ref.token}) to be sent "
                    f"to {upstream}__{tool}, argument '{path}': {d.reason}. Nothing was sent upstream.",
                    rule=d.rule,
                    entity_type=ref.entity_type,
                )
            decisions[ref.token] = (d.rule, path)

        try:
            # Each value is written the way its argument needs (policy `substitution`; subst helper's hunk).
            untokenize = functools.partial(self.gw.tokenizer.untokenize, destination=f"{upstream}__{tool}")
            context = lambda path: policy.substitute_context(upstream, tool, path)[0]  # noqa: E731
            untok = await self.gw.in_thread(untokenize, arguments, session.scope, decide, context)
        except FlowDenied as exc:
            record.detail["entity_type"] = exc.entity_type
            record.fail(exc, ev.DENIED)
            raise
        except TokenError as exc:
            record.fail(exc, ev.DENIED)
            raise
        record.untokenised = [
            ev.Untokenised(
                token=ref.token,
                entity_type=ref.entity_type,
                destination=f"{upstream}__{tool}:{path}",
                rule=decisions.get(ref.token, ("", ""))[0],
            )
            for ref, path in untok.used
        ]
        if record.untokenised:
            record.decision = "allow"
            record.rule = ",".join(sorted({u.rule for u in record.untokenised}))

        connection = await session.connection(upstream)

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            if progress is not None:
                text = await self.tokenize_text(session, message, upstream) if message else None
                await progress(done, total, text)

        try:
            raw = await connection.request(
                f"{upstream}__{tool}",
                lambda client: client.call_tool(tool, untok.value, progress_callback=on_progress),
            )
        except MCPError as exc:
            # A protocol-level error from the upstream: its message may quote data, so tokenise it.
            text = await self.tokenize_text(session, exc.message, upstream)
            record.fail(UpstreamError(f"{upstream}__{tool} failed: {text}"))
            raise record.error from None

        tokenised, report = await self.tokenize_model(session, raw, upstream)
        record.entities = dict(report.entities)
        record.tokens = list(report.tokens)
        if tokenised.is_error:
            record.outcome = ev.ERROR
            record.detail["upstream_error"] = True
        return tokenised

    @staticmethod
    def _validate(tool_def: types.Tool, arguments: dict[str, Any], upstream: str, tool: str) -> None:
        """Check arguments against the tool's schema; messages name the field, never the value."""
        schema = tool_def.input_schema or {}
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(arguments), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.absolute_path) or "(arguments)"
            problem = {
                "required": "a required argument is missing",
                "type": f"must be of type {first.schema.get('type')}"
                if isinstance(first.schema, dict)
                else "wrong type",
                "additionalProperties": "has an argument the tool does not accept",
                "enum": "is not one of the allowed values",
            }.get(str(first.validator), f"fails the '{first.validator}' rule of the schema")
            if first.validator == "required" and isinstance(first.validator_value, list):
                missing = [k for k in first.validator_value if k not in (first.instance or {})]
                problem = f"missing required argument(s): {', '.join(missing)}"
            elif first.validator == "additionalProperties" and isinstance(first.instance, dict):
                allowed = set((first.schema.get("properties") or {}).keys())
                extra = sorted(k for k in first.instance if k not in allowed)
                problem = f"unknown argument(s): {', '.join(extra)}"
            raise InvalidArguments(
                f"invalid arguments for {upstream}__{tool}: '{where}' {problem}. "
                f"See the tool's inputSchema (search_tools with detail='full')."
            )

    # -- tokenisation helpers shared by every relay ------------------------------------------------

    async def tokenize_value(self, session: AgentSession, value: Any, source: str) -> Any:
        return await self.gw.in_thread(self.gw.tokenizer.tokenize, value, session.scope, source)

    async def tokenize_text(self, session: AgentSession, text: str, source: str) -> str:
        return (await self.tokenize_value(session, text, source)).value

    async def tokenize_model(
        self, session: AgentSession, model: M, source: str, *, keep: frozenset[str] = frozenset()
    ) -> tuple[M, Any]:
        """Tokenise a whole MCP model (result, notification, request), withholding binary payloads.

        Values under ``keep`` keys are interface, not data, and pass unchanged. Returns the
        tokenised model and the tokenizer's report (entity counts, tokens)."""
        saved: list[Any] = []
        upstream = self.gw.config.upstreams.get(source)  # binary passes only by that upstream's config
        passes = upstream.binary_passes if upstream is not None else (lambda mime: False)
        wire, saved = protect(withhold_binary(to_wire(model), passes, saved), keep, saved)
        tokenised = await self.tokenize_value(session, wire, source)
        return from_wire(type(model), restore(tokenised.value, saved)), tokenised

    # -- audit ------------------------------------------------------------------------------------

    async def _audit(self, session: AgentSession, policy: Any, record: CallRecord) -> None:
        event = session.event(
            ev.TOOL_CALL,
            outcome=record.outcome,
            upstream=record.upstream,
            tool=record.tool,
            args_digest=record.args_digest,
            entities=record.entities,
            tokens=record.tokens,
            untokenised=record.untokenised,
            decision=record.decision,
            rule=record.rule,
            duration_ms=(time.perf_counter() - record.started) * 1000,
            policy_version=policy.version,
            detail={"via": record.via, **record.detail},
        )
        await self.gw.record(event)
