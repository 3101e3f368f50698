"""Connections to upstream MCP servers, one per (agent session, upstream).

Why per session: an upstream's notifications, progress, sampling and elicitation requests carry
no reference to the agent request that caused them. Giving every agent session its own upstream
connections makes every message on a connection unambiguously that session's, so it can be
tokenised in the right scope and relayed to the right agent. Connections open lazily, on the
first use of that upstream in the session.

Each connection is owned by one long-lived task (anyio requires a transport's cancel scopes to
be entered and left in the same task); requests from any task go through the open ``Client``.
A connection that fails is closed and reopened on the next call: the failing call gets a clear
error naming the upstream (docs/deployment.md#an-upstream-dies-mid-call):

* the upstream dies or goes away during a call (a stdio server's process exits or is killed, an
  HTTP server closes the connection or stops answering): that call fails with ``UpstreamError``
  (reason ``connection_lost``) and is not retried, since Veil cannot know whether the upstream
  acted on it. The next call to that upstream starts a new process (stdio) or connects again
  (HTTP); the session's other upstreams are not touched.
* it cannot be started or reached: ``reason: unreachable``. After two failed starts in a row,
  further attempts wait 1, 2, 4 ... up to 30 s (``reason: backoff``: the call fails at once,
  saying when the next attempt is), so an upstream that crashes at start is not respawned on
  every call; one successful start resets it.

What the upstream wrote to stderr stays in its private log file (it may hold raw values); error
messages carry Veil's words and the failure's class, never the upstream's text unless tokenised.

Connections use the handshake-era protocol (``initialize``), whatever the upstream also speaks:
only on it can an upstream send Veil the server-to-client requests Veil relays to the agent
(sampling, elicitation, roots). On 2026-07-28 an upstream asks through InputRequiredResult, which
the SDK's client does not answer yet. Veil's upstream client declares the roots capability and
asks the agent for its roots when an upstream wants them.
"""

from __future__ import annotations

import logging
import os
import time
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
from veil.proxy.upstream_http import UpstreamHttp

log = logging.getLogger(__name__)

# Errors that mean the connection itself is gone, not that the upstream refused one request.
_CONNECTION_GONE = (types.CONNECTION_CLOSED,)
# Failed starts in a row before attempts are spaced out, and the longest wait between attempts.
BACKOFF_AFTER = 2
BACKOFF_MAX_S = 30.0


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
        http: UpstreamHttp | None = None,
    ) -> None:
        self.name = name
        self._http = http
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
        self.failed_starts = 0  # in a row; reset by a successful start
        self._retry_at = 0.0  # monotonic time before which no start is attempted (backoff)

    # -- lifecycle -----------------------------------------------------------------------------

    async def client(self) -> Client:
        """The open client, connecting first if needed."""
        async with self._lock:
            if self._client is None:
                wait = self._retry_at - time.monotonic()
                if wait > 0:
                    raise UpstreamError(
                        f"upstream '{self.name}' is unreachable: it failed to start {self.failed_starts} times in a "
                        "row; the next "
                        f"attempt is in {wait:.0f}s. Check upstreams.{self.name} in the config and its log; "
                        "other upstreams keep working.",
                        reason="backoff",
                    )
                try:
                    # The timeout lives here, in the caller: a cancel scope around entering the client
                    # inside _own would be exited out of order with the transport's task groups.
                    with anyio.fail_after(self._timeout_s):
                        self._client = await self._tg.start(self._own)
                except BaseException as exc:  # transports raise many types (OSError, httpx, MCPError)
                    if isinstance(exc, anyio.get_cancelled_exc_class()):
                        raise
                    self._start_failed()
                    if isinstance(exc, UpstreamError):
                        raise
                    raise UpstreamError(
                        f"upstream '{self.name}' is unreachable ({_describe(exc)}). "
                        f"Check upstreams.{self.name} in the config; other upstreams keep working.",
                        reason="unreachable",
                    ) from None
                self.failed_starts = 0
                self._retry_at = 0.0
            return self._client

    def _start_failed(self) -> None:
        self.failed_starts += 1
        if self.failed_starts >= BACKOFF_AFTER:
            delay = min(BACKOFF_MAX_S, 2.0 ** (self.failed_starts - BACKOFF_AFTER))
            self._retry_at = time.monotonic() + delay

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
        headers = dict(cfg.headers) or None
        # The gateway's clients share a TLS context and keep connections (veil/proxy/upstream_http.py).
        client = self._http.client(headers) if self._http is not None else create_mcp_http_client(headers)
        http = await stack.enter_async_context(client)
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
                raise self._lost(what, "the connection closed") from None
            raise
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError) as exc:
            await self.mark_dead()
            raise self._lost(what, type(exc).__name__) from None
        except TimeoutError:
            raise UpstreamError(
                f"upstream '{self.name}' did not answer {what} within {self._timeout_s:g}s (limits.upstream_timeout_s)",
                reason="timeout",
            ) from None

    def _lost(self, what: str, how: str) -> UpstreamError:
        if isinstance(self.config, StdioUpstream):
            gone, then = "its process exited or was killed", "It is restarted on the next call"
        else:
            gone, then = "its server went away", "Veil connects to it again on the next call"
        return UpstreamError(
            f"upstream '{self.name}' stopped during {what} ({how}: {gone}); the call may or may not have "
            f"taken effect there and is not retried. {then}; other upstreams keep working.",
            reason="connection_lost",
        )

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
