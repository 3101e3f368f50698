"""Demo upstream "crm": an MCP server full of (fake) PII, used by ``veil demo``, tests and benchmarks.

Run it as ``python examples/crm_server.py`` (stdio) or ``python examples/crm_server.py --http
127.0.0.1:PORT`` (Streamable HTTP at ``/mcp``). Environment:

* ``CRM_RECORDS`` (default 400) and ``CRM_SEED`` (default 7): the data set (``crm_data``);
* ``CRM_CALL_LOG``: when set, every tool call's arguments are appended to this file as one JSON
  line ``{"server": "crm", "tool": ..., "arguments": {...}}``, so a test can check what the
  upstream really received (real values, after Veil untokenised them).

The server deliberately leaks PII through every channel MCP has (results, errors, log and progress
notifications, sampling and elicitation requests, resources, prompts) so the gateway's invariant
can be tested on each of them. The one exception is ``get_customer`` with an unknown id, whose error
is PII-free, to test that ordinary errors pass through unchanged.

Sampling and elicitation use MCPServer's ``Resolve`` markers rather than calling
``session.create_message`` directly: the SDK then sends a standalone server-to-client request on
handshake-era connections (<= 2025-11-25) and an ``InputRequiredResult`` round on 2026-07-28+
connections, so the demo works whichever protocol version the gateway negotiates.
"""

# No `from __future__ import annotations` here: MCPServer evaluates tool annotations, and the
# `Annotated[..., Resolve(resolver)]` ones name resolvers local to build_server(), which a string
# annotation evaluated against module globals could not find.
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import mcp_types as types
from mcp.server.mcpserver import (
    Context,
    Elicit,
    ElicitationResult,
    MCPServer,
    Resolve,
    Sample,
    UserMessage,
)
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError, NoBackChannelError
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _demo_common import env_int, record_call, serve
from crm_data import generate_customers


class Address(TypedDict):
    street: str
    city: str
    state: str
    zip: str


class Customer(TypedDict):
    """One CRM customer record (see ``examples/crm_data.py`` for the fields)."""

    id: str
    first_name: str
    last_name: str
    full_name: str
    email: str
    phone: str
    address: Address
    ssn: str
    card_number: str
    date_of_birth: str
    segment: Literal["gold", "silver", "bronze"]
    account_manager: str
    lifetime_value: float
    notes: list[str]


_EDITABLE = ("first_name", "last_name", "full_name", "email", "phone", "segment")


class NoteAdded(TypedDict):
    ok: bool
    customer_id: str


class Ok(TypedDict):
    ok: bool


class ContactConfirmation(BaseModel):
    """What ``confirm_contact`` asks the user (elicitation schemas allow primitive fields only)."""

    confirmed: bool = Field(description="Are the contact details still correct?")
    comment: str = Field(default="", description="Optional correction")


class ContactAnswer(TypedDict):
    action: str
    confirmed: bool | None
    comment: str | None


async def _log(ctx: Context, level: Literal["info", "warning"], message: str) -> None:
    """Send an MCP log notification; the logging capability is deprecated in 2026-07-28 but still
    carried (per-request opt-in), and the demo must exercise it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await ctx.log(level, message, logger_name="crm")


def build_server(
    customers: list[dict[str, Any]] | None = None,
    *,
    call_log: str | None = None,
) -> MCPServer:
    """Build the "crm" server around ``customers`` (default: from CRM_RECORDS / CRM_SEED)."""
    if customers is None:
        customers = generate_customers(env_int("CRM_RECORDS", 400), env_int("CRM_SEED", 7))
    if call_log is None:
        call_log = os.environ.get("CRM_CALL_LOG") or None
    by_id = {c["id"]: c for c in customers}
    mcp = MCPServer(
        "crm",
        instructions="A CRM with customer records (names, contact details, SSNs, cards, notes).",
        log_level="WARNING",  # quiet stderr: the SDK logs tool error messages (which may hold PII) at INFO
    )

    def record(tool: str, arguments: dict[str, Any]) -> None:
        record_call(call_log, "crm", tool, arguments)

    def lookup(customer_id: str) -> dict[str, Any]:
        customer = by_id.get(customer_id)
        if customer is None:
            # The id is the caller's own input, never PII from this CRM.
            raise ToolError(f"Unknown customer id {customer_id!r}. Use find_customers to list valid ids.")
        return customer

    @mcp.tool()
    def find_customers(segment: Literal["gold", "silver", "bronze"] | None = None, limit: int = 50) -> list[Customer]:
        """List customers, optionally only one segment ("gold", "silver" or "bronze"), at most `limit`."""
        record("find_customers", {"segment": segment, "limit": limit})
        if limit < 0:
            raise ToolError("limit must be >= 0")
        matching = [c for c in customers if segment is None or c["segment"] == segment]
        return matching[:limit]  # type: ignore[return-value]

    @mcp.tool()
    def get_customer(customer_id: str) -> Customer:
        """One customer record by id, e.g. "C0001"."""
        record("get_customer", {"customer_id": customer_id})
        return lookup(customer_id)  # type: ignore[return-value]

    @mcp.tool()
    def export_customers() -> list[Customer]:
        """Every customer record (a large result: a few hundred KB of JSON)."""
        record("export_customers", {})
        return customers  # type: ignore[return-value]

    @mcp.tool()
    def add_note(customer_id: str, note: str) -> NoteAdded:
        """Append a free-text note to a customer's record."""
        record("add_note", {"customer_id": customer_id, "note": note})
        lookup(customer_id)["notes"].append(note)
        return {"ok": True, "customer_id": customer_id}

    @mcp.tool()
    def update_customer(customer_id: str, changes: dict[str, str]) -> Customer:
        """Change top-level text fields of a customer, e.g. {"phone": "..."}; returns the record."""
        record("update_customer", {"customer_id": customer_id, "changes": changes})
        customer = lookup(customer_id)
        unknown = [k for k in changes if k not in _EDITABLE]
        if unknown:
            # Honest but careless, like many real servers: the caller's own keys are echoed back.
            raise ToolError(f"Unknown field(s) {', '.join(map(repr, unknown))}; editable: {', '.join(_EDITABLE)}")
        customer.update(changes)
        return customer  # type: ignore[return-value]

    @mcp.tool()
    def ping() -> Ok:
        """A tiny call for latency measurements."""
        record("ping", {})
        return {"ok": True}

    @mcp.tool()
    async def sync_customers(ctx: Context, count: int = 3) -> str:
        """Sync the first `count` customers with the billing system, reporting log and progress events."""
        record("sync_customers", {"count": count})
        batch = customers[: max(0, count)]
        await _log(ctx, "info", f"Starting sync of {len(batch)} customers")
        for i, c in enumerate(batch, start=1):
            await _log(ctx, "info", f"Syncing {c['full_name']} <{c['email']}>")
            await ctx.report_progress(i, len(batch), message=f"Synced {c['full_name']} ({c['email']})")
        if batch:
            c = batch[-1]
            await _log(ctx, "warning", f"Billing address for {c['full_name']} looks outdated: {c['address']['street']}")
        names = ", ".join(c["full_name"] for c in batch)
        return f"Synced {len(batch)} customers: {names}."

    def _summary_request(customer_id: str) -> Sample:
        c = lookup(customer_id)
        notes = " ".join(c["notes"])
        text = (
            f"Summarize this customer for the account manager in two sentences.\n"
            f"Name: {c['full_name']}\nEmail: {c['email']}\nNotes: {notes}"
        )
        return Sample(
            [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=text))],
            max_tokens=200,
            system_prompt="You write short CRM summaries.",
        )

    @mcp.tool()
    def summarize_with_model(
        customer_id: str,
        sampled: Annotated[types.CreateMessageResult, Resolve(_summary_request)],
    ) -> str:
        """Ask the client's model (MCP sampling) to summarize a customer; returns the model's answer."""
        record("summarize_with_model", {"customer_id": customer_id})
        content = sampled.content
        return content.text if isinstance(content, types.TextContent) else str(content)

    def _confirm_request(customer_id: str) -> Elicit[ContactConfirmation]:
        c = lookup(customer_id)
        return Elicit(
            f"Is {c['full_name']} still reachable at {c['phone']}?",
            ContactConfirmation,
        )

    @mcp.tool()
    def confirm_contact(
        customer_id: str,
        answer: Annotated[ElicitationResult[ContactConfirmation], Resolve(_confirm_request)],
    ) -> ContactAnswer:
        """Ask the user (MCP elicitation) to confirm a customer's contact details; returns the answer."""
        record("confirm_contact", {"customer_id": customer_id})
        if answer.action == "accept":
            return {"action": "accept", "confirmed": answer.data.confirmed, "comment": answer.data.comment}
        return {"action": answer.action, "confirmed": None, "comment": None}

    @mcp.tool()
    def locked_account(customer_id: str) -> Customer:
        """Always fails: the account is locked. The error message names the customer (with PII)."""
        record("locked_account", {"customer_id": customer_id})
        c = lookup(customer_id)
        raise ToolError(f"Account of {c['full_name']} ({c['email']}) is locked pending a fraud review.")

    def crm_extra_report() -> str:
        """An extra tool that appears after notify_change was called."""
        record("crm_extra_report", {})
        return f"{len(customers)} customers on file."

    @mcp.tool()
    async def notify_change(ctx: Context) -> str:
        """Register the extra tool `crm_extra_report` and announce that the tool list changed."""
        record("notify_change", {})
        if mcp._tool_manager.get_tool("crm_extra_report") is None:
            mcp.add_tool(crm_extra_report)
        await ctx.notify_tools_changed()  # 2026-07-28+: subscriptions/listen streams
        # Handshake-era clients get a plain notifications/tools/list_changed; a connection without a
        # standalone channel has only the bus event above.
        with contextlib.suppress(NoBackChannelError):
            await ctx.session.send_tool_list_changed()
        return "Tool list changed: crm_extra_report is now available."

    @mcp.resource("crm://customers/{customer_id}", mime_type="application/json")
    def customer_resource(customer_id: str) -> str:
        """The JSON record of one customer."""
        customer = by_id.get(customer_id)
        if customer is None:
            raise ResourceNotFoundError(f"Unknown customer id {customer_id!r}")
        return json.dumps(customer, ensure_ascii=False)

    @mcp.resource("crm://summary", mime_type="text/plain")
    def summary() -> str:
        """A short text summary of the CRM naming the top accounts."""
        counts = {s: sum(1 for c in customers if c["segment"] == s) for s in ("gold", "silver", "bronze")}
        top = sorted(customers, key=lambda c: c["lifetime_value"], reverse=True)[:3]
        names = "; ".join(f"{c['full_name']} (managed by {c['account_manager']})" for c in top)
        return (
            f"{len(customers)} customers: {counts['gold']} gold, {counts['silver']} silver, "
            f"{counts['bronze']} bronze. Top accounts: {names}."
        )

    @mcp.prompt()
    def draft_followup(customer_id: str) -> list[UserMessage]:
        """A prompt asking for a follow-up email to a customer (contains their name, email, address)."""
        customer = by_id.get(customer_id)
        if customer is None:  # an MCPError: its message reaches the client (a ValueError's does not)
            raise MCPError(types.INVALID_PARAMS, f"Unknown customer id {customer_id!r}")
        a = customer["address"]
        return [
            UserMessage(
                f"Draft a friendly follow-up email to {customer['full_name']} <{customer['email']}>, "
                f"who lives at {a['street']}, {a['city']}, {a['state']} {a['zip']}. "
                f"Mention their last note: {customer['notes'][-1]}"
            )
        ]

    return mcp


def main(argv: list[str] | None = None) -> None:
    serve(build_server(), argv, "Demo CRM MCP server with fake PII.")


if __name__ == "__main__":
    main()
