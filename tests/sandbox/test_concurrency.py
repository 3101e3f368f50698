"""Many sessions at once on a 2-core machine: every execution returns its own correct result."""

from __future__ import annotations

import ast
import asyncio

from conftest import CATALOGUE, TokenisedCrm, run


def test_100_concurrent_executions_across_20_sessions(make_manager):
    crm = TokenisedCrm()
    segments = ["gold", "silver", "bronze"]
    expected_rows = {s: [c for c in crm.customers if c["segment"] == s] for s in segments}

    def code(session: int, step: int) -> str:
        segment = segments[session % 3]
        return (
            "from servers import crm\n"
            "count = globals().get('count', 0) + 1\n"
            f"rows = crm.find_customers(segment={segment!r}, limit=1000)\n"
            f"({session}, {step}, count, len(rows), rows[{step}]['email'])"
        )

    async def body():
        async with make_manager(pool_size=2, timeout_s=60.0) as manager:
            calls = [
                manager.execute(f"conc-{n}", code(n, step), catalogue=CATALOGUE, call_tool=crm.call_tool)
                for step in range(5)
                for n in range(20)
            ]
            return await asyncio.gather(*calls), len(manager.live_sessions())

    results, live = run(body(), timeout=240)
    assert len(results) == 100 and live == 20
    counts: dict[int, set[int]] = {}
    for result in results:
        assert result.outcome == "ok", result.stderr
        session, step, count, n_rows, email = ast.literal_eval(result.result)
        rows = expected_rows[segments[session % 3]]
        assert (n_rows, email) == (len(rows), rows[step]["email"])
        counts.setdefault(session, set()).add(count)
    # Each session's interpreter kept its state: its five executions saw counts 1..5, in some order.
    assert counts == {n: {1, 2, 3, 4, 5} for n in range(20)}
