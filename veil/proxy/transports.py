"""The agent-facing transports: stdio (one agent, one session) and Streamable HTTP (many agents,
authenticated per request).

Over HTTP every request to the MCP endpoint is authenticated before the MCP layer sees it: a
request without valid credentials gets 401, is audited, and never reaches an upstream.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any, cast

import anyio
from anyio.abc import TaskStatus
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.stdio import stdio_server

from veil import ops
from veil.audit import events as ev
from veil.errors import AuthError
from veil.ops.health import Monitor
from veil.ops.http import MetricsRoute, PublicRoutes
from veil.principal import Principal
from veil.proxy.front import Front
from veil.proxy.gateway import Gateway
from veil.proxy.lazy_sse import streamable_http_app
from veil.proxy.lifecycle import AgentStdin, AgentStdout, StdioGate, Stop, busy_sessions, end_sessions
from veil.proxy.session import AgentSession, identity_of

log = logging.getLogger(__name__)

NOTIFICATIONS = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)


def configured_principal(gateway: Gateway) -> Principal:
    """The principal of a stdio agent: from config, else the OS user running Veil."""
    cfg = gateway.config.principal
    roles = frozenset(cfg.roles)
    if cfg.name:
        return Principal(cfg.name, roles, cfg.tenant, via="config")
    return Principal.from_os_user(roles, cfg.tenant)


class StdioBinding:
    """stdio: one agent, one principal (from config), one session for the process."""

    def __init__(self, principal: Principal, session: AgentSession) -> None:
        self._principal = principal
        self._session = session

    async def principal(self, ctx: ServerRequestContext[Any, Any]) -> Principal:
        return self._principal

    async def session(self, ctx: ServerRequestContext[Any, Any], principal: Principal) -> AgentSession:
        return self._session


async def serve_stdio(gateway: Gateway, *, stop: Stop | None = None) -> None:
    """Serve one agent on stdin/stdout until it closes stdin or ``stop`` is requested (then the
    calls in flight finish within the grace period; see ``veil.proxy.lifecycle``)."""
    stop = stop or Stop(gateway.config.limits.shutdown_grace_s)
    principal = configured_principal(gateway)
    session = await gateway.open_session(principal)
    front = Front(gateway, StdioBinding(principal, session))
    gate = StdioGate(stop)
    stdin = AgentStdin.claim()
    stdout = AgentStdout(gate)
    try:
        with anyio.CancelScope() as serving:  # around the transport too: its reader waits on the agent
            # ops.running: the metrics listener, if configured (over stdio there is no other).
            io = stdio_server(stdin=cast(Any, stdin), stdout=cast(Any, stdout))
            async with ops.running(gateway), io as (read, write):
                gate.bind(read, write)

                async def run() -> None:
                    options = front.server.create_initialization_options(NOTIFICATIONS)
                    await front.server.run(gate.reader, gate.writer, options)
                    serving.cancel()

                async def on_stop() -> None:
                    await stop.requested.wait()

                    def in_flight() -> int:
                        return max(gate.pending, int(session.busy))  # requests until answered on the wire

                    await stop.drain(in_flight)
                    await end_sessions(gateway, in_flight)
                    serving.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(run)
                    tg.start_soon(on_stop)
    finally:
        stdout.restore()
        with anyio.CancelScope(shield=True):
            await gateway.close_session(session, reason="shutdown" if stop.draining else "closed")


def _identity_key(identity: tuple[Any, ...]) -> str:
    return "identity:" + "|".join("" if part is None else str(part) for part in identity)


class HttpSessions:
    """Maps HTTP requests to agent sessions, each bound to one identity.

    Handshake-era clients carry an ``Mcp-Session-Id``: one agent session per transport session,
    owned by the identity that initialised it (``AuthMiddleware`` refuses its id to anyone else,
    on POST, GET and DELETE alike). 2026-07-28 clients have no transport session; their requests
    share one agent session per identity (tenant, subject, key or token id), so tokens stay stable
    across their calls. Sessions idle for ``limits.session_idle_timeout_s`` end, and with them
    their upstream processes.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self._by_key: dict[str, AgentSession] = {}
        self._lock = anyio.Lock()
        self.owners: dict[str, tuple[Any, ...]] = {}  # transport session id -> identity

    async def principal(self, ctx: ServerRequestContext[Any, Any]) -> Principal:
        request = ctx.request
        principal = request.scope.get("state", {}).get("veil_principal") if request is not None else None
        if principal is None:
            raise AuthError("this request carries no authenticated identity")
        return principal

    async def session(self, ctx: ServerRequestContext[Any, Any], principal: Principal) -> AgentSession:
        request = ctx.request
        if request is None:
            raise AuthError("this request carries no HTTP context to bind a session to")
        transport_id = request.headers.get("mcp-session-id")
        identity = identity_of(principal)
        key = f"mcp:{transport_id}" if transport_id else _identity_key(identity)
        async with self._lock:
            session = self._by_key.get(key)
            owner = self.owners.get(transport_id) if transport_id else None
            if (session is not None and session.identity != identity) or (owner is not None and owner != identity):
                # A session id presented by someone else: never hand over another identity's tokens.
                await audit_foreign_session(self.gw, principal, request.method, request.url.path)
                raise AuthError("this MCP session belongs to another identity")
            if session is None or session.closed:
                session = await self.gw.open_session(principal, session_id=None)
                self._by_key[key] = session
                if transport_id:
                    self.owners.setdefault(transport_id, identity)
                    self._close_with_transport(ctx, key, session)
        return session

    def _close_with_transport(self, ctx: ServerRequestContext[Any, Any], key: str, session: AgentSession) -> None:
        """End the agent session (and its upstream processes) when its MCP transport session ends
        (DELETE, or the SDK's idle timeout, set from ``limits.session_idle_timeout_s``)."""
        connection = getattr(ctx.session, "_connection", None)  # the SDK exposes no public accessor
        if connection is None:
            return
        transport_id = key.removeprefix("mcp:")

        async def close() -> None:
            self._by_key.pop(key, None)
            self.owners.pop(transport_id, None)
            await self.gw.close_session(session)

        connection.exit_stack.push_async_callback(close)

    async def reap_idle(self) -> None:
        """End agent sessions without a request for longer than the timeout; runs forever.

        The SDK ends idle transport sessions too, but not while the client holds its GET stream
        open, and 2026-07-28 clients have no transport session: so Veil reaps by its own clock.
        A later request on a kept transport session gets a fresh agent session."""
        timeout = self.gw.config.limits.session_idle_timeout_s
        while True:
            await anyio.sleep(min(timeout / 4, 30.0))
            now = time.monotonic()
            async with self._lock:
                idle = [(k, s) for k, s in self._by_key.items() if not s.busy and now - s.last_used > timeout]
                for key, _ in idle:
                    del self._by_key[key]
            for _, session in idle:
                with anyio.CancelScope(shield=True):
                    await self.gw.close_session(session, reason="idle")


async def audit_foreign_session(gateway: Gateway, principal: Principal, method: str, path: str) -> None:
    await gateway.record(
        ev.AuditEvent(
            kind=ev.AUTH_FAILED,
            outcome=ev.DENIED,
            principal=principal.name,
            roles=sorted(principal.roles),
            tenant=principal.tenant,
            policy_version=gateway.policy.version,
            detail={"reason": "session_of_another_identity", "http_method": method, "path": path},
        )
    )


class AuthMiddleware:
    """ASGI middleware: authenticate, audit refusals, pass the principal on in the scope, and
    keep every MCP transport session (POST, GET, DELETE) to the identity that initialised it."""

    def __init__(
        self, app: Any, gateway: Gateway, authenticate: Any, sessions: HttpSessions, stop: Stop | None = None
    ) -> None:
        self.app = app
        self.gw = gateway
        self.authenticate = authenticate
        self.sessions = sessions
        self.stop = stop or Stop(gateway.config.limits.shutdown_grace_s)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.stop.draining and scope.get("method") != "DELETE":
            error = self.stop.error()  # not audited: like a closed port, it never reached the gateway
            await _refuse(send, 503, error.code, error.message, [(b"retry-after", b"1"), (b"connection", b"close")])
            return
        if scope.get("method") != "POST":
            await self._serve(scope, receive, send)
            return
        self.stop.in_flight += 1  # POST requests being served: a stop waits for them
        try:
            await self._serve(scope, receive, send)
        finally:
            self.stop.in_flight -= 1

    async def _serve(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
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
            await _refuse(send, 401, exc.code, f"unauthorized: {exc.message}")
            return
        identity = identity_of(principal)
        transport_id = headers.get("mcp-session-id")
        if transport_id is not None:
            owner = self.sessions.owners.get(transport_id)
            if owner is not None and owner != identity:
                await audit_foreign_session(self.gw, principal, scope.get("method", "?"), scope.get("path", ""))
                await _refuse(send, 404, AuthError.code, "unknown MCP session for this identity")
                return
        scope.setdefault("state", {})["veil_principal"] = principal

        async def bind_new_session(message: dict[str, Any]) -> None:
            # The transport session id is issued on the initialize response: bind it to its identity.
            if transport_id is None and message["type"] == "http.response.start":
                for k, v in message.get("headers", []):
                    if k.decode("latin-1").lower() == "mcp-session-id":
                        self.sessions.owners.setdefault(v.decode("latin-1"), identity)
            await send(message)

        await self.app(scope, receive, bind_new_session)


async def _refuse(
    send: Any, status: int, code: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")]
            + (headers if headers is not None else [(b"www-authenticate", b'Bearer realm="veil"')]),
        }
    )
    await send({"type": "http.response.body", "body": body})


def make_authenticator(gateway: Gateway):
    """Bearer credentials -> Principal, via API keys or JWTs (``auth`` in the config).

    With ``auth.required: false`` a request without credentials runs as the configured principal;
    a request with wrong credentials is still refused."""
    from veil.auth import Authenticator

    cfg = gateway.config.auth
    fallback = None if cfg.required else configured_principal(gateway)
    authenticator = Authenticator(gateway.engine, cfg, fallback=fallback)

    async def authenticate(header: str | None) -> Principal:
        if header is None or not header.strip():
            # No credential: the fallback principal or a refusal, decided without I/O; a thread
            # hand-off for it cost more than the answer (every request of every call).
            return authenticator.authenticate(header)
        return await gateway.in_thread(authenticator.authenticate, header)  # a key lookup, a JWT check

    return authenticate


def http_app(gateway: Gateway, host: str, *, stop: Stop | None = None) -> tuple[Any, Any, HttpSessions]:
    """The MCP app behind authentication, with /metrics inside it and the unauthenticated probes
    (/healthz, /readyz) in front of it (the stack is drawn in veil/ops/http.py); the returned app's
    ``monitor`` holds the probes' state."""
    sessions = HttpSessions(gateway)
    front = Front(gateway, sessions)
    app = streamable_http_app(
        front.server,
        host=host,
        session_idle_timeout=gateway.config.limits.session_idle_timeout_s,
        # Room for the JSON-RPC envelope, so oversized arguments get Veil's message naming the limit;
        # far larger bodies are refused by the transport before they are read.
        max_request_body_size=gateway.config.limits.max_message_bytes + 64 * 1024,
    )
    auth = AuthMiddleware(
        MetricsRoute(app, gateway.config.observability.metrics), gateway, make_authenticator(gateway), sessions, stop
    )
    return PublicRoutes(with_console(gateway, auth), Monitor(gateway, stop)), app, sessions


def with_console(gateway: Gateway, app: Any) -> Any:
    """``/console`` goes to the web console (its own login, CSRF and roles: docs/console.md);
    everything else to ``app``."""
    from veil.console import ConsoleServices, create_app

    console = create_app(ConsoleServices.from_gateway(gateway))

    async def dispatch(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/console" or path.startswith("/console/")):
            await console(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch


async def serve_http(
    gateway: Gateway,
    host: str,
    port: int,
    *,
    stop: Stop | None = None,
    task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled, ``server.should_exit``, or ``stop`` is requested (then new requests
    get 503, the calls in flight finish within the grace period, and the sessions are closed; see
    ``veil.proxy.lifecycle``); ``task_status`` gets the uvicorn server once it is listening (for
    ``TaskGroup.start``)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # Signals are Veil's (veil.proxy.lifecycle): uvicorn would re-raise SIGTERM after
            # serving, killing the process before the gateway closes.
            yield

    stop = stop or Stop(gateway.config.limits.shutdown_grace_s)
    wrapped, inner, sessions = http_app(gateway, host, stop=stop)
    # log_config=None: uvicorn's records go through Veil's handler (text or JSON, veil/ops/logs.py).
    # http="httptools": the C parser (uvicorn's default when installed, named so a missing one is
    # an ImportError at start rather than a silent fall-back to the slower h11).
    config = uvicorn.Config(
        wrapped,
        host=host,
        port=port,
        http="httptools",
        log_level="warning",
        lifespan="off",
        access_log=False,
        log_config=None,
    )
    server = Server(config)
    monitor = wrapped.monitor
    async with inner.router.lifespan_context(inner), ops.running(gateway, monitor), anyio.create_task_group() as tg:

        async def serve() -> None:
            await server.serve()
            tg.cancel_scope.cancel()  # stops the idle reaper and the heartbeat with the server

        async def on_stop() -> None:
            await stop.requested.wait()
            for listener in getattr(server, "servers", []):
                listener.close()  # no new connections

            def in_flight() -> int:
                return max(stop.in_flight, busy_sessions(gateway))  # a POST carries at most one call

            await stop.drain(in_flight)
            await end_sessions(gateway, in_flight)
            server.force_exit = True  # open GET streams are not waited for
            server.should_exit = True

        tg.start_soon(serve)
        tg.start_soon(sessions.reap_idle)
        tg.start_soon(monitor.heartbeat)  # /healthz: is the event loop responsive?
        tg.start_soon(on_stop)
        while not server.started:
            if server.should_exit:
                raise OSError(f"could not listen on {host}:{port}")
            await anyio.sleep(0.01)
        task_status.started(server)
