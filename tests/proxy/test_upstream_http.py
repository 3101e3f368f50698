"""The clients of HTTP upstream connections keep their connection across calls: a POST answered
with an SSE stream that the reader leaves after its first event (as the MCP SDK does after the
response) is read to its end on close, so the next request reuses the connection; a stream that
does not end is closed after the bound, as before. Against a real socket server on loopback."""

from __future__ import annotations

import asyncio
import re

import pytest

from veil.proxy import upstream_http
from veil.proxy.upstream_http import UpstreamHttp

EVENT = b'event: message\r\ndata: {"jsonrpc": "2.0", "id": 1, "result": {}}\r\n\r\n'


class SseServer:
    """Answers every POST with a chunked SSE body of one event; the body ends once the client
    has left the stream (``left`` is set), so the end arrives after the reader stopped, as it
    can from a real upstream; or it never ends."""

    def __init__(self, *, ends: bool) -> None:
        self.ends = ends
        self.accepted = 0
        self.requests = 0
        self.left = asyncio.Event()
        self.handlers: list[asyncio.Task[None]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
                await reader.readexactly(int(length.group(1)) if length else 0)
                self.requests += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                    + b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
                )
                await writer.drain()
                if not self.ends:
                    await reader.read()  # until the client closes the connection
                    return
                await self.left.wait()
                self.left.clear()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def post_and_leave_early(ends: bool, calls: int) -> SseServer:
    server = SseServer(ends=ends)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with UpstreamHttp().client({"x-upstream-header": "kept"}) as client:
            for _ in range(calls):
                async with client.stream("POST", f"http://127.0.0.1:{port}/mcp", json={"id": 1}) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            break  # what the SDK does once it has the response
                    server.left.set()
        await asyncio.wait_for(asyncio.gather(*server.handlers), 30)  # a hang guard
    finally:
        listener.close()
        await listener.wait_closed()
    return server


def test_a_call_leaves_its_connection_for_the_next() -> None:
    server = asyncio.run(post_and_leave_early(ends=True, calls=3))
    assert server.requests == 3
    assert server.accepted == 1


def test_a_stream_that_does_not_end_is_closed_after_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_http, "DRAIN_S", 0.05)
    server = asyncio.run(post_and_leave_early(ends=False, calls=2))
    assert server.requests == 2
    assert server.accepted == 2  # nothing is waited for longer than the bound; a new connection


def test_clients_share_one_tls_context_and_nothing_else() -> None:
    http = UpstreamHttp()
    a, b = http.client({"h": "1"}), http.client(None)
    assert a.headers.get("h") == "1" and "h" not in b.headers
    assert a.cookies is not b.cookies
    assert http._tls is not None  # made once, on the first client
