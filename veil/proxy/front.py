"""The MCP server the agent talks to. Every request becomes a ``Flow`` through the runner
(``veil.proxy.runner``); ``VeilError``s become MCP errors. It holds no policy or privacy logic.

Who sent a request and which agent session it belongs to is told by a ``Binding`` the transport
supplies (stdio: the configured principal and the one session; HTTP: the authenticated principal
and its transport session).
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any, Protocol

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.lowlevel.server import NotificationOptions
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ValidationError

import veil
from veil.errors import InvalidArguments, VeilError
from veil.principal import Principal
from veil.proxy.flow import Flow
from veil.proxy.gateway import Gateway
from veil.proxy.methods import AgentNotification, Passthrough
from veil.proxy.session import AgentSession

log = logging.getLogger(__name__)

EXECUTE_CODE = types.Tool(
    name="execute_code",
    description=(
        "Run Python 3 next to the data, in a sandbox. Each upstream system is a module: "
        "`from servers import crm` then `crm.find_customers(segment='gold')` (see search_tools, or read "
        "servers/INDEX.md in the sandbox). Filter and aggregate there, and print or return only what you "
        "need. Personal data appears as tokens like [PERSON_1]; pass tokens on as they are and Veil "
        "substitutes real values in calls the policy allows. Variables and files persist between calls "
        "in this session; reset=true starts clean."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "Python 3 source; the last expression's value is returned."},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "description": "Wall-clock limit in seconds."},
            "reset": {"type": "boolean", "default": False, "description": "Start a fresh interpreter first."},
        },
        "required": ["code"],
        "additionalProperties": False,
    },
)


def _error(exc: VeilError) -> MCPError:
    return MCPError(exc.code, exc.message, exc.data)


def _schema_checked_by_the_runner(name: str) -> None:
    """No schema for the SDK's pre-dispatch header check: the runner does it (see Front)."""
    return None


class _Server(Server[Any]):
    """Veil relays upstreams' list-changed notifications on every transport, so its capabilities
    say ``listChanged: true`` by default (the SDK's HTTP runner asks with no options, i.e. false)."""

    def create_initialization_options(self, notification_options: Any = None, *args: Any, **kwargs: Any) -> Any:
        return super().create_initialization_options(notification_options or NOTIFICATIONS, *args, **kwargs)


# What Veil announces: it relays list changes of tools, prompts and resources from its upstreams.
NOTIFICATIONS = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)


class Binding(Protocol):
    """What a transport tells the runner about an agent request: who sent it (authenticate) and
    which agent session it belongs to (bind_session; refused for another identity's session)."""

    async def principal(self, ctx: ServerRequestContext[Any, Any]) -> Principal: ...
    async def session(self, ctx: ServerRequestContext[Any, Any], principal: Principal) -> AgentSession: ...


# Every request method an agent can send, with the params model the SDK validates it against.
# Each is served by the runner (its handler in veil.proxy.methods); initialize, server/discover
# and unknown methods are answered by the SDK and audited by ``AuditEveryRequest``.
AGENT_METHODS: dict[str, type[BaseModel]] = {
    "ping": types.RequestParams,
    "tools/list": types.PaginatedRequestParams,
    "tools/call": types.CallToolRequestParams,
    "resources/list": types.PaginatedRequestParams,
    "resources/templates/list": types.PaginatedRequestParams,
    "resources/read": types.ReadResourceRequestParams,
    "resources/subscribe": types.SubscribeRequestParams,
    "resources/unsubscribe": types.UnsubscribeRequestParams,
    "prompts/list": types.PaginatedRequestParams,
    "prompts/get": types.GetPromptRequestParams,
    "completion/complete": types.CompleteRequestParams,
    "logging/setLevel": types.SetLevelRequestParams,
}

_HANDLED: contextvars.ContextVar[list[bool]] = contextvars.ContextVar("veil_handled")


class Front:
    """Builds the low-level MCP ``Server``; every request goes to the runner."""

    def __init__(self, gateway: Gateway, binding: Binding) -> None:
        self.gw = gateway
        self.binding = binding
        self.server: Server[Any] = _Server(
            "veil",
            version=veil.__version__,
            instructions=gateway.instructions,  # Veil's and each upstream's (veil.proxy.survey)
            # Mcp-Param-* headers are checked by the tools/call handler against this session's
            # listing (veil.proxy.methods._check_param_headers); without a lookup the SDK would
            # run a tools/list through Veil before every call with arguments to find the schema.
            get_tool_input_schema=_schema_checked_by_the_runner,
        )
        for method, params_type in AGENT_METHODS.items():
            self.server.add_request_handler(method, params_type, self._handler(method))
        self.server.middleware.insert(0, AuditEveryRequest(self))

    def _handler(self, method: str) -> Any:
        async def handle(ctx: ServerRequestContext[Any, Any], params: Any) -> Any:
            handled = _HANDLED.get(None)
            if handled is not None:
                handled[0] = True
            return await self.run(Flow(method=method, origin="agent", params=params, ctx=ctx, binding=self.binding))

        return handle

    async def run(self, flow: Flow) -> Any:
        try:
            return await self.gw.runner.call(flow)
        except VeilError as exc:
            raise _error(exc) from None


class AuditEveryRequest:
    """SDK middleware: a request that never reaches a Veil handler (initialize, server/discover,
    an unknown method, params the SDK rejects) is still a flow through the runner, audited."""

    def __init__(self, front: Front) -> None:
        self.front = front

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        if ctx.request_id is None:  # a notification from the agent: a flow too, applied in its exchange
            handler = AgentNotification(ctx.method, call_next, ctx)
            flow = Flow(ctx.method, "agent", ctx=ctx, binding=self.front.binding, handler=handler)
            await self.front.gw.runner.run(flow)
            return None
        if ctx.method in AGENT_METHODS:
            handled = [False]
            token = _HANDLED.set(handled)
            try:
                return await call_next(ctx)
            except (MCPError, ValidationError) as exc:
                if handled[0]:
                    raise
                await self._refused(ctx, exc)
                raise
            finally:
                _HANDLED.reset(token)
        flow = Flow(
            method=ctx.method,
            origin="agent",
            ctx=ctx,
            binding=self.front.binding,
            handler=Passthrough(ctx.method, call_next, ctx),
        )
        return await self.front.run(flow)

    async def _refused(self, ctx: ServerRequestContext[Any, Any], exc: Exception) -> None:
        """Params the SDK rejected before Veil's handler ran: audited as refused at ``admit``."""
        code = exc.code if isinstance(exc, MCPError) else types.INVALID_PARAMS
        refusal = InvalidArguments(f"invalid parameters for {ctx.method}", code=code)

        async def refuse(_ctx: Any) -> Any:
            raise refusal

        flow = Flow(method=ctx.method, origin="agent", ctx=ctx, binding=self.front.binding)
        flow.handler = _Refused(ctx.method, self.front.gw.runner.handler_for(ctx.method).kind, refusal)
        await self.front.gw.runner.run(flow)


class _Refused(Passthrough):
    def __init__(self, method: str, kind: str, error: VeilError) -> None:
        self.method, self.kind, self._error = method, kind, error

    async def resolve(self, runner: Any, flow: Flow) -> None:
        raise self._error
