"""Demo upstream "mailer": sends (pretend) email. ``veil demo`` uses it as the flow target.

``python examples/mailer_server.py`` serves stdio; ``--http HOST:PORT`` serves Streamable HTTP at
``/mcp``. When ``MAILER_OUTBOX`` names a file, every call's arguments are appended to it as a JSON
line: that file is what "the upstream received" — the real addresses Veil untokenised for it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from typing_extensions import TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _demo_common import record_call, serve


class SendResult(TypedDict):
    status: str
    message_id: str


class OutboxEntry(TypedDict):
    message_id: str
    to: str
    subject: str
    body: str


def build_server(*, outbox_log: str | None = None) -> MCPServer:
    """Build the "mailer" server; ``outbox_log`` defaults to env ``MAILER_OUTBOX``."""
    if outbox_log is None:
        outbox_log = os.environ.get("MAILER_OUTBOX") or None
    mcp = MCPServer("mailer", instructions="Sends email on the company's behalf.", log_level="WARNING")
    outbox: list[OutboxEntry] = []

    def record(tool: str, arguments: dict[str, Any]) -> None:
        record_call(outbox_log, "mailer", tool, arguments)

    @mcp.tool()
    def send_email(to: str, subject: str, body: str) -> SendResult:
        """Send an email to `to` (an email address) with a subject and a plain-text body."""
        record("send_email", {"to": to, "subject": subject, "body": body})
        message_id = f"<msg-{len(outbox) + 1:05d}@mailer.example>"
        outbox.append({"message_id": message_id, "to": to, "subject": subject, "body": body})
        return {"status": "sent", "message_id": message_id}

    @mcp.tool()
    def list_outbox() -> list[OutboxEntry]:
        """Every message sent since the server started, oldest first."""
        record("list_outbox", {})
        return list(outbox)

    return mcp


def main(argv: list[str] | None = None) -> None:
    serve(build_server(), argv, "Demo mailer MCP server.")


if __name__ == "__main__":
    main()
