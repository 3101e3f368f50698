"""The "mailer" and "tickets" demo upstreams, and the command line shared by all demo servers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import pytest
from mcp import Client

from examples.crm_data import generate_customers, generate_tickets
from examples.upstreams import (
    CRM_SERVER,
    EXAMPLES_DIR,
    PYTHON,
    mailer_stdio_params,
    server_env,
    start_http_server,
    stdio_upstream_config,
    tickets_stdio_params,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_mailer_sends_and_records_real_arguments(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox" / "mail.jsonl"  # parent folder created by the server
    params = mailer_stdio_params(env={"MAILER_OUTBOX": str(outbox)})
    with anyio.fail_after(60):
        async with Client(params) as client:
            sent = await client.call_tool(
                "send_email", {"to": "maria.lopez@gmail.com", "subject": "Invoice", "body": "Hi Maria Lopez,"}
            )
            assert sent.structured_content["status"] == "sent"
            assert sent.structured_content["message_id"].startswith("<msg-00001@")
            listed = await client.call_tool("list_outbox", {})
            assert [m["to"] for m in listed.structured_content["result"]] == ["maria.lopez@gmail.com"]
    assert log_lines(outbox)[0] == {
        "server": "mailer",
        "tool": "send_email",
        "arguments": {"to": "maria.lopez@gmail.com", "subject": "Invoice", "body": "Hi Maria Lopez,"},
    }


async def test_tickets_lists_generated_tickets_and_creates_new_ones(tmp_path: Path) -> None:
    log = tmp_path / "tickets.jsonl"
    expected = generate_tickets(generate_customers(), 20)
    with start_http_server("tickets", {"TICKETS_LOG": str(log)}) as (url, _process), anyio.fail_after(60):
        async with Client(url) as client:
            listed = await client.call_tool("list_tickets", {})
            assert listed.structured_content["result"] == expected
            created = await client.call_tool(
                "create_ticket",
                {"title": "Refund", "body": "Ngozi Ma asks about a refund.", "customer_email": "ngozi_ma@gmail.com"},
            )
            assert created.structured_content["id"] == "T0021"
            assert created.structured_content["status"] == "open"
            closed = await client.call_tool("list_tickets", {"status": "closed"})
            assert all(t["status"] == "closed" for t in closed.structured_content["result"])
    assert [line["tool"] for line in log_lines(log)] == ["list_tickets", "create_ticket", "list_tickets"]
    assert log_lines(log)[1]["arguments"]["customer_email"] == "ngozi_ma@gmail.com"


async def test_tickets_over_stdio() -> None:
    with anyio.fail_after(60):
        async with Client(tickets_stdio_params(env={"TICKETS_COUNT": "3"})) as client:
            listed = await client.call_tool("list_tickets", {})
            assert [t["id"] for t in listed.structured_content["result"]] == ["T0001", "T0002", "T0003"]


def test_bad_http_argument_is_refused_with_a_clear_message() -> None:
    done = subprocess.run(
        [PYTHON, str(CRM_SERVER), "--http", "localhost"],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "expected HOST:PORT" in done.stderr


def test_bad_record_count_is_refused_with_the_variable_name() -> None:
    done = subprocess.run(
        [PYTHON, str(CRM_SERVER)],
        env=server_env({"CRM_RECORDS": "many"}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "CRM_RECORDS must be an integer" in done.stderr


def test_stdio_upstream_config_points_at_the_script() -> None:
    entry = stdio_upstream_config("mailer", {"MAILER_OUTBOX": "/tmp/x.jsonl"})
    assert entry == {
        "command": PYTHON,
        "args": [str(EXAMPLES_DIR / "mailer_server.py")],
        "env": {"MAILER_OUTBOX": "/tmp/x.jsonl"},
        "cwd": str(EXAMPLES_DIR),
    }
    with pytest.raises(FileNotFoundError, match="nope"):
        stdio_upstream_config("nope")
