"""A flood of refused logins: one audit row per failure (before) vs aggregated per source, reason
and minute (``veil.audit.aggregate.AuthFailures``), side by side in one run.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/auth_flood.py

Creates a scratch database on the server in DATABASE_URL (dropped at the end). C concurrent
"clients" (10 source addresses) each report F refused requests back to back through the same
batched AuditWriter; we report refusals/s, the median / p99 time a refusal waits for its audit
call, and the rows the trail grew by (counted in the table after the writer closed, so pending
counts are included). Rounds alternate between the two and the median round is reported.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

import sqlalchemy as sa
from scratch import scratch_database

from veil import db
from veil.audit import AuditWriter
from veil.audit.events import AUTH_FAILED, DENIED, AuditEvent

CLIENTS, EACH, ROUNDS = 50, 60, 3


async def flood(writer: AuditWriter, aggregated: bool) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def client(c: int) -> None:
        source = f"10.0.0.{c % 10}"
        for _ in range(EACH):
            t = time.perf_counter()
            if aggregated:
                await writer.auth_failures.failed(
                    source=source, reason="unknown_key", message="unknown API key", path="/mcp"
                )
            else:
                await writer.record(
                    AuditEvent(
                        kind=AUTH_FAILED,
                        outcome=DENIED,
                        detail={"reason": "unknown API key", "path": "/mcp", "client": source},
                    )
                )
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(CLIENTS)))
    return CLIENTS * EACH / (time.perf_counter() - t0), latencies


def rows(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        n, total = conn.execute(
            sa.text(
                "SELECT count(*), coalesce(sum(coalesce((detail->>'count')::int, 1)), 0) "
                "FROM audit_events WHERE kind = 'auth.failed'"
            )
        ).one()
    return n, total


async def main(url: str) -> None:
    engine = db.create_engine(url, pool_size=4)
    results: dict[str, list[tuple[float, float, float, int, int]]] = {}
    for _ in range(ROUNDS):
        for name, aggregated in (("one row per refusal (before)", False), ("aggregated per minute", True)):
            before = rows(engine)
            async with AuditWriter(engine) as writer:
                rate, lat = await flood(writer, aggregated)
            after = rows(engine)
            lat.sort()
            results.setdefault(name, []).append(
                (
                    rate,
                    statistics.median(lat) * 1000,
                    lat[int(len(lat) * 0.99) - 1] * 1000,
                    after[0] - before[0],
                    after[1] - before[1],
                )
            )
    engine.dispose()
    print(f"{CLIENTS} clients x {EACH} refused requests = {CLIENTS * EACH} refusals per round")
    print("| configuration | refusals/s | audit call p50 ms | p99 ms | rows written | sum of counts |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        med = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
        print(f"| {name} | {med[0]:,.0f} | {med[1]:.3f} | {med[2]:.3f} | {med[3]:,} | {med[4]:,} |")


if __name__ == "__main__":
    server = os.environ.get("DATABASE_URL")
    if not server:
        sys.exit("set DATABASE_URL to a PostgreSQL server (a scratch database is created on it)")
    with scratch_database(server) as url:
        asyncio.run(main(url))
