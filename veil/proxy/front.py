"""The MCP server the agent talks to. It translates MCP requests into gateway calls and
``VeilError``s into MCP errors; it holds no policy or privacy logic of its own.

Which agent session a request belongs to is decided by a ``SessionResolver`` the transport
supplies (stdio: the one session of the process; HTTP: the transport session or principal).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

import veil
from veil.audit import events as ev
from veil.errors import AccessDenied, InvalidArguments, ToolNotFound, UpstreamError, VeilError
from veil.proxy import catalogue as cat
from veil.proxy.gateway import Gateway
from veil.proxy.session import LISTING_KEYS, AgentSession, FrontChannel

log = logging.getLogger(__name__)

SessionResolver = Callable[[ServerRequestContext[Any, Any]], Awaitable[AgentSession]]

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
    return MCPError(exc.code, exc.message)


class Front:
    """Builds the low-level MCP ``Server`` whose handlers serve agent requests."""

    def __init__(self, gateway: Gateway, resolve_session: SessionResolver) -> None:
        self.gw = gateway
        self._resolve = resolve_session
        self.server: Server[Any] = Server(
            "veil",
            version=veil.__version__,
            instructions=gateway.instructions,  # Veil's and each upstream's (veil.proxy.survey)
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
        )

    async def _session(self, ctx: ServerRequestContext[Any, Any]) -> AgentSession:
        try:
            session = await self._resolve(ctx)
        except VeilError as exc:  # e.g. AuthError: an MCP session id presented by another principal
            raise _error(exc) from None
        session.front = FrontChannel(ctx.session, ctx.request_id)
        return session

    # -- tools -----------------------------------------------------------------------------------

    def _code_mode(self) -> bool:
        return self.gw.config.expose in ("code", "both") and self.gw.sandbox is not None

    async def list_tools(self, ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        session = await self._session(ctx)
        tools: list[types.Tool] = [cat.SEARCH_TOOLS]
        if self._code_mode() and self.gw.policy.decide_execute(session.principal).allowed:
            tools.append(EXECUTE_CODE)
        problems: dict[str, str] = {}
        if self.gw.config.expose in ("direct", "both"):
            entries, problems = await session.catalogue()
            entries, _collisions = cat.visible(entries)
            for entry in entries:
                if self.gw.policy.decide_access(session.principal, entry.upstream, entry.tool.name).allowed:
                    tools.append(entry.tool.model_copy(update={"name": entry.name}))
        await self.gw.record(
            session.event(ev.TOOLS_LIST, detail={"count": len(tools), "unreachable": sorted(problems)})
        )
        return types.ListToolsResult(tools=tools)

    async def call_tool(self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams):
        session = await self._session(ctx)
        name, args = params.name, dict(params.arguments or {})
        size = len(json.dumps(args, default=str))
        try:
            if size > self.gw.config.limits.max_message_bytes:
                raise InvalidArguments(
                    f"arguments for '{name}' are {size} bytes, over limits.max_message_bytes "
                    f"({self.gw.config.limits.max_message_bytes}); send less data per call"
                )
            if name == "search_tools":
                return await self._search_tools(session, args)
            if name == "execute_code" and self._code_mode():
                return await self._execute_code(session, args)
            upstream, tool = await cat.resolve(name, self.gw.config.prefixes(), session.has_tool)
            progress = _progress_relay(ctx)
            return await self.gw.pipeline.call_tool(session, upstream, tool, args, progress=progress)
        except VeilError as exc:
            raise _error(exc) from None

    async def _search_tools(self, session: AgentSession, args: dict[str, Any]) -> types.CallToolResult:
        query = args.get("query", "")
        detail = args.get("detail", "summary")
        limit = args.get("limit", 20)
        if not isinstance(query, str) or detail not in ("name", "summary", "full") or not isinstance(limit, int):
            raise InvalidArguments(
                "search_tools takes query (string), detail ('name' | 'summary' | 'full') and limit (integer)"
            )
        entries, problems = await session.catalogue()
        entries, collisions = cat.visible(entries)
        problems.update(collisions)
        allowed = [
            e for e in entries if self.gw.policy.decide_access(session.principal, e.upstream, e.tool.name).allowed
        ]
        found = cat.search(allowed, query, detail, limit)
        payload: dict[str, Any] = {"tools": found}
        if problems:
            payload["unreachable"] = problems
        await self.gw.record(session.event(ev.TOOLS_LIST, detail={"search": True, "count": len(found)}))
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(payload, indent=1))],
            structured_content=payload,
        )

    async def _execute_code(self, session: AgentSession, args: dict[str, Any]) -> types.CallToolResult:
        from veil.proxy.code_mode import run_execute_code

        return await run_execute_code(self.gw, session, args)

    # -- resources -------------------------------------------------------------------------------

    async def list_resources(self, ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourcesResult:
        session = await self._session(ctx)
        resources: list[types.Resource] = []
        for upstream in self.gw.config.upstreams:
            try:
                conn = await session.connection(upstream)
                listed = await conn.request("resources/list", lambda c: c.list_resources())
            except (VeilError, MCPError):
                continue
            tokenised, _ = await self.gw.pipeline.tokenize_model(session, listed, upstream, keep=LISTING_KEYS)
            resources.extend(tokenised.resources)
        if self._code_mode():
            from veil.proxy.code_mode import stub_resources

            resources.extend(await stub_resources(self.gw, session))
        return types.ListResourcesResult(resources=resources)

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: Any
    ) -> types.ListResourceTemplatesResult:
        session = await self._session(ctx)
        templates: list[types.ResourceTemplate] = []
        for upstream in self.gw.config.upstreams:
            try:
                conn = await session.connection(upstream)
                listed = await conn.request("resources/templates/list", lambda c: c.list_resource_templates())
            except (VeilError, MCPError):
                continue
            tokenised, _ = await self.gw.pipeline.tokenize_model(session, listed, upstream, keep=LISTING_KEYS)
            templates.extend(tokenised.resource_templates)
        return types.ListResourceTemplatesResult(resource_templates=templates)

    async def read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        session = await self._session(ctx)
        uri = str(params.uri)
        started = time.perf_counter()
        try:
            if uri.startswith("veil://") and self._code_mode():
                from veil.proxy.code_mode import read_stub_resource

                return await read_stub_resource(self.gw, session, uri)
            upstream = await self._route_uri(session, uri)
            conn = await session.connection(upstream)
            try:
                raw = await conn.request("resources/read", lambda c: c.read_resource(uri))
            except MCPError as exc:
                text = await self.gw.pipeline.tokenize_text(session, exc.message, upstream)
                raise UpstreamError(f"reading a resource from '{upstream}' failed: {text}") from None
            result, report = await self.gw.pipeline.tokenize_model(session, raw, upstream)
        except VeilError as exc:
            await self.gw.record(
                session.event(
                    ev.RESOURCE_READ,
                    outcome=ev.ERROR,
                    detail={"error": type(exc).__name__},
                    duration_ms=(time.perf_counter() - started) * 1000,
                )
            )
            raise _error(exc) from None
        await self.gw.record(
            session.event(
                ev.RESOURCE_READ,
                upstream=upstream,
                entities=dict(report.entities),
                tokens=list(report.tokens),
                args_digest=hashlib.sha256(uri.encode()).hexdigest(),
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        )
        return result

    async def _route_uri(self, session: AgentSession, uri: str) -> str:
        """Which upstream serves this URI: a listed resource or a matching template."""
        upstreams = list(self.gw.config.upstreams)
        if len(upstreams) == 1:
            return upstreams[0]
        for upstream in upstreams:
            try:
                conn = await session.connection(upstream)
                listed = await conn.request("resources/list", lambda c: c.list_resources())
                if any(str(r.uri) == uri for r in listed.resources):
                    return upstream
                templates = await conn.request("resources/templates/list", lambda c: c.list_resource_templates())
                if any(_template_matches(t.uri_template, uri) for t in templates.resource_templates):
                    return upstream
            except (VeilError, MCPError):
                continue
        raise ToolNotFound(f"no upstream offers the resource '{uri}' (see resources/list and resources/templates/list)")

    # -- prompts ---------------------------------------------------------------------------------

    async def list_prompts(self, ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListPromptsResult:
        session = await self._session(ctx)
        prompts: list[types.Prompt] = []
        for upstream in self.gw.config.upstreams:
            try:
                conn = await session.connection(upstream)
                listed = await conn.request("prompts/list", lambda c: c.list_prompts())
            except (VeilError, MCPError):
                continue
            tokenised, _ = await self.gw.pipeline.tokenize_model(session, listed, upstream, keep=LISTING_KEYS)
            prefix = self.gw.config.prefix(upstream)
            prompts.extend(
                p.model_copy(update={"name": cat.gateway_name(upstream, p.name, prefix)}) for p in tokenised.prompts
            )
        return types.ListPromptsResult(prompts=prompts)

    async def get_prompt(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        session = await self._session(ctx)
        started = time.perf_counter()
        try:
            upstream, prompt = await cat.resolve(
                params.name, self.gw.config.prefixes(), session.has_prompt, kind="prompt"
            )
            access = self.gw.policy.decide_access(session.principal, upstream, prompt)
            if not access.allowed:
                raise AccessDenied(
                    f"principal '{session.principal.name}' may not use {params.name} (policy rule '{access.rule}')",
                    rule=access.rule,
                )
            conn = await session.connection(upstream)
            arguments = dict(params.arguments or {})
            try:
                raw = await conn.request("prompts/get", lambda c: c.get_prompt(prompt, arguments))
            except MCPError as exc:
                text = await self.gw.pipeline.tokenize_text(session, exc.message, upstream)
                raise UpstreamError(f"{params.name} failed: {text}") from None
            result, report = await self.gw.pipeline.tokenize_model(session, raw, upstream)
        except VeilError as exc:
            await self.gw.record(
                session.event(
                    ev.PROMPT_GET,
                    outcome=ev.DENIED if isinstance(exc, AccessDenied) else ev.ERROR,
                    detail={"prompt": params.name, "error": type(exc).__name__},
                )
            )
            raise _error(exc) from None
        await self.gw.record(
            session.event(
                ev.PROMPT_GET,
                upstream=upstream,
                tool=prompt,
                entities=dict(report.entities),
                tokens=list(report.tokens),
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        )
        return result


def _template_matches(template: str, uri: str) -> bool:
    """RFC 6570 level 1: each {var} matches one path segment."""
    pattern = re.escape(template)
    pattern = re.sub(r"\\\{[^}]*\\\}", r"[^/]+", pattern)
    return re.fullmatch(pattern, uri) is not None


def _progress_relay(ctx: ServerRequestContext[Any, Any]):
    async def relay(progress: float, total: float | None, message: str | None) -> None:
        try:
            await ctx.session.report_progress(progress, total, message)
        except Exception as exc:  # the agent may not have asked for progress, or went away
            log.debug("progress not relayed (%s)", type(exc).__name__)

    return relay
