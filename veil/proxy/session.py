"""An agent session: who is calling, the token scope, and that session's upstream connections.

Upstream messages that arrive on the session's connections on their own (log lines, progress,
list-changed, sampling and elicitation requests) are tokenised in the session's scope and
relayed to the agent over the front connection the session last used.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from veil.audit import events as ev
from veil.errors import InvalidArguments, ToolNotFound, UpstreamError, VeilError
from veil.principal import Principal
from veil.proxy.catalogue import CatalogueEntry, gateway_name
from veil.proxy.shaping import from_wire, to_wire, withhold_binary
from veil.proxy.upstreams import UpstreamConnection
from veil.tokenizer import Scope

if TYPE_CHECKING:
    from mcp.server.session import ServerSession

    from veil.proxy.gateway import Gateway

log = logging.getLogger(__name__)


def scope_for(kind: str, session_id: str, principal: Principal) -> Scope:
    """The vault scope tokens are deterministic within (policy ``tokens.scope``)."""
    if kind == "principal":
        return Scope(f"principal:{principal.name}")
    if kind == "tenant":
        return Scope(f"tenant:{principal.tenant or 'default'}")
    return Scope(f"session:{session_id}")


class FrontChannel:
    """The agent request a session is serving: upstream messages that belong to it ride its
    response stream (on Streamable HTTP) or the connection (stdio)."""

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

    async def request(self, request: Any, result_type: Any) -> Any:
        metadata = ServerMessageMetadata(related_request_id=self.request_id)
        return await self.server_session.send_request(request, result_type, metadata=metadata)

    async def notify(self, notification: Any) -> None:
        await self.server_session.send_notification(notification)


class AgentSession:
    """One agent's session: its identity, token scope, upstream connections, and the agent
    requests in flight (where upstream messages are relayed)."""

    def __init__(self, gateway: Gateway, principal: Principal, *, session_id: str | None = None) -> None:
        self.gw = gateway
        self.id = session_id or uuid.uuid4().hex
        self.principal = principal
        self.identity = identity_of(principal)
        self.scope = scope_for(gateway.token_scope_kind(), self.id, principal)
        self._connections: dict[str, UpstreamConnection] = {}
        self._tools: dict[str, list[CatalogueEntry]] = {}
        self._tools_lock = anyio.Lock()
        self._requests: list[FrontChannel] = []  # agent requests in flight, oldest first
        self.front: FrontChannel | None = None  # the last agent request's channel (standing channel)
        self._queued: list[tuple[str, Any]] = []  # log messages that arrived between requests
        self._progress: dict[str, Any] = {}  # progress token -> the agent request's context
        self._rounds: dict[str, _InputRound] = {}  # 2026-07-28 calls waiting for the agent's input
        self.log_level: Any = None
        self.last_used = time.monotonic()
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

    # -- agent requests in flight ----------------------------------------------------------------

    async def enter_request(self, ctx: Any) -> None:
        """An agent request starts: upstream messages now ride it; queued log messages go first."""
        channel = FrontChannel(ctx.session, ctx.request_id)
        self._requests.append(channel)
        self.front = channel
        self.last_used = time.monotonic()
        queued, self._queued = self._queued, []
        for upstream, params in queued:
            await self._send_log(channel, upstream, params)

    @property
    def busy(self) -> bool:
        return bool(self._requests)

    def leave_request(self, ctx: Any) -> None:
        self._requests = [c for c in self._requests if c.request_id != ctx.request_id]
        self.last_used = time.monotonic()

    def open_progress(self, ctx: Any) -> str | None:
        """A progress token for an upstream call made for this agent request (None: no agent
        request, e.g. a call from execute_code). Veil's own strings, never a JSON-RPC request id."""
        if ctx is None:
            return None
        token = f"veil-progress-{uuid.uuid4().hex}"
        self._progress[token] = _ProgressRoute(ctx)
        return token

    async def close_progress(self, token: str | None) -> None:
        """The call is answered: wait (bounded) for progress already received to be relayed, so
        the agent gets it before the result, then stop routing the token."""
        route = self._progress.get(token) if token is not None else None
        if route is None:
            return
        with anyio.move_on_after(PROGRESS_DRAIN_S):
            while route.relaying:
                await route.idle.wait()
        self._progress.pop(token or "", None)

    def progress_target(self, token: Any) -> Any:
        """The agent request an upstream's progress notification belongs to, or None."""
        route = self._progress.get(token) if isinstance(token, str) else None
        return route.ctx if route is not None else None

    @contextlib.asynccontextmanager
    async def relaying_progress(self, token: Any) -> AsyncIterator[None]:
        """Held while one progress notification runs through the runner. Counted before any
        checkpoint, so the call it belongs to is not answered in between (``close_progress``);
        one at a time, in the order they arrived (the SDK hands each to its own task)."""
        route = self._progress.get(token) if isinstance(token, str) else None
        if route is None:
            yield
            return
        route.relaying += 1
        route.idle = anyio.Event()
        try:
            async with route.lock:  # FIFO: a later notification waits behind an earlier one
                yield
        finally:
            route.relaying -= 1
            if not route.relaying:
                route.idle.set()

    async def deliver_log(self, upstream: str, params: types.LoggingMessageNotificationParams) -> str:
        """Relay a tokenised log message: on the request in flight, else queued for the next one.
        Returns ``delivered``, ``queued`` or ``dropped`` (queue full, or the agent went away)."""
        if self._requests:
            return "delivered" if await self._send_log(self._requests[-1], upstream, params) else "dropped"
        if len(self._queued) >= MAX_QUEUED_LOGS:
            return "dropped"
        self._queued.append((upstream, params))
        return "queued"

    @staticmethod
    async def _send_log(channel: FrontChannel, upstream: str, params: Any) -> bool:
        try:
            await channel.log(params.level, params.data, f"{upstream}/{params.logger or ''}")
            return True
        except Exception as exc:  # the agent may have gone; the upstream must not notice
            log.debug("could not relay a log message from '%s' (%s)", upstream, type(exc).__name__)
            return False

    async def deliver_notification(self, upstream: str, notification: Any) -> str:
        method = getattr(notification, "method", "")
        if method == "notifications/tools/list_changed":
            with contextlib.suppress(VeilError):
                await self.upstream_tools(upstream, refresh=True)
        relayed = _RELAYED_NOTIFICATIONS.get(method)
        if relayed is None:
            return "not_relayed"  # e.g. an upstream's cancellation (the SDK applies it) or unknown methods
        front = self._requests[-1] if self._requests else self.front
        if front is None:
            return "no_channel"
        try:
            await front.notify(relayed(notification))
        except Exception as exc:
            log.debug("could not relay %s from '%s' (%s)", method, upstream, type(exc).__name__)
            return "failed"
        return "delivered"

    async def ask_agent(self, what: str, request: Any, result_type: Any, upstream: str) -> Any:
        """Put an upstream's server-to-client request (sampling, elicitation, roots) to the agent:
        as a request on the agent request in flight (handshake era), or, for a 2026-07-28 agent,
        in the InputRequiredResult of the call waiting on that upstream (``input_round``)."""
        front = self._requests[-1] if self._requests else None
        waiting = [p for p in self._rounds.values() if p.upstream == upstream and not p.done]
        if (front is None or not front.can_send_request) and waiting:
            return await waiting[-1].ask(request, result_type, self.gw.config.limits.upstream_timeout_s)
        if front is None or not front.can_send_request:
            raise VeilError(
                f"the agent connected to Veil cannot answer {what} requests now (no request in flight, the "
                "capability was not declared, or its protocol revision has no server-to-client requests)",
                code=types.METHOD_NOT_FOUND,
            )
        try:
            return await front.request(request, result_type)
        except Exception as exc:
            raise VeilError(f"the agent did not answer the {what} request ({type(exc).__name__})") from None

    # -- 2026-07-28 agents: the upstream's questions ride InputRequiredResult ----------------------

    @staticmethod
    def stateless_agent(ctx: Any) -> bool:
        """A 2026-07-28 agent: no server-to-client requests; questions go in InputRequiredResult."""
        return ctx is not None and getattr(ctx, "protocol_version", None) in MODERN_PROTOCOL_VERSIONS

    async def input_round(self, upstream: str, what: str, params: Any, start: Any) -> Any:
        """One round of a call for a 2026-07-28 agent: the upstream's result, or an
        InputRequiredResult with the questions it asked meanwhile (already tokenised by the runner).

        The first round starts the upstream call in the background (``start()``); the agent's
        retry names it by ``request_state`` (an unguessable id, valid only in this session, so
        only this identity) and carries the answers, which go back to the waiting questions (and
        through the runner's untokenise stage to the upstream)."""
        state = getattr(params, "request_state", None)
        if state is None:
            call = _InputRound(upstream, what)
            self._rounds[call.id] = call
            self.gw.task_group.start_soon(call.run, start)
        else:
            found = self._rounds.get(state)
            if found is None or found.what != what:  # the retry names the same method and target
                raise InvalidArguments(
                    "request_state names no call waiting for input in this session (answered, expired or "
                    "another session's); call the tool again without it"
                )
            call = found
            call.answer(getattr(params, "input_responses", None) or {})
        timeout = self.gw.config.limits.upstream_timeout_s
        try:
            outcome = await call.next(timeout)
        except BaseException as exc:
            call.cancel()
            self._rounds.pop(call.id, None)
            if isinstance(exc, TimeoutError):
                raise UpstreamError(
                    f"upstream '{upstream}' did not answer within {timeout:g}s (limits.upstream_timeout_s)"
                ) from None
            raise
        if isinstance(outcome, types.InputRequiredResult):
            return outcome
        self._rounds.pop(call.id, None)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

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
                http=self.gw.upstream_http,
            )
            self._connections[upstream] = conn
        return conn

    def open_upstreams(self) -> list[str]:
        return sorted(self._connections)

    async def listing(self, method: str, call: Any, field: str) -> list[tuple[str, Any]]:
        """``(upstream, item)`` for every upstream's tools/resources/templates/prompts, tokenised as
        interface text. Unreachable upstreams are skipped; items whose identifiers would change
        under tokenisation (a name or argument name holding personal data) are withheld."""
        out: list[tuple[str, Any]] = []
        for upstream in self.gw.config.upstreams:
            try:
                conn = await self.connection(upstream)
                listed = await conn.request(method, call)
            except (VeilError, MCPError):
                continue
            out += [(upstream, item) for item in await self._interface(upstream, getattr(listed, field))]
        return out

    async def _interface(self, upstream: str, items: list[Any]) -> list[Any]:
        if not items:
            return []
        wire = [withhold_binary(to_wire(item)) for item in items]
        # Names are tokenised apart, as bare strings (under a "name" key they would count as a
        # person's name); an item whose name would change is withheld, never renamed.
        names = [_pop_identifiers(item) for item in wire]
        flat = [n for item_names in names for n in item_names]
        tokenised = await self.gw.pipeline.tokenize_interface(self, [wire, flat], upstream)
        items_after, flat_after = tokenised.value
        kept, at = [], 0
        for item, after, item_names in zip(items, items_after, names, strict=True):
            same = flat_after[at : at + len(item_names)] == item_names
            at += len(item_names)
            if not same:
                log.warning("withheld a listed item of '%s': its name would carry personal data", upstream)
                continue
            kept.append(from_wire(type(item), _put_identifiers(after, item_names)))
        return kept

    async def upstream_tools(self, upstream: str, *, refresh: bool = False) -> list[CatalogueEntry]:
        """The upstream's tools, tokenised as interface text in this session's scope (cached)."""
        async with self._tools_lock:
            if refresh or upstream not in self._tools:
                conn = await self.connection(upstream)
                listed = await conn.request("tools/list", lambda c: c.list_tools())
                tools = await self._interface(upstream, listed.tools)
                prefix = self.gw.config.prefix(upstream)
                self._tools[upstream] = [CatalogueEntry(upstream, tool, prefix) for tool in tools]
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
        for call in self._rounds.values():
            call.cancel()
        self._rounds.clear()
        for conn in self._connections.values():
            await conn.aclose()
        self._connections.clear()


MAX_QUEUED_LOGS = 256
PROGRESS_DRAIN_S = 5.0  # how long a call's result waits for its progress still being relayed


class _InputRound:
    """An upstream call made for a 2026-07-28 agent, running in the background between the
    agent's rounds: the questions the upstream asks wait here for the agent's retry."""

    def __init__(self, upstream: str, what: str) -> None:
        self.id = secrets.token_urlsafe(24)
        self.upstream = upstream
        self.what = what
        self.done = False
        self._events_in, self._events = anyio.create_memory_object_stream[Any](math.inf)
        self._waiting: dict[str, tuple[anyio.Event, list[Any]]] = {}
        self._scope = anyio.CancelScope()
        self._asked = 0

    async def run(self, start: Any) -> None:
        with self._scope:
            try:
                outcome = await start()
            except Exception as exc:  # a VeilError (message tokenised) for the agent's next round
                outcome = exc
            self.done = True
            self._events_in.send_nowait(("end", outcome))

    def cancel(self) -> None:
        self.done = True
        self._scope.cancel()
        for event, _ in self._waiting.values():
            event.set()

    async def ask(self, request: Any, result_type: Any, timeout_s: float) -> Any:
        self._asked += 1
        key = f"{request.method.replace('/', '-')}-{self._asked}"
        event, slot = anyio.Event(), list[Any]()
        self._waiting[key] = (event, slot)
        self._events_in.send_nowait(("ask", key, request))
        with anyio.move_on_after(timeout_s):
            await event.wait()
        self._waiting.pop(key, None)
        if not slot:
            raise VeilError(f"the agent did not answer the {request.method} request in {timeout_s:g}s")
        return from_wire(result_type, to_wire(slot[0]))

    def answer(self, responses: dict[str, Any]) -> None:
        for key, response in responses.items():
            waiting = self._waiting.get(key)
            if waiting is not None and not waiting[1]:
                waiting[1].append(response)
                waiting[0].set()

    async def next(self, timeout_s: float) -> Any:
        """The call's outcome, or an InputRequiredResult with every question asked so far."""
        with anyio.fail_after(timeout_s):
            event = await self._events.receive()
        asks: dict[str, Any] = {}
        while True:
            if event[0] == "end":
                if asks:  # answer the questions first; the outcome waits for the next round
                    self._events_in.send_nowait(event)
                    break
                return event[1]
            asks[event[1]] = event[2]
            try:
                event = self._events.receive_nowait()
            except anyio.WouldBlock:
                break
        return types.InputRequiredResult(input_requests=asks, request_state=self.id)


class _ProgressRoute:
    """Where an upstream call's progress goes: the agent request, and relays in flight."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.relaying = 0
        self.idle = anyio.Event()
        self.lock = anyio.Lock()


def identity_of(principal: Principal) -> tuple[str | None, str, str, str | None]:
    """Who a session belongs to: tenant, subject, how they authenticated and with which key or token."""
    return (principal.tenant, principal.name, principal.via, getattr(principal, "credential", None))


def _pop_identifiers(item: dict[str, Any]) -> list[str]:
    """Take out the parts of a listed item an agent must send back verbatim to use it: its name and
    its arguments' names (prompts)."""
    names = [item.pop("name") if isinstance(item.get("name"), str) else ""]
    for arg in item.get("arguments") or []:
        if isinstance(arg, dict) and isinstance(arg.get("name"), str):
            names.append(arg.pop("name"))
    return names


def _put_identifiers(item: dict[str, Any], names: list[str]) -> dict[str, Any]:
    rest = iter(names)
    name = next(rest)
    if name:
        item = {"name": name, **item}
    for arg in item.get("arguments") or []:
        if isinstance(arg, dict):
            arg["name"] = next(rest)
    return item


class _Relay:
    """Where an upstream connection hands what its upstream sends on its own: into the runner."""

    def __init__(self, session: AgentSession) -> None:
        self.session = session

    async def _run(self, upstream: str, method: str, params: Any) -> Any:
        from veil.proxy.flow import Flow, Target

        runner = self.session.gw.runner
        flow = Flow(
            method=method,
            origin="upstream",
            params=params,
            session=self.session,
            target=Target(upstream=upstream),
            handler=runner.handler_for(method) if method in runner.handlers else runner.handlers["notifications/*"],
        )
        return await runner.run(flow)

    async def on_log(self, upstream: str, params: types.LoggingMessageNotificationParams) -> None:
        await self._run(upstream, "notifications/message", params)

    async def on_notification(self, upstream: str, notification: Any) -> None:
        method = getattr(notification, "method", "")
        if method == "notifications/message":
            return  # arrives through on_log
        token = getattr(getattr(notification, "params", None), "progress_token", None)
        async with self.session.relaying_progress(token):
            await self._run(upstream, method or "notifications/*", notification)

    async def on_sampling(
        self, upstream: str, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.ErrorData:
        flow = await self._run(upstream, "sampling/createMessage", params)
        return await flow.handler.answer(flow)

    async def on_elicitation(
        self, upstream: str, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        flow = await self._run(upstream, "elicitation/create", params)
        return await flow.handler.answer(flow)

    async def on_roots(self, upstream: str) -> types.ListRootsResult | types.ErrorData:
        flow = await self._run(upstream, "roots/list", None)
        return await flow.handler.answer(flow)


def _relay_list_changed(cls: Any) -> Any:
    return lambda _notification: cls()


_RELAYED_NOTIFICATIONS: dict[str, Any] = {
    "notifications/tools/list_changed": _relay_list_changed(types.ToolListChangedNotification),
    "notifications/resources/list_changed": _relay_list_changed(types.ResourceListChangedNotification),
    "notifications/prompts/list_changed": _relay_list_changed(types.PromptListChangedNotification),
    "notifications/resources/updated": lambda n: n,  # already tokenised (its URI) by the runner
}
