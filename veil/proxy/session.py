"""An agent session: who is calling, the token scope, and that session's upstream connections.

Upstream messages that arrive on the session's connections on their own (log lines, progress,
list-changed, sampling and elicitation requests) are tokenised in the session's scope and
relayed to the agent over the front connection the session last used.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
import warnings
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.message import ServerMessageMetadata

from veil.audit import events as ev
from veil.errors import ToolNotFound, VeilError
from veil.principal import Principal
from veil.proxy.catalogue import CatalogueEntry, gateway_name
from veil.proxy.upstreams import UpstreamConnection
from veil.tokenizer import Scope

if TYPE_CHECKING:
    from mcp.server.session import ServerSession

    from veil.proxy.gateway import Gateway

log = logging.getLogger(__name__)
M = TypeVar("M")
R = TypeVar("R")


# Identifiers and schemas in listings are the upstream's interface, not data: not tokenised.
LISTING_KEYS = frozenset(
    {"name", "inputSchema", "outputSchema", "annotations", "uri", "uriTemplate", "mimeType", "arguments", "icons"}
)


def scope_for(kind: str, session_id: str, principal: Principal) -> Scope:
    """The vault scope tokens are deterministic within (policy ``tokens.scope``)."""
    if kind == "principal":
        return Scope(f"principal:{principal.name}")
    if kind == "tenant":
        return Scope(f"tenant:{principal.tenant or 'default'}")
    return Scope(f"session:{session_id}")


class FrontChannel:
    """The agent connection upstream messages are relayed on: the request the session is serving
    (so on Streamable HTTP they ride that request's response stream), or the connection's own
    channel when no request is in flight."""

    def __init__(self, server_session: ServerSession, request_id: Any) -> None:
        self.server_session = server_session
        self.request_id = request_id

    @property
    def can_send_request(self) -> bool:
        return self.server_session.can_send_request

    async def log(self, level: Any, data: Any, logger: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)  # logging is deprecated in 2026-07-28
            await self.server_session.send_log_message(level, data, logger=logger, related_request_id=self.request_id)

    async def request(self, request: Any, result_type: type[R]) -> R:
        metadata = ServerMessageMetadata(related_request_id=self.request_id)
        return await self.server_session.send_request(request, result_type, metadata=metadata)

    async def notify(self, notification: Any) -> None:
        await self.server_session.send_notification(notification)


class AgentSession:
    def __init__(self, gateway: Gateway, principal: Principal, *, session_id: str | None = None) -> None:
        self.gw = gateway
        self.id = session_id or uuid.uuid4().hex
        self.principal = principal
        self.scope = scope_for(gateway.token_scope_kind(), self.id, principal)
        self._connections: dict[str, UpstreamConnection] = {}
        self._tools: dict[str, list[CatalogueEntry]] = {}
        self._tools_lock = anyio.Lock()
        self.front: FrontChannel | None = None  # where upstream messages are relayed to the agent
        self.closed = False

    # -- audit ---------------------------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> ev.AuditEvent:
        fields.setdefault("policy_version", self.gw.policy.version)
        return ev.AuditEvent(
            kind=kind,
            principal=self.principal.name,
            roles=sorted(self.principal.roles),
            tenant=self.principal.tenant,
            session_id=self.id,
            scope=self.scope.key,
            **fields,
        )

    # -- upstreams -----------------------------------------------------------------------------

    async def connection(self, upstream: str) -> UpstreamConnection:
        if upstream not in self.gw.config.upstreams:
            raise ToolNotFound(f"no upstream named '{upstream}' is configured")
        conn = self._connections.get(upstream)
        if conn is None:
            conn = UpstreamConnection(
                upstream,
                self.gw.config.upstreams[upstream],
                _Relay(self),
                self.gw.task_group,
                log_dir=self.gw.config.data_dir / "logs",
                timeout_s=self.gw.config.limits.upstream_timeout_s,
            )
            self._connections[upstream] = conn
        return conn

    async def upstream_tools(self, upstream: str, *, refresh: bool = False) -> list[CatalogueEntry]:
        """The upstream's tools with descriptions tokenised in this session's scope (cached)."""
        async with self._tools_lock:
            if refresh or upstream not in self._tools:
                conn = await self.connection(upstream)
                listed = await conn.request("tools/list", lambda c: c.list_tools())
                tokenised, _ = await self.gw.pipeline.tokenize_model(self, listed, upstream, keep=LISTING_KEYS)
                prefix = self.gw.config.prefix(upstream)
                self._tools[upstream] = [CatalogueEntry(upstream, tool, prefix) for tool in tokenised.tools]
            return self._tools[upstream]

    async def catalogue(self) -> tuple[list[CatalogueEntry], dict[str, str]]:
        """Every reachable upstream's tools; unreachable upstreams are reported, not fatal."""
        entries: list[CatalogueEntry] = []
        problems: dict[str, str] = {}
        for name in self.gw.config.upstreams:
            try:
                entries.extend(await self.upstream_tools(name))
            except VeilError as exc:
                problems[name] = exc.message
        return entries, problems

    async def has_tool(self, upstream: str, tool: str) -> bool:
        """Whether the upstream lists this tool (asked when tool prefixes overlap)."""
        return any(entry.tool.name == tool for entry in await self.upstream_tools(upstream))

    async def has_prompt(self, upstream: str, prompt: str) -> bool:
        """Whether the upstream lists this prompt (asked when prefixes overlap)."""
        conn = await self.connection(upstream)
        listed = await conn.request("prompts/list", lambda c: c.list_prompts())
        return any(p.name == prompt for p in listed.prompts)

    async def find_tool(self, upstream: str, tool: str) -> CatalogueEntry:
        for entry in await self.upstream_tools(upstream):
            if entry.tool.name == tool:
                return entry
        shown = gateway_name(upstream, tool, self.gw.config.prefix(upstream))
        raise ToolNotFound(
            f"unknown tool '{shown}': upstream '{upstream}' has no tool '{tool}' (use search_tools to find tools)"
        )

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        for conn in self._connections.values():
            await conn.aclose()
        self._connections.clear()


class _Relay:
    """Relays what an upstream sends on its own initiative to the agent, tokenised."""

    def __init__(self, session: AgentSession) -> None:
        self.session = session

    async def _audit(self, upstream: str, what: str, tokenised: Any, outcome: str = ev.OK) -> None:
        await self.session.gw.record(
            self.session.event(
                ev.NOTIFICATION,
                upstream=upstream,
                outcome=outcome,
                entities=dict(tokenised.entities) if tokenised is not None else {},
                tokens=list(tokenised.tokens) if tokenised is not None else [],
                detail={"message": what},
            )
        )

    async def on_log(self, upstream: str, params: types.LoggingMessageNotificationParams) -> None:
        front = self.session.front
        tokenised = await self.session.gw.pipeline.tokenize_value(
            self.session, {"data": params.data, "logger": params.logger}, upstream
        )
        await self._audit(upstream, "notifications/message", tokenised)
        if front is None:
            return
        logger = tokenised.value.get("logger")
        try:
            await front.log(params.level, tokenised.value["data"], f"{upstream}/{logger or ''}")
        except Exception as exc:  # the agent may have gone; the upstream must not notice
            log.debug("could not relay a log message from '%s' (%s)", upstream, type(exc).__name__)

    async def on_notification(self, upstream: str, notification: Any) -> None:
        front = self.session.front
        method = getattr(notification, "method", "")
        if method == "notifications/tools/list_changed":
            with contextlib.suppress(VeilError):
                await self.session.upstream_tools(upstream, refresh=True)
        if front is None:
            return
        try:
            if method in _RELAYED_NOTIFICATIONS:
                await front.notify(_RELAYED_NOTIFICATIONS[method]())
            # Progress arrives through the call's progress callback; log messages through on_log;
            # other notifications (resource updates by URI, cancellations) are not relayed.
        except Exception as exc:
            log.debug("could not relay %s from '%s' (%s)", method, upstream, type(exc).__name__)

    async def _tokenize_request(self, upstream: str, params: M, what: str) -> tuple[M, FrontChannel | None]:
        tokenised, report = await self.session.gw.pipeline.tokenize_model(self.session, params, upstream)
        front = self.session.front
        usable = front is not None and front.can_send_request
        await self._audit(upstream, what, report, ev.OK if usable else ev.ERROR)
        return tokenised, front if usable else None

    async def on_sampling(
        self, upstream: str, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.ErrorData:
        return await self._relay_request(
            upstream, params, "sampling/createMessage", types.CreateMessageRequest, types.CreateMessageResult
        )

    async def on_elicitation(
        self, upstream: str, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        return await self._relay_request(
            upstream, params, "elicitation/create", types.ElicitRequest, types.ElicitResult
        )

    async def _relay_request(self, upstream: str, params: Any, what: str, request_type: Any, result_type: Any) -> Any:
        """Tokenise a server-to-client request, audit it, and ask the agent; errors go back as ErrorData."""
        tokenised, front = await self._tokenize_request(upstream, params, what)
        if front is None:
            return _cannot_relay(what)
        try:
            return await front.request(request_type(params=tokenised), result_type)
        except Exception as exc:
            return types.ErrorData(
                code=types.INTERNAL_ERROR, message=f"the agent did not answer the {what} request ({type(exc).__name__})"
            )


_RELAYED_NOTIFICATIONS = {
    "notifications/tools/list_changed": types.ToolListChangedNotification,
    "notifications/resources/list_changed": types.ResourceListChangedNotification,
    "notifications/prompts/list_changed": types.PromptListChangedNotification,
}


def _cannot_relay(what: str) -> types.ErrorData:  # what: the MCP method
    return types.ErrorData(
        code=types.METHOD_NOT_FOUND,
        message=f"the agent connected to Veil cannot answer {what} requests on its connection "
        "(it did not declare the capability, or its protocol revision has no server-to-client requests)",
    )
