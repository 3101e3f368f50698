"""Console page load times over a month of one million audit events.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/console_pages.py [N] [RUNS]

1. Creates a scratch database (dropped at the end) and inserts N (default 1,000,000) synthetic
   events for October 2026 with bench/report_million.py's INSERT ... SELECT generate_series
   (50 principals, 4 upstreams, ~50,000 sessions; the rows are no valid hash chain, which page
   loads do not depend on: the chain header then reports the break at seq 1).
2. Starts ``veil console`` as its own process on that database and logs in with an API key.
3. Loads each page RUNS times (default 15) over HTTP, as a browser would (whole response read),
   and prints the median and 90th percentile wall time per page: the explorer's first page,
   a page deep in the month (keyset cursor), the common filters, a rare filter, one event,
   the charts for the month, and a filtered CSV export.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from report_million import seed_month
from scratch import scratch_database

from veil import db
from veil.auth.keys import create_key

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pages(n: int) -> list[tuple[str, str]]:
    mid = n // 2
    return [
        ("explorer, first page (newest 50)", "/console/audit"),
        (f"explorer, page at seq {mid:,} (keyset cursor)", f"/console/audit?before={mid}"),
        ("explorer, newer page from the middle", f"/console/audit?after={mid}"),
        ("filter: principal", "/console/audit?principal=user7"),
        ("filter: principal, deep page", f"/console/audit?principal=user7&before={mid}"),
        ("filter: one day", "/console/audit?from=2026-10-15&to=2026-10-15"),
        ("filter: upstream + tool + outcome", "/console/audit?upstream=crm&tool=find_customers&outcome=denied"),
        ("filter: kind auth.failed", "/console/audit?kind=auth.failed"),
        ("filter: rule", "/console/audit?rule=access[1]"),
        ("filter: entity type", "/console/audit?entity=PHONE_NUMBER&principal=user3"),
        ("filter: one session (20 events, no index: scans)", f"/console/audit?session=s{mid // 20}"),
        ("filter: one session + its day", f"/console/audit?session=s{mid // 20}&from=2026-10-16&to=2026-10-16"),
        ("one event", f"/console/audit/event/{mid}"),
        ("charts, the whole month", "/console/charts?from=2026-10-01&to=2026-10-31"),
        (
            "export CSV, one principal on one day",
            "/console/audit/export.csv?principal=user7&from=2026-10-15&to=2026-10-15",
        ),
    ]


def main(server: str, n: int, runs: int) -> None:
    with scratch_database(server) as url, tempfile.TemporaryDirectory() as home:
        engine = db.create_engine(url)
        t = time.perf_counter()
        seed_month(engine, n)
        print(f"inserted {n:,} synthetic events in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        key = create_key(engine, "bench", ["compliance"])[1]
        engine.dispose()
        policy = Path(home) / "policy.yaml"
        policy.write_bytes((ROOT / "policies" / "default.yaml").read_bytes())
        config = Path(home) / "veil.yaml"
        config.write_text(yaml.safe_dump({"database_url": url, "data_dir": f"{home}/data", "policy": str(policy)}))
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "veil", "console", "--config", str(config), "--http", f"127.0.0.1:{port}"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=120) as client:
                for _ in range(300):
                    try:
                        client.get("/console/login")
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)
                rows = []
                for label, path in pages(n):
                    client.get(path).raise_for_status()  # warm: plans cached, pages in shared buffers
                    times = []
                    size = 0
                    for _ in range(runs):
                        t = time.perf_counter()
                        r = client.get(path)
                        times.append((time.perf_counter() - t) * 1000)
                        r.raise_for_status()
                        size = len(r.content)
                    times.sort()
                    p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
                    rows.append((label, statistics.median(times), p90, size))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        print(f"\n| console page ({n:,} events in the month, {runs} loads each) | median ms | p90 ms | bytes |")
        print("|---|---:|---:|---:|")
        for label, med, p90, size in rows:
            print(f"| {label} | {med:.0f} | {p90:.0f} | {size:,} |")


if __name__ == "__main__":
    server = os.environ.get("DATABASE_URL")
    if not server:
        sys.exit("set DATABASE_URL to a PostgreSQL server (a scratch database is created on it)")
    main(server, int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000, int(sys.argv[2]) if len(sys.argv) > 2 else 15)
