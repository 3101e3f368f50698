"""/readyz from the first stop signal on: ``stopping`` and 503, so the load balancer routes
elsewhere while calls drain; and ready again is never reported once stopping. Real PostgreSQL,
real audit writer; only the gateway around them is a plain holder of the two."""

from __future__ import annotations

from types import SimpleNamespace

import anyio
import pytest
import sqlalchemy as sa

from veil.audit.writer import AuditWriter
from veil.ops.health import Monitor
from veil.proxy.lifecycle import Stop

pytestmark = pytest.mark.req("ops:no-pii")


class _Gateway:
    """What the monitor reads: the engine, the audit writer, the configured upstreams."""

    def __init__(self, engine: sa.Engine, audit: AuditWriter, upstreams: dict[str, None]) -> None:
        self.engine, self.audit, self.config = engine, audit, SimpleNamespace(upstreams=upstreams)


def test_readyz_says_stopping_once_a_stop_is_requested(engine: sa.Engine) -> None:
    async def main() -> None:
        with AuditWriter(engine) as writer:
            gateway = _Gateway(engine, writer, {"crm": None})
            stop = Stop(5.0)
            monitor = Monitor(gateway, stop)  # type: ignore[arg-type]
            status, body = await monitor.readiness()
            assert status == 200 and body["status"] == "ready", body
            assert body["checks"]["audit_writer"] == {"ok": True, "running": True, "queued": 0}
            assert body["upstreams"] == {"crm": "unknown"}
            stop.request("SIGTERM")
            status, body = await monitor.readiness()
            assert status == 503 and body["status"] == "stopping", body
            monitor.close()

    anyio.run(main)
