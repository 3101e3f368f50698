"""Seconds from starting ``veil serve --http`` until ``/readyz`` answers 200: how long a new
replica (a scale-out, a restart after a crash, a rolling update) takes to serve.

Each run starts a fresh process on the demo CRM upstream (stdio) and a scratch database (created,
and dropped on the server ``DATABASE_URL`` names; the start migrates it), polls ``/readyz`` every 50 ms, records
the time, then stops it with SIGTERM and waits for it to exit. With ``--baseline-tree DIR`` the
runs alternate between this checkout and ``DIR`` (main before a change, say), so machine noise
hits both alike; medians and their ratio are reported. Also reported: the NER worker pool's state
in the first 200 answer (``starting`` means Veil served before its workers had loaded).

    DATABASE_URL=postgresql://... .venv/bin/python bench/startup.py [--runs 5] [--baseline-tree DIR]
"""

from __future__ import annotations

import argparse
import atexit
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from scratch import scratch_database
from trees import python_env

ROOT = Path(__file__).resolve().parent.parent
CRM = ROOT / "examples" / "crm_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def readyz(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return json.loads(response.read()) if response.status == 200 else None
    except (OSError, urllib.error.URLError, ValueError):
        return None


def one_start(tree: Path, work: Path, database_url: str, timeout_s: float = 300) -> tuple[float, str]:
    """(seconds until /readyz said 200, the NER pool's state then)."""
    work.mkdir()
    config = {
        "upstreams": {"crm": {"command": sys.executable, "args": [str(CRM)], "env": {"CRM_RECORDS": "40"}}},
        "data_dir": str(work / "data"),
        "expose": "direct",
        "policy": str(tree / "policies" / "default.yaml"),
        "auth": {"required": False},
        "database_url": database_url,
    }
    (work / "veil.yaml").write_text(yaml.safe_dump(config))
    env, cwd = python_env(tree, {**os.environ, "VEIL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()})
    port = free_port()
    cmd = [sys.executable, "-m", "veil", "serve", "--config", str(work / "veil.yaml"), "--http", f"127.0.0.1:{port}"]
    with open(work / "veil.log", "w") as log:
        began = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            while (body := readyz(port)) is None:
                if proc.poll() is not None or time.monotonic() - began > timeout_s:
                    raise SystemExit(f"veil from {tree} did not become ready: see {work / 'veil.log'}")
                time.sleep(0.05)
            took = time.monotonic() - began
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    ner = body.get("checks", {}).get("ner_workers", {}).get("state", "(not reported: waited for before serving)")
    return took, ner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline-tree", help="also start `veil serve` from this checkout (before/after)")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    args = parser.parse_args()
    if not args.database_url:
        sys.exit("set DATABASE_URL to a PostgreSQL server (scratch databases are created on it)")
    trees = {"this tree": ROOT}
    if args.baseline_tree:
        trees["baseline"] = Path(args.baseline_tree).resolve()
    work = Path(tempfile.mkdtemp(prefix="veil-bench-startup-"))
    atexit.register(shutil.rmtree, work, True)  # its keys and logs go with the run
    times: dict[str, list[float]] = {name: [] for name in trees}
    states: dict[str, set[str]] = {name: set() for name in trees}
    loads: list[float] = []
    for run in range(args.runs):
        for name, tree in trees.items():
            # A new, empty scratch database per start, which that start migrates with its own
            # tree's migrations (the same work for both trees; about a second of each figure).
            with scratch_database(args.database_url, migrate=False) as url:
                took, state = one_start(tree, work / f"{name.replace(' ', '-')}-{run}", url)
            times[name].append(took)
            states[name].add(state)
            loads.append(os.getloadavg()[0])
            print(f"{name}: ready after {took:.2f} s (NER workers: {state})", flush=True)
    spread = f"{min(loads):.1f}-{max(loads):.1f}"
    print(f"\n{args.runs} starts each, alternating; load average {spread} on {os.cpu_count()} cores")
    print(f"{'tree':<12}{'median s':>10}{'min s':>8}{'max s':>8}  NER workers at first 200")
    for name, values in times.items():
        print(
            f"{name:<12}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}  "
            + ", ".join(sorted(states[name]))
        )
    if "baseline" in times:
        ratio = statistics.median(times["this tree"]) / statistics.median(times["baseline"])
        print(f"this tree / baseline medians: {ratio:.2f}x")


if __name__ == "__main__":
    main()
