"""The agent-facing Streamable HTTP app, answering a handshake-era request as one JSON body unless
something has to precede its answer.

The MCP SDK (pinned, mcp 2.3.0) decides a POST's response type up front: in SSE mode every request
opens a Server-Sent Events stream (a response object, a task group with a ping task, a disconnect
listener and a writer task, a memory stream per event); in JSON mode nothing but the answer can
ever reach the agent, so an upstream's progress notifications, log messages, sampling and
elicitation requests would be lost. Veil wants both: most calls are answered with nothing before
the answer, and that stream machinery was a fifth of Veil's CPU per call under 50 agents
(bench/RESULTS.md, "Throughput"). So a request is dispatched first and its response type is chosen
by what comes back first:

* its answer, within ``JSON_WINDOW_S``: one ``application/json`` body, as JSON mode would send;
* anything else for it first (a notification or request related to it), or nothing within the
  window (a long call): an SSE stream that starts with that message, as SSE mode would send, and
  pings while the call runs so no idle-read timeout cuts it.

The 2026-07-28 (stateless) requests take the SDK's own path, which already defers this way. With
an event store (resumability), or for ``initialize``, the SDK's SSE path runs unchanged.
"""

from __future__ import annotations

import logging
from functools import partial
from http import HTTPStatus
from typing import Any
from uuid import uuid4

import anyio
import pydantic_core
from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import (
    CONTENT_TYPE_SSE,
    MCP_SESSION_ID_HEADER,
    REQUEST_STREAM_BUFFER_SIZE,
    EventMessage,
    StreamableHTTPServerTransport,
)
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types import (
    DEFAULT_NEGOTIATED_VERSION,
    INTERNAL_ERROR,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

#: How long a request's answer may take and still go back as one JSON body. Well inside the read
#: timeouts clients use while waiting for response headers (30 s in the SDK's default client); a
#: call that runs longer gets its SSE stream (and its pings) after this long.
JSON_WINDOW_S = 10.0

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class LazySseTransport(StreamableHTTPServerTransport):
    """A session's transport whose request POSTs answer as JSON unless something precedes the answer."""

    async def _handle_post_request(self, scope: Scope, request: Request, receive: Receive, send: Send) -> None:
        message = await self._deferrable(request)
        if message is None:
            # Anything unusual (a notification, initialize, a body or header the SDK refuses, an
            # event store's priming event): the SDK's own handling, which reads the cached body.
            await super()._handle_post_request(scope, request, receive, send)
            return
        if not await self._validate_accept_header(request, scope, send):
            return
        if not await self._validate_request_headers(request, send):
            return
        await self._answer_lazily(scope, request, receive, send, message)

    async def _deferrable(self, request: Request) -> JSONRPCRequest | None:
        """The request to answer lazily, or None when the SDK's path should take this POST."""
        if self.is_json_response_enabled or self._event_store is not None or not self._check_content_type(request):
            return None
        try:
            message = jsonrpc_message_adapter.validate_python(
                pydantic_core.from_json(await request.body()), by_name=False
            )
        except (ValueError, ValidationError):
            return None
        if not isinstance(message, JSONRPCRequest) or message.method == "initialize":
            return None
        return message

    async def _answer_lazily(
        self, scope: Scope, request: Request, receive: Receive, send: Send, message: JSONRPCRequest
    ) -> None:
        writer = self._read_stream_writer
        if writer is None:  # connect() has not run: the SDK's path says so
            await super()._handle_post_request(scope, request, receive, send)
            return
        request_id = str(message.id)
        protocol_version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER, DEFAULT_NEGOTIATED_VERSION)
        self._request_streams[request_id] = anyio.create_memory_object_stream[EventMessage](REQUEST_STREAM_BUFFER_SIZE)
        reader = self._request_streams[request_id][1]
        try:
            await writer.send(self._create_session_message(message, request, request_id, protocol_version))
            first: EventMessage | None = None
            with anyio.move_on_after(JSON_WINDOW_S):
                first = await reader.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            # The session ended with this request in flight: no answer will come.
            await self._clean_up_memory_streams(request_id)
            response = self._create_error_response(
                "Session terminated before the request completed", HTTPStatus.INTERNAL_SERVER_ERROR, INTERNAL_ERROR
            )
            await response(scope, receive, send)
            return
        except BaseException:
            await self._clean_up_memory_streams(request_id)
            raise
        if first is not None and isinstance(first.message, JSONRPCResponse | JSONRPCError):
            await self._clean_up_memory_streams(request_id)
            await self._create_json_response(first.message)(scope, receive, send)
            return
        await self._stream(scope, receive, send, request_id, first)

    async def _stream(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, first: EventMessage | None
    ) -> None:
        """The rest of the request's messages as the SDK's SSE response, ``first`` leading."""
        sse_writer, sse_reader = anyio.create_memory_object_stream[dict[str, Any]](0)
        self._sse_stream_writers[request_id] = sse_writer
        reader = self._request_streams[request_id][1]
        leading = self._create_event_data(first) if first is not None else None
        headers = {
            "Cache-Control": "no-cache, no-transform",
            "Connection": "keep-alive",
            "Content-Type": CONTENT_TYPE_SSE,
            **({MCP_SESSION_ID_HEADER: self.mcp_session_id} if self.mcp_session_id else {}),
        }
        response = EventSourceResponse(
            content=sse_reader,
            # The SDK's writer sends its "priming event" before the stream's messages: here, the
            # message that came first.
            data_sender_callable=partial(self._run_sse_writer, request_id, sse_writer, reader, leading),
            headers=headers,
        )
        try:
            await response(scope, receive, send)
        except Exception:
            logger.exception("SSE response error")
            await sse_writer.aclose()
            await self._clean_up_memory_streams(request_id)
        finally:
            await sse_reader.aclose()


class LazySseSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, giving each new session a ``LazySseTransport``."""

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        # Mirrors StreamableHTTPSessionManager._admit_session of mcp 2.3.0 but for the class;
        # tests/proxy/test_lazy_sse.py fails if a session's answers stop coming back as JSON.
        if self.max_sessions is not None and len(self._server_instances) >= self.max_sessions:
            return None
        transport = LazySseTransport(
            mcp_session_id=uuid4().hex,
            is_json_response_enabled=self.json_response,
            event_store=self.event_store,
            security_settings=self.security_settings,
            retry_interval=self.retry_interval,
            idle_timeout=self.session_idle_timeout,
        )
        session_id = transport.mcp_session_id
        assert session_id is not None
        if requestor is not None:
            self._session_owners[session_id] = requestor
        self._server_instances[session_id] = transport
        return transport


def streamable_http_app(
    server: Server[Any], *, host: str, session_idle_timeout: float | None, max_request_body_size: int
) -> Starlette:
    """``/mcp`` served by a ``LazySseSessionManager``: what ``Server.streamable_http_app`` builds
    without authentication (Veil authenticates in front of it), with the same DNS-rebinding
    protection when bound to a loopback address."""
    security = None
    if host in _LOOPBACK_HOSTS:
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    manager = LazySseSessionManager(
        app=server,
        security_settings=security,
        session_idle_timeout=session_idle_timeout,
        max_request_body_size=max_request_body_size,
    )
    return Starlette(
        routes=[Route("/mcp", endpoint=StreamableHTTPASGIApp(manager))],
        lifespan=lambda app: manager.run(),
    )
