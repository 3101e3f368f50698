"""The per-call tokenisation budget and NER isolation, through the real gateway (real CRM
subprocess, real MCP client, real Postgres, NER in real worker processes).

A result whose tokenisation runs past ``limits.tokenize_budget_s`` fails closed: the agent gets an
error naming the tool and the setting, the audit row says so, and nothing of the result reaches
the agent. (iso helper's file; timing is measured in bench/noisy_neighbour.py, not here.)"""

from __future__ import annotations

import json

import psutil
import pytest
import sqlalchemy as sa
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from proxy.harness import serving
from veil.tokenizer import nerpool

pytestmark = pytest.mark.anyio

SECRET_SSN = "287-65-4321"
SECRET_NAME = "Marisol Quintanilla"
# Free text that costs seconds to tokenise (NER over names, pathological pattern shapes).
HOSTILE = "\n".join(
    [
        f"{SECRET_NAME} (SSN {SECRET_SSN}) met Peter Lindqvist in Chicago on Tuesday. " * 2000,
        "12 " + "A-" * 20_000,
        "Call 555-" + "0" * 20_000,
    ]
)


@pytest.mark.req("tokenize:budget-fails-closed")
async def test_a_result_past_its_budget_fails_closed_naming_the_tool_and_the_setting(make_config) -> None:
    config = make_config(limits={"tokenize_budget_s": 0.5})
    async with serving(config) as (gateway, url), Client(url, mode="legacy") as agent:
        pool = nerpool.active()
        assert pool is not None  # the gateway's NER runs in worker processes
        pids = pool.pids()
        await agent.call_tool("crm__add_note", {"customer_id": "C0001", "note": HOSTILE})
        with pytest.raises(MCPError) as failed:
            await agent.call_tool("crm__get_customer", {"customer_id": "C0001"})
        message = failed.value.message
        assert "crm__get_customer" in message and "limits.tokenize_budget_s" in message
        assert SECRET_SSN not in message and "Quintanilla" not in message
        # the gateway keeps serving, other customers' results still arrive
        assert (await agent.call_tool("crm__ping", {})).structured_content == {"ok": True}
        with gateway.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT outcome, detail FROM audit_events WHERE kind = 'tool.call' AND tool = 'get_customer' "
                    "ORDER BY seq DESC LIMIT 1"
                )
            ).one()
            dump = "\n".join(conn.execute(sa.text("SELECT row_to_json(a)::text FROM audit_events a")).scalars())
        assert row.outcome == "error" and row.detail["error"] == "TokenizeBudgetExceeded"
        assert SECRET_SSN not in dump and "Quintanilla" not in dump and "A-A-A-" not in dump
    # stopped with the gateway: no worker process is left
    assert nerpool.active() is None
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


@pytest.mark.req("tokenize:isolated-cost")
async def test_the_gateway_detects_names_in_worker_processes(make_config) -> None:
    async with serving(make_config()) as (_gateway, url), Client(url, mode="legacy") as agent:
        pool = nerpool.active()
        assert pool is not None
        before = pool.calls
        note = f"Spoke with {SECRET_NAME} about the renewal."
        await agent.call_tool("crm__add_note", {"customer_id": "C0002", "note": note})
        record = (await agent.call_tool("crm__get_customer", {"customer_id": "C0002"})).structured_content
        assert pool.calls > before
        text = json.dumps(record)
        assert "Quintanilla" not in text and "Spoke with [PERSON_" in text
