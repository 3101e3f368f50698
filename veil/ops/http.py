"""Where the operations endpoints sit on the MCP listener, and the metrics listener of its own.

The MCP listener's ASGI stack, outermost first::

    PublicRoutes      /healthz, /readyz (unauthenticated); counts every response by endpoint
    with_console      /console: the web console, with its own login (veil/console)
    AuthMiddleware    (veil.proxy.transports) API key or JWT, refusals audited
    MetricsRoute      /metrics for authenticated callers, unless metrics have a listener of their own
    the MCP app       /mcp

Why /metrics sits behind authentication on the MCP listener: the agents' network can reach that
listener, and metrics name upstreams and tools and show traffic. An operator who wants a plain
scrape endpoint gives ``observability.metrics.listen`` an address of its own (a pod-internal
port, 127.0.0.1 for a local agent): /metrics then leaves the MCP listener entirely.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, start_http_server

from veil.config import MetricsConfig
from veil.ops.health import Monitor, respond
from veil.ops.metrics import HTTP_RESPONSES, REGISTRY

log = logging.getLogger(__name__)

_ENDPOINTS = {"/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics"}


def _endpoint(path: str) -> str:
    if path == "/mcp" or path.startswith("/mcp/"):
        return "mcp"
    if path == "/console" or path.startswith("/console/"):
        return "console"
    return _ENDPOINTS.get(path, "other")


class PublicRoutes:
    """Answers the probes before authentication and counts every HTTP response."""

    def __init__(self, app: Any, monitor: Monitor) -> None:
        self.app = app
        self.monitor = monitor

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = _endpoint(path)
        if endpoint in ("healthz", "readyz"):
            if scope.get("method") not in ("GET", "HEAD"):
                status, body = 405, {"status": "method not allowed"}
            elif endpoint == "healthz":
                status, body = self.monitor.liveness()
            else:
                status, body = await self.monitor.readiness()
            HTTP_RESPONSES.labels(endpoint, str(status)).inc()
            await respond(send, status, body)
            return

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                HTTP_RESPONSES.labels(endpoint, str(int(message["status"]))).inc()
            await send(message)

        await self.app(scope, receive, counted)


class MetricsRoute:
    """``/metrics`` for callers AuthMiddleware let through (only when metrics are served here)."""

    def __init__(self, app: Any, config: MetricsConfig) -> None:
        self.app = app
        self.here = config.enabled and config.listen is None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not (self.here and scope["type"] == "http" and scope.get("path") == "/metrics"):
            await self.app(scope, receive, send)
            return
        data = generate_latest(REGISTRY)
        headers = [(b"content-type", CONTENT_TYPE_LATEST.encode()), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})


@contextmanager
def metrics_listener(config: MetricsConfig) -> Iterator[tuple[str, int] | None]:
    """Serve the registry on ``observability.metrics.listen`` (a thread of its own, so a scrape
    works even while the event loop is busy) for as long as the block runs."""
    if not config.enabled or config.listen is None:
        yield None
        return
    host, _, port = config.listen.rpartition(":")
    host = host.strip("[]")
    server, thread = start_http_server(int(port), addr=host, registry=REGISTRY)
    bound = server.server_address[:2]
    log.warning("veil: serving metrics on http://%s:%s/metrics", host, bound[1])
    try:
        yield (host, int(bound[1]))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
