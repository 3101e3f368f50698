"""Calls per second through HAProxy in front of 1 and 2 ``veil serve --http`` replicas, side by side
with the same clients talking to one replica directly, in one run.

The replicas are real processes sharing one PostgreSQL (a scratch database on ``DATABASE_URL``),
with the secrets from their environment and the shipped ``deploy/haproxy/haproxy.cfg`` in front
(tests/deploy/loopback.py starts them, as the scale-out test does). Each of ``--agents`` MCP
clients (handshake-era sessions, so HAProxy pins each to one replica; an API key each request is
authenticated with) calls ``crm__ping`` (a tiny result, durable audit) in a loop for
``--seconds``; the round's rate is answered calls / wall time. Rounds alternate the set-ups and
the medians are reported, with their ratios to "direct".

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/scale_out.py \
        [--agents 8] [--seconds 5] [--rounds 3] [--tree PATH]

On a machine with fewer cores than replicas x (Veil + NER worker + upstreams), a second replica
cannot add throughput: it competes for the same cores. The numbers say what the balancer costs
and whether the replicas' shared state (vault, audit chain, API keys) limits scale-out, not what
a second machine would add.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from deploy.loopback import agent, haproxy, shared_secrets, start_replicas, stop  # noqa: E402
from scratch import scratch_database  # noqa: E402

from veil import db  # noqa: E402
from veil.auth import create_key  # noqa: E402


async def rate(url: str, key: str, agents: int, seconds: float) -> tuple[float, int]:
    """Calls per second of ``agents`` concurrent sessions over ``seconds`` (after a warm-up)."""
    done = 0
    errors = 0
    last = 0.0
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        started = 0
        stop_at = [float("inf")]

        async def one() -> None:
            nonlocal done, errors, started, last
            async with agent(url, key) as a:
                for _ in range(5):
                    await a.client.call_tool("crm__ping", {})
                started += 1
                if started == agents:
                    stop_at[0] = time.perf_counter() + seconds
                    ready.set()
                await ready.wait()
                while time.perf_counter() < stop_at[0]:
                    result = await a.client.call_tool("crm__ping", {})
                    if result.is_error:
                        errors += 1
                    else:
                        done += 1
                        last = max(last, time.perf_counter())

        t0 = [0.0]

        async def clock() -> None:
            await ready.wait()
            t0[0] = time.perf_counter()

        tg.start_soon(clock)
        for _ in range(agents):
            tg.start_soon(one)
    elapsed = max(last - t0[0], 1e-9)
    return done / elapsed, errors


async def measure(urls: dict[str, str], key: str, agents: int, seconds: float, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in urls}
    for r in range(rounds):
        for name, url in urls.items():
            calls_per_s, errors = await rate(url, key, agents, seconds)
            if errors:
                raise SystemExit(f"{name}: {errors} calls answered with an error")
            results[name].append(calls_per_s)
            print(f"round {r + 1} {name}: {calls_per_s:.0f} calls/s", file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose Veil the replicas run")
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL")
    if not server:
        raise SystemExit("set DATABASE_URL to a PostgreSQL server (a scratch database is created on it)")
    work = Path(tempfile.mkdtemp(prefix="veil-bench-scale-"))
    atexit.register(shutil.rmtree, work, True)  # its keys and logs go with the run
    with scratch_database(server) as database_url:
        engine = db.create_engine(database_url)
        _, key = create_key(engine, "bench", ["support"])
        engine.dispose()
        replicas = start_replicas(2, work / "replicas", shared_secrets(database_url), tree=args.tree)
        try:
            (work / "one").mkdir()
            (work / "two").mkdir()
            with haproxy(work / "one", replicas[:1]) as one, haproxy(work / "two", replicas) as two:
                urls = {"direct (1 replica)": replicas[0].url, "HAProxy, 1 replica": one, "HAProxy, 2 replicas": two}
                results = anyio.run(measure, urls, key, args.agents, args.seconds, args.rounds)
        finally:
            stop(replicas)
    load = os.getloadavg()
    print(
        f"\n{args.agents} concurrent sessions calling crm__ping, {args.seconds:g} s per round, {args.rounds} rounds; "
        f"{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}\n"
    )
    base = statistics.median(results["direct (1 replica)"])
    print("| set-up | calls/s, median | rounds | vs direct |")
    print("|---|---|---|---|")
    for name, values in results.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {name} | {median:.0f} | {rounds} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
