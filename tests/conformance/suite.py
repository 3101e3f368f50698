"""Run the @modelcontextprotocol/conformance server scenarios against a URL, and start what they
run against: the upstreams over Streamable HTTP (@modelcontextprotocol/server-everything, and
``reference_server.py``, which offers the tools, prompts and resources the scenarios ask for), and
Veil in front of one of them.

Everything is a real subprocess on loopback (Node 22 from ``tests/npm.py`` for the npm packages,
``python -m veil serve --http`` for Veil), started and awaited with bounded waits on the line each
prints when it listens, and stopped at exit. The suite writes one ``checks.json`` per scenario;
``run_suite`` reads them into ``{scenario: Scenario}``.

server-everything's HTTP transport listens on every interface and has no host option, so it is
started with ``loopback.cjs`` preloaded, which makes Node servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import npm

HERE = Path(__file__).resolve().parent
CONFORMANCE = "@modelcontextprotocol/conformance"
EVERYTHING = "@modelcontextprotocol/server-everything"
START_TIMEOUT_S = 120.0  # Veil loads its NLP model at start; a cold CI machine is slow
SUITE_TIMEOUT_S = 300.0
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")


@dataclass
class Scenario:
    """One scenario's checks: how many passed, and what the failed ones said."""

    passed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.passed > 0

    def cell(self) -> str:
        """The table cell: ``pass`` or ``FAIL``, with the check counts."""
        return f"{'pass' if self.ok else 'FAIL'} ({self.passed}/{self.passed + self.failed})"


def _wait_for_line(proc: subprocess.Popen[str], pattern: str, what: str, timeout_s: float) -> None:
    """Block until the process prints a line matching ``pattern`` on stderr (bounded)."""
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=timeout_s)
        except queue.Empty:
            tail = "".join(seen)[-2000:]
            raise RuntimeError(f"{what} printed no '{pattern}' within {timeout_s:g}s; stderr: {tail}") from None
        if line is None:
            raise RuntimeError(f"{what} exited ({proc.wait()}) before listening; stderr: {''.join(seen)[-2000:]}")
        seen.append(line)
        if re.search(pattern, line):
            # Keep draining stderr so the process never blocks on a full pipe.
            return


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # e.g. an HTTP server waiting on an open SSE stream
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def everything_http(port: int) -> Iterator[str]:
    """server-everything on Streamable HTTP at ``http://127.0.0.1:PORT/mcp``, loopback only."""
    script = npm.install(EVERYTHING) / "dist" / "index.js"
    env = {**os.environ, "PORT": str(port)}
    proc = subprocess.Popen(
        [str(npm.node22()), "--require", str(HERE / "loopback.cjs"), str(script), "streamableHttp"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_line(proc, r"listening on port", "server-everything", START_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        _stop(proc)


@contextmanager
def reference_http(port: int) -> Iterator[str]:
    """``reference_server.py`` on Streamable HTTP at ``http://127.0.0.1:PORT/mcp``."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "reference_server.py"), "--http", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_line(proc, r"listening on port", "reference_server.py", START_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        _stop(proc)


@contextmanager
def veil_http(config: Path, port: int, env: Mapping[str, str]) -> Iterator[str]:
    """``veil serve --config CONFIG --http 127.0.0.1:PORT`` as a subprocess; yields its MCP URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "veil", "serve", "--config", str(config), "--http", f"127.0.0.1:{port}"],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_line(proc, r"veil: serving MCP on", "veil serve", START_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        _stop(proc)


def _suite(url: str, out_dir: Path, scenario: str | None = None) -> dict[str, Scenario]:
    script = npm.install(CONFORMANCE) / "dist" / "index.js"
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [str(npm.node22()), str(script), "server", "--url", url, "-o", str(out_dir)]
    if scenario:
        command += ["--scenario", scenario]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S, cwd=out_dir)
    results: dict[str, Scenario] = {}
    for folder in sorted(out_dir.iterdir()):
        match = _RESULT_DIR.match(folder.name)
        if not match or not (folder / "checks.json").exists():
            continue
        result = results.setdefault(match["scenario"], Scenario())
        for check in json.loads((folder / "checks.json").read_text()):
            status = check.get("status")
            if status == "SUCCESS":
                result.passed += 1
            elif status in ("FAILURE", "ERROR"):  # WARNING and INFO checks count neither way
                result.failed += 1
                result.failures.append(f"{check.get('id')}: {check.get('errorMessage') or status}")
    if not results:
        raise RuntimeError(f"the conformance suite produced no results (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return results


def run_suite(url: str, out_dir: Path) -> dict[str, Scenario]:
    """Run every active server scenario of the pinned suite against ``url``; results by scenario.

    A scenario that failed only because a request timed out (the suite's client gives up after a
    fixed time, which a loaded CI machine can exceed) is run once more on its own, and that run
    counts; any other failure stands.
    """
    results = _suite(url, out_dir / "all")
    for name, result in results.items():
        if result.failures and all("timed out" in failure for failure in result.failures):
            results[name] = _suite(url, out_dir / f"again-{name}", name).get(name, result)
    return results
