"""The agent-facing transports: stdio (one agent, one session) and Streamable HTTP (many agents,
authenticated per request).

Over HTTP every request to the MCP endpoint is authenticated before the MCP layer sees it: a
request without valid credentials gets 401, is audited, and never reaches an upstream.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
from anyio.abc import TaskStatus
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.stdio import stdio_server

from veil.audit import events as ev
from veil.errors import AuthError
from veil.principal import Principal
from veil.proxy.front import Front
from veil.proxy.gateway import Gateway
from veil.proxy.session import AgentSession

log = logging.getLogger(__name__)

NOTIFICATIONS = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)


def configured_principal(gateway: Gateway) -> Principal:
    """The principal of a stdio agent: from config, else the OS user running Veil."""
    cfg = gateway.config.principal
    roles = frozenset(cfg.roles)
    if cfg.name:
        return Principal(cfg.name, roles, cfg.tenant, via="config")
    return Principal.from_os_user(roles, cfg.tenant)


async def serve_stdio(gateway: Gateway) -> None:
    session = await gateway.open_session(configured_principal(gateway))

    async def resolve(ctx: ServerRequestContext[Any, Any]) -> AgentSession:
        return session

    front = Front(gateway, resolve)
    try:
        async with stdio_server() as (read, write):
            await front.server.run(read, write, front.server.create_initialization_options(NOTIFICATIONS))
    finally:
        with anyio.CancelScope(shield=True):
            await gateway.close_session(session)


class HttpSessions:
    """Maps HTTP requests to agent sessions.

    Handshake-era clients carry an ``Mcp-Session-Id``: one agent session per transport session.
    2026-07-28 clients have no transport session; their requests share one agent session per
    principal, so tokens stay stable across their calls.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self._by_key: dict[str, AgentSession] = {}
        self._lock = anyio.Lock()

    async def resolve(self, ctx: ServerRequestContext[Any, Any]) -> AgentSession:
        request = ctx.request
        principal: Principal = request.scope["state"]["veil_principal"]
        transport_id = request.headers.get("mcp-session-id")
        key = f"mcp:{transport_id}" if transport_id else f"principal:{principal.name}"
        async with self._lock:
            session = self._by_key.get(key)
            if session is not None and session.principal.name != principal.name:
                # A session id presented by someone else: never hand over another principal's tokens.
                await self.gw.record(
                    ev.AuditEvent(
                        kind=ev.AUTH_FAILED,
                        outcome=ev.DENIED,
                        principal=principal.name,
                        roles=sorted(principal.roles),
                        policy_version=self.gw.policy.version,
                        detail={"reason": "MCP session of another principal", "path": request.url.path},
                    )
                )
                raise AuthError("this MCP session belongs to another principal")
            if session is None or session.closed:
                session = await self.gw.open_session(principal, session_id=None)
                self._by_key[key] = session
                if transport_id:
                    self._close_with_transport(ctx, key, session)
        return session

    def _close_with_transport(self, ctx: ServerRequestContext[Any, Any], key: str, session: AgentSession) -> None:
        """End the agent session (and its upstream processes) when its MCP transport session ends."""
        connection = getattr(ctx.session, "_connection", None)  # the SDK exposes no public accessor
        if connection is None:
            return

        async def close() -> None:
            self._by_key.pop(key, None)
            await self.gw.close_session(session)

        connection.exit_stack.push_async_callback(close)


class AuthMiddleware:
    """ASGI middleware: authenticate, audit refusals, and pass the principal on in the scope."""

    def __init__(self, app: Any, gateway: Gateway, authenticate: Any) -> None:
        self.app = app
        self.gw = gateway
        self.authenticate = authenticate

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            principal = await self.authenticate(headers.get("authorization"))
        except AuthError as exc:
            client = scope.get("client") or ("?", 0)
            # Aggregated per source, reason and minute (veil/audit/aggregate.py): a flood of bad
            # credentials cannot bloat the append-only trail.
            await self.gw.audit.auth_failures.failed(
                source=client[0],
                reason=getattr(exc, "reason", None) or "unknown",
                message=exc.message,
                path=scope.get("path"),
                policy_version=self.gw.policy.version,
            )
            body = json.dumps(
                {"jsonrpc": "2.0", "id": None, "error": {"code": exc.code, "message": f"unauthorized: {exc.message}"}}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer realm="veil"'),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["veil_principal"] = principal
        await self.app(scope, receive, send)


def make_authenticator(gateway: Gateway):
    """Bearer credentials -> Principal, via API keys or JWTs (``auth`` in the config).

    With ``auth.required: false`` a request without credentials runs as the configured principal;
    a request with wrong credentials is still refused."""
    from veil.auth import Authenticator

    cfg = gateway.config.auth
    fallback = None if cfg.required else configured_principal(gateway)
    authenticator = Authenticator(gateway.engine, cfg, fallback=fallback)

    async def authenticate(header: str | None) -> Principal:
        return await gateway.in_thread(authenticator.authenticate, header)

    return authenticate


def http_app(gateway: Gateway, host: str) -> Any:
    sessions = HttpSessions(gateway)
    front = Front(gateway, sessions.resolve)
    app = front.server.streamable_http_app(
        host=host,
        # Room for the JSON-RPC envelope, so oversized arguments get Veil's message naming the limit;
        # far larger bodies are refused by the transport before they are read.
        max_request_body_size=gateway.config.limits.max_message_bytes + 64 * 1024,
    )
    return AuthMiddleware(app, gateway, make_authenticator(gateway)), app


async def serve_http(
    gateway: Gateway, host: str, port: int, *, task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled or ``server.should_exit``; ``task_status`` gets the uvicorn server
    once it is listening (for ``TaskGroup.start``)."""
    import uvicorn

    wrapped, inner = http_app(gateway, host)
    config = uvicorn.Config(wrapped, host=host, port=port, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    async with inner.router.lifespan_context(inner), anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while not server.started:
            if server.should_exit:
                raise OSError(f"could not listen on {host}:{port}")
            await anyio.sleep(0.01)
        task_status.started(server)
