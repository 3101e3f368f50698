"""execute_code end to end through the gateway: a real MCP client over Streamable HTTP, the real
firejail sandbox, real upstream subprocesses, real Presidio and Postgres.

The code in the sandbox is an agent too: it must see only tokens, its tool calls take the same
policy path as direct calls (and are audited as such), and what it prints or returns is tokenised
again before the agent reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import sqlalchemy as sa
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from examples.crm_data import generate_customers
from proxy.conftest import TEST_POLICY
from proxy.harness import outbox, serving
from veil.tokenizer import TOKEN_RE

pytestmark = pytest.mark.anyio

CUSTOMERS = generate_customers(40, 7)


def leaks(text: str) -> list[str]:
    """Raw values of the demo CRM that appear in ``text``."""
    values: set[str] = set()
    for c in CUSTOMERS:
        values |= {c["full_name"], c["email"], c["phone"], c["ssn"], c["card_number"], c["address"]["street"]}
    return sorted(v for v in values if v in text)


def as_text(result: types.CallToolResult) -> str:
    return json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True), ensure_ascii=False)


def agent(url: str) -> Client:
    return Client(url, mode="legacy", read_timeout_seconds=90)


async def execute(client: Client, code: str, **kw: Any) -> types.CallToolResult:
    return await client.call_tool("execute_code", {"code": code, **kw})


def audit_rows(gateway: Any, kind: str) -> list[Any]:
    """``kind`` events of this gateway's open sessions (the test database is shared by the run)."""
    with gateway.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT kind, outcome, upstream, tool, rule, decision, detail, args_digest, session_id "
                "FROM audit_events WHERE kind = :kind AND session_id = ANY(:sessions) ORDER BY seq"
            ),
            {"kind": kind, "sessions": list(gateway.sessions)},
        ).all()


@pytest.mark.req("sandbox:data-path")
@pytest.mark.req("tokenize:roundtrip")
@pytest.mark.req("flow:denied")
async def test_code_sees_tokens_and_its_calls_take_the_policy_path(make_config, tmp_path: Path) -> None:
    mails = tmp_path / "outbox.jsonl"
    async with serving(make_config(expose="both")) as (gateway, url), agent(url) as client:
        got = await execute(
            client,
            "from servers import crm\n"
            "c = crm.get_customer(customer_id='C0001')\n"
            "print(type(c).__name__, c['email'], c['full_name'], c['ssn'])\n"
            "c",
        )
        assert not got.is_error, as_text(got)
        seen = as_text(got)
        assert leaks(seen) == []
        # The code received a dict whose personal fields are tokens (printed from inside the sandbox).
        first_line = got.structured_content["stdout"].splitlines()[0].split(" ")
        assert first_line[0] == "dict"
        assert all(TOKEN_RE.fullmatch(v) for v in first_line[1:]), first_line
        assert {"EMAIL_ADDRESS", "PERSON", "US_SSN"} <= {m.group(1) for m in TOKEN_RE.finditer(seen)}

        # Allowed flow: tokens passed on in an f-string reach the mailer as the real values.
        # ``c`` is still defined: state persists between executions in one MCP session.
        sent = await execute(
            client,
            "from servers import mailer\n"
            "mailer.send_email(to=c['email'], subject='Order', body=f\"Dear {c['full_name']}, it shipped.\")",
        )
        assert not sent.is_error, as_text(sent)
        assert leaks(as_text(sent)) == []
        assert [m["arguments"] for m in outbox(mails)] == [
            {"to": CUSTOMERS[0]["email"], "subject": "Order", "body": f"Dear {CUSTOMERS[0]['full_name']}, it shipped."}
        ]

        # Denied flow: a Python exception inside the code, naming the rule; nothing is sent.
        denied = await execute(
            client,
            "from servers import mailer\n"
            "try:\n"
            "    mailer.send_email(to=c['email'], subject='x', body=f\"SSN {c['ssn']}\")\n"
            "    caught = 'nothing raised'\n"
            "except Exception as exc:\n"
            "    caught = 'caught ' + type(exc).__name__ + ': ' + str(exc)\n"
            "print(caught)",
        )
        assert not denied.is_error, as_text(denied)
        stdout = denied.structured_content["stdout"]
        assert stdout.startswith("caught ") and "no-ssn-outside-crm" in stdout, stdout
        assert leaks(as_text(denied)) == []
        assert len(outbox(mails)) == 1

        calls = audit_rows(gateway, "tool.call")
        executions = audit_rows(gateway, "code.execute")

    # Every tool call the code made is a tool.call event marked via=code, with the flow decision.
    assert [(r.upstream, r.tool, r.outcome) for r in calls] == [
        ("crm", "get_customer", "ok"),
        ("mailer", "send_email", "ok"),
        ("mailer", "send_email", "denied"),
    ]
    assert all(r.detail["via"] == "code" for r in calls)
    assert calls[1].rule == "flows[0]:mail-to-customers" and calls[1].decision == "allow"
    assert calls[2].rule == "flows[1]:no-ssn-outside-crm" and calls[2].decision == "deny"
    # Each execution is one code.execute event with the code's digest and its outcome.
    assert [r.outcome for r in executions] == ["ok", "ok", "ok"]
    assert [r.detail["tool_calls"] for r in executions] == [1, 1, 1]
    for r in executions:
        assert len(r.detail["code_sha256"]) == 64 and r.args_digest == r.detail["code_sha256"]
    assert len({r.detail["code_sha256"] for r in executions}) == 3
    assert len({r.session_id for r in [*calls, *executions]}) == 1


@pytest.mark.req("sandbox:state")
@pytest.mark.req("sandbox:isolation")
async def test_expose_code_offers_code_tools_and_stubs_keeps_state_and_survives_timeouts(make_config) -> None:
    async with serving(make_config(expose="code")) as (gateway, url), agent(url) as client:
        # Only Veil's own tools are listed; the upstream APIs are the sandbox's stub modules.
        tools = await client.list_tools()
        assert sorted(t.name for t in tools.tools) == ["execute_code", "search_tools"]

        listed = await client.list_resources()
        stubs = sorted(str(r.uri) for r in listed.resources if str(r.uri).startswith("veil://servers/"))
        stub_uri = next(u for u in stubs if u.endswith("/crm/get_customer.py"))
        index_uri = next(u for u in stubs if u.endswith("INDEX.md"))
        source = (await client.read_resource(stub_uri)).contents[0].text
        assert "def get_customer" in source and "customer_id" in source
        index = (await client.read_resource(index_uri)).contents[0].text
        assert "mailer" in index and "send_email" in index
        with pytest.raises(MCPError) as missing:
            await client.read_resource("veil://servers/servers/nope/none.py")
        assert "veil://servers/servers/nope/none.py" in missing.value.message

        # Interpreter state persists between executions in one MCP session; reset clears it.
        assert not (await execute(client, "counter = 41")).is_error
        kept = await execute(client, "counter + 1")
        assert not kept.is_error and kept.structured_content["result"] == "42"
        cleared = await execute(client, "'counter' in globals()", reset=True)
        assert not cleared.is_error and cleared.structured_content["result"] == "False"

        # A runaway loop is stopped and reported in plain words.
        stuck = await execute(client, "while True: pass", timeout_s=1)
        assert stuck.is_error and stuck.structured_content["outcome"] == "timeout"
        text = stuck.content[0].text
        assert "did not finish within 1 s" in text and "stopped" in text, text

        # The gateway and the sandbox still answer afterwards.
        after = await execute(client, "from servers import crm\ncrm.ping()")
        assert not after.is_error, as_text(after)
        assert after.structured_content["result"] == "{'ok': True}"
        executions = audit_rows(gateway, "code.execute")
    assert [r.outcome for r in executions] == ["ok", "ok", "ok", "timeout", "ok"]
    assert [r.detail["reset"] for r in executions] == [False, False, True, False, False]


NO_CODE_FOR_SUPPORT = TEST_POLICY.format(scope="session").replace(
    "access:\n",
    "access:\n  - id: support-no-code\n    tools: [veil__execute_code]\n    roles: [support]\n    effect: deny\n",
)


@pytest.mark.req("policy:access")
async def test_access_rule_denying_execute_code_hides_and_refuses_it(make_config, tmp_path: Path) -> None:
    assert "support-no-code" in NO_CODE_FOR_SUPPORT
    config = make_config(expose="both", policy_text=NO_CODE_FOR_SUPPORT)
    async with serving(config) as (gateway, url), agent(url) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "execute_code" not in names
        assert {"search_tools", "crm__get_customer"} <= names  # the rest is still offered

        with pytest.raises(MCPError) as refused:
            await execute(client, "from servers import crm\ncrm.ping()")
        assert "support-no-code" in refused.value.message and "execute_code" in refused.value.message
        # Direct calls are unaffected by the rule on execute_code.
        assert (await client.call_tool("crm__ping", {})).structured_content == {"ok": True}
        executions = audit_rows(gateway, "code.execute")
        calls = audit_rows(gateway, "tool.call")
    assert [(r.outcome, r.decision) for r in executions] == [("denied", "deny")]
    assert "support-no-code" in executions[0].rule
    assert [r.detail["via"] for r in calls] == ["direct"]  # nothing ran from the refused code
    assert not (tmp_path / "crm-calls.jsonl").exists() or all(
        json.loads(line)["tool"] == "ping" for line in (tmp_path / "crm-calls.jsonl").read_text().splitlines()
    )


@pytest.mark.req("sandbox:json-text-results")
async def test_a_json_text_result_reaches_sandbox_code_as_python_objects(make_config, tmp_path: Path) -> None:
    from proxy.test_runner import ADDRESS, asker_config

    config = asker_config(make_config, tmp_path).model_copy(update={"expose": "both"})
    async with serving(config) as (_gateway, url), agent(url) as client:
        code = "from servers import asker\nr = asker.record_as_text()\nprint(r['visits'], r['email'])\ntype(r).__name__"
        result = await execute(client, code)
    out = as_text(result)
    assert not result.is_error, out
    assert "3 [EMAIL_ADDRESS_" in out and "dict" in out
    assert ADDRESS not in out
