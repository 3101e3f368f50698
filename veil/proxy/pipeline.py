"""Tokenisation services shared by every handler, and the entry point for calls from the sandbox.

Every message takes the runner's stages (``veil.proxy.runner``); this module only holds what
handlers call to tokenise (one place that knows the tokenizer's modes) and ``call_tool``, the
sandbox bridge's way into the runner (a tool call made by execute_code is a flow like any other,
``via="code"``).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, TypeVar

import mcp_types as types
from pydantic import BaseModel

from veil.proxy.catalogue import gateway_name
from veil.proxy.flow import Flow, Target
from veil.proxy.shaping import from_wire, protect, restore, to_wire, withhold_binary
from veil.tokenizer.tokens import Deadline, WouldBlock

if TYPE_CHECKING:
    from veil.proxy.session import AgentSession

M = TypeVar("M", bound=BaseModel)

# Tokenizer modes (see veil.tokenizer): "interface" for listings (guard and patterns, no NER, so
# titles and descriptions are not mangled); "sandbox_output" for what code printed (no equality oracle).
INTERFACE = "interface"
SANDBOX = "sandbox_output"


class Pipeline:
    """Tokenisation helpers over the gateway's tokenizer, run off the event loop (small values
    that need no I/O excepted)."""

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway
        self._modes: bool | None = None

    async def call_tool(
        self, session: AgentSession, upstream: str, tool: str, arguments: dict[str, Any] | None, *, via: str = "code"
    ) -> types.CallToolResult:
        """Run a tool call through the runner for the session; returns the tokenised result or raises."""
        name = gateway_name(upstream, tool, self.gw.config.prefix(upstream))
        params = types.CallToolRequestParams(name=name, arguments=arguments or {})
        flow = Flow(
            method="tools/call",
            origin="agent",
            params=params,
            session=session,
            via=via,
            target=Target("tool", upstream, tool, "call"),
        )
        return await self.gw.runner.call(flow)

    # -- tokenisation ------------------------------------------------------------------------------

    def _tokenize(self, value: Any, scope: Any, source: str, mode: str | None, *, inline: bool = False) -> Any:
        tokenizer = self.gw.tokenizer
        # Every value is tokenised within limits.tokenize_budget_s, or fails closed (iso's hunk).
        deadline = Deadline.after(self.gw.config.limits.tokenize_budget_s, setting="limits.tokenize_budget_s")
        if self._modes is None:
            self._modes = "mode" in inspect.signature(tokenizer.tokenize).parameters
        if not self._modes:  # a tokenizer without modes (or inline calls): the thread, as always
            if inline:
                raise WouldBlock
            return tokenizer.tokenize(value, scope, source, deadline=deadline)
        return tokenizer.tokenize(value, scope, source, mode=mode or "data", deadline=deadline, inline=inline)

    async def tokenize_value(self, session: AgentSession, value: Any, source: str, *, mode: str | None = None) -> Any:
        """Small values are tokenised on the event loop when that needs no I/O (see
        ``Gateway.inline_or_thread``), everything else in a worker thread."""
        return await self.gw.inline_or_thread(self._tokenize, value, session.scope, source, mode)

    async def tokenize_interface(self, session: AgentSession, value: Any, source: str) -> Any:
        """Listings (names, titles, descriptions, schemas, URIs): guard and patterns, no NER."""
        return await self.tokenize_value(session, value, source, mode=INTERFACE)

    async def tokenize_text(self, session: AgentSession, text: str, source: str) -> str:
        return (await self.tokenize_value(session, text, source)).value

    async def tokenize_model(
        self, session: AgentSession, model: M, source: str, *, keep: frozenset[str] = frozenset()
    ) -> tuple[M, Any]:
        """Tokenise a whole MCP model (result, notification, request), withholding binary payloads.

        Values under ``keep`` keys pass unchanged. Returns the tokenised model and the
        tokenizer's report (entity counts, tokens)."""
        saved: list[Any] = []
        upstream = self.gw.config.upstreams.get(source)  # binary passes only by that upstream's config
        passes = upstream.binary_passes if upstream is not None else (lambda mime: False)
        wire, saved = protect(withhold_binary(to_wire(model), passes, saved), keep, saved)
        tokenised = await self.tokenize_value(session, wire, source)
        return from_wire(type(model), restore(tokenised.value, saved)), tokenised
