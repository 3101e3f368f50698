"""Added latency of the gateway on a small tool result.

Side by side, in one run, over the same transport (stdio):
  direct:  MCP client ──stdio──▶ crm server                       (crm.ping)
  veil:    MCP client ──stdio──▶ veil serve ──stdio──▶ crm server (crm__ping)
Both paths are warmed up first; then calls alternate between the two so machine noise hits both
alike. Reports p50 and p99 per path and the added latency (difference of medians).

    .venv/bin/python bench/gateway_latency.py [--calls 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import yaml
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent
CRM = ROOT / "examples" / "crm_server.py"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(calls: int, database_url: str | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    config = {
        "upstreams": {"crm": {"command": sys.executable, "args": [str(CRM)], "env": {"CRM_RECORDS": "40"}}},
        "data_dir": str(work / "data"),
        "expose": "direct",
        "policy": str(ROOT / "policies" / "default.yaml"),
    }
    if database_url:
        config["database_url"] = database_url
    (work / "veil.yaml").write_text(yaml.safe_dump(config))
    direct_params = StdioServerParameters(command=sys.executable, args=[str(CRM)], env={"CRM_RECORDS": "40"})
    veil_params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "veil", "serve", "--config", str(work / "veil.yaml")],
        env={**os.environ},
    )
    timings: dict[str, list[float]] = {"direct": [], "veil": []}
    async with (
        Client(direct_params, mode="legacy") as direct,
        Client(veil_params, mode="legacy", read_timeout_seconds=120) as veil,
    ):
        for _ in range(20):  # warm-up: connections, caches, the upstream behind Veil
            await direct.call_tool("ping", {})
            await veil.call_tool("crm__ping", {})
        for _ in range(calls):
            t0 = time.perf_counter()
            await direct.call_tool("ping", {})
            t1 = time.perf_counter()
            await veil.call_tool("crm__ping", {})
            t2 = time.perf_counter()
            timings["direct"].append((t1 - t0) * 1000)
            timings["veil"].append((t2 - t1) * 1000)
    d50, v50 = statistics.median(timings["direct"]), statistics.median(timings["veil"])
    print(f"calls per path: {calls} (alternating), transport: stdio, result: {{'ok': true}}")
    print(f"{'path':<8}{'p50 ms':>10}{'p99 ms':>10}")
    for name, values in timings.items():
        print(f"{name:<8}{statistics.median(values):>10.2f}{pct(values, 99):>10.2f}")
    print(
        f"added by Veil: p50 {v50 - d50:.2f} ms, p99 {pct(timings['veil'], 99) - pct(timings['direct'], 99):.2f} ms;"
        f" ratio of medians {v50 / d50:.2f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    args = parser.parse_args()
    anyio.run(main, args.calls, args.database_url)
