"""End to end through the gateway: a real MCP client over Streamable HTTP, real upstream
subprocesses, real Presidio and Postgres."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
import sqlalchemy as sa
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from examples.crm_data import generate_customers
from proxy.harness import outbox, serving
from veil.tokenizer import TOKEN_RE

pytestmark = pytest.mark.anyio

CUSTOMERS = generate_customers(40, 7)


def raw_values(customers: list[dict[str, Any]]) -> set[str]:
    """The values that must never reach the agent: full names, e-mails, phones, SSNs, cards, streets."""
    values: set[str] = set()
    for c in customers:
        values |= {c["full_name"], c["email"], c["phone"], c["ssn"], c["card_number"], c["address"]["street"]}
    return values


def leaks(text: str, customers: list[dict[str, Any]] = CUSTOMERS) -> list[str]:
    return sorted(v for v in raw_values(customers) if v in text)


class Recorder:
    """Everything the agent side receives, as text, from every vector."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def add(self, value: Any) -> None:
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
        self.seen.append(json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value)

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.add(params)

    async def on_message(self, message: Any) -> None:
        self.add(message if not isinstance(message, Exception) else str(message))

    async def on_sampling(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.add(params)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="A loyal customer."), model="test"
        )

    async def on_elicitation(self, context: Any, params: Any) -> types.ElicitResult:
        self.add(params)
        return types.ElicitResult(action="accept", content={"confirmed": True, "comment": "ok"})

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.add({"progress": progress, "message": message})

    def client(self, url: str, **kw: Any) -> Client:
        return Client(
            url,
            mode=kw.pop("mode", "legacy"),
            logging_callback=self.on_log,
            message_handler=self.on_message,
            sampling_callback=self.on_sampling,
            elicitation_callback=self.on_elicitation,
            read_timeout_seconds=60,
            **kw,
        )


@pytest.mark.req("invariant:no-raw-pii-to-agent")
async def test_no_raw_value_reaches_the_agent_on_any_vector(make_config, tmp_path: Path) -> None:
    rec = Recorder()
    async with serving(make_config()) as (_gateway, url), rec.client(url) as agent:
        tools = await agent.list_tools()
        rec.add(tools)
        names = {t.name for t in tools.tools}
        assert {"search_tools", "crm__find_customers", "mailer__send_email", "tickets__create_ticket"} <= names

        rec.add(await agent.call_tool("crm__export_customers", {}))
        rec.add(await agent.call_tool("crm__get_customer", {"customer_id": "C0003"}))
        rec.add(await agent.call_tool("crm__locked_account", {"customer_id": "C0004"}))
        rec.add(await agent.call_tool("crm__sync_customers", {"count": 3}, progress_callback=rec.on_progress))
        rec.add(await agent.call_tool("crm__summarize_with_model", {"customer_id": "C0005"}))
        rec.add(await agent.call_tool("crm__confirm_contact", {"customer_id": "C0006"}))
        rec.add(await agent.read_resource("crm://customers/C0007"))
        rec.add(await agent.read_resource("crm://summary"))
        rec.add(await agent.list_resource_templates())
        rec.add(await agent.get_prompt("crm__draft_followup", {"customer_id": "C0008"}))
        rec.add(await agent.call_tool("search_tools", {"query": "customer", "detail": "full"}))
        before = len(rec.seen)
        await agent.call_tool("crm__notify_change", {})
        with anyio.fail_after(10):  # the upstream announces it on its change stream; Veil relays it
            while not any("notifications/tools/list_changed" in s for s in rec.seen[before:]):
                await anyio.sleep(0.05)
        assert "crm__crm_extra_report" in {t.name for t in (await agent.list_tools()).tools}

    everything = "\n".join(rec.seen)
    assert leaks(everything) == []
    # The vectors really carried data: tokens of every kind stand where values were.
    kinds = {m.group(1) for m in TOKEN_RE.finditer(everything)}
    assert {"PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN", "CREDIT_CARD"} <= kinds
    # Sampling, elicitation, log and progress messages were relayed (tokenised), not dropped.
    assert any('"maxTokens"' in s for s in rec.seen), "the sampling request was not relayed"
    assert any("requestedSchema" in s for s in rec.seen), "the elicitation request was not relayed"
    assert any('"progress"' in s and "Synced" in s for s in rec.seen), "progress was not relayed"
    assert any("Syncing" in s for s in rec.seen), "log messages were not relayed"


@pytest.mark.req("tokenize:roundtrip")
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_tokens_become_real_values_only_at_the_upstream(make_config, tmp_path: Path, mode: str) -> None:
    async with serving(make_config()) as (_gateway, url), Client(url, mode=mode) as agent:
        got = await agent.call_tool("crm__get_customer", {"customer_id": "C0001"})
        record = got.structured_content
        assert TOKEN_RE.fullmatch(record["email"]) and TOKEN_RE.fullmatch(record["full_name"])
        body = f"Dear {record['full_name']}, your order shipped."  # a token inside a longer string
        sent = await agent.call_tool("mailer__send_email", {"to": record["email"], "subject": "Order", "body": body})
        assert not sent.is_error
        assert leaks(json.dumps(sent.model_dump(mode="json"))) == []

    mails = outbox(tmp_path / "outbox.jsonl")
    assert mails[-1]["arguments"]["to"] == CUSTOMERS[0]["email"]
    assert mails[-1]["arguments"]["body"] == f"Dear {CUSTOMERS[0]['full_name']}, your order shipped."


@pytest.mark.req("flow:denied")
async def test_denied_flow_names_rule_and_type_sends_nothing_and_is_audited(make_config, tmp_path: Path) -> None:
    async with serving(make_config()) as (gateway, url), Client(url, mode="legacy") as agent:
        record = (await agent.call_tool("crm__get_customer", {"customer_id": "C0002"})).structured_content
        with pytest.raises(MCPError) as refused:
            await agent.call_tool(
                "mailer__send_email", {"to": record["email"], "subject": "x", "body": f"SSN {record['ssn']}"}
            )
        assert "no-ssn-outside-crm" in refused.value.message and "US_SSN" in refused.value.message
        # Unknown tokens are refused too, never passed on raw.
        with pytest.raises(MCPError) as unknown:
            await agent.call_tool("mailer__send_email", {"to": "[EMAIL_ADDRESS_999]", "subject": "x", "body": "y"})
        assert "[EMAIL_ADDRESS_999]" in unknown.value.message
        with gateway.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT outcome, rule, decision FROM audit_events WHERE kind = 'tool.call' "
                    "AND tool = 'send_email' AND session_id IS NOT NULL ORDER BY seq"
                )
            ).all()
    assert outbox(tmp_path / "outbox.jsonl") == []
    assert [r.outcome for r in rows][-2:] == ["denied", "denied"]
    assert rows[-2].rule == "flows[1]:no-ssn-outside-crm" and rows[-2].decision == "deny"


@pytest.mark.req("tokens:scope")
async def test_tokens_stable_within_scope_and_separate_across_scopes(make_config) -> None:
    async def email_token(url: str) -> str:
        async with Client(url, mode="legacy") as agent:
            got = await agent.call_tool("crm__get_customer", {"customer_id": "C0009"})
            return got.structured_content["email"]

    async with serving(make_config(scope="principal")) as (_, url):
        first, second = await email_token(url), await email_token(url)
    assert TOKEN_RE.fullmatch(first) and first == second  # two MCP sessions, one principal scope

    async with serving(make_config(scope="session")) as (_, url):
        token = await email_token(url)
        async with Client(url, mode="legacy") as other_session:
            # A token minted in another session's scope does not resolve here: refused, never passed on.
            with pytest.raises(MCPError) as refused:
                await other_session.call_tool("mailer__send_email", {"to": token, "subject": "s", "body": "b"})
    assert token in refused.value.message


async def test_invalid_arguments_and_unknown_tools_get_clear_errors(make_config) -> None:
    config = make_config(limits={"max_message_bytes": 10_000})
    async with serving(config) as (_gateway, url), Client(url, mode="legacy") as agent:
        with pytest.raises(MCPError) as missing:
            await agent.call_tool("crm__get_customer", {})
        assert "crm__get_customer" in missing.value.message and "customer_id" in missing.value.message
        with pytest.raises(MCPError) as unknown:
            await agent.call_tool("crm__no_such_tool", {})
        assert "crm__no_such_tool" in unknown.value.message
        with pytest.raises(MCPError) as no_upstream:
            await agent.call_tool("nowhere__tool", {})
        assert "nowhere" in no_upstream.value.message
        with pytest.raises(MCPError) as oversized:
            await agent.call_tool("crm__add_note", {"customer_id": "C0001", "note": "x" * 20_000})
        assert "max_message_bytes" in oversized.value.message
        # The gateway keeps serving after each refusal.
        assert (await agent.call_tool("crm__ping", {})).structured_content == {"ok": True}


async def test_search_tools_levels_of_detail(make_config) -> None:
    async with serving(make_config()) as (_, url), Client(url, mode="legacy") as agent:
        names = (await agent.call_tool("search_tools", {"query": "email", "detail": "name"})).structured_content
        assert names["tools"][0] == {"name": "mailer__send_email"}
        full = (await agent.call_tool("search_tools", {"query": "customer", "detail": "full"})).structured_content
        assert all("inputSchema" in t for t in full["tools"]) and len(full["tools"]) >= 3


async def test_unreachable_upstream_is_reported_and_others_keep_working(make_config, tmp_path: Path) -> None:
    config = make_config()
    upstreams = dict(config.upstreams)
    upstreams["ghost"] = upstreams["crm"].model_copy(update={"command": str(tmp_path / "missing-binary")})
    async with (
        serving(config.model_copy(update={"upstreams": upstreams})) as (_, url),
        Client(url, mode="legacy") as agent,
    ):
        names = {t.name for t in (await agent.list_tools()).tools}
        assert "crm__ping" in names and not any(n.startswith("ghost__") for n in names)
        with pytest.raises(MCPError) as down:
            await agent.call_tool("ghost__ping", {})
        assert "ghost" in down.value.message and "unreachable" in down.value.message
        assert (await agent.call_tool("crm__ping", {})).structured_content == {"ok": True}


async def test_upstream_that_dies_is_restarted_on_the_next_call(make_config) -> None:
    async with serving(make_config()) as (gateway, url), Client(url, mode="legacy") as agent:
        assert (await agent.call_tool("crm__ping", {})).structured_content == {"ok": True}
        session = next(iter(gateway.sessions.values()))
        conn = await session.connection("crm")
        client = await conn.client()
        # Kill the upstream process behind the session's connection.
        import os
        import signal

        pids = [p.pid for p in _children() if "crm_server.py" in " ".join(p.cmdline())]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        del client
        with pytest.raises(MCPError) as failed:
            await agent.call_tool("crm__ping", {})
        assert "crm" in failed.value.message and "restarted" in failed.value.message
        assert (await agent.call_tool("crm__ping", {})).structured_content == {"ok": True}


def _children() -> list[Any]:
    import psutil

    return psutil.Process().children(recursive=True)


@pytest.mark.req("audit:fail-closed")
async def test_a_call_whose_audit_event_cannot_be_written_fails_closed(make_config, tmp_path: Path) -> None:
    async with serving(make_config()) as (gateway, url), Client(url, mode="legacy") as agent:
        assert (await agent.call_tool("crm__ping", {})).structured_content == {"ok": True}
        with gateway.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE audit_events ADD CONSTRAINT veil_test_block CHECK (false) NOT VALID"))
        try:
            with pytest.raises(MCPError) as failed:
                await agent.call_tool("crm__get_customer", {"customer_id": "C0001"})
            assert "audit" in failed.value.message.lower()
        finally:
            with gateway.engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE audit_events DROP CONSTRAINT veil_test_block"))
        assert (await agent.call_tool("crm__ping", {})).structured_content == {"ok": True}


@pytest.mark.req("audit:no-raw-pii")
async def test_audit_rows_and_logs_hold_no_raw_values(make_config, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    async with serving(make_config()) as (gateway, url), Client(url, mode="legacy") as agent:
        record = (await agent.call_tool("crm__get_customer", {"customer_id": "C0011"})).structured_content
        await agent.call_tool("mailer__send_email", {"to": record["email"], "subject": "hi", "body": "hello"})
        locked = await agent.call_tool("crm__locked_account", {"customer_id": "C0011"})
        assert locked.is_error
        with gateway.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT row_to_json(a)::text FROM audit_events a")).scalars().all()
    dump = "\n".join(rows)
    assert leaks(dump) == [] and leaks(caplog.text) == []
    assert re.search(r'"entities": ?\{[^}]*"EMAIL_ADDRESS"', dump)


async def test_ending_the_mcp_session_closes_the_agent_session_and_its_upstreams(make_config) -> None:
    import anyio

    async with serving(make_config()) as (gateway, url):
        async with Client(url, mode="legacy") as agent:
            await agent.call_tool("crm__ping", {})
            (session,) = gateway.sessions.values()
        # The transport's teardown runs just after the client's DELETE: the session leaves the
        # table first, and its close is audited just after. Wait (bounded) for both.
        closed = 0
        with anyio.fail_after(10):
            while gateway.sessions or closed == 0 or not session.closed:
                with gateway.engine.connect() as conn:
                    closed = conn.execute(
                        sa.text("SELECT count(*) FROM audit_events WHERE kind = 'session.close' AND session_id = :s"),
                        {"s": session.id},
                    ).scalar()
                if gateway.sessions or closed == 0 or not session.closed:
                    await anyio.sleep(0.05)
    assert closed == 1 and session.closed
