"""Glue between the front server and the sandbox: ``execute_code`` and the stub resources.

``execute_code`` is a flow through the runner like any other method (its handler is
``veil.proxy.methods.ExecuteCode``): access, audit intent, then ``execute`` here, then
``shape_result``. Every tool call the agent's code makes comes back as
``call_tool(upstream, tool, args)`` and is its own flow (``via="code"``). What the code prints or
returns is tokenised once more before the agent sees it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import mcp_types as types

from veil.errors import InvalidArguments, UpstreamError
from veil.proxy.catalogue import CatalogueEntry
from veil.sandbox.spec import ExecutionResult, ToolSpec

if TYPE_CHECKING:
    from veil.proxy.gateway import Gateway
    from veil.proxy.session import AgentSession

STUB_PREFIX = "veil://servers/"


def tool_specs(gateway: Gateway, session: AgentSession, entries: list[CatalogueEntry]) -> list[ToolSpec]:
    """The tools the principal may call, as the sandbox's generated API sees them."""
    return [
        ToolSpec(
            upstream=e.upstream,
            name=e.tool.name,
            description=e.tool.description or "",
            input_schema=dict(e.tool.input_schema or {"type": "object", "properties": {}}),
            output_schema=dict(e.tool.output_schema) if e.tool.output_schema else None,
        )
        for e in entries
        if gateway.policy.decide_access(session.principal, e.upstream, e.tool.name).allowed
    ]


def result_value(result: types.CallToolResult) -> Any:
    """What a sandboxed function returns: structured content as Python objects; else the text,
    parsed as JSON when it is JSON (most real servers return JSON as text with no output schema)."""
    if result.structured_content is not None:
        structured = result.structured_content
        # FastMCP wraps non-object results as {"result": ...}; give the code the value itself.
        if isinstance(structured, dict) and set(structured) == {"result"}:
            return _json_or_text(structured["result"])
        return structured
    return _json_or_text("\n".join(c.text for c in result.content if isinstance(c, types.TextContent)))


def _json_or_text(value: Any) -> Any:
    """A string holding a JSON object or array becomes that object; anything else is kept."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def check_args(args: dict[str, Any]) -> None:
    """execute_code's arguments, checked before anything runs (messages name the field)."""
    code, timeout_s = args.get("code"), args.get("timeout_s")
    if not isinstance(code, str) or not code.strip():
        raise InvalidArguments("execute_code needs 'code': a non-empty string of Python 3 source")
    if timeout_s is not None and (not isinstance(timeout_s, int | float) or timeout_s <= 0):
        raise InvalidArguments("execute_code 'timeout_s' must be a positive number of seconds")


async def execute(gateway: Gateway, session: AgentSession, args: dict[str, Any]) -> ExecutionResult:
    """Run the agent's code; each tool call it makes is a flow through the runner (via="code")."""
    timeout_s = args.get("timeout_s")
    entries, _ = await session.catalogue()
    specs = tool_specs(gateway, session, entries)

    async def call_tool(upstream: str, tool: str, arguments: dict[str, Any]) -> Any:
        result = await gateway.pipeline.call_tool(session, upstream, tool, arguments, via="code")
        if result.is_error:
            raise UpstreamError(f"{upstream}__{tool} failed: {result_value(result)}")
        return result_value(result)

    limit = gateway.sandbox_config().timeout_s
    return await gateway.sandbox.execute(
        session.id,
        args["code"],
        catalogue=specs,
        call_tool=call_tool,
        timeout_s=min(float(timeout_s), limit) if timeout_s else None,
        reset=bool(args.get("reset", False)),
    )


async def shape_result(gateway: Gateway, session: AgentSession, outcome: ExecutionResult, flow: Any) -> Any:
    """What the agent sees of an execution: its output, tokenised again (the code may have built
    values the tokenizer has not seen), in the tokenizer's sandbox mode (no equality oracle)."""
    from veil.proxy.pipeline import SANDBOX

    shown = {
        "outcome": outcome.outcome,
        "message": outcome.message,
        "stdout": outcome.stdout,
        "stderr": outcome.stderr,
        "result": outcome.result,
        "truncated": outcome.truncated,
    }
    tokenised = await gateway.pipeline.tokenize_value(session, shown, "sandbox", mode=SANDBOX)
    payload = tokenised.value
    flow.entities.update(tokenised.entities)
    flow.tokens.extend(tokenised.tokens)
    if outcome.outcome != "ok":
        flow.outcome = outcome.outcome
    flow.detail.update(
        code_sha256=outcome.code_sha256,
        cpu_s=outcome.cpu_s,
        max_rss_mb=outcome.max_rss_mb,
        tool_calls=outcome.tool_calls,
        bytes_returned=outcome.bytes_returned,
        truncated=outcome.truncated,
        restarted=outcome.restarted,
        reset=bool(flow.params.arguments.get("reset", False)) if flow.params.arguments else False,
    )
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=_render(payload))],
        structured_content=payload,
        is_error=outcome.outcome != "ok",
    )


def _render(payload: dict[str, Any]) -> str:
    """The text an agent reads: output first, the notebook-style value last."""
    parts = []
    if payload.get("outcome") != "ok" or payload.get("message"):
        parts.append(f"[{payload.get('outcome')}] {payload.get('message') or ''}".strip())
    if payload.get("stdout"):
        parts.append(payload["stdout"].rstrip("\n"))
    if payload.get("stderr"):
        parts.append("stderr:\n" + payload["stderr"].rstrip("\n"))
    if payload.get("result") is not None:
        parts.append(f"=> {payload['result']}")
    return "\n".join(parts) or "(no output)"


async def stub_resources(gateway: Gateway, session: AgentSession) -> list[types.Resource]:
    from veil.sandbox.stubs import render_stubs

    entries, _ = await session.catalogue()
    files = render_stubs(tool_specs(gateway, session, entries))
    return [
        types.Resource(
            uri=f"{STUB_PREFIX}{path}",
            name=path,
            mime_type="text/x-python" if path.endswith(".py") else "text/markdown",
        )
        for path in sorted(files)
    ]


async def read_stub_resource(gateway: Gateway, session: AgentSession, uri: str) -> types.ReadResourceResult:
    from veil.errors import ToolNotFound
    from veil.sandbox.stubs import render_stubs

    entries, _ = await session.catalogue()
    files = render_stubs(tool_specs(gateway, session, entries))
    path = uri.removeprefix(STUB_PREFIX)
    if path not in files:
        raise ToolNotFound(f"no sandbox stub at '{uri}' (list resources to see them)")
    return types.ReadResourceResult(
        contents=[types.TextResourceContents(uri=uri, text=files[path], mime_type="text/plain")]
    )
