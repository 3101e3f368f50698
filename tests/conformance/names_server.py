"""A test upstream whose tool and prompt names are chosen by the test (``NAMES_TOOLS``, comma
separated), so tests can make two upstreams' names collide, or one shadow Veil's own tools.

Every tool answers ``SERVER:TOOL`` (``NAMES_SERVER``), so a test sees which upstream a call reached;
``NAMES_INSTRUCTIONS`` sets the server's instructions. A tool named ``needs_consent`` instead
fails with error -32042 (URL elicitation required), whose message and data name a person.
Run as ``python names_server.py``: MCP over stdio.
"""

from __future__ import annotations

import os

import mcp_types as types
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import UrlElicitationRequiredError

CONSENT_URL = "https://consent.example/connect?email=jane.roe@example.com"


def _answer(text: str):
    def answer() -> str:
        return text

    return answer


def _needs_consent() -> str:
    """Always asks for consent through a URL first."""
    params = types.ElicitRequestURLParams(
        mode="url", message="Jane Roe must connect her account", url=CONSENT_URL, elicitation_id="consent-1"
    )
    raise UrlElicitationRequiredError([params], message="Jane Roe (jane.roe@example.com) must consent first")


def build_server(server: str, tools: list[str], instructions: str | None = None) -> MCPServer:
    mcp = MCPServer(server, instructions=instructions, log_level="WARNING")
    for tool in tools:
        if tool == "needs_consent":
            mcp.add_tool(_needs_consent, name=tool)
            continue
        mcp.add_tool(_answer(f"{server}:{tool}"), name=tool, description=f"Answers '{server}:{tool}'.")
        mcp.prompt(name=tool, description=f"Prompt '{tool}' of {server}.")(_answer(f"{server}:{tool}"))
    return mcp


if __name__ == "__main__":
    tools = [t for t in os.environ.get("NAMES_TOOLS", "").split(",") if t]
    build_server(os.environ.get("NAMES_SERVER", "names"), tools, os.environ.get("NAMES_INSTRUCTIONS")).run("stdio")
