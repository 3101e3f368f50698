"""Safe substitution end to end: a real MCP client, the real gateway, @bytebase/dbhub (npm) as a
stdio subprocess, and PostgreSQL. The agent only ever holds tokens; the values behind them are
SQL-hostile, and each query must match exactly the row the token came from."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError
from proxy.harness import serving

from substitution.conftest import CUSTOMERS, POLICY
from veil.tokenizer import TOKEN_RE

pytestmark = pytest.mark.anyio

TOOL = "dbhub__execute_sql"
RAW = {v for _id, name, email in CUSTOMERS[:4] for v in (name, email)}


def rows(result: Any) -> list[dict[str, Any]]:
    assert not result.is_error, result.content[0].text
    doc = json.loads(result.content[0].text)
    return [row for stmt in doc["data"]["statements"] for row in stmt["rows"]]


def seen(result: Any) -> str:
    return json.dumps(result.model_dump(mode="json"), ensure_ascii=False)


async def tokens_of(agent: Client, ids: list[int]) -> dict[int, dict[str, Any]]:
    sql = f"SELECT id, full_name, email FROM customers WHERE id IN ({', '.join(map(str, ids))})"
    listed = await agent.call_tool(TOOL, {"sql": sql})
    assert [v for v in RAW if v in seen(listed)] == []
    out = {r["id"]: r for r in rows(listed)}
    for r in out.values():
        assert TOKEN_RE.fullmatch(r["full_name"]) and TOKEN_RE.fullmatch(r["email"]), r
    return out


@pytest.mark.req("untokenize:sql-safe")
async def test_values_with_quotes_match_exactly_their_own_row(dbhub_config) -> None:
    async with serving(dbhub_config()) as (_gateway, url), Client(url, mode="legacy") as agent:
        known = await tokens_of(agent, [1, 2, 3, 4])

        # A name with a quote is found through its token (verbatim it would break the query).
        found = await agent.call_tool(
            TOOL, {"sql": f"SELECT id FROM customers WHERE full_name = '{known[1]['full_name']}'"}
        )
        assert rows(found) == [{"id": 1}]
        # dbhub echoes the statement it ran: the value in it comes back as a token, never raw.
        assert [v for v in RAW if v in seen(found)] == []

        # Stored values that are SQL match exactly their own row (verbatim: 35 rows, or a dropped table).
        for cid in (2, 3, 4):
            got = await agent.call_tool(
                TOOL, {"sql": f"SELECT id FROM customers WHERE email = '{known[cid]['email']}'"}
            )
            assert rows(got) == [{"id": cid}]
            assert [v for v in RAW if v in seen(got)] == []

        # Inside a longer literal, and several tokens in one statement.
        like = await agent.call_tool(
            TOOL,
            {
                "sql": f"SELECT id FROM customers WHERE full_name LIKE '%{known[1]['full_name']}%' "
                f"OR (email = '{known[2]['email']}' AND full_name = '{known[2]['full_name']}') ORDER BY id"
            },
        )
        assert rows(like) == [{"id": 1}, {"id": 2}]
        count = await agent.call_tool(TOOL, {"sql": "SELECT count(*)::int AS n FROM customers"})
        assert rows(count) == [{"n": len(CUSTOMERS)}]


@pytest.mark.req("untokenize:sql-safe")
async def test_an_upstream_error_quoting_the_value_reaches_the_agent_tokenised(dbhub_config) -> None:
    """PostgreSQL quotes the value in its error and dbhub passes the error on: the agent sees the
    token again, not the name (verbatim splicing used to leak a fragment of it in a syntax error)."""
    async with serving(dbhub_config()) as (_gateway, url), Client(url, mode="legacy") as agent:
        known = await tokens_of(agent, [1])
        failed = await agent.call_tool(TOOL, {"sql": f"SELECT '{known[1]['full_name']}'::int AS n"})
        text = seen(failed)
        assert failed.is_error and "invalid input syntax for type integer" in text
        assert "Siobhan" not in text and "Connor" not in text


@pytest.mark.req("untokenize:sql-refuse")
async def test_a_token_outside_a_literal_is_refused_and_audited_as_denied(dbhub_config) -> None:
    async with serving(dbhub_config()) as (gateway, url), Client(url, mode="legacy") as agent:
        known = await tokens_of(agent, [2])
        token = known[2]["email"]
        with pytest.raises(MCPError) as refused:
            await agent.call_tool(TOOL, {"sql": f"SELECT id FROM customers WHERE email = {token}"})
        message = refused.value.message
        assert TOOL in message and "argument 'sql'" in message and token in message
        assert f"WHERE email = '{token}'" in message  # says how to write it
        assert [v for v in RAW if v in message] == []
        with gateway.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT outcome, detail, row_to_json(a)::text AS whole FROM audit_events a "
                    "WHERE kind = 'tool.call' AND tool = 'execute_sql' ORDER BY seq DESC LIMIT 1"
                )
            ).one()
    assert row.outcome == "denied"
    assert row.detail["error"] == "SubstitutionRefused"
    assert [v for v in RAW if v in row.whole] == []


@pytest.mark.req("untokenize:context")
async def test_the_policy_decides_the_context_of_an_argument(dbhub_config) -> None:
    """Declared raw in the policy, a token outside a literal is not refused by Veil: the policy, not
    the argument's name alone, decides (here the spliced e-mail makes the query fail upstream, which is why
    ``sql`` is the default for such arguments)."""
    raw_policy = POLICY + (
        "substitution:\n  - id: dbhub-raw\n    to: [dbhub__execute_sql]\n    args: [sql]\n    substitute: raw\n"
    )
    async with serving(dbhub_config(raw_policy)) as (_gateway, url), Client(url, mode="legacy") as agent:
        known = await tokens_of(agent, [5])
        got = await agent.call_tool(TOOL, {"sql": f"SELECT id FROM customers WHERE email = {known[5]['email']}"})
        assert got.is_error and "EXECUTION_ERROR" in got.content[0].text  # PostgreSQL's error, not Veil's
