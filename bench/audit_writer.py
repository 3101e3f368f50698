"""Audit writer throughput and latency: batched vs one transaction per event, side by side.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/audit_writer.py
    ... bench/audit_writer.py --sequential 300    # one caller: one statement vs under the lock

Creates a scratch database on the server in DATABASE_URL (dropped at the end). For each
configuration and each concurrency level, C asyncio callers each ``await record()`` E events
back to back; we report events/s, the median / p99 latency of one ``record()`` call and the CPU
time of this process (all its threads) per event. The writer runs on the event-loop lane (as in
``veil serve``) except in "writer thread", the same default writer on its background thread. Every
configuration runs the same workload through the same code path; "per-event" is the writer with
``batch_max_events=1`` (one transaction, one commit per event); "always under the lock" is the
default writer with its one-statement append switched off (each batch: lock the head, COPY, move
the head, commit; how batches were written before). Rounds alternate between configurations and
the median round is reported. The load average at the end is printed (other processes share
the machine).

    ... bench/audit_writer.py --baseline-tree DIR [--rounds 7]   # this checkout vs another one

compares this checkout's writer with another checkout's (main before a change), the default
configuration on the event-loop lane only: each (round, callers) runs one fresh process per tree
(started with ``trees.python_env``, which checks that it imports that tree's Veil; the worker
re-checks), the two trees' order alternating between rounds, each tree on its own scratch
database. Each process records 50 warm-up events first (not counted). Medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

from scratch import scratch_database
from trees import python_env, run_for_json

from veil import db
from veil.audit import AuditWriter
from veil.audit.events import TOOL_CALL, AuditEvent, Untokenised

CONFIGS = {
    "per-event (1 txn/event)": {"batch_max_events": 1, "batch_max_delay_ms": 0.0},
    "batched, delay 0 ms": {"batch_max_events": 256, "batch_max_delay_ms": 0.0},
    "batched, delay 2 ms (default)": {"batch_max_events": 256, "batch_max_delay_ms": 2.0},
    # The default, but every batch appended under the chain lock (lock, COPY, move the head,
    # commit: how every batch was written before the one-statement append).
    "default, always under the lock": {"batch_max_events": 256, "batch_max_delay_ms": 2.0, "fast_append": False},
    # The default on the writer thread (start(), no event loop bound): how ``veil serve`` wrote
    # before the event-loop lane (each event handed to the thread and the wake-up handed back).
    "default, writer thread": {"batch_max_events": 256, "batch_max_delay_ms": 2.0, "lane": "thread"},
}
LEVELS = [(1, 400), (16, 100), (64, 50)]  # (concurrent callers, events each)
ROUNDS = 3


def event(i: int) -> AuditEvent:
    return AuditEvent(
        kind=TOOL_CALL,
        principal=f"user{i % 7}",
        roles=["support"],
        session_id=f"s{i % 11}",
        scope=f"session:s{i % 11}",
        upstream="crm",
        tool="find_customers",
        args_digest="sha256:" + "ab" * 32,
        entities={"EMAIL_ADDRESS": 3, "PERSON": 2},
        tokens=[f"[EMAIL_ADDRESS_{i}]", f"[PERSON_{i}]"],
        untokenised=[Untokenised(f"[EMAIL_ADDRESS_{i}]", "EMAIL_ADDRESS", "mailer__send:to", "flows[0]")],
        decision="allow",
        rule="access[0]",
        duration_ms=12.5,
        policy_version="0" * 64,
    )


async def run(writer: AuditWriter, callers: int, each: int) -> tuple[float, list[float], float]:
    latencies: list[float] = []

    async def caller(c: int) -> None:
        for i in range(each):
            t = time.perf_counter()
            await writer.record(event(c * each + i))
            latencies.append(time.perf_counter() - t)

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    cpu_ms = (time.process_time() - cpu0) * 1000 / (callers * each)  # this process, every thread
    return callers * each / (time.perf_counter() - t0), latencies, cpu_ms


async def main(url: str) -> None:
    engine = db.create_engine(url, pool_size=4)
    results: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    for _ in range(ROUNDS):
        for callers, each in LEVELS:
            for name, cfg in CONFIGS.items():
                options = {k: v for k, v in cfg.items() if k not in ("fast_append", "lane")}
                writer = AuditWriter(engine, **options)  # type: ignore[arg-type]
                writer.fast_append = bool(cfg.get("fast_append", True))
                if cfg.get("lane") == "thread":
                    writer.start()
                else:
                    await writer.start_async()
                try:
                    rate, lat, cpu = await run(writer, callers, each)
                finally:
                    await writer.aclose()
                lat.sort()
                p50 = statistics.median(lat) * 1000
                p99 = lat[int(len(lat) * 0.99) - 1] * 1000
                results.setdefault((name, callers), []).append((rate, p50, p99, cpu))
    engine.dispose()
    print("| callers | configuration | events/s | record() p50 ms | p99 ms | CPU ms/event | speed-up vs per-event |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for callers, _ in LEVELS:
        base = statistics.median(r[0] for r in results[(next(iter(CONFIGS)), callers)])
        for name in CONFIGS:
            runs = results[(name, callers)]
            rate = statistics.median(r[0] for r in runs)
            p50 = statistics.median(r[1] for r in runs)
            p99 = statistics.median(r[2] for r in runs)
            cpu = statistics.median(r[3] for r in runs)
            print(f"| {callers} | {name} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.3f} | {rate / base:.1f}x |")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def sequential(url: str, events: int) -> None:
    """One caller, one writer; each round records one event with the one-statement append, one
    always under the lock, and makes one durable single-row commit (the floor), so the three are
    interleaved event by event and machine noise hits them alike."""
    import psycopg

    engine = db.create_engine(url, pool_size=2)
    timings: dict[str, list[float]] = {"one statement (now)": [], "under the lock (before)": [], "bare commit": []}
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True) as probe:
        probe.execute("CREATE TABLE commit_probe (x int)")
        with AuditWriter(engine) as writer:
            for i in range(20):
                writer.record_sync(event(i))
            for i in range(events):
                for name, fast in (("one statement (now)", True), ("under the lock (before)", False)):
                    writer.fast_append = fast
                    t = time.perf_counter()
                    writer.record_sync(event(i))
                    timings[name].append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                probe.execute("INSERT INTO commit_probe VALUES (1)")
                timings["bare commit"].append((time.perf_counter() - t) * 1000)
            fast_appends = writer.fast_appends
    engine.dispose()
    print(f"one sequential caller, {events} events per path, interleaved; one-statement appends: {fast_appends}")
    print("| path | record_sync() p50 ms | p99 ms |")
    print("|---|---:|---:|")
    for name, values in timings.items():
        values.sort()
        print(f"| {name} | {statistics.median(values):.2f} | {values[int(len(values) * 0.99) - 1]:.2f} |")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


async def worker(url: str, callers: int, each: int) -> dict[str, float | str]:
    """One measured run of the default writer on the event-loop lane, after 50 warm-up events."""
    import veil

    engine = db.create_engine(url, pool_size=4)
    writer = AuditWriter(engine, batch_max_events=256, batch_max_delay_ms=2.0)
    await writer.start_async()
    try:
        for i in range(50):
            await writer.record(event(i))
        rate, lat, cpu = await run(writer, callers, each)
    finally:
        await writer.aclose()
    engine.dispose()
    lat.sort()
    return {
        "veil": veil.__file__,
        "rate": rate,
        "p50": statistics.median(lat) * 1000,
        "p99": lat[int(len(lat) * 0.99) - 1] * 1000,
        "cpu": cpu,
    }


def compare(server: str, baseline: Path, rounds: int) -> None:
    """This checkout vs ``baseline``, one process per (round, callers, tree), order alternating."""
    trees = {"this tree": Path(__file__).resolve().parent.parent, "baseline": baseline.resolve()}
    envs = {name: python_env(tree) for name, tree in trees.items()}
    load = [os.getloadavg()[0]]
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    with scratch_database(server) as url_now, scratch_database(server) as url_base:
        urls = {"this tree": url_now, "baseline": url_base}
        for r in range(rounds):
            for callers, each in LEVELS:
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in order:
                    script = str(Path(__file__).resolve())
                    got = run_for_json([script, "--worker", urls[name], str(callers), str(each)], envs[name])
                    if not Path(str(got.pop("veil"))).resolve().is_relative_to(trees[name]):
                        raise SystemExit(f"the {name} worker imported the wrong Veil")
                    results.setdefault((name, callers), []).append(got)
            load.append(os.getloadavg()[0])
    print(f"this tree {trees['this tree']} vs baseline {trees['baseline']}: {rounds} rounds, median per column")
    print("| callers | tree | events/s | record() p50 ms | p99 ms | CPU ms/event |")
    print("|---:|---|---:|---:|---:|---:|")
    med: dict[tuple[str, int], dict[str, float]] = {}
    for callers, _ in LEVELS:
        for name in trees:
            runs = results[(name, callers)]
            m = {k: statistics.median(run[k] for run in runs) for k in ("rate", "p50", "p99", "cpu")}
            med[(name, callers)] = m
            print(f"| {callers} | {name} | {m['rate']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu']:.3f} |")
    print("ratios this tree / baseline (medians): ", end="")
    print(
        "; ".join(
            f"{c} callers: CPU {med[('this tree', c)]['cpu'] / med[('baseline', c)]['cpu']:.2f}x, "
            f"p50 {med[('this tree', c)]['p50'] / med[('baseline', c)]['p50']:.2f}x"
            for c, _ in LEVELS
        )
    )
    print(f"1-minute load average over the run: {min(load):.1f}-{max(load):.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, metavar="N", help="one caller, N events per path")
    parser.add_argument("--baseline-tree", type=Path, help="compare with the writer of this checkout")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of --baseline-tree (default 7)")
    parser.add_argument("--worker", nargs=3, metavar=("URL", "CALLERS", "EACH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        url, callers, each = args.worker
        print(json.dumps(asyncio.run(worker(url, int(callers), int(each)))))
        sys.exit()
    server = os.environ.get("DATABASE_URL")
    if not server:
        sys.exit("set DATABASE_URL to a PostgreSQL server (a scratch database is created on it)")
    if args.baseline_tree:
        compare(server, args.baseline_tree, args.rounds)
        sys.exit()
    with scratch_database(server) as url:
        if args.sequential:
            sequential(url, args.sequential)
        else:
            asyncio.run(main(url))
