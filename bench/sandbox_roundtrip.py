"""Sandbox round trip and RPC overhead, measured side by side with their baselines in one run.

    sudo .venv/bin/python bench/sandbox_roundtrip.py [--runs 200]

(1) ``execute`` of a trivial program (``1 + 1``): warm (the session's persistent interpreter),
    pooled (a new session served from the warm pool) and cold (a new session, no pool: firejail
    start + interpreter + runtime boot), next to ``python3 -c pass`` and a bare hardened
    ``firejail ... python3 -c pass`` on the same machine.
(2) A program making 100 tool calls (``crm.ping()``): per-call cost through the channel versus
    awaiting the same ``call_tool`` coroutine directly in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from veil.config import SandboxConfig  # noqa: E402
from veil.sandbox import SandboxManager, ToolSpec  # noqa: E402
from veil.sandbox import firejail as fj  # noqa: E402
from veil.sandbox.process import SandboxProcess  # noqa: E402

CATALOGUE = [ToolSpec("crm", "ping", "A tiny call.", {"type": "object", "properties": {}})]


async def call_tool(upstream: str, tool: str, args: dict[str, Any]) -> Any:
    return {"ok": True}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(name: str, samples: list[float]) -> str:
    return f"| {name} | {len(samples)} | {statistics.median(samples):.2f} | {pct(samples, 0.99):.2f} |"


def timed_subprocess(argv: list[str], runs: int, **kw: Any) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, **kw)
        out.append((time.perf_counter() - start) * 1000)
    return out


async def main(runs: int) -> str:
    root = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    root.chmod(0o711)
    cold_runs = max(20, runs // 5)
    results: dict[str, list[float]] = {}

    manager = SandboxManager(SandboxConfig(pool_size=0), root / "cold")
    cold = []
    for i in range(cold_runs):
        start = time.perf_counter()
        r = await manager.execute(f"cold-{i}", "1 + 1", catalogue=CATALOGUE, call_tool=call_tool)
        cold.append((time.perf_counter() - start) * 1000)
        assert r.result == "2"
        await manager.close_session(f"cold-{i}")
        await manager.settle()  # the previous jail's teardown must not overlap the next start
    warm = []
    await manager.execute("warm", "1 + 1", catalogue=CATALOGUE, call_tool=call_tool)
    for _ in range(runs):
        start = time.perf_counter()
        await manager.execute("warm", "1 + 1", catalogue=CATALOGUE, call_tool=call_tool)
        warm.append((time.perf_counter() - start) * 1000)
    # (2) 100 tool calls vs the trivial program, in the same warm interpreter.
    program = "from servers import crm\nfor _ in range(100):\n    crm.ping()\n"
    await manager.execute("warm", program, catalogue=CATALOGUE, call_tool=call_tool)
    hundred = []
    for _ in range(max(20, runs // 5)):
        start = time.perf_counter()
        r = await manager.execute("warm", program, catalogue=CATALOGUE, call_tool=call_tool)
        hundred.append((time.perf_counter() - start) * 1000)
        assert r.tool_calls == 100
    await manager.aclose()

    pooled_manager = SandboxManager(SandboxConfig(pool_size=2), root / "pool")
    pooled = []
    for i in range(cold_runs):
        await pooled_manager.wait_pool()
        start = time.perf_counter()
        await pooled_manager.execute(f"pool-{i}", "1 + 1", catalogue=CATALOGUE, call_tool=call_tool)
        pooled.append((time.perf_counter() - start) * 1000)
        await pooled_manager.close_session(f"pool-{i}")
        await pooled_manager.settle()
    await pooled_manager.aclose()

    # (3) Throughput: 100 executions across 20 sessions at once (one tool call each).
    burst_manager = SandboxManager(SandboxConfig(pool_size=2), root / "burst")
    await burst_manager.wait_pool()
    begin = time.perf_counter()
    burst = await asyncio.gather(
        *(
            burst_manager.execute(
                f"b{n % 20}", "from servers import crm\ncrm.ping()", catalogue=CATALOGUE, call_tool=call_tool
            )
            for n in range(100)
        )
    )
    burst_s = time.perf_counter() - begin
    assert all(r.outcome == "ok" for r in burst)
    await burst_manager.aclose()

    direct = []
    for _ in range(20):
        start = time.perf_counter()
        for _ in range(100):
            await call_tool("crm", "ping", {})
        direct.append((time.perf_counter() - start) * 1000)

    python = fj.find_python()
    results["python3 -c pass (baseline)"] = timed_subprocess([python, "-c", "pass"], cold_runs)
    results["python3 -I -S -c pass"] = timed_subprocess([python, "-I", "-S", "-c", "pass"], cold_runs)
    ws = root / "bare"
    ws.mkdir()
    import pwd

    entry = pwd.getpwnam("veil-sandbox")
    os.chown(ws, entry.pw_uid, entry.pw_gid)
    paths = fj.JailPaths(ws, root, Path(entry.pw_dir), None)
    argv = fj.command(SandboxConfig(), paths, 2, "pass")
    results["firejail (hardened) + python3 -I -S -c pass, start to exit"] = timed_subprocess(
        argv, cold_runs, user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], env=fj.environment(), cwd="/"
    )
    starts = []
    for _ in range(cold_runs):
        begin = time.perf_counter()
        sandbox = await SandboxProcess.start(SandboxConfig(), paths, run_as=(entry.pw_uid, entry.pw_gid))
        starts.append((time.perf_counter() - begin) * 1000)
        sandbox.kill()
        await sandbox.wait()
    results["sandbox start only (spawn to runtime ready)"] = starts
    results["execute, cold (new session, no pool)"] = cold
    results["execute, pooled (new session, warm pool)"] = pooled
    results["execute, warm (same session)"] = warm

    baseline = results["python3 -c pass (baseline)"]
    per_call_rpc = (statistics.median(hundred) - statistics.median(warm)) / 100 * 1000
    per_call_direct = statistics.median(direct) / 100 * 1000
    lines = [
        f"Machine: {os.cpu_count()} cores; {sys.platform}; firejail 0.9.72; sandbox python {python}.",
        "",
        "| what (trivial program `1 + 1`) | runs | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *(row(name, samples) for name, samples in results.items()),
        "",
        "| 100 tool calls (`crm.ping()` x 100) | p50 ms per program | per call |",
        "|---|---|---|",
        f"| through the sandbox channel | {statistics.median(hundred):.2f} | {per_call_rpc:.1f} us |",
        f"| direct in-process `await call_tool(...)` | {statistics.median(direct):.3f} | {per_call_direct:.2f} us |",
        "",
        f"100 executions across 20 new sessions at once (one tool call each, 20 interpreters started, "
        f"at most 2 x cores running): {burst_s * 1000:.0f} ms wall time in total.",
        "",
        f"Warm execute vs `python3 -c pass`: {statistics.median(baseline) / statistics.median(warm):.0f}x faster; "
        f"cold execute vs the ~2 s cold start of a container pool: {2000 / statistics.median(cold):.0f}x faster; "
        f"warm vs its 50 ms warm path: {50 / statistics.median(warm):.0f}x faster. "
        f"RPC overhead per tool call: {per_call_rpc:.0f} us "
        f"({per_call_rpc / max(per_call_direct, 1e-9):.0f}x a direct call, which does no I/O at all).",
    ]
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    print(asyncio.run(main(args.runs)))
