"""The demo "crm" upstream, driven by a real MCP client over stdio and Streamable HTTP.

Both protocol eras are covered: ``mode="auto"`` negotiates 2026-07-28 (sampling/elicitation ride
``InputRequiredResult`` rounds, logs need a per-request opt-in) and ``mode="legacy"`` the
initialize handshake (standalone server-to-client requests and notifications).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from examples.crm_data import generate_customers, ground_truth_values
from examples.upstreams import crm_stdio_params, start_http_server

pytestmark = pytest.mark.anyio

CUSTOMERS = generate_customers()
BY_ID = {c["id"]: c for c in CUSTOMERS}
ALL_PII = {value for values in ground_truth_values(CUSTOMERS).values() for value in values}

BOTH_TRANSPORTS = [("stdio", "auto"), ("http", "legacy")]
ALL_COMBINATIONS = [("stdio", "auto"), ("stdio", "legacy"), ("http", "auto"), ("http", "legacy")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def crm_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One HTTP crm server for the module (tests use distinct ids/notes, so sharing is safe)."""
    log = tmp_path_factory.mktemp("crm-http") / "calls.jsonl"
    with start_http_server("crm", {"CRM_CALL_LOG": str(log)}) as (url, _process):
        yield url, log


@pytest.fixture
def crm(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, Path]:
    """(what to pass to ``Client``, the server's call log) for the requested transport."""
    transport = request.param
    if transport == "http":
        return request.getfixturevalue("crm_http")
    log = tmp_path / "calls.jsonl"
    return crm_stdio_params(env={"CRM_CALL_LOG": str(log)}), log


@asynccontextmanager
async def connect(target: Any, mode: str, **kwargs: Any) -> AsyncIterator[Client]:
    with anyio.fail_after(60):
        async with Client(target, mode=mode, **kwargs) as client:
            yield client


def calls(log: Path, tool: str) -> list[dict]:
    if not log.exists():
        return []
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    return [line["arguments"] for line in lines if line["tool"] == tool]


def text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.parametrize(("crm", "mode"), BOTH_TRANSPORTS, indirect=["crm"])
async def test_tools_return_structured_records(crm: tuple[Any, Path], mode: str) -> None:
    target, log = crm
    async with connect(target, mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {
            "find_customers",
            "get_customer",
            "export_customers",
            "add_note",
            "ping",
            "sync_customers",
            "summarize_with_model",
            "confirm_contact",
            "locked_account",
            "notify_change",
        } <= set(tools)
        assert set(tools["find_customers"].input_schema["properties"]) == {"segment", "limit"}
        assert tools["get_customer"].input_schema["required"] == ["customer_id"]
        assert "ssn" in tools["get_customer"].output_schema["properties"]
        # Resolver-filled parameters are not part of the input schema.
        assert set(tools["summarize_with_model"].input_schema["properties"]) == {"customer_id"}

        got = await client.call_tool("get_customer", {"customer_id": "C0007"})
        assert not got.is_error
        assert got.structured_content == BY_ID["C0007"]

        gold = await client.call_tool("find_customers", {"segment": "gold", "limit": 5})
        records = gold.structured_content["result"]
        assert len(records) == 5 and all(r["segment"] == "gold" for r in records)

        export = await client.call_tool("export_customers", {})
        assert export.structured_content["result"] == CUSTOMERS
        assert len(json.dumps(export.structured_content)) > 150_000

        pong = await client.call_tool("ping", {})
        assert pong.structured_content == {"ok": True}

        note = f"Call Maria Lopez back at (415) 555-0199 ({mode})"
        added = await client.call_tool("add_note", {"customer_id": "C0011", "note": note})
        assert added.structured_content == {"ok": True, "customer_id": "C0011"}
        after = await client.call_tool("get_customer", {"customer_id": "C0011"})
        assert after.structured_content["notes"][-1] == note
    assert {"customer_id": "C0011", "note": note} in calls(log, "add_note")
    assert {"customer_id": "C0007"} in calls(log, "get_customer")


@pytest.mark.parametrize(("crm", "mode"), BOTH_TRANSPORTS, indirect=["crm"])
async def test_errors_with_and_without_pii(crm: tuple[Any, Path], mode: str) -> None:
    target, _log = crm
    async with connect(target, mode) as client:
        unknown = await client.call_tool("get_customer", {"customer_id": "C9999"})
        assert unknown.is_error
        message = text_of(unknown)
        assert "C9999" in message
        assert not any(value in message for value in ALL_PII if len(value) > 3)

        locked = await client.call_tool("locked_account", {"customer_id": "C0003"})
        assert locked.is_error
        c = BY_ID["C0003"]
        assert c["full_name"] in text_of(locked) and c["email"] in text_of(locked)


@pytest.mark.parametrize(("crm", "mode"), ALL_COMBINATIONS, indirect=["crm"])
async def test_server_initiated_messages_carry_pii(crm: tuple[Any, Path], mode: str) -> None:
    """Log and progress notifications, sampling and elicitation requests all contain PII."""
    target, _log = crm
    logs: list[str] = []
    progress: list[str] = []
    sampled: list[str] = []
    elicited: list[str] = []
    answers = iter(["accept", "decline"])

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async def on_sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        sampled.append(params.messages[0].content.text)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="A loyal customer."), model="test-model"
        )

    async def on_elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        elicited.append(params.message)
        action = next(answers)
        content = {"confirmed": True, "comment": "still valid"} if action == "accept" else None
        return types.ElicitResult(action=action, content=content)

    async with connect(
        target,
        mode,
        logging_callback=on_log,
        log_level="debug",
        sampling_callback=on_sampling,
        elicitation_callback=on_elicit,
    ) as client:
        synced = await client.call_tool("sync_customers", {"count": 3}, progress_callback=on_progress)
        first3 = CUSTOMERS[:3]
        assert all(c["full_name"] in text_of(synced) for c in first3)
        assert all(any(c["full_name"] in m and c["email"] in m for m in logs) for c in first3)
        assert all(any(c["full_name"] in m and c["email"] in m for m in progress) for c in first3)

        summary = await client.call_tool("summarize_with_model", {"customer_id": "C0004"})
        assert not summary.is_error and text_of(summary) == "A loyal customer."
        c4 = BY_ID["C0004"]
        assert len(sampled) == 1
        assert c4["full_name"] in sampled[0] and c4["email"] in sampled[0] and c4["notes"][0] in sampled[0]

        accepted = await client.call_tool("confirm_contact", {"customer_id": "C0005"})
        assert accepted.structured_content == {"action": "accept", "confirmed": True, "comment": "still valid"}
        declined = await client.call_tool("confirm_contact", {"customer_id": "C0005"})
        assert declined.structured_content == {"action": "decline", "confirmed": None, "comment": None}
        c5 = BY_ID["C0005"]
        assert len(elicited) == 2 and c5["full_name"] in elicited[0] and c5["phone"] in elicited[0]


@pytest.mark.parametrize(("crm", "mode"), [("stdio", "legacy"), ("http", "legacy")], indirect=["crm"])
async def test_notify_change_sends_tools_list_changed(crm: tuple[Any, Path], mode: str) -> None:
    target, _log = crm
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with connect(target, mode, message_handler=on_message) as client:
        result = await client.call_tool("notify_change", {})
        assert "crm_extra_report" in text_of(result)
        with anyio.fail_after(10):
            await changed.wait()
        names = {t.name for t in (await client.list_tools()).tools}
        assert "crm_extra_report" in names
        extra = await client.call_tool("crm_extra_report", {})
        assert "400 customers" in text_of(extra)


@pytest.mark.parametrize(("crm", "mode"), [("stdio", "auto"), ("http", "auto")], indirect=["crm"])
async def test_notify_change_reaches_subscription_listeners(crm: tuple[Any, Path], mode: str) -> None:
    target, _log = crm
    async with connect(target, mode) as client, client.listen(tools_list_changed=True) as subscription:
        await client.call_tool("notify_change", {})
        with anyio.fail_after(10):
            event = await subscription.__anext__()
        assert type(event).__name__ == "ToolsListChanged", type(event).__name__
        names = {t.name for t in (await client.list_tools()).tools}
        assert "crm_extra_report" in names


@pytest.mark.parametrize(("crm", "mode"), BOTH_TRANSPORTS, indirect=["crm"])
async def test_resources_and_prompts_carry_pii(crm: tuple[Any, Path], mode: str) -> None:
    target, _log = crm
    async with connect(target, mode) as client:
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["crm://customers/{customer_id}"]
        assert "crm://summary" in {str(r.uri) for r in (await client.list_resources()).resources}

        record = await client.read_resource("crm://customers/C0002")
        assert json.loads(record.contents[0].text) == BY_ID["C0002"]

        summary = (await client.read_resource("crm://summary")).contents[0].text
        top = max(CUSTOMERS, key=lambda c: c["lifetime_value"])
        assert top["full_name"] in summary and "400 customers" in summary

        prompt = await client.get_prompt("draft_followup", {"customer_id": "C0006"})
        text = prompt.messages[0].content.text
        c6 = BY_ID["C0006"]
        assert c6["full_name"] in text and c6["email"] in text and c6["address"]["street"] in text

        with pytest.raises(MCPError, match="C9999"):
            await client.read_resource("crm://customers/C9999")
