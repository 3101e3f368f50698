"""The real gateway serving as the runtime role (migrating as the owner), and a flood of bad
credentials against it: aggregated into a handful of ``auth.failed`` rows whose counts add up.

Real Postgres with two roles, real HTTP on loopback, the demo CRM as a real subprocess, a real MCP
client."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import sqlalchemy as sa
from examples.upstreams import CRM_SERVER, PYTHON
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from proxy.harness import serving

from veil.auth import create_key
from veil.config import VeilConfig, parse_config

from .conftest import Deployment

pytestmark = pytest.mark.anyio

POLICY = textwrap.dedent(
    """
    metadata:
      name: runtime-role-tests
      purposes: [testing]
    detection:
      entities: [PERSON, EMAIL_ADDRESS, PHONE_NUMBER, US_SSN]
    tokens:
      scope: session
    access:
      - id: everyone
        tools: ["*"]
        effect: allow
    """
)
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gateway_config(dep: Deployment, tmp_path: Path) -> VeilConfig:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    dep.data_dir.mkdir(parents=True, exist_ok=True)
    return parse_config(
        {
            "upstreams": {
                "crm": {
                    "command": PYTHON,
                    "args": [str(CRM_SERVER)],
                    "env": {"CRM_RECORDS": "20", "CRM_CALL_LOG": str(tmp_path / "crm.jsonl")},
                }
            },
            "database_url": dep.runtime_url,
            "migration_database_url": dep.owner_url,
            "policy": str(policy),
            "data_dir": str(dep.data_dir),
            "expose": "direct",
            "auth": {"required": True},
        }
    )


def rows(dep: Deployment, sql: str) -> list[Any]:
    engine = dep.engine(dep.owner_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)).all())
    finally:
        engine.dispose()


@pytest.mark.req("audit:runtime-role")
async def test_gateway_serves_as_the_runtime_role(deploy: Callable[..., Deployment], tmp_path: Path) -> None:
    dep = deploy(hardened=True)
    async with serving(gateway_config(dep, tmp_path)) as (gateway, url):
        with gateway.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_user")).scalar_one() == dep.runtime
        _, key = await gateway.in_thread(create_key, gateway.engine, "alice", ["support"])
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}) as http,
            Client(streamable_http_client(url, http_client=http), mode="legacy", read_timeout_seconds=60) as agent,
        ):
            found = await agent.call_tool("crm__get_customer", {"customer_id": "C0001"})
            assert not found.is_error
            assert "[EMAIL_ADDRESS_" in str(found.structured_content)  # tokenised: the vault took the value
    assert rows(dep, "SELECT count(*) FROM vault_entries")[0][0] > 0
    calls = rows(dep, "SELECT principal, tool FROM audit_events WHERE kind = 'tool.call'")
    assert [tuple(r) for r in calls] == [("alice", "get_customer")]


@pytest.mark.req("audit:auth-failure-aggregation")
async def test_a_flood_of_bad_keys_writes_a_handful_of_rows_with_counts(
    deploy: Callable[..., Deployment], tmp_path: Path
) -> None:
    dep = deploy(hardened=False)
    statuses: list[int] = []
    async with serving(gateway_config(dep, tmp_path)) as (gateway, url):
        headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}

        async def bad_requests(client: int) -> None:
            async with httpx.AsyncClient(timeout=30) as http:
                for i in range(30):
                    key_id = "abcdefghijk" + "abcdefghij"[client]  # well-formed, never issued
                    wrong = {"authorization": f"Bearer veil_{key_id}_{'A' * 40}{i:03d}"}
                    response = await http.post(url, json=INITIALIZE, headers=headers | wrong)
                    statuses.append(response.status_code)

        async with anyio.create_task_group() as tg:
            for client in range(10):
                tg.start_soon(bad_requests, client)
        assert gateway.sessions == {}
    assert statuses == [401] * 300
    # Rows are read after the gateway closed: the pending counts were flushed on the way out.
    failed = rows(dep, "SELECT detail FROM audit_events WHERE kind = 'auth.failed' ORDER BY seq")
    counts = [r[0]["count"] for r in failed]
    assert sum(counts) == 300
    # First failure of the minute at once, the rest as one counted row (a minute boundary during
    # the flood can add one pair).
    assert 2 <= len(failed) <= 4, counts
    assert all(r[0]["client"] == "127.0.0.1" and r[0]["code"] == "unknown_key" for r in failed)
    assert all("AAAA" not in str(r[0]) for r in failed)  # the presented credential is never recorded
