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

With ``--stages``, this tree's Veil also serves its Prometheus metrics on a loopback port, and
the script reports where a call's time inside Veil goes: the mean of each runner stage
(``veil_stage_duration_seconds``: admit, the two durable audit events, the exchange with the
upstream, tokenising...) and of the whole call (``veil_call_duration_seconds``) over the timed
calls, read from Veil's own histograms before and after them.

    DATABASE_URL=postgresql://... .venv/bin/python bench/gateway_latency.py [--calls 300]
        [--baseline-tree DIR] [--stages]
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import anyio
import psycopg
import yaml
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from scratch import scratch_database
from startup import free_port
from trees import python_env

ROOT = Path(__file__).resolve().parent.parent
CRM = ROOT / "examples" / "crm_server.py"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def veil_params(work: Path, tree: Path, database_url: str, metrics_port: int | None = None) -> StdioServerParameters:
    """``veil serve`` (stdio) from ``tree`` in front of the crm example, on its own database."""
    work.mkdir(parents=True)
    config: dict[str, Any] = {
        "upstreams": {"crm": {"command": sys.executable, "args": [str(CRM)], "env": {"CRM_RECORDS": "40"}}},
        "data_dir": str(work / "data"),
        "expose": "direct",
        "policy": str(ROOT / "policies" / "default.yaml"),
        "database_url": database_url,
    }
    if metrics_port is not None:
        config["observability"] = {"metrics": {"listen": f"127.0.0.1:{metrics_port}"}}
    (work / "veil.yaml").write_text(yaml.safe_dump(config))
    env, cwd = python_env(tree)
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "veil", "serve", "--config", str(work / "veil.yaml")],
        env=env,
        cwd=cwd,
    )


Durations = dict[tuple[str, str, str], float]
_DURATION = re.compile(
    r'^veil_(stage|call)_duration_seconds_(sum|count)\{(?:stage|method)="([^"]+)"\} (\S+)$', re.MULTILINE
)


def durations(port: int) -> Durations:
    """Veil's stage and call duration histograms' sums and counts, keyed (kind, name, sum|count)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(m[1], m[3], m[2]): float(m[4]) for m in _DURATION.finditer(text)}


def report_stages(before: Durations, after: Durations, calls: int) -> None:
    print(f"inside Veil, mean per timed call ({calls} calls, from its own histograms):")
    for kind, name, part in sorted(after):
        if part != "sum":
            continue
        count = after[(kind, name, "count")] - before.get((kind, name, "count"), 0.0)
        total = after[(kind, name, "sum")] - before.get((kind, name, "sum"), 0.0)
        if count:
            label = f"{kind} {name}"
            print(f"  {label:<28}{total / count * 1000:>8.3f} ms  ({count / calls:.2f} per call)")


async def main(calls: int, server: str, baseline_tree: str | None, stages: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    atexit.register(shutil.rmtree, work, True)  # its keys and logs go with the run
    metrics_port = free_port() if stages else None
    with ExitStack() as dbs:
        url = dbs.enter_context(scratch_database(server))
        paths = {
            "direct": (
                StdioServerParameters(command=sys.executable, args=[str(CRM)], env={"CRM_RECORDS": "40"}),
                "ping",
            ),
            "veil": (veil_params(work / "veil", ROOT, url, metrics_port), "crm__ping"),
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
            before = durations(metrics_port) if metrics_port is not None else {}
            for _ in range(calls):
                for name, client in clients.items():
                    t0 = time.perf_counter()
                    await client.call_tool(paths[name][1], {})
                    timings[name].append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                probe.execute("INSERT INTO commit_probe VALUES (1)")
                timings["commit"].append((time.perf_counter() - t0) * 1000)
            after = durations(metrics_port) if metrics_port is not None else {}
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
    if after:
        report_stages(before, after, calls)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--baseline-tree", help="also run `veil serve` from this checkout (before/after)")
    parser.add_argument("--stages", action="store_true", help="also report the mean time of each stage inside Veil")
    args = parser.parse_args()
    if not args.database_url:
        sys.exit("set DATABASE_URL to a PostgreSQL server (scratch databases are created on it)")
    anyio.run(main, args.calls, args.database_url, args.baseline_tree, args.stages)
