"""A test upstream whose tool and prompt names are chosen by the test (``NAMES_TOOLS``, comma
separated), so tests can make two upstreams' names collide, or one shadow Veil's own tools.

Every tool answers ``SERVER:TOOL`` (``NAMES_SERVER``), so a test sees which upstream a call reached;
``NAMES_INSTRUCTIONS`` sets the server's instructions.
Run as ``python names_server.py``: MCP over stdio.
"""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer


def _answer(text: str):
    def answer() -> str:
        return text

    return answer


def build_server(server: str, tools: list[str], instructions: str | None = None) -> MCPServer:
    mcp = MCPServer(server, instructions=instructions, log_level="WARNING")
    for tool in tools:
        mcp.add_tool(_answer(f"{server}:{tool}"), name=tool, description=f"Answers '{server}:{tool}'.")
        mcp.prompt(name=tool, description=f"Prompt '{tool}' of {server}.")(_answer(f"{server}:{tool}"))
    return mcp


if __name__ == "__main__":
    tools = [t for t in os.environ.get("NAMES_TOOLS", "").split(",") if t]
    build_server(os.environ.get("NAMES_SERVER", "names"), tools, os.environ.get("NAMES_INSTRUCTIONS")).run("stdio")
