"""Does one session's hostile result stall another session's small calls?

One ``veil serve --http`` process (a subprocess, as in production) in front of the demo CRM, two
agent sessions on it:

* the **victim** calls ``crm__ping`` (a tiny result) over and over;
* the **neighbour** first stores a hostile note of about 1 MB on a customer (pathological shapes
  for the detectors: ``"12 " + "A-" * n``, long digit runs, long capitalised runs, e-mail-like
  runs, separators), then reads that customer back in a loop, so Veil tokenises the 1 MB result on
  every call.

Side by side in one run: the victim's latency alone (neighbour idle), then with the neighbour
busy. Reports p50 and p99 of both phases and their ratio, and how each neighbour call ended (a
result, or a clear error when it ran out of its tokenisation budget).

    .venv/bin/python bench/noisy_neighbour.py [--calls 200] [--note-kb 1024] [--budget S] [--tree PATH]

``--tree`` serves another checkout (the baseline before a change) with the same client code, so
before and after are measured by one script.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import yaml
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

ROOT = Path(__file__).resolve().parent.parent
CRM = ROOT / "examples" / "crm_server.py"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def hostile_note(size: int, seed: int = 7) -> str:
    """About ``size`` characters of text shaped to be expensive for pattern and NER detectors."""
    rng = random.Random(seed)
    shapes = [
        lambda n: "12 " + "A-" * n,
        lambda n: "".join(rng.choice("0123456789") for _ in range(n)),
        lambda n: " ".join(rng.choice(["Alpha", "Bravo", "Charlie", "Delta", "Echo"]) for _ in range(n // 6)),
        lambda n: "a." * (n // 2) + "@" + "b." * (n // 4),
        lambda n: "-" * n + " " + "1-" * (n // 2),
        lambda n: "Call 555-" + "0" * n,
    ]
    parts: list[str] = []
    total = 0
    while total < size:
        part = rng.choice(shapes)(rng.randint(2_000, 20_000))
        parts.append(part)
        total += len(part) + 1
    return "\n".join(parts)[:size]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_veil(
    work: Path, database_url: str | None, tree: Path, limits: dict[str, float]
) -> tuple[subprocess.Popen[str], str]:
    config: dict = {
        "upstreams": {"crm": {"command": sys.executable, "args": [str(CRM)], "env": {"CRM_RECORDS": "40"}}},
        "data_dir": str(work / "data"),
        "expose": "direct",
        "policy": str(ROOT / "policies" / "default.yaml"),
        "auth": {"required": False},  # loopback only; each Client is its own MCP session
    }
    if database_url:
        config["database_url"] = database_url
    if limits:  # only when asked: older trees (the baseline) reject fields they do not know
        config["limits"] = limits
    (work / "veil.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    env = {**os.environ, "VEIL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(), "PYTHONPATH": str(tree)}
    log = open(work / "veil.log", "w")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "veil", "serve", "--config", str(work / "veil.yaml"), "--http", f"127.0.0.1:{port}"],
        env=env,
        stdin=subprocess.DEVNULL,
        cwd=tree,  # `python -m` puts the working directory first on sys.path
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if "serving MCP on" in (work / "veil.log").read_text():
            return proc, f"http://127.0.0.1:{port}/mcp"
        if proc.poll() is not None:
            raise SystemExit(f"veil serve exited: {(work / 'veil.log').read_text()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("veil serve did not start within 180 s")


async def victim_calls(url: str, calls: int) -> list[float]:
    timings: list[float] = []
    async with Client(url, mode="legacy", read_timeout_seconds=300) as victim:
        for _ in range(10):
            await victim.call_tool("crm__ping", {})
        for _ in range(calls):
            t0 = time.perf_counter()
            await victim.call_tool("crm__ping", {})
            timings.append((time.perf_counter() - t0) * 1000)
    return timings


async def main(calls: int, note_kb: int, database_url: str | None, tree: Path, limits: dict[str, float]) -> None:
    work = Path(tempfile.mkdtemp(prefix="veil-bench-neighbour-"))
    atexit.register(shutil.rmtree, work, True)  # its keys and logs go with the run
    proc, url = start_veil(work, database_url, tree, limits)
    outcomes: dict[str, int] = {}
    neighbour_ms: list[float] = []
    try:
        alone = await victim_calls(url, calls)
        print(f"alone: p50 {statistics.median(alone):.2f} ms", file=sys.stderr, flush=True)
        async with Client(url, mode="legacy", read_timeout_seconds=600) as neighbour:
            await neighbour.call_tool("crm__add_note", {"customer_id": "C0001", "note": hostile_note(note_kb * 1024)})
            print("hostile note stored", file=sys.stderr, flush=True)
            stop = anyio.Event()

            async def hammer() -> None:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        result = await neighbour.call_tool("crm__get_customer", {"customer_id": "C0001"})
                        kind = "error result" if result.is_error else "result"
                    except MCPError as exc:
                        kind = f"error {exc.error.code}"
                    neighbour_ms.append((time.perf_counter() - t0) * 1000)
                    outcomes[kind] = outcomes.get(kind, 0) + 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(hammer)
                await anyio.sleep(1.0)  # the neighbour's first hostile result is being tokenised
                busy = await victim_calls(url, calls)
                stop.set()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    a50, b50 = statistics.median(alone), statistics.median(busy)
    print(f"veil from {tree}; limits {limits or 'default'}; load average {os.getloadavg()[0]:.1f}")
    print(f"victim calls per phase: {calls}; neighbour note: {note_kb} KB of pathological text")
    print(f"{'phase':<16}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    print(f"{'alone':<16}{a50:>10.2f}{pct(alone, 99):>10.2f}{max(alone):>10.2f}")
    print(f"{'neighbour busy':<16}{b50:>10.2f}{pct(busy, 99):>10.2f}{max(busy):>10.2f}")
    print(f"ratio busy/alone: p50 {b50 / a50:.2f}x, p99 {pct(busy, 99) / pct(alone, 99):.2f}x")
    if neighbour_ms:
        print(
            f"neighbour calls: {len(neighbour_ms)}, median {statistics.median(neighbour_ms):.0f} ms; "
            f"outcomes: {outcomes}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--note-kb", type=int, default=1024)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--tree", type=Path, default=ROOT, help="the Veil source tree to serve (e.g. a baseline)")
    parser.add_argument("--budget", type=float, help="limits.tokenize_budget_s (trees that have it)")
    parser.add_argument("--ner-workers", type=int, help="limits.ner_workers (trees that have it)")
    args = parser.parse_args()
    limits = {k: v for k, v in {"tokenize_budget_s": args.budget, "ner_workers": args.ner_workers}.items() if v}
    anyio.run(main, args.calls, args.note_kb, args.database_url, args.tree.resolve(), limits)
