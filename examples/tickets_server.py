"""Demo upstream "tickets": a small help-desk whose tickets mention CRM customers.

``python examples/tickets_server.py`` serves stdio; ``--http HOST:PORT`` serves Streamable HTTP at
``/mcp``. It starts with tickets from ``crm_data.generate_tickets`` over the same customers as the
crm server (env ``CRM_RECORDS``/``CRM_SEED``, ``TICKETS_SEED``, ``TICKETS_COUNT``, default 20).
When ``TICKETS_LOG`` names a file, every call's arguments are appended to it as a JSON line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from typing_extensions import TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _demo_common import env_int, record_call, serve
from crm_data import generate_customers, generate_tickets


class Ticket(TypedDict):
    id: str
    customer_id: str | None
    customer_email: str | None
    title: str
    body: str
    status: Literal["open", "pending", "closed"]
    priority: Literal["low", "normal", "high"]


def build_server(tickets: list[dict[str, Any]] | None = None, *, call_log: str | None = None) -> MCPServer:
    """Build the "tickets" server; defaults come from the environment (see the module docstring)."""
    if tickets is None:
        customers = generate_customers(env_int("CRM_RECORDS", 400), env_int("CRM_SEED", 7))
        tickets = generate_tickets(customers, env_int("TICKETS_COUNT", 20), env_int("TICKETS_SEED", 11))
    if call_log is None:
        call_log = os.environ.get("TICKETS_LOG") or None
    mcp = MCPServer("tickets", instructions="The support team's ticket system.", log_level="WARNING")
    store: list[dict[str, Any]] = list(tickets)

    def record(tool: str, arguments: dict[str, Any]) -> None:
        record_call(call_log, "tickets", tool, arguments)

    @mcp.tool()
    def create_ticket(title: str, body: str, customer_email: str | None = None) -> Ticket:
        """Open a support ticket; `customer_email` links it to a customer when given."""
        record("create_ticket", {"title": title, "body": body, "customer_email": customer_email})
        ticket = {
            "id": f"T{len(store) + 1:04d}",
            "customer_id": None,
            "customer_email": customer_email,
            "title": title,
            "body": body,
            "status": "open",
            "priority": "normal",
        }
        store.append(ticket)
        return ticket  # type: ignore[return-value]

    @mcp.tool()
    def list_tickets(status: Literal["open", "pending", "closed"] | None = None) -> list[Ticket]:
        """All tickets, optionally only those with the given status."""
        record("list_tickets", {"status": status})
        return [t for t in store if status is None or t["status"] == status]  # type: ignore[misc]

    return mcp


def main(argv: list[str] | None = None) -> None:
    serve(build_server(), argv, "Demo ticketing MCP server.")


if __name__ == "__main__":
    main()
