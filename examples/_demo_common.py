"""What the three demo upstreams share: the command line and the call log.

Every demo server runs over stdio by default and over Streamable HTTP (path ``/mcp``) with
``--http HOST:PORT``; every one appends each received call's arguments as a JSON line to the file
named by its ``*_LOG``/``*_OUTBOX`` environment variable, which is how tests and ``veil demo`` show
what an upstream really received.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer


def env_int(name: str, default: int) -> int:
    """An integer environment variable, with an error naming the variable when it is not one."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"environment variable {name} must be an integer") from None


def record_call(log_path: str | None, server: str, tool: str, arguments: dict[str, Any]) -> None:
    """Append ``{"server", "tool", "arguments"}`` as one JSON line to ``log_path`` (when set)."""
    if not log_path:
        return
    line = json.dumps({"server": server, "tool": tool, "arguments": arguments}, ensure_ascii=False)
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)  # e.g. a fresh data_dir in the demo config
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def parse_http(value: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port), with an error that says what is expected."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT such as 127.0.0.1:8765, got {value!r}")
    return host, int(port)


def serve(mcp: MCPServer, argv: list[str] | None, description: str) -> None:
    """Run ``mcp`` over stdio, or over Streamable HTTP at ``/mcp`` with ``--http HOST:PORT``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--http", type=parse_http, metavar="HOST:PORT", help="serve Streamable HTTP at /mcp")
    args = parser.parse_args(argv)
    if args.http is None:
        mcp.run("stdio")
    else:
        host, port = args.http
        mcp.run("streamable-http", host=host, port=port, streamable_http_path="/mcp")
