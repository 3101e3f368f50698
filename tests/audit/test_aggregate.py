"""Aggregation of authentication failures, minute by minute, with a controlled clock and a real
writer on real Postgres (the HTTP flood itself is in test_runtime_gateway.py)."""

from __future__ import annotations

import anyio
import pytest
import sqlalchemy as sa

from veil.audit import AuditWriter
from veil.audit.aggregate import OTHER_SOURCE, AuthFailures

pytestmark = pytest.mark.req("audit:auth-failure-aggregation")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0  # a minute boundary

    def __call__(self) -> float:
        return self.now


def failed_rows(engine: sa.Engine) -> list[dict]:
    with engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(sa.text("SELECT detail FROM audit_events WHERE kind = 'auth.failed' ORDER BY seq"))
        ]


def test_one_row_per_source_reason_and_minute_then_one_counted_row(fresh_engine: sa.Engine) -> None:
    clock = Clock()
    with AuditWriter(fresh_engine) as writer:
        failures = AuthFailures(writer, max_sources=2, clock=clock)

        async def flood() -> None:
            for _ in range(5):
                await failures.failed(source="10.0.0.1", reason="unknown_key", message="unknown API key", path="/mcp")
            await failures.failed(source="10.0.0.1", reason="missing", message="missing credentials", path="/mcp")
            for other in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):  # the third source of the minute is folded
                await failures.failed(source=other, reason="missing", message="missing credentials")

        anyio.run(flood)
        first = failed_rows(fresh_engine)
        assert [(r["client"], r["code"], r["count"]) for r in first] == [
            ("10.0.0.1", "unknown_key", 1),
            ("10.0.0.1", "missing", 1),
            ("10.0.0.2", "missing", 1),
            (OTHER_SOURCE, "missing", 1),
        ]
        assert failures.flush() == 0  # the minute is not over: nothing more yet
        clock.now += 60
        assert failures.flush() == 2  # 4 repeats of unknown_key; 10.0.0.4 folded into (other)
        anyio.run(lambda: failures.failed(source="10.0.0.1", reason="unknown_key", message="unknown API key"))
    rows = failed_rows(fresh_engine)
    counted = [(r["client"], r["code"], r["count"], r.get("repeats", False)) for r in rows[4:]]
    assert sorted(counted[:2]) == [("(other)", "missing", 1, True), ("10.0.0.1", "unknown_key", 4, True)]
    assert counted[2] == ("10.0.0.1", "unknown_key", 1, False)  # a new minute starts with a row at once
    assert sum(r["count"] for r in rows) == 10
