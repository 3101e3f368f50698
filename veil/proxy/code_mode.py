"""Glue between the front server and the sandbox: ``execute_code`` and the stub resources.

Every tool call the agent's code makes comes back here as ``call_tool(upstream, tool, args)`` and
takes exactly the path of a direct call (access, untokenise, upstream, tokenise, audit). What the
code prints or returns is tokenised once more before the agent sees it, and the execution itself
is an audit event that must be durable before the result is returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mcp_types as types

from veil.audit import events as ev
from veil.errors import AccessDenied, InvalidArguments, UpstreamError
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
    """What a sandboxed function returns: structured content as Python objects, else the text."""
    if result.structured_content is not None:
        structured = result.structured_content
        # FastMCP wraps non-object results as {"result": ...}; give the code the value itself.
        if isinstance(structured, dict) and set(structured) == {"result"}:
            return structured["result"]
        return structured
    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
    return "\n".join(texts)


async def run_execute_code(gateway: Gateway, session: AgentSession, args: dict[str, Any]) -> types.CallToolResult:
    code = args.get("code")
    timeout_s = args.get("timeout_s")
    reset = bool(args.get("reset", False))
    if not isinstance(code, str) or not code.strip():
        raise InvalidArguments("execute_code needs 'code': a non-empty string of Python 3 source")
    if timeout_s is not None and (not isinstance(timeout_s, int | float) or timeout_s <= 0):
        raise InvalidArguments("execute_code 'timeout_s' must be a positive number of seconds")

    decision = gateway.policy.decide_execute(session.principal)
    if not decision.allowed:
        await gateway.record(
            session.event(ev.CODE_EXECUTE, outcome=ev.DENIED, decision="deny", rule=decision.rule, tool="execute_code")
        )
        raise AccessDenied(
            f"principal '{session.principal.name}' may not use execute_code (policy rule '{decision.rule}': "
            f"{decision.reason})",
            rule=decision.rule,
        )

    entries, _ = await session.catalogue()
    specs = tool_specs(gateway, session, entries)

    async def call_tool(upstream: str, tool: str, arguments: dict[str, Any]) -> Any:
        result = await gateway.pipeline.call_tool(session, upstream, tool, arguments, via="code")
        if result.is_error:
            raise UpstreamError(f"{upstream}__{tool} failed: {result_value(result)}")
        return result_value(result)

    limit = gateway.sandbox_config().timeout_s
    outcome: ExecutionResult = await gateway.sandbox.execute(
        session.id,
        code,
        catalogue=specs,
        call_tool=call_tool,
        timeout_s=min(float(timeout_s), limit) if timeout_s else None,
        reset=reset,
    )
    shown = {
        "outcome": outcome.outcome,
        "message": outcome.message,
        "stdout": outcome.stdout,
        "stderr": outcome.stderr,
        "result": outcome.result,
        "truncated": outcome.truncated,
    }
    tokenised = await gateway.in_thread(
        lambda: gateway.tokenizer.tokenize(shown, session.scope, "sandbox", mode="sandbox_output")
    )
    payload = tokenised.value
    await gateway.record(
        session.event(
            ev.CODE_EXECUTE,
            outcome=ev.OK if outcome.outcome == "ok" else outcome.outcome,
            tool="execute_code",
            args_digest=outcome.code_sha256,
            entities=dict(tokenised.entities),
            tokens=list(tokenised.tokens),
            duration_ms=outcome.duration_ms,
            detail={
                "code_sha256": outcome.code_sha256,
                "cpu_s": outcome.cpu_s,
                "max_rss_mb": outcome.max_rss_mb,
                "tool_calls": outcome.tool_calls,
                "bytes_returned": outcome.bytes_returned,
                "truncated": outcome.truncated,
                "restarted": outcome.restarted,
                "reset": reset,
            },
        )
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
