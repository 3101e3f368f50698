"""Helpers for gateway tests: serve a real gateway over Streamable HTTP on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from veil.config import VeilConfig
from veil.proxy.gateway import Gateway
from veil.proxy.transports import serve_http


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def serving(config: VeilConfig) -> AsyncIterator[tuple[Gateway, str]]:
    """A started gateway serving Streamable HTTP on a free loopback port."""
    async with Gateway(config) as gateway, anyio.create_task_group() as tg:
        port = free_port()
        server = await tg.start(serve_http, gateway, "127.0.0.1", port)
        try:
            yield gateway, f"http://127.0.0.1:{port}/mcp"
        finally:
            server.should_exit = True


def outbox(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
