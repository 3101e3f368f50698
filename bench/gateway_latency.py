"""Added latency of the gateway on a small tool result.

Side by side, in one run, over the same transport (stdio):
  direct:  MCP client ──stdio──▶ crm server                       (crm.ping)
  veil:    MCP client ──stdio──▶ veil serve ──stdio──▶ crm server (crm__ping)
All paths are warmed up first; then calls alternate between them so machine noise hits all alike.
Reports p50 and p99 per path and the added latency (difference of medians).

In the same loop, for context:
  commit:    one durable (fsync'd) single-row INSERT on the same PostgreSQL: the floor under each
             of the two audit events a call makes durable (the intent, before the upstream is
             called, and the outcome, before the result is returned);
  baseline:  with ``--baseline-tree DIR``, ``veil serve`` run from another checkout (main before a
             change, say), so before and after are measured in one run.
Each Veil gets its own scratch database on the server DATABASE_URL names (created, migrated and
dropped), so two Veils never share one audit chain.

    DATABASE_URL=postgresql://... .venv/bin/python bench/gateway_latency.py [--calls 300] [--baseline-tree DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import anyio
import psycopg
import yaml
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from scratch import scratch_database
from trees import python_env

ROOT = Path(__file__).resolve().parent.parent
CRM = ROOT / "examples" / "crm_server.py"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def veil_params(work: Path, tree: Path, database_url: str) -> StdioServerParameters:
    """``veil serve`` (stdio) from ``tree`` in front of the crm example, on its own database."""
    work.mkdir(parents=True)
    config = {
        "upstreams": {"crm": {"command": sys.executable, "args": [str(CRM)], "env": {"CRM_RECORDS": "40"}}},
        "data_dir": str(work / "data"),
        "expose": "direct",
        "policy": str(ROOT / "policies" / "default.yaml"),
        "database_url": database_url,
    }
    (work / "veil.yaml").write_text(yaml.safe_dump(config))
    env, cwd = python_env(tree)
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "veil", "serve", "--config", str(work / "veil.yaml")],
        env=env,
        cwd=cwd,
    )


async def main(calls: int, server: str, baseline_tree: str | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    with ExitStack() as dbs:
        url = dbs.enter_context(scratch_database(server))
        paths = {
            "direct": (
                StdioServerParameters(command=sys.executable, args=[str(CRM)], env={"CRM_RECORDS": "40"}),
                "ping",
            ),
            "veil": (veil_params(work / "veil", ROOT, url), "crm__ping"),
        }
        if baseline_tree:
            base_url = dbs.enter_context(scratch_database(server, migrate=False))
            paths["baseline"] = (veil_params(work / "baseline", Path(baseline_tree).resolve(), base_url), "crm__ping")
        timings: dict[str, list[float]] = {name: [] for name in [*paths, "commit"]}
        probe = dbs.enter_context(psycopg.connect(libpq(url), autocommit=True))
        probe.execute("CREATE TABLE commit_probe (x int)")
        async with AsyncExitStack() as stack:
            clients = {
                name: await stack.enter_async_context(Client(params, mode="legacy", read_timeout_seconds=120))
                for name, (params, _) in paths.items()
            }
            for _ in range(20):  # warm-up: connections, caches, the upstream behind Veil
                for name, client in clients.items():
                    await client.call_tool(paths[name][1], {})
            for _ in range(calls):
                for name, client in clients.items():
                    t0 = time.perf_counter()
                    await client.call_tool(paths[name][1], {})
                    timings[name].append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                probe.execute("INSERT INTO commit_probe VALUES (1)")
                timings["commit"].append((time.perf_counter() - t0) * 1000)
    d50, v50 = statistics.median(timings["direct"]), statistics.median(timings["veil"])
    print(f"calls per path: {calls} (alternating), transport: stdio, result: {{'ok': true}}")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'path':<10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, values in timings.items():
        print(f"{name:<10}{statistics.median(values):>10.2f}{pct(values, 99):>10.2f}")
    print(
        f"added by Veil: p50 {v50 - d50:.2f} ms, p99 {pct(timings['veil'], 99) - pct(timings['direct'], 99):.2f} ms;"
        f" ratio of medians {v50 / d50:.2f}x"
    )
    if "baseline" in timings:
        b50 = statistics.median(timings["baseline"])
        print(f"added by the baseline tree: p50 {b50 - d50:.2f} ms (this tree / baseline medians {v50 / b50:.2f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--baseline-tree", help="also run `veil serve` from this checkout (before/after)")
    args = parser.parse_args()
    if not args.database_url:
        sys.exit("set DATABASE_URL to a PostgreSQL server (scratch databases are created on it)")
    anyio.run(main, args.calls, args.database_url, args.baseline_tree)
