"""One handler per MCP method: what differs between methods, and nothing else.

A handler says which target a message is about (``resolve``, for routing and access), which
values are outbound (``outbound``, untokenised by flow policy), how to talk to the other side
(``exchange``) and how to shape what came back (``shape``: tokenise, filter by access). The
runner's stages call these in the order declared in ``veil.proxy.runner``; a handler never
audits, checks access or untokenises by itself.

Adding a method: write a ``Handler`` subclass and add it to ``HANDLERS`` (and, for a method from
the agent, to ``AGENT_METHODS`` in ``veil.proxy.front``).
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

import jsonschema
import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import validate_mcp_param_headers

from veil.audit import digest_args
from veil.audit import events as ev
from veil.errors import (
    HeaderMismatch,
    InvalidArguments,
    TokenizeBudgetExceeded,
    ToolNotFound,
    UpstreamError,
    VeilError,
)
from veil.proxy import catalogue as cat
from veil.proxy.flow import Flow, Target
from veil.proxy.shaping import from_wire, to_wire, withhold_binary

if TYPE_CHECKING:
    from veil.proxy.runner import Runner
    from veil.proxy.session import AgentSession

METHOD_NOT_FOUND = -32601
# A token percent-encoded in a URI: %5BEMAIL_ADDRESS_1%5D (hex digits in either case).
_ENCODED_TOKEN = re.compile(r"%5[Bb]([A-Z][A-Z0-9_]*_\d+)%5[Dd]")


class Handler:
    """Defaults: answered by Veil itself, nothing outbound, result passed as it is."""

    method: str = ""
    kind: str = ev.REQUEST  # the audit event kind of the outcome row
    leaves: bool = False  # sends something out of Veil, so an intent is written first
    binds_session: bool = True

    async def resolve(self, runner: Runner, flow: Flow) -> None:
        """Set ``flow.target``; raise ``ToolNotFound`` for names that do not exist."""

    def outbound(self, flow: Flow) -> Any:
        """The value (with tokens) that leaves for the upstream, or None."""
        return None

    def destination(self, flow: Flow) -> str:
        """The ``TOOL`` part of ``UPSTREAM__TOOL`` that flow rules see for this method."""
        return flow.target.name or flow.method

    def substitution(self, flow: Flow, path: str) -> str | None:
        """How values are written into the outbound value at ``path``, when the method itself
        decides (else the policy's ``substitution`` rules do)."""
        return None

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        """Talk to the other side; put what came back in ``flow.inbound``."""

    async def shape(self, runner: Runner, flow: Flow) -> None:
        """Turn ``flow.inbound`` into ``flow.result`` (tokenised)."""
        flow.result = flow.inbound


# -- helpers --------------------------------------------------------------------------------------


async def _tokenise(runner: Runner, flow: Flow, model: Any, source: str) -> Any:
    """Tokenise an upstream's MCP model in the session's scope; counts go on the flow."""
    assert flow.session is not None
    try:
        tokenised, report = await runner.gw.pipeline.tokenize_model(flow.session, model, source)
    except TokenizeBudgetExceeded as exc:  # name the tool (or method); the message names the setting
        raise TokenizeBudgetExceeded(f"{getattr(flow.params, 'name', None) or flow.method}: {exc.message}") from None
    for k, n in report.entities.items():
        flow.entities[k] = flow.entities.get(k, 0) + n
    flow.tokens.extend(t for t in report.tokens if t not in flow.tokens)
    return tokenised


async def upstream_failed(runner: Runner, flow: Flow, exc: MCPError, upstream: str, what: str) -> VeilError:
    """An upstream's protocol error: the agent gets its code (-32042, URL elicitation required,
    included) and its message and data tokenised (they may quote data); the audit row only its code."""
    assert flow.session is not None
    tokenised = await runner.gw.pipeline.tokenize_value(flow.session, {"m": exc.message, "d": exc.data}, upstream)
    flow.detail["upstream_code"] = exc.code
    return UpstreamError(f"{what} failed: {tokenised.value['m']}", code=exc.code, data=tokenised.value["d"])


async def _request(runner: Runner, flow: Flow, upstream: str, what: str, call: Any) -> Any:
    assert flow.session is not None
    conn = await flow.session.connection(upstream)
    try:
        return await conn.request(what, call)
    except MCPError as exc:
        raise await upstream_failed(runner, flow, exc, upstream, what) from None


async def _asking(flow: Flow, upstream: str, call: Any) -> Any:
    """Run the upstream call (``call()``); for a 2026-07-28 agent, questions the upstream asks on
    the way come back in an InputRequiredResult and the agent's retry carries the answers
    (``AgentSession.input_round``). tools/call, prompts/get and resources/read."""
    assert flow.session is not None
    if not flow.session.stateless_agent(flow.ctx):
        return await call()
    what = f"{flow.method} {flow.target.upstream}:{flow.target.name}"
    return await flow.session.input_round(upstream, what, flow.params, call)


def _input_required(flow: Flow) -> bool:
    """An InputRequiredResult goes to the agent as it is: its questions were tokenised as flows."""
    if not isinstance(flow.inbound, types.InputRequiredResult):
        return False
    flow.result = flow.inbound
    flow.detail["input_required"] = sorted(flow.inbound.input_requests or {})
    return True


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _template_matches(template: str, uri: str) -> bool:
    """RFC 6570 level 1: each {var} matches one path segment."""
    pattern = re.escape(template)
    pattern = re.sub(r"\\\{[^}]*\\\}", r"[^/]+", pattern)
    return re.fullmatch(pattern, uri) is not None


async def route_uri(runner: Runner, session: AgentSession, uri: str, *, template: bool = False) -> str:
    """Which upstream serves this URI (or, with ``template``, this URI template)."""
    upstreams = list(runner.gw.config.upstreams)
    if len(upstreams) == 1:
        return upstreams[0]
    for upstream in upstreams:
        try:
            conn = await session.connection(upstream)
            if not template:
                listed = await conn.request("resources/list", lambda c: c.list_resources())
                if any(str(r.uri) == uri for r in listed.resources):
                    return upstream
            templates = await conn.request("resources/templates/list", lambda c: c.list_resource_templates())
            for t in templates.resource_templates:
                if (t.uri_template == uri) if template else _template_matches(t.uri_template, uri):
                    return upstream
        except (VeilError, MCPError):
            continue
    raise ToolNotFound("no upstream offers this resource (see resources/list and resources/templates/list)")


# -- Veil's own --------------------------------------------------------------------------------------


class Passthrough(Handler):
    """Methods the SDK answers itself (initialize, server/discover) or that no handler serves
    (answered METHOD_NOT_FOUND): still one audit row each."""

    binds_session = False

    def __init__(self, method: str, call_next: Any, ctx: Any) -> None:
        self.method = method
        self.kind = ev.INITIALIZE if method == "initialize" else ev.REQUEST
        self._call_next = call_next
        self._ctx = ctx

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        try:
            flow.inbound = await self._call_next(self._ctx)
        except MCPError as exc:
            raise VeilError(f"{exc.message}", code=exc.code) from None


class Ping(Handler):
    method = "ping"
    kind = ev.PING

    async def shape(self, runner: Runner, flow: Flow) -> None:
        flow.result = types.EmptyResult()


class ToolsList(Handler):
    method = "tools/list"
    kind = ev.TOOLS_LIST
    leaves = True

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        flow.inbound = await flow.session.catalogue()  # tokenised (interface mode) when fetched

    async def shape(self, runner: Runner, flow: Flow) -> None:
        from veil.proxy.front import EXECUTE_CODE

        assert flow.session is not None and flow.principal is not None
        entries, problems = flow.inbound
        entries, collisions = cat.visible(entries)
        tools: list[types.Tool] = []
        if runner.decide(flow.principal, Target("veil", "veil", "search_tools")).allowed:
            tools.append(cat.SEARCH_TOOLS)
        if runner.gw.code_mode() and runner.decide(flow.principal, Target("veil", "veil", "execute_code")).allowed:
            tools.append(EXECUTE_CODE)
        if runner.gw.config.expose in ("direct", "both"):
            tools += [
                e.tool.model_copy(update={"name": e.name})
                for e in entries
                if runner.decide(flow.principal, Target("tool", e.upstream, e.tool.name, "call")).allowed
            ]
        flow.detail.update(count=len(tools), unreachable=sorted(problems), collisions=len(collisions))
        flow.result = types.ListToolsResult(tools=tools)


class SearchTools(Handler):
    """Veil's ``search_tools``: access to ``veil__search_tools`` itself, then only the tools the
    principal may call are searched, so a search for a denied tool's name or description finds
    nothing, exactly as for a tool that does not exist (collision reports included)."""

    method = "tools/call"
    kind = ev.TOOLS_LIST
    leaves = True

    async def resolve(self, runner: Runner, flow: Flow) -> None:
        flow.target = Target("veil", "veil", "search_tools", "call")
        args = dict(flow.params.arguments or {})
        query, detail, limit = args.get("query", ""), args.get("detail", "summary"), args.get("limit", 20)
        if not isinstance(query, str) or detail not in ("name", "summary", "full") or not isinstance(limit, int):
            raise InvalidArguments(
                "search_tools takes query (string), detail ('name' | 'summary' | 'full') and limit (integer)"
            )
        flow.detail["search"] = True

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        flow.inbound = await flow.session.catalogue()

    async def shape(self, runner: Runner, flow: Flow) -> None:
        import json

        assert flow.principal is not None
        args = dict(flow.params.arguments or {})
        listed, problems = flow.inbound
        may = {
            (e.upstream, e.tool.name)
            for e in listed
            if runner.decide(flow.principal, Target("tool", e.upstream, e.tool.name, "call")).allowed
        }
        entries, collisions = cat.visible(listed)
        # A collision report names the upstreams' tools: only for names the principal may call one of.
        shown = {e.name for e in listed if (e.upstream, e.tool.name) in may}
        problems = {**problems, **{name: text for name, text in collisions.items() if name in shown}}
        allowed = [e for e in entries if (e.upstream, e.tool.name) in may]
        found = cat.search(allowed, args.get("query", ""), args.get("detail", "summary"), args.get("limit", 20))
        payload: dict[str, Any] = {"tools": found}
        if problems:
            payload["unreachable"] = problems
        flow.detail["count"] = len(found)
        flow.result = types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(payload, indent=1))], structured_content=payload
        )


class ExecuteCode(Handler):
    method = "tools/call"
    kind = ev.CODE_EXECUTE
    leaves = True

    async def resolve(self, runner: Runner, flow: Flow) -> None:
        from veil.proxy.code_mode import check_args

        if not runner.gw.code_mode():
            raise ToolNotFound("unknown tool 'execute_code': code mode is off on this gateway (config 'expose')")
        flow.target = Target("veil", "veil", "execute_code", "call")
        check_args(dict(flow.params.arguments or {}))

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        from veil.proxy.code_mode import execute

        assert flow.session is not None
        flow.inbound = await execute(runner.gw, flow.session, dict(flow.params.arguments or {}))
        flow.args_digest = flow.inbound.code_sha256

    async def shape(self, runner: Runner, flow: Flow) -> None:
        from veil.proxy.code_mode import shape_result

        assert flow.session is not None
        flow.result = await shape_result(runner.gw, flow.session, flow.inbound, flow)


class ToolsCall(Handler):
    method = "tools/call"
    kind = ev.TOOL_CALL
    leaves = True

    async def resolve(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        if flow.target.kind == "tool":  # a call from execute_code names its upstream and tool
            upstream, tool = flow.target.upstream or "", flow.target.name or ""
        else:
            upstream, tool = await cat.resolve(flow.params.name, runner.gw.config.prefixes(), flow.session.has_tool)
        entry = await flow.session.find_tool(upstream, tool)
        flow.target = Target("tool", upstream, tool, "call")
        arguments = dict(flow.params.arguments or {})
        flow.args_digest = digest_args(arguments)
        execution = entry.tool.execution
        if execution is not None and execution.task_support == "required":
            # Veil does not relay tasks (tasks/get, tasks/result...): the MCP SDK it is built on has no
            # tasks support, and its tools/call results are checked as CallToolResult on both sides.
            raise InvalidArguments(
                f"{cat.gateway_name(upstream, tool, runner.gw.config.prefix(upstream))} can only run as a task "
                "(task-augmented execution), which Veil does not relay yet; see docs/conformance.md, 'Not covered'"
            )
        _validate(entry.tool, arguments, upstream, tool)
        _check_param_headers(flow, entry.tool, arguments)

    def outbound(self, flow: Flow) -> Any:
        return dict(flow.params.arguments or {})

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        upstream, tool = flow.target.upstream or "", flow.target.name or ""
        # The upstream's progress comes back as notifications naming this token, each a flow of its
        # own through the runner (``Progress``), relayed to this agent request.
        token = flow.session.open_progress(flow.ctx)
        meta: Any = {"progressToken": token} if token else None
        arguments = flow.outbound

        def call() -> Any:
            return _request(
                runner, flow, upstream, f"{upstream}__{tool}", lambda c: c.call_tool(tool, arguments, meta=meta)
            )

        try:
            flow.inbound = await _asking(flow, upstream, call)
        finally:
            await flow.session.close_progress(token)

    async def shape(self, runner: Runner, flow: Flow) -> None:
        if _input_required(flow):
            return
        flow.result = await _tokenise(runner, flow, flow.inbound, flow.target.upstream or "")
        if flow.result.is_error:
            flow.outcome = ev.ERROR
            flow.detail["upstream_error"] = True


def _check_param_headers(flow: Flow, tool_def: types.Tool, arguments: dict[str, Any]) -> None:
    """A 2026-07-28 agent mirrors the arguments its tool's schema marks ``x-mcp-header`` into
    ``Mcp-Param-*`` headers, and they must agree with the body. Checked here, against the tool as
    this session listed it, because the SDK's own check (when the server gives it no schema
    lookup) runs a whole tools/list through Veil on every call with arguments: audited as a
    listing the agent never asked for, and a second trip through the runner. (Front gives the SDK
    a lookup that leaves the check to this stage.) Handshake-era agents send no such headers."""
    request = getattr(flow.ctx, "request", None)
    if request is None or flow.session is None or not flow.session.stateless_agent(flow.ctx):
        return
    rejection = validate_mcp_param_headers(tool_def.input_schema or {}, arguments, request.headers)
    if rejection is not None:
        raise HeaderMismatch(rejection.message)  # names the header and the argument, never a value


def _validate(tool_def: types.Tool, arguments: dict[str, Any], upstream: str, tool: str) -> None:
    """Check arguments against the tool's schema; messages name the field, never the value."""
    schema = tool_def.input_schema or {}
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(arguments), key=lambda e: list(e.path))
    if not errors:
        return
    first = errors[0]
    where = ".".join(str(p) for p in first.absolute_path) or "(arguments)"
    problem = {
        "required": "a required argument is missing",
        "type": f"must be of type {first.schema.get('type')}" if isinstance(first.schema, dict) else "wrong type",
        "additionalProperties": "has an argument the tool does not accept",
        "enum": "is not one of the allowed values",
    }.get(str(first.validator), f"fails the '{first.validator}' rule of the schema")
    if first.validator == "required" and isinstance(first.validator_value, list):
        missing = [k for k in first.validator_value if k not in (first.instance or {})]
        problem = f"missing required argument(s): {', '.join(missing)}"
    elif first.validator == "additionalProperties" and isinstance(first.instance, dict):
        allowed = set((first.schema.get("properties") or {}).keys())
        extra = sorted(k for k in first.instance if k not in allowed)
        problem = f"unknown argument(s): {', '.join(extra)}"
    raise InvalidArguments(
        f"invalid arguments for {upstream}__{tool}: '{where}' {problem}. "
        f"See the tool's inputSchema (search_tools with detail='full')."
    )


# -- resources -----------------------------------------------------------------------------------------


class ResourcesList(Handler):
    method = "resources/list"
    kind = ev.RESOURCES_LIST
    leaves = True

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        flow.inbound = await flow.session.listing("resources/list", lambda c: c.list_resources(), "resources")

    async def shape(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None and flow.principal is not None
        resources = [
            r
            for upstream, r in flow.inbound
            if runner.decide(flow.principal, Target("resource", upstream, str(r.uri), "read")).allowed
        ]
        if runner.gw.code_mode() and runner.decide(flow.principal, Target("veil", "veil", "execute_code")).allowed:
            from veil.proxy.code_mode import stub_resources

            resources.extend(await stub_resources(runner.gw, flow.session))
        flow.detail.update(count=len(resources), withheld=len(flow.inbound) - len(resources))
        flow.result = types.ListResourcesResult(resources=resources)


class ResourceTemplatesList(Handler):
    method = "resources/templates/list"
    kind = ev.RESOURCES_LIST
    leaves = True

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        flow.inbound = await flow.session.listing(
            "resources/templates/list", lambda c: c.list_resource_templates(), "resource_templates"
        )

    async def shape(self, runner: Runner, flow: Flow) -> None:
        assert flow.principal is not None
        templates = [
            t
            for upstream, t in flow.inbound
            if runner.decide(flow.principal, Target("resource", upstream, t.uri_template, "read")).allowed
        ]
        flow.detail.update(templates=True, count=len(templates), withheld=len(flow.inbound) - len(templates))
        flow.result = types.ListResourceTemplatesResult(resource_templates=templates)


class ResourceMethod(Handler):
    """A method about one resource URI: read, subscribe, unsubscribe."""

    leaves = True
    action = "read"

    async def resolve(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        uri = str(flow.params.uri)
        flow.args_digest = _digest(uri)
        if uri.startswith("veil://") and runner.gw.code_mode() and self.action == "read":
            flow.target = Target("veil", "veil", "execute_code", "read")  # stubs: as execute_code
            return
        upstream = await route_uri(runner, flow.session, uri)
        flow.target = Target("resource", upstream, uri, self.action)

    def outbound(self, flow: Flow) -> Any:
        if flow.target.kind == "veil":
            return None
        uri = str(flow.params.uri)
        # A token the agent percent-encoded (RFC 6570 expansion writes [ and ] as %5B and %5D) is
        # a token too; its value is then percent-encoded (``substitution``), so the upstream,
        # decoding the URI, reads exactly the value.
        decoded = _ENCODED_TOKEN.sub(r"[\1]", uri)
        if decoded != uri:
            flow.detail["uri_encoded_tokens"] = True
        return decoded

    def substitution(self, flow: Flow, path: str) -> str | None:
        return "uri" if flow.detail.get("uri_encoded_tokens") else None

    def destination(self, flow: Flow) -> str:
        return self.method


class ResourcesRead(ResourceMethod):
    method = "resources/read"
    kind = ev.RESOURCE_READ

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        if flow.target.kind == "veil":
            from veil.proxy.code_mode import read_stub_resource

            flow.inbound = await read_stub_resource(runner.gw, flow.session, str(flow.params.uri))
            return
        uri, upstream = flow.outbound, flow.target.upstream or ""
        flow.inbound = await _asking(
            flow,
            upstream,
            lambda: _request(runner, flow, upstream, "reading a resource", lambda c: c.read_resource(uri)),
        )

    async def shape(self, runner: Runner, flow: Flow) -> None:
        if flow.target.kind == "veil":
            flow.result = flow.inbound  # generated from tokenised listings
            return
        if _input_required(flow):
            return
        flow.result = await _tokenise(runner, flow, flow.inbound, flow.target.upstream or "")


class ResourcesSubscribe(ResourceMethod):
    method = "resources/subscribe"
    kind = ev.RESOURCE_SUBSCRIBE
    action = "subscribe"

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        uri = flow.outbound
        await _request(runner, flow, flow.target.upstream or "", self.method, lambda c: c.subscribe_resource(uri))
        flow.inbound = types.EmptyResult()


class ResourcesUnsubscribe(ResourceMethod):
    method = "resources/unsubscribe"
    kind = ev.RESOURCE_SUBSCRIBE
    action = "subscribe"

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        uri = flow.outbound
        await _request(runner, flow, flow.target.upstream or "", self.method, lambda c: c.unsubscribe_resource(uri))
        flow.inbound = types.EmptyResult()
        flow.detail["unsubscribe"] = True


# -- prompts ------------------------------------------------------------------------------------------


class PromptsList(Handler):
    method = "prompts/list"
    kind = ev.PROMPTS_LIST
    leaves = True

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        flow.inbound = await flow.session.listing("prompts/list", lambda c: c.list_prompts(), "prompts")

    async def shape(self, runner: Runner, flow: Flow) -> None:
        assert flow.principal is not None
        prompts = [
            p.model_copy(update={"name": cat.gateway_name(upstream, p.name, runner.gw.config.prefix(upstream))})
            for upstream, p in flow.inbound
            if runner.decide(flow.principal, Target("prompt", upstream, p.name, "get")).allowed
        ]
        flow.detail.update(count=len(prompts), withheld=len(flow.inbound) - len(prompts))
        flow.result = types.ListPromptsResult(prompts=prompts)


class PromptsGet(Handler):
    method = "prompts/get"
    kind = ev.PROMPT_GET
    leaves = True

    async def resolve(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        prefixes = runner.gw.config.prefixes()
        upstream, prompt = await cat.resolve(flow.params.name, prefixes, flow.session.has_prompt, kind="prompt")
        flow.target = Target("prompt", upstream, prompt, "get")
        flow.args_digest = digest_args(dict(flow.params.arguments or {}))

    def outbound(self, flow: Flow) -> Any:
        return dict(flow.params.arguments or {})

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        prompt, arguments, upstream = flow.target.name or "", flow.outbound, flow.target.upstream or ""
        flow.inbound = await _asking(
            flow,
            upstream,
            lambda: _request(runner, flow, upstream, flow.params.name, lambda c: c.get_prompt(prompt, arguments)),
        )

    async def shape(self, runner: Runner, flow: Flow) -> None:
        if _input_required(flow):
            return
        flow.result = await _tokenise(runner, flow, flow.inbound, flow.target.upstream or "")


# -- completion, logging ---------------------------------------------------------------------------------


class Complete(Handler):
    """completion/complete: access as the prompt or resource template it completes (action
    ``complete``); the partial value and context are outbound, the suggestions tokenised."""

    method = "completion/complete"
    kind = ev.COMPLETION
    leaves = True

    async def resolve(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        ref = flow.params.ref
        if isinstance(ref, types.PromptReference):
            prefixes = runner.gw.config.prefixes()
            upstream, prompt = await cat.resolve(ref.name, prefixes, flow.session.has_prompt, kind="prompt")
            flow.target = Target("prompt", upstream, prompt, "complete")
        else:
            upstream = await route_uri(runner, flow.session, ref.uri, template=True)
            flow.target = Target("resource", upstream, ref.uri, "complete")
        flow.args_digest = digest_args(self._values(flow))

    @staticmethod
    def _values(flow: Flow) -> dict[str, Any]:
        context = flow.params.context.arguments if flow.params.context is not None else None
        return {"argument": {flow.params.argument.name: flow.params.argument.value}, "context": context or {}}

    def outbound(self, flow: Flow) -> Any:
        return self._values(flow)

    def destination(self, flow: Flow) -> str:
        return self.method

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        ref = flow.params.ref
        if isinstance(ref, types.PromptReference):
            ref = types.PromptReference(type="ref/prompt", name=flow.target.name or "")
        values = flow.outbound
        ((name, value),) = values["argument"].items()  # the client API takes {"name", "value"}
        flow.inbound = await _request(
            runner,
            flow,
            flow.target.upstream or "",
            self.method,
            lambda c: c.complete(ref, {"name": name, "value": value}, values["context"] or None),
        )

    async def shape(self, runner: Runner, flow: Flow) -> None:
        flow.result = await _tokenise(runner, flow, flow.inbound, flow.target.upstream or "")


class SetLevel(Handler):
    """logging/setLevel: forwarded to every upstream the session has open."""

    method = "logging/setLevel"
    kind = ev.SET_LEVEL
    leaves = True

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        level = flow.params.level
        flow.session.log_level = level
        failed = []
        for upstream in flow.session.open_upstreams():
            try:
                await _request(runner, flow, upstream, self.method, lambda c: c.set_logging_level(level))
            except VeilError:
                failed.append(upstream)
        flow.detail.update(level=level, failed=sorted(failed))
        flow.inbound = types.EmptyResult()


# -- from an upstream -------------------------------------------------------------------------------


class UpstreamMessage(Handler):
    """Base for messages an upstream sends: the target is the upstream they came from."""

    kind = ev.NOTIFICATION

    async def resolve(self, runner: Runner, flow: Flow) -> None:
        flow.target = Target("none", flow.target.upstream, None, "relay")

    async def shape(self, runner: Runner, flow: Flow) -> None:
        """Tokenised in the session's scope before the agent can see any of it."""
        flow.result = await _tokenise(runner, flow, flow.params, flow.target.upstream or "")


class LogMessage(UpstreamMessage):
    """notifications/message: relayed on the request in flight, else queued on the session
    until the agent's next request (never silently dropped; a full queue is audited)."""

    method = "notifications/message"

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        delivery = await flow.session.deliver_log(flow.target.upstream or "", flow.result)
        flow.detail["delivery"] = delivery
        if delivery == "dropped":
            flow.outcome = ev.ERROR


class Notification(UpstreamMessage):
    """List-changed, resource-updated and other notifications: relayed when the agent can take them."""

    method = "notifications/*"

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        delivery = await flow.session.deliver_notification(flow.target.upstream or "", flow.result)
        flow.detail["delivery"] = delivery
        if delivery == "failed":
            flow.outcome = ev.ERROR


class Progress(UpstreamMessage):
    """notifications/progress: the upstream's progress on a tool call, relayed (message tokenised)
    to the agent request that made the call; progress for no call in flight is audited, not sent."""

    method = "notifications/progress"

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        params = flow.params.params
        ctx = flow.session.progress_target(params.progress_token)
        if ctx is None:
            flow.detail["delivery"] = "no_request"
            return
        shown = flow.result.params
        try:
            await ctx.session.report_progress(shown.progress, shown.total, shown.message)
        except Exception as exc:  # the agent went away: the upstream must not notice
            flow.detail.update(delivery="failed", failure=type(exc).__name__)
            flow.outcome = ev.ERROR
            return
        flow.detail["delivery"] = "delivered"


class AgentNotification(Handler):
    """A notification from the agent (initialized, cancelled, progress, roots/list_changed): the
    SDK applies it (``call_next``: a cancelled request's task is cancelled, and with it the upstream
    call, which the SDK's client cancels upstream); roots/list_changed is passed on to every
    upstream the session has open (their roots are the agent's). One audit row each."""

    kind = ev.AGENT_NOTIFICATION

    def __init__(self, method: str, call_next: Any, ctx: Any) -> None:
        self.method = method
        self.leaves = method == "notifications/roots/list_changed"
        self.binds_session = method != "notifications/initialized"  # before any session exists
        self._call_next = call_next
        self._ctx = ctx

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        await self._call_next(self._ctx)
        if not self.leaves:
            return
        assert flow.session is not None
        relayed, failed = [], []
        for upstream in flow.session.open_upstreams():
            try:
                await _request(runner, flow, upstream, self.method, lambda c: c.send_roots_list_changed())
                relayed.append(upstream)
            except VeilError:
                failed.append(upstream)
        flow.detail.update(relayed=relayed, failed=failed)


class AskAgent(UpstreamMessage):
    """sampling/createMessage and elicitation/create: the request is tokenised for the agent; the
    agent's answer is an outbound value to the asking upstream, untokenised by flow policy."""

    leaves = True
    request_type: Any = None
    result_type: Any = None

    def __init__(self, method: str, request_type: Any, result_type: Any) -> None:
        self.method = method
        self.request_type = request_type
        self.result_type = result_type

    async def shape(self, runner: Runner, flow: Flow) -> None:
        if flow.params is not None:  # roots/list has no params
            flow.result = await _tokenise(runner, flow, flow.params, flow.target.upstream or "")

    async def exchange(self, runner: Runner, flow: Flow) -> None:
        assert flow.session is not None
        request = self.request_type(params=flow.result)
        answer = await flow.session.ask_agent(self.method, request, self.result_type, flow.target.upstream or "")
        flow.inbound = answer
        flow.detail["answer"] = getattr(answer, "action", "ok")

    def outbound(self, flow: Flow) -> Any:
        if flow.inbound is None:
            return None
        return to_wire(flow.inbound)

    def destination(self, flow: Flow) -> str:
        return self.method

    async def answer(self, flow: Flow) -> Any:
        """What goes back to the upstream: the untokenised answer, or an error it understands."""
        if flow.error is not None:
            return types.ErrorData(code=flow.error.code, message=flow.error.message)
        return from_wire(self.result_type, withhold_binary(flow.outbound))


HANDLERS: dict[str, Handler] = {
    "*": Handler(),
    "ping": Ping(),
    "tools/list": ToolsList(),
    "tools/call": ToolsCall(),
    "tools/call:search_tools": SearchTools(),
    "tools/call:execute_code": ExecuteCode(),
    "resources/list": ResourcesList(),
    "resources/templates/list": ResourceTemplatesList(),
    "resources/read": ResourcesRead(),
    "resources/subscribe": ResourcesSubscribe(),
    "resources/unsubscribe": ResourcesUnsubscribe(),
    "prompts/list": PromptsList(),
    "prompts/get": PromptsGet(),
    "completion/complete": Complete(),
    "logging/setLevel": SetLevel(),
    # from upstreams
    "notifications/message": LogMessage(),
    "notifications/*": Notification(),
    "notifications/progress": Progress(),
    "sampling/createMessage": AskAgent("sampling/createMessage", types.CreateMessageRequest, types.CreateMessageResult),
    "elicitation/create": AskAgent("elicitation/create", types.ElicitRequest, types.ElicitResult),
    # The agent's roots (file URIs, possibly naming people) are outbound values to the asking upstream.
    "roots/list": AskAgent("roots/list", types.ListRootsRequest, types.ListRootsResult),
}
