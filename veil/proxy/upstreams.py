"""Connections to upstream MCP servers, one per (agent session, upstream).

Why per session: an upstream's notifications, progress, sampling and elicitation requests carry
no reference to the agent request that caused them. Giving every agent session its own upstream
connections makes every message on a connection unambiguously that session's, so it can be
tokenised in the right scope and relayed to the right agent. Connections open lazily, on the
first use of that upstream in the session.

Each connection is owned by one long-lived task (anyio requires a transport's cancel scopes to
be entered and left in the same task); requests from any task go through the open ``Client``.
A connection that fails is closed and reopened on the next call: the failing call gets a clear
error naming the upstream.

Connections use the handshake-era protocol (``initialize``), whatever the upstream also speaks:
only on it can an upstream send Veil the server-to-client requests Veil relays to the agent
(sampling, elicitation, roots). On 2026-07-28 an upstream asks through InputRequiredResult, which
the SDK's client does not answer yet. Veil's upstream client declares the roots capability and
asks the agent for its roots when an upstream wants them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol

import anyio
import mcp_types as types
from anyio.abc import TaskGroup, TaskStatus
from mcp.client.client import Client
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import event_to_notification
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from veil.config import HttpUpstream, StdioUpstream, UpstreamConfig
from veil.errors import UpstreamError

log = logging.getLogger(__name__)

# Errors that mean the connection itself is gone, not that the upstream refused one request.
_CONNECTION_GONE = (types.CONNECTION_CLOSED,)


class UpstreamRelay(Protocol):
    """Where messages an upstream sends on its own initiative go (the agent session relays them)."""

    async def on_log(self, upstream: str, params: types.LoggingMessageNotificationParams) -> None: ...
    async def on_notification(self, upstream: str, notification: types.ServerNotification) -> None: ...
    async def on_sampling(
        self, upstream: str, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.ErrorData: ...
    async def on_elicitation(
        self, upstream: str, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData: ...


# The protocol era of upstream connections (see the module docstring).
UPSTREAM_MODE = "legacy"


class UpstreamConnection:
    """One MCP client connection to one upstream, opened on demand and reopened after failure."""

    def __init__(
        self,
        name: str,
        config: UpstreamConfig,
        relay: UpstreamRelay,
        task_group: TaskGroup,
        *,
        log_dir: Path,
        timeout_s: float,
    ) -> None:
        self.name = name
        self.config = config
        self._relay = relay
        self._tg = task_group
        self._log_dir = log_dir
        self._timeout_s = timeout_s
        self._client: Client | None = None
        self._closed: anyio.Event | None = None
        self._ended: anyio.Event | None = None  # set when the owning task has finished
        self._lock = anyio.Lock()
        self.restarts = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def client(self) -> Client:
        """The open client, connecting first if needed."""
        async with self._lock:
            if self._client is None:
                try:
                    # The timeout lives here, in the caller: a cancel scope around entering the client
                    # inside _own would be exited out of order with the transport's task groups.
                    with anyio.fail_after(self._timeout_s):
                        self._client = await self._tg.start(self._own)
                except UpstreamError:
                    raise
                except BaseException as exc:  # transports raise many types (OSError, httpx, MCPError)
                    if isinstance(exc, anyio.get_cancelled_exc_class()):
                        raise
                    raise UpstreamError(
                        f"upstream '{self.name}' is unreachable ({_describe(exc)}). "
                        f"Check upstreams.{self.name} in the config; other upstreams keep working."
                    ) from None
            return self._client

    async def _own(self, *, task_status: TaskStatus[Client]) -> None:
        closed = anyio.Event()
        self._closed = closed
        self._ended = ended = anyio.Event()
        started = False
        try:
            async with AsyncExitStack() as stack:
                client = Client(
                    await self._transport(stack),
                    mode=UPSTREAM_MODE,
                    read_timeout_seconds=self._timeout_s,
                    logging_callback=self._on_log,
                    message_handler=self._on_message,
                    sampling_callback=self._on_sampling,
                    elicitation_callback=self._on_elicitation,
                    list_roots_callback=self._on_list_roots,
                    log_level="debug",
                    cache=None,
                )
                await stack.enter_async_context(client)
                task_status.started(client)
                started = True
                async with anyio.create_task_group() as tg:
                    if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                        tg.start_soon(self._listen, client)
                    await closed.wait()
                    tg.cancel_scope.cancel()
        except Exception as exc:
            if not started:
                raise
            # The transport died under us (process exited, HTTP server gone). The owning task must
            # not take the gateway's task group down with it: drop the client, reconnect later.
            log.warning("upstream '%s' connection ended (%s)", self.name, _describe(exc))
            if self._closed is closed:
                self._client = None
                self._closed = None
        finally:
            ended.set()

    async def _listen(self, client: Client) -> None:
        """2026-07-28 upstreams announce list changes on a subscriptions/listen stream, not as
        notifications: listen, and relay each event as the equivalent notification."""
        try:
            async with client.listen(
                tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True
            ) as subscription:
                async for event in subscription:
                    await self._relay.on_notification(self.name, event_to_notification(event, {}))
        except Exception as exc:  # no listen support, or the stream dropped: the calls still work
            log.info("upstream '%s': no change notifications (%s)", self.name, type(exc).__name__)

    async def _transport(self, stack: AsyncExitStack) -> Any:
        cfg = self.config
        if isinstance(cfg, StdioUpstream):
            self._log_dir.mkdir(parents=True, exist_ok=True)
            # The upstream's stderr is the upstream's own log and may hold raw values: it goes to a
            # private file, never to Veil's stderr.
            errlog_path = self._log_dir / f"upstream-{self.name}.log"
            fd = os.open(errlog_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            errlog = stack.enter_context(os.fdopen(fd, "a", encoding="utf-8"))
            params = StdioServerParameters(
                command=cfg.command, args=list(cfg.args), env=dict(cfg.env) or None, cwd=cfg.cwd
            )
            return stdio_client(params, errlog=errlog)
        assert isinstance(cfg, HttpUpstream)
        http = await stack.enter_async_context(create_mcp_http_client(headers=dict(cfg.headers) or None))
        return streamable_http_client(cfg.url, http_client=http)

    async def mark_dead(self) -> None:
        """Drop the connection so the next call reconnects (a restarted stdio server is a new process)."""
        async with self._lock:
            if self._closed is not None:
                self._closed.set()
            self._client = None
            self._closed = None
            self.restarts += 1

    async def aclose(self, *, wait: bool = False) -> None:
        """Close the connection; with ``wait``, return once it has ended (a stdio upstream's
        process has exited), bounded by the upstream timeout."""
        if self._closed is not None:
            self._closed.set()
        self._client = None
        ended = self._ended
        if wait and ended is not None:
            with anyio.move_on_after(self._timeout_s):
                await ended.wait()

    # -- requests ------------------------------------------------------------------------------

    async def request(self, what: str, call: Callable[[Client], Awaitable[Any]]) -> Any:
        """Run one request; a dead connection is dropped and the caller told in plain words."""
        client = await self.client()
        try:
            return await call(client)
        except MCPError as exc:
            if exc.code in _CONNECTION_GONE:
                await self.mark_dead()
                raise UpstreamError(
                    f"upstream '{self.name}' closed the connection during {what}; it will be restarted on the next call"
                ) from None
            raise
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError) as exc:
            await self.mark_dead()
            raise UpstreamError(
                f"upstream '{self.name}' failed during {what} ({type(exc).__name__}); "
                "it will be restarted on the next call"
            ) from None
        except TimeoutError:
            raise UpstreamError(
                f"upstream '{self.name}' did not answer {what} within {self._timeout_s:g}s (limits.upstream_timeout_s)"
            ) from None

    # -- callbacks from the upstream -----------------------------------------------------------

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        await self._relay.on_log(self.name, params)

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            log.warning("upstream '%s' sent a malformed message (%s)", self.name, type(message).__name__)
            return
        await self._relay.on_notification(self.name, message)

    async def _on_sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.ErrorData:
        return await self._relay.on_sampling(self.name, params)

    async def _on_elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        return await self._relay.on_elicitation(self.name, params)

    async def _on_list_roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        ask = getattr(self._relay, "on_roots", None)  # a relay without it has no agent to ask
        if ask is None:
            return types.ErrorData(code=types.METHOD_NOT_FOUND, message="no agent roots are available to this upstream")
        return await ask(self.name)


def _describe(exc: BaseException) -> str:
    """A short, payload-free description of a connection failure."""
    if isinstance(exc, BaseExceptionGroup):
        inner = exc.exceptions[0] if exc.exceptions else exc
        return _describe(inner)
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exc.filename}"
    if isinstance(exc, TimeoutError):
        return "no answer to the handshake in time"
    if isinstance(exc, MCPError):
        return f"MCP error {exc.code}"
    return type(exc).__name__
