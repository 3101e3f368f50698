"""The stdio front end as a desktop agent runs it: ``veil serve`` as a subprocess, a real MCP
client on its stdin/stdout; and two Veil processes sharing one database."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
import yaml
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters

from examples.crm_data import generate_customers
from veil import db
from veil.tokenizer import TOKEN_RE

pytestmark = pytest.mark.anyio


def veil_params(config_path: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "veil", "serve", "--config", str(config_path)], env=dict(os.environ)
    )


def write_config(make_config, tmp_path: Path, name: str, **overrides) -> Path:
    config = make_config(**overrides)
    raw = config.model_dump(mode="json", exclude={"source"}, exclude_defaults=False)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.req("transport:stdio")
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_stdio_agent_sees_tokens_and_the_upstream_real_values(make_config, tmp_path: Path, mode: str) -> None:
    path = write_config(make_config, tmp_path, "veil.yaml")
    customer = generate_customers(40, 7)[4]
    async with Client(veil_params(path), mode=mode, read_timeout_seconds=120) as agent:
        got = await agent.call_tool("crm__get_customer", {"customer_id": customer["id"]})
        record = got.structured_content
        assert TOKEN_RE.fullmatch(record["email"])
        assert customer["email"] not in got.model_dump_json() and customer["full_name"] not in got.model_dump_json()
        await agent.call_tool("crm__add_note", {"customer_id": customer["id"], "note": f"Call {record['full_name']}"})
    calls = (tmp_path / "crm-calls.jsonl").read_text()
    assert f"Call {customer['full_name']}" in calls  # same-upstream flow: the default rule allows it


@pytest.mark.req("vault:multi-process")
async def test_two_veil_processes_on_one_database_agree_on_tokens(make_config, make_database, tmp_path: Path) -> None:
    # A database of its own: the session's shared one holds other tests' rows for this principal
    # (erased ones beside live ones among them), which the duplicate count below would see.
    path = write_config(make_config, tmp_path, "veil.yaml", scope="principal", database_url=make_database())
    ids = [f"C{n:04d}" for n in range(1, 21)]
    seen: dict[int, dict[str, str]] = {0: {}, 1: {}}

    async def agent(n: int) -> None:
        async with Client(veil_params(path), mode="legacy", read_timeout_seconds=120) as client:
            for cid in ids if n == 0 else reversed(ids):
                got = await client.call_tool("crm__get_customer", {"customer_id": cid})
                seen[n][cid] = got.structured_content["email"]

    async with anyio.create_task_group() as tg:
        tg.start_soon(agent, 0)
        tg.start_soon(agent, 1)
    assert seen[0] == seen[1]
    assert len(set(seen[0].values())) == len(ids)
    config = yaml.safe_load(path.read_text())
    engine = sa.create_engine(db.normalise_url(config["database_url"]))
    with engine.connect() as conn:
        dupes = conn.execute(
            sa.text(
                "SELECT count(*) FROM (SELECT scope, value_hmac FROM vault_entries GROUP BY 1, 2 HAVING count(*) > 1) d"
            )
        ).scalar()
    engine.dispose()
    assert dupes == 0
