"""An upstream killed while a call to it is in flight: a stdio server's process (SIGKILL) and an
HTTP server (its process SIGKILLed). The agent gets a clear error naming the upstream
(``UpstreamError``, -32008), the call's audit row says where and why (``stage: exchange``,
``reason: connection_lost``), the session keeps working with its other upstreams, and the next
call restarts the stdio upstream, or fails clearly while the HTTP one is down and works once it
is back. What the dying upstream wrote to stderr (a customer's e-mail address) reaches neither
the agent, nor Veil's log, nor the audit trail. An upstream that cannot start is retried with
backoff, not respawned on every call.

Real components: the gateway in-process serving Streamable HTTP on loopback, a real MCP client,
the upstreams as real subprocesses, PostgreSQL for the audit trail.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import sqlalchemy as sa
from examples.upstreams import CRM_SERVER, PYTHON
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError
from proxy.harness import free_port, serving

from faults.fragile_server import SECRET
from veil.config import parse_config
from veil.errors import UpstreamError

pytestmark = pytest.mark.anyio
FRAGILE = Path(__file__).with_name("fragile_server.py")
POLICY = """
metadata: {name: upstream-faults, purposes: [testing]}
detection: {entities: [PERSON, EMAIL_ADDRESS]}
tokens: {scope: session}
access:
  - {id: everyone, tools: ["*"], resources: ["*"], prompts: ["*"], effect: allow}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _wait(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout  # a hang guard, not a timing assertion
    while not (value := check()):
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.05)
    return value


def _start_http_upstream(port: int, started: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [PYTHON, str(FRAGILE), "--http", f"127.0.0.1:{port}"],
            env={**os.environ, "FRAGILE_STARTED": str(started)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )

    def listening() -> bool:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
            return True
        except httpx.TransportError:
            return False

    _wait("HTTP upstream", listening)
    return proc


async def _killed_mid_call(agent: Client, tool: str, started: Path, kill: Any) -> MCPError:
    """Call ``tool`` (which blocks), kill its upstream once it runs, return the agent's error."""
    started.unlink(missing_ok=True)
    failures: list[BaseException] = []

    async def call() -> None:
        try:
            await agent.call_tool(tool, {})
        except MCPError as exc:
            failures.append(exc)

    with anyio.fail_after(60):  # a hang guard: the kill must end the call, not the upstream timeout
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            pid = await anyio.to_thread.run_sync(_wait, "the call", lambda: started.exists() and started.read_text())
            kill(int(pid))
    assert len(failures) == 1, f"the call to {tool} did not fail: {failures}"
    error = failures[0]
    assert isinstance(error, MCPError)
    return error


def _audit_rows(engine: sa.Engine, tool: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT kind, outcome, upstream, tool, detail FROM audit_events WHERE tool = :t ORDER BY seq"),
            {"t": tool},
        ).mappings()
        return [dict(r) for r in rows]


def _all_audit_text(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return "\n".join(conn.execute(sa.text("SELECT row_to_json(a)::text FROM audit_events a")).scalars())


@pytest.mark.req("upstream:killed-mid-call")
async def test_upstreams_killed_mid_call(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    work = Path(tempfile.mkdtemp(prefix="veil-faults-"))
    work.chmod(0o711)
    stdio_started, http_started = work / "stdio-started", work / "http-started"
    port = free_port()
    http_log = work / "http-upstream.log"
    http_upstream = _start_http_upstream(port, http_started, http_log)
    (work / "policy.yaml").write_text(POLICY)
    config = parse_config(
        {
            "upstreams": {
                "crm": {"command": PYTHON, "args": [str(CRM_SERVER)], "env": {"CRM_RECORDS": "20"}},
                "fragile": {"command": PYTHON, "args": [str(FRAGILE)], "env": {"FRAGILE_STARTED": str(stdio_started)}},
                "remote": {"url": f"http://127.0.0.1:{port}/mcp"},
                "broken": {"command": PYTHON, "args": ["-c", "import sys; sys.exit(3)"]},
            },
            "database_url": database_url,
            "policy": str(work / "policy.yaml"),
            "data_dir": str(work / "data"),
            "auth": {"required": False},
            "principal": {"name": "faults", "roles": ["support"]},
            "expose": "direct",
            "limits": {"ner_workers": 1},
        },
        source=work / "veil.yaml",
    )
    try:
        async with serving(config) as (gateway, url), Client(url, mode="legacy", read_timeout_seconds=120) as agent:
            first = (await agent.call_tool("fragile__whoami", {})).structured_content
            assert first is not None

            # 1. stdio: the upstream's process is SIGKILLed while the call runs.
            error = await _killed_mid_call(
                agent, "fragile__hold", stdio_started, lambda pid: os.kill(pid, signal.SIGKILL)
            )
            assert error.code == UpstreamError.code and "'fragile'" in error.message, error.message
            assert "restarted on the next call" in error.message
            crm = await agent.call_tool("crm__find_customers", {"segment": "gold", "limit": 1})
            assert not crm.is_error  # the session's other upstreams are untouched
            again = (await agent.call_tool("fragile__whoami", {})).structured_content
            assert again is not None and again != first  # a new process answered

            # 2. HTTP: the upstream server's process is SIGKILLed while the call runs.
            assert not (await agent.call_tool("remote__whoami", {})).is_error
            error_http = await _killed_mid_call(
                agent, "remote__hold", http_started, lambda pid: http_upstream.send_signal(signal.SIGKILL)
            )
            http_upstream.wait(10)
            assert error_http.code == UpstreamError.code and "'remote'" in error_http.message, error_http.message
            with pytest.raises(MCPError) as down:  # while it is down: a clear error, at once
                with anyio.fail_after(30):
                    await agent.call_tool("remote__whoami", {})
            assert down.value.code == UpstreamError.code and "'remote'" in down.value.message
            assert "unreachable" in down.value.message, down.value.message
            assert not (await agent.call_tool("crm__find_customers", {"segment": "gold", "limit": 1})).is_error
            http_upstream = _start_http_upstream(port, http_started, http_log)
            assert not (await agent.call_tool("remote__whoami", {})).is_error  # back: the next call works

            # 3. An upstream that cannot start: retried on the next call, then spaced out (backoff).
            for _ in range(2):
                with pytest.raises(MCPError) as unreachable:
                    await agent.call_tool("broken__anything", {})
                assert "'broken'" in unreachable.value.message and "unreachable" in unreachable.value.message
            session = next(iter(gateway.sessions.values()))
            assert (await session.connection("broken")).failed_starts == 2
            with pytest.raises(MCPError) as spaced:
                await agent.call_tool("broken__anything", {})
            assert "next attempt is in" in spaced.value.message
            assert (await session.connection("broken")).failed_starts == 2  # no third start was tried

            # The audit rows say where and why; nothing the dying upstream wrote is anywhere.
            for tool, upstream in (("hold", "fragile"), ("hold", "remote")):
                rows = [r for r in _audit_rows(gateway.engine, tool) if r["upstream"] == upstream]
                outcome = [r for r in rows if r["kind"] == "tool.call"]
                assert [r["outcome"] for r in outcome] == ["error"], rows
                detail = outcome[0]["detail"]
                assert (detail["stage"], detail["error"], detail["reason"]) == (
                    "exchange",
                    "UpstreamError",
                    "connection_lost",
                ), detail
            said = json.dumps([error.message, error_http.message, down.value.message])
            assert SECRET not in said
            assert SECRET not in caplog.text
            assert SECRET not in _all_audit_text(gateway.engine)
            # It is only in the upstream's own private log (and the HTTP server's stderr here).
            stdio_log = work / "data" / "logs" / "upstream-fragile.log"
            assert SECRET in stdio_log.read_text() and (stdio_log.stat().st_mode & 0o777) == 0o600
    finally:
        if http_upstream.poll() is None:
            http_upstream.kill()
            http_upstream.wait(10)
        shutil.rmtree(work, ignore_errors=True)
