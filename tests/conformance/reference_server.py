"""An upstream that offers what the MCP conformance suite's server scenarios ask for.

The suite calls tools, prompts and resources of its own reference server (``test_simple_text``,
``test://static-text``, ``test_prompt_with_arguments``…), which is not published on npm and which
server-everything does not have. This server implements them from the scenarios' descriptions,
with the Python SDK's low-level ``Server`` so every message is exactly what the scenario
describes. Through it the suite exercises what Veil relays: images, audio, embedded resources,
log and progress notifications, sampling, elicitation, subscriptions and completion.

``python reference_server.py`` serves stdio; ``--http PORT`` serves Streamable HTTP on
127.0.0.1:PORT at ``/mcp`` and prints ``listening on port PORT`` on stderr when ready.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import warnings
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.lowlevel.server import NotificationOptions
from mcp.shared.exceptions import MCPDeprecationWarning

Ctx = ServerRequestContext[Any, Any]

# A 1x1 red PNG and a 44-byte silent WAV header: minimal valid binary payloads.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
        "0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082"
    )
).decode()
WAV = base64.b64encode(
    b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00\x80>\x00\x00"
    b"\x02\x00\x10\x00data\x00\x00\x00\x00"
).decode()
NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}


def _tool(name: str, description: str, schema: dict[str, Any] | None = None) -> types.Tool:
    return types.Tool(name=name, description=description, input_schema=schema or NO_ARGS)


TOOLS = [
    _tool("test_simple_text", "Returns simple text."),
    _tool("test_image_content", "Returns a PNG image."),
    _tool("test_audio_content", "Returns a WAV sound."),
    _tool("test_embedded_resource", "Returns an embedded text resource."),
    _tool("test_multiple_content_types", "Returns text, an image and a resource."),
    _tool("test_tool_with_logging", "Sends three log messages while it runs."),
    _tool("test_tool_with_progress", "Reports progress 0, 50 and 100 of 100."),
    _tool("test_error_handling", "Always fails with a tool error."),
    _tool(
        "test_sampling",
        "Asks the client's model.",
        {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]},
    ),
    _tool(
        "test_elicitation",
        "Asks the user for a username and e-mail address.",
        {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
    ),
    _tool("test_elicitation_sep1034_defaults", "Elicitation with defaults for every primitive type."),
    _tool("test_elicitation_sep1330_enums", "Elicitation with every enum variant."),
    # Not a scenario's: Veil's tests use it to see the client's roots reach an upstream.
    _tool("list_client_roots", "Asks the client for its roots and lists their URIs."),
    # Not a scenario's: a tool that runs only as a task (2025-11-25), which Veil does not relay.
    _tool("research_as_task", "Runs only as a task.").model_copy(
        update={"execution": types.ToolExecution(task_support="required")}
    ),
]


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


async def list_tools(ctx: Ctx, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def _elicit(ctx: Ctx, message: str, schema: dict[str, Any]) -> types.ElicitResult:
    request = types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))
    return await ctx.session.send_request(request, types.ElicitResult)


async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
    name, args = params.name, params.arguments or {}
    if name == "test_simple_text":
        return types.CallToolResult(content=[_text("This is a simple text response for testing.")])
    if name == "test_image_content":
        return types.CallToolResult(content=[types.ImageContent(type="image", data=PNG, mime_type="image/png")])
    if name == "test_audio_content":
        return types.CallToolResult(content=[types.AudioContent(type="audio", data=WAV, mime_type="audio/wav")])
    if name == "test_embedded_resource":
        resource = types.TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
        )
        return types.CallToolResult(content=[types.EmbeddedResource(type="resource", resource=resource)])
    if name == "test_multiple_content_types":
        resource = types.TextResourceContents(
            uri="test://mixed-content-resource", mime_type="application/json", text='{"test":"data","value":123}'
        )
        return types.CallToolResult(
            content=[
                _text("Multiple content types test:"),
                types.ImageContent(type="image", data=PNG, mime_type="image/png"),
                types.EmbeddedResource(type="resource", resource=resource),
            ]
        )
    if name == "test_tool_with_logging":
        for i, line in enumerate(["Tool execution started", "Tool processing data", "Tool execution completed"]):
            if i:
                await anyio.sleep(0.05)
            await ctx.session.send_log_message("info", line, logger="reference", related_request_id=ctx.request_id)
        return types.CallToolResult(content=[_text("Tool with logging executed successfully")])
    if name == "test_tool_with_progress":
        token = (ctx.meta or {}).get("progress_token")
        for i, step in enumerate([0, 50, 100]):
            if i:
                await anyio.sleep(0.05)
            if token is not None:
                await ctx.session.send_progress_notification(
                    token, step, 100, message=f"step {i + 1}", related_request_id=ctx.request_id
                )
        return types.CallToolResult(content=[_text("Tool with progress executed successfully")])
    if name == "test_error_handling":
        return types.CallToolResult(
            is_error=True, content=[_text("This tool intentionally returns an error for testing")]
        )
    if name == "test_sampling":
        request = types.CreateMessageRequest(
            params=types.CreateMessageRequestParams(
                messages=[types.SamplingMessage(role="user", content=_text(str(args.get("prompt", ""))))],
                max_tokens=100,
            )
        )
        answer = await ctx.session.send_request(request, types.CreateMessageResult)
        content = answer.content if isinstance(answer.content, types.TextContent) else None
        return types.CallToolResult(content=[_text(f"LLM response: {content.text if content else ''}")])
    if name == "test_elicitation":
        schema = {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        }
        answer = await _elicit(ctx, str(args.get("message", "")), schema)
        return types.CallToolResult(
            content=[_text(f"User response: action={answer.action}, content={json.dumps(answer.content)}")]
        )
    if name == "test_elicitation_sep1034_defaults":
        schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "default": "John Doe"},
                "age": {"type": "integer", "default": 30},
                "score": {"type": "number", "default": 95.5},
                "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
                "verified": {"type": "boolean", "default": True},
            },
        }
        answer = await _elicit(ctx, "Please review and update the form fields with defaults", schema)
        return types.CallToolResult(
            content=[_text(f"Elicitation completed: action={answer.action}, content={json.dumps(answer.content)}")]
        )
    if name == "test_elicitation_sep1330_enums":
        titled = [{"const": f"value{i}", "title": t} for i, t in enumerate(["First", "Second", "Third"], 1)]
        schema = {
            "type": "object",
            "properties": {
                "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                "titledSingle": {"type": "string", "oneOf": [{**o, "title": f"{o['title']} Option"} for o in titled]},
                "legacyEnum": {
                    "type": "string",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"],
                },
                "untitledMulti": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
                },
                "titledMulti": {
                    "type": "array",
                    "items": {"anyOf": [{**o, "title": f"{o['title']} Choice"} for o in titled]},
                },
            },
        }
        answer = await _elicit(ctx, "Please select options", schema)
        return types.CallToolResult(
            content=[_text(f"Elicitation completed: action={answer.action}, content={json.dumps(answer.content)}")]
        )
    if name == "list_client_roots":
        roots = await ctx.session.list_roots()
        return types.CallToolResult(content=[_text(" ".join(str(root.uri) for root in roots.roots))])
    return types.CallToolResult(is_error=True, content=[_text(f"unknown tool {name}")])


# -- resources -------------------------------------------------------------------------------------

RESOURCES = [
    types.Resource(uri="test://static-text", name="static-text", mime_type="text/plain"),
    types.Resource(uri="test://static-binary", name="static-binary", mime_type="image/png"),
    types.Resource(uri="test://watched-resource", name="watched-resource", mime_type="text/plain"),
]


async def list_resources(ctx: Ctx, params: Any) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=RESOURCES)


async def list_templates(ctx: Ctx, params: Any) -> types.ListResourceTemplatesResult:
    template = types.ResourceTemplate(
        uri_template="test://template/{id}/data", name="template", mime_type="application/json"
    )
    return types.ListResourceTemplatesResult(resource_templates=[template])


async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    uri = str(params.uri)
    if uri == "test://static-text":
        contents: list[Any] = [
            types.TextResourceContents(
                uri=uri, mime_type="text/plain", text="This is the content of the static text resource."
            )
        ]
    elif uri == "test://static-binary":
        contents = [types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG)]
    elif uri == "test://watched-resource":
        contents = [types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched resource content.")]
    elif uri.startswith("test://template/") and uri.endswith("/data"):
        item = uri.removeprefix("test://template/").removesuffix("/data")
        text = json.dumps({"id": item, "templateTest": True, "data": f"Data for ID: {item}"})
        contents = [types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
    else:
        raise ValueError(f"Resource {uri} not found")
    return types.ReadResourceResult(contents=contents)


async def subscribe(ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
    return types.EmptyResult()


async def unsubscribe(ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    return types.EmptyResult()


# -- prompts and completion -------------------------------------------------------------------------

PROMPTS = [
    types.Prompt(name="test_simple_prompt", description="A prompt without arguments."),
    types.Prompt(
        name="test_prompt_with_arguments",
        description="A prompt with two arguments.",
        arguments=[
            types.PromptArgument(name="arg1", description="First argument", required=True),
            types.PromptArgument(name="arg2", description="Second argument", required=True),
        ],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        description="A prompt with an embedded resource.",
        arguments=[types.PromptArgument(name="resourceUri", description="The resource's URI", required=True)],
    ),
    types.Prompt(name="test_prompt_with_image", description="A prompt with an image."),
]


async def list_prompts(ctx: Ctx, params: Any) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=PROMPTS)


def _user(content: Any) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=content)


async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    args = params.arguments or {}
    if params.name == "test_simple_prompt":
        messages = [_user(_text("This is a simple prompt for testing."))]
    elif params.name == "test_prompt_with_arguments":
        messages = [_user(_text(f"Prompt with arguments: arg1='{args.get('arg1')}', arg2='{args.get('arg2')}'"))]
    elif params.name == "test_prompt_with_embedded_resource":
        uri = args.get("resourceUri", "test://example-resource")
        resource = types.TextResourceContents(
            uri=uri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        messages = [
            _user(types.EmbeddedResource(type="resource", resource=resource)),
            _user(_text("Please process the embedded resource above.")),
        ]
    elif params.name == "test_prompt_with_image":
        messages = [
            _user(types.ImageContent(type="image", data=PNG, mime_type="image/png")),
            _user(_text("Please analyze the image above.")),
        ]
    else:
        raise ValueError(f"Prompt {params.name} not found")
    return types.GetPromptResult(messages=messages)


async def complete(ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
    value = params.argument.value
    found = [v for v in ("paris", "park", "party", "test", "testing") if v.startswith(value)]
    return types.CompleteResult(completion=types.Completion(values=found, total=len(found), has_more=False))


async def set_level(ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
    return types.EmptyResult()


def build_server() -> Server[Any]:
    # The SDK warns that logging is deprecated in 2026-07-28; the suite's scenarios still use it.
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    return Server(
        "conformance-reference",
        version="1.0.0",
        instructions="Reference upstream for the MCP conformance suite's server scenarios.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
        on_set_logging_level=set_level,
    )


NOTIFY = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)


async def serve_stdio() -> None:
    from mcp.server.stdio import stdio_server

    server = build_server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options(NOTIFY))


def serve_http(port: int) -> None:
    import uvicorn

    app = build_server().streamable_http_app(host="127.0.0.1")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            while not server.started:
                await anyio.sleep(0.01)
            print(f"listening on port {port}", file=sys.stderr, flush=True)

    anyio.run(main)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve Streamable HTTP on 127.0.0.1:PORT")
    options = parser.parse_args()
    if options.http:
        serve_http(options.http)
    else:
        anyio.run(serve_stdio)
