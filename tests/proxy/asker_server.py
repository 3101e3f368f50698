"""A test upstream that asks the agent (sampling, elicitation) about an e-mail address it is given,
and writes what comes back to ``ASK_LOG`` (one JSON line per answer), so tests can check what an
upstream really receives. Run as a subprocess: ``python asker_server.py``.

The elicitation schema's default is the address itself: the agent sees it as a token, and an
agent that accepts the default sends the token back; the upstream must receive the real value.
"""

# No `from __future__ import annotations`: MCPServer evaluates the Resolve annotations at run time.
import asyncio
import json
import os
import warnings
from typing import Annotated, Any

import mcp_types as types
from mcp.server.mcpserver import Context, Elicit, ElicitationResult, MCPServer, Resolve, Sample
from mcp.shared.exceptions import MCPDeprecationWarning
from pydantic import BaseModel, Field, create_model

LOG = os.environ.get("ASK_LOG", "")
ADDRESS = os.environ.get("ASK_ADDRESS", "lena.fischer@example.org")


def record(kind: str, value: Any) -> None:
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind, "value": value}) + "\n")


mcp = MCPServer("asker", log_level="WARNING")


def _sample(topic: str) -> Sample:
    text = f"Write one sentence to {ADDRESS} about {topic}."
    return Sample(
        [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=text))], max_tokens=50
    )


@mcp.tool()
def summarise(topic: str, sampled: Annotated[types.CreateMessageResult, Resolve(_sample)]) -> str:
    """Ask the client's model for a sentence to the customer; records the answer."""
    text = sampled.content.text if isinstance(sampled.content, types.TextContent) else ""
    record("sampling", text)
    return "noted"


@mcp.prompt()
async def briefing(topic: str, ctx: Context) -> str:
    """A prompt that asks the client's model first; records the answer."""
    sample = _sample(topic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        sampled = await ctx.session.create_message(sample.params.messages, max_tokens=50)
    text = sampled.content.text if isinstance(sampled.content, types.TextContent) else ""
    record("sampling", text)
    return f"Brief on {topic}."


Confirm: type[BaseModel] = create_model("Confirm", email=(str, Field(default=ADDRESS, description="Address")))


def _confirm(topic: str) -> Elicit[Any]:
    return Elicit(f"Is {ADDRESS} the right address for {topic}?", Confirm)


@mcp.tool()
def confirm(topic: str, answer: Annotated[ElicitationResult[Any], Resolve(_confirm)]) -> str:
    """Ask the user to confirm the customer's address; records the answer."""
    record("elicitation", answer.data.email if answer.action == "accept" else answer.action)
    return "noted"


@mcp.tool()
async def chatty(ctx: Context) -> str:
    """Logs a line naming the customer while the call runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await ctx.log("info", f"working for {ADDRESS}", logger_name="asker")
    return "done"


@mcp.tool()
async def roots(ctx: Context) -> str:
    """Asks the agent for its roots; records what arrives."""
    listed = await ctx.session.list_roots()
    record("roots", " ".join(str(r.uri) for r in listed.roots))
    return "noted"


@mcp.tool()
async def slow(ctx: Context, hold: float = 0.0) -> str:
    """Reports progress twice (the first naming the customer), then waits ``hold`` seconds."""
    await ctx.report_progress(1, 2, f"looking up {ADDRESS}")
    await ctx.report_progress(2, 2, "found")
    await asyncio.sleep(hold)
    return "finished"


async def _roots_changed(ctx: Any, params: Any) -> None:
    record("roots_changed", "")


mcp._lowlevel_server.add_notification_handler(  # MCPServer has no public hook for it
    "notifications/roots/list_changed", types.NotificationParams, _roots_changed
)

_background: set[Any] = set()


@mcp.tool()
async def log_later(ctx: Context) -> str:
    """Returns at once; a moment later, between calls, logs a line naming the customer."""
    session = ctx.session

    async def later() -> None:
        await asyncio.sleep(0.3)  # after the response has gone: no request of the agent is in flight
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await session.send_log_message("info", f"later for {ADDRESS}", logger="asker")

    task = asyncio.get_running_loop().create_task(later())
    _background.add(task)
    task.add_done_callback(_background.discard)
    return "scheduled"


# A hostile listing: the customer's address (a value Veil's vault knows once it has been
# tokenised) and a phone number in titles, descriptions, schema defaults, resource names and URIs.
PHONE = "+1 212 555 0134"


@mcp.tool(title=f"Account of {ADDRESS}", description=f"Look up the account of {ADDRESS} (or call {PHONE}).")
def lookup(email: Annotated[str, Field(description=f"for example {ADDRESS}", examples=[ADDRESS])] = ADDRESS) -> str:
    """Returns JSON as text, with no output schema, as most real servers do."""
    return json.dumps({"email": email, "plan": "gold", "phones": [PHONE]})


@mcp.tool()
def route(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})], note: str = "") -> str:
    """Its ``region`` is mirrored by 2026-07-28 clients into an ``Mcp-Param-Region`` header."""
    record("route", region)
    return f"routed to {region}"


@mcp.tool(structured_output=False)
def record_as_text() -> str:
    """A JSON record as plain text content."""
    return json.dumps({"email": ADDRESS, "visits": 3})


@mcp.resource("asker://contact", name=f"contact card of {ADDRESS}", description=f"Call {PHONE}")
def contact() -> str:
    return f"{ADDRESS} {PHONE}"


@mcp.resource("asker://accounts/{account}", name="account", description=f"Accounts like {ADDRESS}'s")
def account(account: str) -> str:
    if LOG:
        record("account", account)
    return account


@mcp.prompt(description=f"Write to {ADDRESS}")
def write_to(topic: Annotated[str, Field(description=f"what to tell {ADDRESS}")]) -> str:
    return f"Write to {ADDRESS} about {topic}."


if __name__ == "__main__":
    mcp.run("stdio")
