"""Tool calls per second through one ``veil serve --http`` process, 50 concurrent agents.

Side by side, in one run, against the same upstream (the demo CRM served over Streamable HTTP,
by default tool ``ping`` returning ``{"ok": true}``; ``--tool``/``--arguments`` pick another):
  direct:  N agents ──HTTP──▶ crm                          (ping)
  veil:    N agents ──HTTP──▶ veil serve ──HTTP──▶ crm     (crm__ping, durable audit)
Every agent is a real MCP client calling in a loop, as fast as answers come back: a handshake-era
session (its own ``Mcp-Session-Id``) by default, 2026-07-28 requests with ``--mode auto``. The
agents run in ``--workers`` load-generator processes (they share the machine's cores with Veil,
the CRM and PostgreSQL; on a small machine they are a large part of the load). Phases alternate
(direct, veil, direct, veil, ...) so machine noise hits both paths alike; each phase lasts
``--seconds``.

Group commit is checked in the database, not taken on trust: each batch the audit writer commits
shares one ``ts``, so for every veil phase the script counts the audit events appended and the
distinct ``ts`` values (= commits of the audit writer), and reports events per commit. It also
reports the database's commit counter (``pg_stat_database.xact_commit``, every transaction of
that database: audit, vault, reads), and the CPU time the Veil process (with its children) and
the CRM used per call: on a shared machine that, not the wall-clock rate, says what Veil costs.

Veil serves a scratch database on the server DATABASE_URL names (created, migrated, dropped).
With ``--baseline-tree DIR`` a second ``veil serve --http``, run from another checkout (main
before a change) on a scratch database of its own, takes a third phase in every round
(direct, veil, baseline, ...) against the same upstream: a before/after of one run.

    DATABASE_URL=postgresql://... .venv/bin/python bench/throughput.py [--agents 50] [--seconds 15] [--rounds 2]
        [--baseline-tree DIR] [--mode legacy|auto] [--tool ping --arguments '{}']

The baseline runs with its tree as working directory and PYTHONPATH, checked (bench/trees.py).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import psycopg
import yaml
from scratch import scratch_database
from trees import python_env

ROOT = Path(__file__).resolve().parent.parent
CRM = ROOT / "examples" / "crm_server.py"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(proc: subprocess.Popen[Any], log: Path, port: int, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{what} did not start within {timeout:.0f} s")


def start(
    cmd: list[str], work: Path, name: str, port: int, env: dict[str, str], cwd: Path = ROOT
) -> subprocess.Popen[Any]:
    log = work / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    wait_for(proc, log, port, name)
    return proc


# -- the load generator (a subprocess: --worker) ------------------------------------------------


async def worker(url: str, tool: str, agents: int, seconds: float, mode: str, arguments: dict[str, Any]) -> None:
    """Open ``agents`` sessions, say READY, wait for GO on stdin, call for ``seconds``, print JSON.
    ``mode`` is the SDK client's: ``legacy`` (handshake-era sessions) or ``auto`` (2026-07-28)."""
    from mcp.client.client import Client

    latencies: list[float] = []
    errors: dict[str, int] = {}
    ready = 0
    go = anyio.Event()
    all_ready = anyio.Event()

    async def agent() -> None:
        nonlocal ready
        async with Client(url, mode=mode, read_timeout_seconds=120) as client:
            await client.call_tool(tool, arguments)  # the session is open and the path warm
            ready += 1
            if ready == agents:
                all_ready.set()
            await go.wait()
            end = time.perf_counter() + seconds
            while (now := time.perf_counter()) < end:
                try:
                    result = await client.call_tool(tool, arguments)
                    if result.is_error:
                        errors["error result"] = errors.get("error result", 0) + 1
                        continue
                except Exception as exc:  # counted, not hidden
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append((time.perf_counter() - now) * 1000)

    async def control() -> None:
        await all_ready.wait()
        print("READY", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        go.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(control)
        for _ in range(agents):
            tg.start_soon(agent)
    print(json.dumps({"latencies": latencies, "errors": errors}), flush=True)


# -- the driver ----------------------------------------------------------------------------------


def run_phase(
    url: str,
    tool: str,
    agents: int,
    workers: int,
    seconds: float,
    server: subprocess.Popen[Any],
    mode: str,
    arguments: str,
) -> tuple[list[float], dict[str, int], float]:
    per = [agents // workers + (1 if i < agents % workers else 0) for i in range(workers)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url, tool, str(n), str(seconds), mode, arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in per
        if n
    ]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "READY":
            raise SystemExit(f"a load generator failed to open its sessions: {line[:500]!r}")
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("GO\n")
        p.stdin.flush()
    # The server's CPU over the calling window only (not the sessions' opening and closing).
    cpu0 = cpu_seconds(server)
    time.sleep(seconds)
    cpu = cpu_seconds(server) - cpu0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 300)
        data = json.loads(out.strip().splitlines()[-1])
        latencies += data["latencies"]
        for k, v in data["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return latencies, errors, cpu


def cpu_seconds(proc: subprocess.Popen[Any]) -> float:
    """CPU time (user + system) used so far by ``proc`` and its descendants (Veil's NER workers,
    the upstream connections' helpers)."""
    total = 0.0
    try:
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    except psutil.Error:
        pass
    return total


def audit_counts(conn: psycopg.Connection[Any], dbname: str) -> tuple[int, int, int]:
    """(last seq, distinct ts so far, xact_commit of the database)."""
    seq, commits = conn.execute("SELECT coalesce(max(seq), 0), count(DISTINCT ts) FROM audit_events").fetchone() or (
        0,
        0,
    )
    conn.execute("SELECT pg_stat_clear_snapshot()")
    xact = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", [dbname]).fetchone()
    return int(seq), int(commits), int(xact[0]) if xact else 0


def start_veil(
    tree: Path, work: Path, name: str, crm_port: int, db_url: str, env: dict[str, str]
) -> tuple[subprocess.Popen[Any], int]:
    """``veil serve --http`` from the checkout ``tree``, in front of the crm, on ``db_url``."""
    home = work / name
    home.mkdir()
    config = {
        "upstreams": {"crm": {"url": f"http://127.0.0.1:{crm_port}/mcp"}},
        "data_dir": str(home / "data"),
        "expose": "direct",
        "policy": str(tree / "policies" / "default.yaml"),
        "auth": {"required": False},  # loopback only; each agent is its own MCP session
        "database_url": db_url,
    }
    (home / "veil.yaml").write_text(yaml.safe_dump(config))
    veil_env, cwd = python_env(tree, {**env, "VEIL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()})
    port = free_port()
    cmd = [sys.executable, "-m", "veil", "serve", "--config", str(home / "veil.yaml"), "--http", f"127.0.0.1:{port}"]
    return start(cmd, home, name, port, veil_env, cwd), port


def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="veil-bench-throughput-"))
    atexit.register(shutil.rmtree, work, True)  # its keys and logs go with the run
    with contextlib.ExitStack() as scratch:
        db_url = scratch.enter_context(scratch_database(args.database_url))
        base_url = (
            scratch.enter_context(scratch_database(args.database_url, migrate=False)) if args.baseline_tree else None
        )
        libpq = db_url.replace("postgresql+psycopg://", "postgresql://", 1)
        dbname = libpq.rsplit("/", 1)[1].split("?")[0]
        crm_port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CRM_RECORDS": "40"}
        crm = start([sys.executable, str(CRM), "--http", f"127.0.0.1:{crm_port}"], work, "crm", crm_port, env)
        veil, veil_port = start_veil(ROOT, work, "veil", crm_port, db_url, env)
        paths = {
            "direct": (f"http://127.0.0.1:{crm_port}/mcp", args.tool),
            "veil": (f"http://127.0.0.1:{veil_port}/mcp", f"crm__{args.tool}"),
        }
        server_of = {"direct": crm, "veil": veil}
        if base_url is not None:
            tree = Path(args.baseline_tree).resolve()
            server_of["baseline"], base_port = start_veil(tree, work, "baseline", crm_port, base_url, env)
            paths["baseline"] = (f"http://127.0.0.1:{base_port}/mcp", f"crm__{args.tool}")
        results: dict[str, dict[str, Any]] = {p: {"lat": [], "seconds": 0.0, "errors": {}, "cpu": 0.0} for p in paths}
        group = {"events": 0, "commits": 0, "xact": 0}
        loads: list[float] = []
        try:
            with psycopg.connect(libpq, autocommit=True) as conn:
                for _ in range(args.rounds):
                    for name, (url, tool) in paths.items():
                        before = audit_counts(conn, dbname)
                        lat, errors, cpu = run_phase(
                            url,
                            tool,
                            args.agents,
                            args.workers,
                            args.seconds,
                            server_of[name],
                            args.mode,
                            args.arguments,
                        )
                        results[name]["cpu"] += cpu
                        after = audit_counts(conn, dbname)
                        loads.append(os.getloadavg()[0])
                        results[name]["lat"] += lat
                        results[name]["seconds"] += args.seconds
                        for k, v in errors.items():
                            results[name]["errors"][k] = results[name]["errors"].get(k, 0) + v
                        if name == "veil":
                            group["events"] += after[0] - before[0]
                            group["commits"] += after[1] - before[1]
                            group["xact"] += after[2] - before[2]
                        print(
                            f"{name}: {len(lat) / args.seconds:.0f} calls/s, p50 {statistics.median(lat):.1f} ms"
                            if lat
                            else f"{name}: no calls",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            for proc in server_of.values():
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(
        f"{args.agents} {args.mode} agents in {args.workers} load-generator processes,"
        f" {args.rounds} x {args.seconds:g} s per path"
        f" (alternating), {os.cpu_count()} cores; load average during the phases "
        f"{min(loads):.1f}-{max(loads):.1f}"
    )
    print(f"{'path':<8}{'calls/s':>10}{'p50 ms':>10}{'p99 ms':>10}  errors")
    for name, r in results.items():
        lat = r["lat"]
        rate = len(lat) / r["seconds"]
        print(f"{name:<8}{rate:>10.0f}{statistics.median(lat):>10.2f}{pct(lat, 99):>10.2f}  {r['errors'] or 'none'}")
    d, v = results["direct"]["lat"], results["veil"]["lat"]
    ratio = statistics.median(v) / statistics.median(d)
    print(f"veil/direct: throughput {len(v) / max(1, len(d)):.2f}x, p50 {ratio:.2f}x")
    if "baseline" in results:
        b = results["baseline"]["lat"]
        b_cpu = results["baseline"]["cpu"] / max(1, len(b)) * 1000
        print(f"veil/baseline: throughput {len(v) / max(1, len(b)):.2f}x; baseline CPU per call {b_cpu:.2f} ms")
    v_cpu = results["veil"]["cpu"] / max(1, len(v)) * 1000
    d_cpu = results["direct"]["cpu"] / max(1, len(d)) * 1000
    print(
        f"CPU per call: veil serve (and its children) {v_cpu:.2f} ms, the crm server {d_cpu:.2f} ms (direct phases);"
        f" one core's worth of Veil CPU would carry {1000 / v_cpu:.0f} calls/s"
    )
    if group["commits"]:
        print(
            f"audit during the veil phases: {group['events']} events in {group['commits']} writer commits"
            f" ({group['events'] / group['commits']:.1f} events per commit);"
            f" all commits of the database: {group['xact']}"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, tool, agents, seconds, mode = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
        anyio.run(worker, url, tool, agents, seconds, mode, json.loads(sys.argv[7]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--baseline-tree", help="also run `veil serve --http` from this checkout (before/after)")
    parser.add_argument(
        "--mode",
        choices=["legacy", "auto"],
        default="legacy",
        help="the agents' protocol: handshake-era sessions (legacy) or 2026-07-28 requests (auto)",
    )
    parser.add_argument("--tool", default="ping", help="the demo CRM's tool every agent calls (get_customer, ...)")
    parser.add_argument("--arguments", default="{}", help="its arguments, as JSON")
    args = parser.parse_args()
    if not args.database_url:
        sys.exit("set DATABASE_URL to a PostgreSQL server (a scratch database is created on it)")
    main(args)
