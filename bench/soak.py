"""Soak: many tool calls through one ``veil serve`` process, its memory (RSS) reported as it goes.

One ``veil serve`` (stdio, a subprocess as a desktop agent runs it) in front of the demo CRM, one
agent session with ``--concurrency`` requests in flight. The mix: 9 of 10 calls are ``crm__ping``
(a tiny result), 1 of 10 is ``crm__get_customer`` over the 40 customers in turn (PII tokenised,
vault look-ups, the detection path), so the caches on those paths are exercised too. Every
``--every`` calls it prints the calls done, the rate, and the RSS of the Veil process (its NER
worker processes and the CRM separately); at the end the growth from the first report (after
warm-up) to the last, and the audit rows written. Veil serves a scratch database on the server
DATABASE_URL names (created, migrated, dropped).

    DATABASE_URL=postgresql://... .venv/bin/python bench/soak.py [--calls 100000] [--concurrency 8] [--every 10000]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio
import psutil
import psycopg
import yaml
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from scratch import scratch_database

ROOT = Path(__file__).resolve().parent.parent
CRM = ROOT / "examples" / "crm_server.py"
MB = 1024 * 1024


def processes() -> tuple[psutil.Process | None, list[psutil.Process], list[psutil.Process]]:
    """(veil serve, its other Python children (NER workers), the CRM) among our descendants."""
    veil, workers, crm = None, [], []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "veil serve" in cmd:
            veil = p
        elif "crm_server.py" in cmd:
            crm.append(p)
        elif veil is not None and p.ppid() == veil.pid:
            workers.append(p)
    return veil, workers, crm


def rss(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / MB


async def main(calls: int, concurrency: int, every: int, server: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="veil-bench-soak-"))
    atexit.register(shutil.rmtree, work, True)  # its keys and logs go with the run
    with scratch_database(server) as url:
        config = {
            "upstreams": {"crm": {"command": sys.executable, "args": [str(CRM)], "env": {"CRM_RECORDS": "40"}}},
            "data_dir": str(work / "data"),
            "expose": "direct",
            "policy": str(ROOT / "policies" / "default.yaml"),
            "database_url": url,
        }
        (work / "veil.yaml").write_text(yaml.safe_dump(config))
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "veil", "serve", "--config", str(work / "veil.yaml")],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        done = errors = 0
        reports: list[tuple[int, float, float]] = []
        start = time.monotonic()
        last = (0, start)
        async with Client(params, mode="legacy", read_timeout_seconds=300) as agent:
            await agent.call_tool("crm__ping", {})
            veil, _, _ = processes()
            assert veil is not None, "veil serve process not found"
            print(f"{'calls':>8}{'elapsed s':>11}{'calls/s':>9}{'veil RSS MB':>13}{'NER workers MB':>16}{'crm MB':>8}")
            next_id = 0

            async def caller() -> None:
                nonlocal done, errors, next_id, last
                while next_id < calls:
                    n = next_id
                    next_id += 1
                    try:
                        if n % 10 == 9:
                            result = await agent.call_tool(
                                "crm__get_customer", {"customer_id": f"C{n // 10 % 40 + 1:04d}"}
                            )
                        else:
                            result = await agent.call_tool("crm__ping", {})
                        errors += bool(result.is_error)
                    except Exception:  # counted and reported
                        errors += 1
                    done += 1
                    if done % every == 0:
                        now = time.monotonic()
                        veil, workers, crm = processes()
                        v = rss([veil]) if veil else float("nan")
                        reports.append((done, now - start, v))
                        rate = (done - last[0]) / (now - last[1])
                        last = (done, now)
                        print(
                            f"{done:>8}{now - start:>11.0f}{rate:>9.0f}{v:>13.1f}{rss(workers):>16.1f}{rss(crm):>8.1f}",
                            flush=True,
                        )

            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(caller)
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
            row = conn.execute("SELECT count(*), max(seq) FROM audit_events").fetchone()
    print(f"calls {done}, errors {errors}, audit rows {row[0] if row else 0}; load average {os.getloadavg()[0]:.1f}")
    if len(reports) >= 2:
        (n0, _, r0), (n1, _, r1) = reports[0], reports[-1]
        print(
            f"veil RSS {r0:.1f} MB after {n0} calls -> {r1:.1f} MB after {n1}: {r1 - r0:+.1f} MB"
            f" ({(r1 - r0) * 1024 / max(1, n1 - n0) * 1000:.1f} KB per 1000 calls)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    args = parser.parse_args()
    if not args.database_url:
        sys.exit("set DATABASE_URL to a PostgreSQL server (a scratch database is created on it)")
    anyio.run(main, args.calls, args.concurrency, args.every, args.database_url)
