"""HTTP clients for the connections to upstreams: one TLS context for the whole process, and
connections kept for the next call.

Every (agent session, upstream) connection has its own MCP client and its own ``httpx2`` client
with its own connection pool (its own headers and cookies, so nothing an upstream set for one
session is sent for another). What they share is the TLS context: before, each session's client
built one (the certificate store loaded and parsed), even for an ``http://`` upstream. The pools
stay per session on purpose: httpcore's pool walks all its connections on every request (and
probes each idle socket), so one pool for fifty sessions' connections cost more than it saved.

Connections are kept for reuse after a call. An upstream answers a POST with an SSE stream that
it ends right after the response; the MCP SDK stops reading at the response and closes the
response early, which makes the pool drop the connection: a new TCP connection per call. Here a
POST response closed early first reads what is left of its body (at most ``DRAIN_BYTES``, for at
most ``DRAIN_S``; the caller already has its answer, so nobody waits for this) and the
connection goes back to the session's pool; if the stream does not end in time, it is closed as
before.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import anyio
import httpx2
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT

#: What is read of a POST response's remaining body when it is closed early, and for how long.
DRAIN_BYTES = 64 * 1024
DRAIN_S = 0.5


class UpstreamHttp:
    """Makes the HTTP client of each connection to an HTTP upstream; holds the shared TLS context."""

    def __init__(self) -> None:
        self._tls: ssl.SSLContext | None = None

    def client(self, headers: dict[str, str] | None) -> httpx2.AsyncClient:
        """A client with the SDK's default timeouts (as ``create_mcp_http_client`` sets them),
        the process's TLS context, and connections that outlive a call."""
        if self._tls is None:
            self._tls = httpx2.create_ssl_context()  # what each client made for itself before
        return httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT),
            transport=_Reusing(httpx2.AsyncHTTPTransport(verify=self._tls)),
        )


class _Reusing(httpx2.AsyncBaseTransport):
    """A transport whose POST responses, closed early, are read to their end first."""

    def __init__(self, transport: httpx2.AsyncHTTPTransport) -> None:
        self._transport = transport

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._transport.handle_async_request(request)
        if request.method == "POST":
            response.stream = _Drained(response.stream)  # type: ignore[arg-type]
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()


class _Drained(httpx2.AsyncByteStream):
    """A response body that, closed before its end, reads the rest first (bounded) so that its
    connection can serve the next request."""

    def __init__(self, stream: httpx2.AsyncByteStream) -> None:
        self._stream = stream
        self._rest: AsyncIterator[bytes] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # One iterator over the body, kept: closing continues it where the reader stopped.
        self._rest = rest = aiter(self._stream)
        async for chunk in rest:
            yield chunk

    async def aclose(self) -> None:
        rest, self._rest = self._rest, None
        if rest is not None:
            left = DRAIN_BYTES
            with anyio.move_on_after(DRAIN_S):
                async for chunk in rest:
                    left -= len(chunk)
                    if left < 0:
                        break
        await self._stream.aclose()
