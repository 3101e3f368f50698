"""The runner end to end: every method audited, refusals audited with their stage, the audit
intent durable before anything leaves, access to resources and prompts, answers to sampling and
elicitation untokenised. A real MCP client (both protocol eras) over Streamable HTTP, the demo
upstreams and a test upstream as real subprocesses, real Postgres and Presidio."""

from __future__ import annotations

import contextlib
import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import sqlalchemy as sa
from examples.upstreams import PYTHON
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError
from mcp_types import methods as sdk_methods

from proxy.harness import outbox, serving
from veil.audit import events as ev
from veil.compliance.queries import Period, incidents, unfinished
from veil.tokenizer import TOKEN_RE

# The SDK marks subscribe, setLevel and logging deprecated in 2026-07-28; handshake-era agents use them.
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

ASKER = Path(__file__).with_name("asker_server.py")
ADDRESS = "lena.fischer@example.org"


def mark(gateway: Any) -> int:
    with gateway.engine.connect() as conn:
        return conn.execute(sa.text("SELECT coalesce(max(seq), 0) FROM audit_events")).scalar_one()


def rows(gateway: Any, since: int, **where: str) -> list[Any]:
    clauses = " ".join(f"AND {k} = :{k}" for k in where)
    with gateway.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT seq, id, kind, outcome, principal, upstream, tool, decision, rule, untokenised, detail "
                f"FROM audit_events WHERE seq > :since {clauses} ORDER BY seq"
            ),
            {"since": since, **where},
        ).all()


def method_rows(gateway: Any, since: int, method: str) -> list[Any]:
    return [r for r in rows(gateway, since) if r.detail.get("method") == method and r.kind != "call.intent"]


# Methods of the SDK's client that a client of one protocol era cannot send, and why.
UNSENDABLE = {
    "legacy": {
        "server/discover": "2026-07-28 only: a handshake-era client never sends it",
        "subscriptions/listen": "2026-07-28 only: a handshake-era client never sends it",
    },
    "auto": {
        "initialize": "2026-07-28 has no handshake: the client discovers instead",
    },
}


def calls(client: Client) -> dict[str, Any]:
    """One call per client request method of the SDK."""
    summary = "crm://summary"
    prompt = types.PromptReference(type="ref/prompt", name="crm__draft_followup")
    return {
        "ping": lambda: client.send_ping(),
        "tools/list": lambda: client.list_tools(),
        "tools/call": lambda: client.call_tool("crm__ping", {}),
        "resources/list": lambda: client.list_resources(),
        "resources/templates/list": lambda: client.list_resource_templates(),
        "resources/read": lambda: client.read_resource(summary),
        "resources/subscribe": lambda: client.subscribe_resource(summary),
        "resources/unsubscribe": lambda: client.unsubscribe_resource(summary),
        "prompts/list": lambda: client.list_prompts(),
        "prompts/get": lambda: client.get_prompt("crm__draft_followup", {"customer_id": "C0001"}),
        "completion/complete": lambda: client.complete(prompt, {"name": "customer_id", "value": "C00"}),
        "logging/setLevel": lambda: client.set_logging_level("info"),
    }


@pytest.mark.req("runner:every-method-audited")
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_every_client_request_method_of_the_sdk_is_audited(make_config, mode: str) -> None:
    async with serving(make_config()) as (gateway, url):
        start = mark(gateway)
        async with Client(url, mode=mode, read_timeout_seconds=60) as client:
            table = calls(client)
            if mode == "auto":

                async def listen() -> None:
                    async with client.listen(tools_list_changed=True) as subscription:
                        async for _ in subscription:
                            break

                table["subscriptions/listen"] = listen
            for method, call in table.items():
                before = mark(gateway)
                with contextlib.suppress(MCPError):  # refused or unsupported upstream: still audited
                    await call()
                assert method_rows(gateway, before, method), f"no audit row for {method}"
            modern = client.protocol_version >= "2026"
            assert modern == (mode == "auto")  # both protocol eras are exercised
        sent = set(table) | {"initialize", "server/discover"} - set(UNSENDABLE[mode])
        # Every method the SDK defines is either sent and audited here, or listed with the reason.
        assert set(sdk_methods.SPEC_CLIENT_METHODS) == sent | set(UNSENDABLE[mode])
        for method in {"initialize", "server/discover"} - set(UNSENDABLE[mode]):
            if method == "server/discover" and not modern:
                continue
            assert method_rows(gateway, start, method), f"no audit row for {method}"
        # No row carries free text: refusals are class, code and stage.
        for r in rows(gateway, start):
            assert "message" not in r.detail


@pytest.mark.req("runner:refusals-audited")
async def test_refusals_at_every_stage_are_audited_with_stage_and_reason(make_config, tmp_path: Path) -> None:
    config = make_config(limits={"max_message_bytes": 2000})
    async with serving(config) as (gateway, url), Client(url, mode="legacy", read_timeout_seconds=60) as agent:
        got = await agent.call_tool("crm__get_customer", {"customer_id": "C0001"})
        ssn_token = got.structured_content["ssn"]
        cases = {
            ("admit", "InvalidArguments"): ("crm__add_note", {"customer_id": "C0001", "note": "x" * 5000}),
            ("admit", "ToolNotFound"): ("crm__no_such_tool", {}),
            ("admit", "ToolNotFound", "execute_code"): ("execute_code", {"code": "1"}),  # expose: direct
            ("untokenise", "FlowDenied"): ("mailer__send_email", {"to": ssn_token, "subject": "s", "body": "b"}),
            ("untokenise", "TokenError"): ("crm__get_customer", {"customer_id": "[PERSON_999]"}),
        }
        for key, (name, args) in cases.items():
            before = mark(gateway)
            with pytest.raises(MCPError):
                await agent.call_tool(name, args)
            refused = [r for r in rows(gateway, before) if r.kind != "call.intent"]
            assert len(refused) == 1, (key, refused)
            assert refused[0].detail["stage"] == key[0] and refused[0].detail["error"] == key[1], refused[0].detail
            assert isinstance(refused[0].detail["code"], int)
            assert not [r for r in rows(gateway, before) if r.kind == "call.intent"]  # nothing left Veil
    assert outbox(tmp_path / "outbox.jsonl") == []


DENY_ALL = textwrap.dedent(
    """
    metadata: {name: deny-all}
    access:
      - id: only-ping
        tools: [crm__ping]
        effect: allow
    """
)

READ_SUMMARY_ONLY = textwrap.dedent(
    """
    metadata: {name: summary-only}
    access:
      - id: tools
        tools: ["*"]
        effect: allow
      - id: summary
        resources: ["crm:crm://summary"]
        actions: [read]
        effect: allow
      - id: followups
        prompts: ["crm__draft_*"]
        actions: [get]
        effect: allow
    """
)


@pytest.mark.req("access:resources-prompts")
async def test_access_rules_cover_resources_prompts_completion_and_subscriptions(make_config, tmp_path) -> None:
    async with (
        serving(make_config(policy_text=DENY_ALL)) as (gateway, url),
        Client(url, mode="legacy", read_timeout_seconds=60) as agent,
    ):
        start = mark(gateway)
        with pytest.raises(MCPError) as denied:
            await agent.read_resource("crm://customers/C0001")
        assert denied.value.code == -32005
        assert (await agent.list_resources()).resources == []
        assert (await agent.list_resource_templates()).resource_templates == []
        assert (await agent.list_prompts()).prompts == []
        assert [t.name for t in (await agent.list_tools()).tools] == ["crm__ping"]  # no search_tools either
        refusals = [
            lambda: agent.call_tool("search_tools", {"query": "customer"}),
            lambda: agent.get_prompt("crm__draft_followup", {"customer_id": "C0001"}),
            lambda: agent.subscribe_resource("crm://summary"),
            lambda: agent.complete(
                types.PromptReference(type="ref/prompt", name="crm__draft_followup"),
                {"name": "customer_id", "value": "C"},
            ),
        ]
        for refused in refusals:
            with pytest.raises(MCPError) as err:
                await refused()
            assert err.value.code == -32005
        denials = [r for r in rows(gateway, start) if r.outcome == "denied"]
        assert [r.detail["stage"] for r in denials] == ["access"] * 5
        assert [(r.kind, r.tool) for r in denials if r.kind == "tools.list"] == [("tools.list", "search_tools")]
        assert {r.rule for r in denials} == {"default:deny"}
        listings = {"resources.list", "prompts.list", "tools.list"}
        assert not [r for r in rows(gateway, start) if r.kind == "call.intent" and r.detail["for"] not in listings]
    calls_log = tmp_path / "crm-calls.jsonl"
    assert not calls_log.exists() or "customer" not in calls_log.read_text()

    async with (
        serving(make_config(policy_text=READ_SUMMARY_ONLY)) as (gateway, url),
        Client(url, mode="legacy", read_timeout_seconds=60) as agent,
    ):
        listed = [str(r.uri) for r in (await agent.list_resources()).resources]
        assert listed == ["crm://summary"]
        assert (await agent.read_resource("crm://summary")).contents
        with pytest.raises(MCPError):
            await agent.read_resource("crm://customers/C0001")
        with pytest.raises(MCPError) as sub:
            await agent.subscribe_resource("crm://summary")  # read only: subscribe is another action
        assert sub.value.code == -32005
        assert [p.name for p in (await agent.list_prompts()).prompts] == ["crm__draft_followup"]
        got = await agent.get_prompt("crm__draft_followup", {"customer_id": "C0001"})
        assert TOKEN_RE.search(json.dumps(got.model_dump(mode="json")))


@pytest.mark.req("audit:intent-before-act")
async def test_nothing_is_sent_when_the_audit_intent_cannot_be_written(make_config, tmp_path: Path) -> None:
    async with serving(make_config()) as (gateway, url), Client(url, mode="legacy", read_timeout_seconds=60) as agent:
        got = await agent.call_tool("crm__get_customer", {"customer_id": "C0001"})
        email = got.structured_content["email"]
        start = mark(gateway)
        sent = await agent.call_tool("mailer__send_email", {"to": email, "subject": "hi", "body": "b"})
        assert not sent.is_error
        pair = rows(gateway, start)
        intent, outcome = pair[0], pair[1]
        assert (intent.kind, intent.outcome) == ("call.intent", "pending")
        assert intent.untokenised and intent.detail["method"] == "tools/call"
        assert (outcome.kind, outcome.detail["intent"]) == ("tool.call", str(intent.id))
        assert len(outbox(tmp_path / "outbox.jsonl")) == 1

        # The audit database refuses writes: nothing leaves for the mailer, the agent is told.
        with gateway.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE audit_chain_head RENAME TO audit_chain_head_off"))
        try:
            with pytest.raises(MCPError) as refused:
                await agent.call_tool("mailer__send_email", {"to": email, "subject": "again", "body": "b"})
        finally:
            with gateway.engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE audit_chain_head_off RENAME TO audit_chain_head"))
        assert refused.value.code == -32009  # AuditUnavailable
        assert len(outbox(tmp_path / "outbox.jsonl")) == 1  # the mail was NOT sent

        # An intent without an outcome (Veil stopped in between) shows as unfinished; finished ones do not.
        crashed = ev.AuditEvent(kind=ev.INTENT, outcome=ev.PENDING, principal="alice", detail={"method": "tools/call"})
        await gateway.record(crashed)
        with gateway.engine.connect() as conn:
            open_intents = {u["id"] for u in unfinished(conn, since=start)}
            now = datetime.now(UTC)
            reported = incidents(conn, Period(now - timedelta(hours=1), now + timedelta(hours=1)))["unfinished"]
        assert str(crashed.id) in open_intents and str(intent.id) not in open_intents
        assert str(crashed.id) in {u["id"] for u in reported}  # the report's incidents section lists it


def asker_config(make_config, tmp_path: Path) -> Any:
    upstreams = {
        "asker": {
            "command": PYTHON,
            "args": [str(ASKER)],
            "env": {"ASK_LOG": str(tmp_path / "asked.jsonl"), "ASK_ADDRESS": ADDRESS},
        }
    }
    return make_config(upstreams=upstreams)


class Agent:
    """An agent that answers sampling and elicitation with what it was shown (tokens)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.logs: list[Any] = []

    async def on_sampling(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        text = params.messages[0].content.text
        self.seen.append(text)
        token = TOKEN_RE.search(text).group(0)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"Dear {token}, thanks."), model="t"
        )

    async def on_elicitation(self, context: Any, params: Any) -> types.ElicitResult:
        self.seen.append(json.dumps(params.model_dump(mode="json", by_alias=True)))
        default = params.requested_schema["properties"]["email"]["default"]
        return types.ElicitResult(action="accept", content={"email": default})  # accepts the default

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params)

    async def on_roots(self, context: Any) -> types.ListRootsResult:
        token = next(TOKEN_RE.search(s).group(0) for s in self.seen if TOKEN_RE.search(s))
        return types.ListRootsResult(roots=[types.Root(uri=f"file:///mail/{token}", name="mail")])


@pytest.mark.req("relay:answers-untokenised")
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_sampling_and_elicitation_answers_are_untokenised_for_the_asking_upstream(
    make_config, tmp_path: Path, mode: str
) -> None:
    """Handshake-era agents get the upstream's questions as requests on the call in flight;
    2026-07-28 agents in an InputRequiredResult, answered on their retry of the call."""
    agent = Agent()
    async with serving(asker_config(make_config, tmp_path)) as (gateway, url):
        start = mark(gateway)
        async with Client(
            url,
            mode=mode,
            read_timeout_seconds=60,
            sampling_callback=agent.on_sampling,
            elicitation_callback=agent.on_elicitation,
            logging_callback=agent.on_log,
            list_roots_callback=agent.on_roots,
        ) as client:
            assert (client.protocol_version >= "2026") == (mode == "auto")
            assert not (await client.call_tool("asker__summarise", {"topic": "renewal"})).is_error
            assert not (await client.call_tool("asker__confirm", {"topic": "renewal"})).is_error
            assert not (await client.call_tool("asker__roots", {})).is_error
            assert (await client.get_prompt("asker__briefing", {"topic": "renewal"})).messages
            await client.call_tool("asker__chatty", {})
        relays = [r for r in rows(gateway, start, kind="notification.relay")]
    # The agent saw only tokens, the schema default included ...
    assert agent.seen and all(ADDRESS not in s for s in agent.seen)
    assert all(TOKEN_RE.search(s) for s in agent.seen)
    # ... and the asking upstream got the real value back, never a token.
    asked = [json.loads(line) for line in (tmp_path / "asked.jsonl").read_text().splitlines()]
    assert {a["kind"] for a in asked} == {"sampling", "elicitation", "roots"}
    for answer in asked:
        assert ADDRESS in answer["value"] and not TOKEN_RE.search(answer["value"]), answer
    # Each answer is audited as an outbound value to the asking upstream.
    answered = [
        r for r in relays if r.detail.get("method") in ("sampling/createMessage", "elicitation/create", "roots/list")
    ]
    assert len(answered) == 4 and all(r.outcome == "ok" for r in answered)  # the prompt's sampling too
    for r in answered:
        assert r.untokenised and all(u["destination"].startswith("asker__") for u in r.untokenised)
    if mode == "auto":  # each question came back in an InputRequiredResult, audited on the call's row
        rounds = [r for r in rows(gateway, start) if r.detail.get("input_required")]
        assert sorted((r.kind, k) for r in rounds for k in r.detail["input_required"]) == [
            ("prompt.get", "sampling-createMessage-1"),
            ("tool.call", "elicitation-create-1"),
            ("tool.call", "roots-list-1"),
            ("tool.call", "sampling-createMessage-1"),
        ]
    if mode == "legacy":
        logged = [r for r in relays if r.detail.get("method") == "notifications/message"]
        assert logged and logged[0].detail["delivery"] == "delivered"
        assert agent.logs and ADDRESS not in json.dumps([p.model_dump(mode="json") for p in agent.logs])


@pytest.mark.req("relay:answers-untokenised")
async def test_a_2026_retry_must_name_a_call_of_its_own_session(make_config, tmp_path: Path) -> None:
    """request_state is an unguessable id of a call waiting in this session: an unknown one is
    refused (audited at the exchange), nothing reaches the upstream."""
    async with (
        serving(asker_config(make_config, tmp_path)) as (gateway, url),
        Client(url, mode="auto", read_timeout_seconds=60) as client,
    ):
        start = mark(gateway)
        with pytest.raises(MCPError) as refused:
            await client.session.call_tool(
                "asker__summarise", {"topic": "renewal"}, request_state="forged", input_responses={}
            )
        assert "request_state names no call" in refused.value.message
        (row,) = [r for r in rows(gateway, start, kind="tool.call")]
        assert (row.outcome, row.detail["stage"], row.detail["error"]) == ("error", "exchange", "InvalidArguments")
    assert not (tmp_path / "asked.jsonl").exists()


@pytest.mark.req("listings:interface-tokenised")
async def test_listings_pass_the_tokenizer_and_stubs_hold_no_raw_values(make_config, tmp_path: Path) -> None:
    """A hostile upstream puts an address and a phone number in titles, descriptions, schema
    defaults and examples, resource names and prompt arguments: none of it reaches the agent or
    the generated servers/ stubs; names stay usable."""
    config = asker_config(make_config, tmp_path).model_copy(update={"expose": "both"})
    async with serving(config) as (_gateway, url), Client(url, mode="legacy", read_timeout_seconds=60) as agent:
        listed = {
            "tools": await agent.list_tools(),
            "resources": await agent.list_resources(),
            "templates": await agent.list_resource_templates(),
            "prompts": await agent.list_prompts(),
        }
        stubs = [str(r.uri) for r in listed["resources"].resources if str(r.uri).startswith("veil://servers/")]
        assert stubs
        stub_text = [await agent.read_resource(uri) for uri in stubs]
        found = await agent.call_tool(
            "search_tools", {"query": "account", "detail": "full"}
        )  # search_tools shows the same tokenised schemas
    text = json.dumps(
        [v.model_dump(mode="json", by_alias=True) for v in [*listed.values(), *stub_text, found]], ensure_ascii=False
    )
    assert ADDRESS not in text and "212 555 0134" not in text
    assert TOKEN_RE.search(text)
    names = {t.name for t in listed["tools"].tools}
    assert {"asker__lookup", "asker__record_as_text"} <= names
    assert sorted(p.name for p in listed["prompts"].prompts) == ["asker__briefing", "asker__write_to"]


def test_result_value_parses_json_text_for_sandbox_code() -> None:
    from veil.proxy.code_mode import result_value

    def text(t: str) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text=t)])

    assert result_value(text('{"email": "[EMAIL_ADDRESS_1]", "visits": 3}')) == {
        "email": "[EMAIL_ADDRESS_1]",
        "visits": 3,
    }
    assert result_value(text("[1, 2]")) == [1, 2]
    assert result_value(text("{not json")) == "{not json"
    assert result_value(text("plain words")) == "plain words"
    wrapped = types.CallToolResult(content=[], structured_content={"result": '{"a": 1}'})
    assert result_value(wrapped) == {"a": 1}


@pytest.mark.req("relay:logs-between-calls")
async def test_a_log_line_between_calls_is_queued_and_delivered_with_the_next_request(
    make_config, tmp_path: Path
) -> None:
    import anyio

    agent = Agent()
    async with serving(asker_config(make_config, tmp_path)) as (gateway, url):
        start = mark(gateway)
        async with Client(url, mode="legacy", read_timeout_seconds=60, logging_callback=agent.on_log) as client:
            assert (await client.call_tool("asker__log_later", {})).content[0].text == "scheduled"
            with anyio.fail_after(30):  # waits for the upstream's line to reach Veil, bounded
                while not [r for r in rows(gateway, start) if r.detail.get("method") == "notifications/message"]:
                    await anyio.sleep(0.05)
            (queued,) = [r for r in rows(gateway, start) if r.detail.get("method") == "notifications/message"]
            assert queued.detail["delivery"] == "queued" and queued.outcome == "ok"
            assert agent.logs == []
            await client.send_ping()  # the next request carries it
            with anyio.fail_after(30):
                while not agent.logs:
                    await anyio.sleep(0.05)
    shown = json.dumps([p.model_dump(mode="json") for p in agent.logs])
    assert "later for" in shown and ADDRESS not in shown and TOKEN_RE.search(shown)


@pytest.mark.req("relay:notifications-audited")
async def test_progress_and_agent_notifications_pass_the_runner_and_are_audited(make_config, tmp_path: Path) -> None:
    """Upstream progress reaches the agent tokenised, before the result, one audited flow each;
    the agent's own notifications (initialized, cancelled, roots/list_changed) are audited and
    roots/list_changed reaches the upstream."""
    import anyio

    progress: list[tuple[float, float | None, str | None]] = []
    got_progress = anyio.Event()

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))
        got_progress.set()

    async def wait_for(gateway: Any, since: int, method: str, count: int = 1) -> list[Any]:
        with anyio.fail_after(30):  # notifications are answered 202 before they are handled
            while len(found := [r for r in rows(gateway, since) if r.detail.get("method") == method]) < count:
                await anyio.sleep(0.05)
        return found

    async with serving(asker_config(make_config, tmp_path)) as (gateway, url):
        start = mark(gateway)
        async with Client(url, mode="legacy", read_timeout_seconds=60) as client:
            (initialized,) = await wait_for(gateway, start, "notifications/initialized")
            assert (initialized.kind, initialized.outcome) == ("notification.agent", "ok")

            before = mark(gateway)
            done = await client.call_tool("asker__slow", {}, progress_callback=on_progress)
            assert not done.is_error
            assert [(p[0], p[1]) for p in progress] == [(1, 2), (2, 2)]  # both before the result
            shown = json.dumps(progress)
            assert ADDRESS not in shown and TOKEN_RE.search(shown)
            relayed = [r for r in rows(gateway, before) if r.detail.get("method") == "notifications/progress"]
            assert [(r.kind, r.outcome, r.upstream, r.detail["delivery"]) for r in relayed] == [
                ("notification.relay", "ok", "asker", "delivered")
            ] * 2
            (call,) = [r for r in rows(gateway, before) if r.kind == "tool.call"]
            assert all(r.seq < call.seq for r in relayed)  # relayed before the call's outcome

            # The agent gives up on a call: its cancellation is audited (the SDK cancels upstream).
            before = mark(gateway)
            progress.clear()
            got_progress = anyio.Event()
            with anyio.move_on_after(30) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: client.call_tool("asker__slow", {"hold": 60}, progress_callback=on_progress))
                    await got_progress.wait()
                    tg.cancel_scope.cancel()
            assert not scope.cancelled_caught
            (cancelled,) = await wait_for(gateway, before, "notifications/cancelled")
            assert (cancelled.kind, cancelled.outcome) == ("notification.agent", "ok")

            # The agent's roots changed: audited (intent first: it leaves Veil) and told to the upstream.
            before = mark(gateway)
            await client.send_roots_list_changed()
            (changed,) = [
                r
                for r in await wait_for(gateway, before, "notifications/roots/list_changed", 2)
                if r.kind != "call.intent"
            ]
            assert (changed.kind, changed.outcome, changed.detail["relayed"]) == ("notification.agent", "ok", ["asker"])
        with anyio.fail_after(30):
            while "roots_changed" not in (tmp_path / "asked.jsonl").read_text():
                await anyio.sleep(0.05)
        for r in rows(gateway, start):
            assert ADDRESS not in json.dumps(r.detail) and "message" not in r.detail


@pytest.mark.req("tokenize:roundtrip")
async def test_a_token_percent_encoded_in_a_resource_uri_reaches_the_upstream_as_the_value(
    make_config, tmp_path: Path
) -> None:
    """RFC 6570 expansion writes a token's brackets as %5B and %5D: still a token, and its value is
    percent-encoded, so the upstream decodes exactly the value; a literal token works as before."""
    async with (
        serving(asker_config(make_config, tmp_path)) as (gateway, url),
        Client(url, mode="legacy", read_timeout_seconds=60) as agent,
    ):
        looked_up = await agent.call_tool("asker__lookup", {})
        token = TOKEN_RE.search(json.dumps(looked_up.model_dump(mode="json"))).group(0)
        start = mark(gateway)
        encoded = token.replace("[", "%5B").replace("]", "%5D")
        for uri in (f"asker://accounts/{encoded}", f"asker://accounts/{token}"):
            read = await agent.read_resource(uri)
            assert read.contents[0].text == token  # the upstream's answer, tokenised again
        reads = [r for r in rows(gateway, start, kind="resource.read")]
        assert [bool(r.untokenised) for r in reads] == [True, True]
        assert [r.detail.get("uri_encoded_tokens", False) for r in reads] == [True, False]
    received = [json.loads(line)["value"] for line in (tmp_path / "asked.jsonl").read_text().splitlines()]
    assert received == [ADDRESS, ADDRESS]
