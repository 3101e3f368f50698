"""Raw PII sent by the agent is counted, audited and reported, so probing stands out.

The agent only ever sees tokens, so a raw value in its arguments is its own: a guess, as a
prompt-injected agent probing the demo CRM (which echoes an unknown id in its error) would send.
That existence oracle cannot be closed by a gateway (docs/threat-model.md); Veil makes it visible.
Through the real gateway: a real MCP client, the demo upstreams as subprocesses, real Postgres
and Presidio, then `veil report` in every format."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from proxy.harness import serving
from proxy.test_gateway import CUSTOMERS
from veil.cli import main

pytestmark = [pytest.mark.anyio, pytest.mark.req("audit:agent-raw-pii-visible")]

# 30 guesses, one of them a real customer's phone (the oracle question "does it exist?").
PHONES = [f"(212) 555-01{i:02d}" for i in range(14)] + [CUSTOMERS[3]["phone"]]
EMAILS = [f"guess{i}.probe@example.net" for i in range(15)]
GUESSES = PHONES + EMAILS


def _digits(value: str) -> str:
    return "".join(c for c in value if c.isdigit())


def leaked(text: str) -> list[str]:
    """Any guess, as written or as its digits (a phone), anywhere in ``text``."""
    digits = _digits(text)
    return [g for g in GUESSES if g in text or ("@" not in g and _digits(g) in digits)]


def session_rows(gateway: Any, since: int) -> list[Any]:
    with gateway.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT seq, kind, session_id, detail, row_to_json(a)::text AS whole FROM audit_events a "
                "WHERE seq > :since ORDER BY seq"
            ),
            {"since": since},
        ).all()


def mark(gateway: Any) -> int:
    with gateway.engine.connect() as conn:
        return conn.execute(sa.text("SELECT coalesce(max(seq), 0) FROM audit_events")).scalar_one()


def report(url: str, out: Path, *extra: str) -> str:
    today = datetime.now(UTC).date().isoformat()
    result = CliRunner().invoke(
        main,
        ["report", "--database-url", url, "--from", today, "--to", today, "--out", str(out), *extra],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return out.read_text() if out.suffix != ".pdf" else ""


async def test_probing_session_is_counted_audited_and_flagged(make_config, database_url: str, tmp_path: Path) -> None:
    async with serving(make_config()) as (gateway, url):
        start = mark(gateway)
        async with Client(url, mode="legacy") as agent:
            for guess in GUESSES:  # the CRM answers "Unknown customer id '<guess>'": an echo
                with contextlib.suppress(MCPError):
                    await agent.call_tool("crm__get_customer", {"customer_id": guess})
        middle = mark(gateway)
        async with Client(url, mode="legacy") as agent:  # an ordinary session: tokens only
            record = (await agent.call_tool("crm__get_customer", {"customer_id": "C0001"})).structured_content
            body = f"Dear {record['full_name']}, your order shipped."
            sent = await agent.call_tool(
                "mailer__send_email", {"to": record["email"], "subject": "Order", "body": body}
            )
            assert not sent.is_error
        probing = session_rows(gateway, start)
        probing, ordinary = [r for r in probing if r.seq <= middle], [r for r in probing if r.seq > middle]

    calls = [r for r in probing if r.kind == "tool.call"]
    assert len(calls) == len(GUESSES)
    counts: dict[str, int] = {}
    for r in calls:
        assert set(r.detail.get("agent_raw_pii", {})) <= {"PHONE_NUMBER", "EMAIL_ADDRESS"}, r.detail
        for entity_type, n in r.detail.get("agent_raw_pii", {}).items():
            counts[entity_type] = counts.get(entity_type, 0) + n
    assert counts == {"PHONE_NUMBER": len(PHONES), "EMAIL_ADDRESS": len(EMAILS)}
    ordinary_calls = [r for r in ordinary if r.kind == "tool.call"]
    assert len(ordinary_calls) == 2 and all("agent_raw_pii" not in r.detail for r in ordinary)
    # Counts only: no guess in any audit row of either session, in any column.
    assert leaked("\n".join(r.whole for r in probing + ordinary)) == []

    prober = calls[0].session_id
    ordinary_id = ordinary_calls[0].session_id
    data = json.loads(report(database_url, tmp_path / "r.json"))["agent_raw_pii"]
    assert data["threshold"] == 10
    by_session = {s["session_id"]: s for s in data["sessions"]}
    assert ordinary_id not in by_session  # zero raw values: not listed
    mine = by_session[prober]
    assert mine["raw_values"] == len(GUESSES) and mine["calls"] == len(GUESSES) and mine["flagged"] is True
    assert mine["entity_types"] == "EMAIL_ADDRESS PHONE_NUMBER" and mine["principal"] == "alice"
    assert mine["first"] <= mine["last"]
    assert data["sessions"] == sorted(data["sessions"], key=lambda s: -s["raw_values"])
    assert data["flagged_sessions"] >= 1

    rows = list(csv.DictReader(io.StringIO(report(database_url, tmp_path / "r.csv"))))
    flagged = [r for r in rows if r["section"] == "agent_raw_pii" and r["metric"] == "flagged" and prober in r["key"]]
    assert [r["value"] for r in flagged] == ["1"]
    html = report(database_url, tmp_path / "r.html")
    assert "<section id='agent-raw-pii'" in html and prober in html and "PROBING?" in html
    texts = [json.dumps(data), report(database_url, tmp_path / "r.json"), "\n".join(map(str, rows)), html]

    # A higher threshold: listed, not flagged.
    high = json.loads(report(database_url, tmp_path / "h.json", "--raw-pii-threshold", "31"))["agent_raw_pii"]
    assert {s["session_id"]: s["flagged"] for s in high["sessions"]}[prober] is False
    assert leaked("\n".join(texts)) == []
    try:
        import weasyprint  # noqa: F401
    except OSError:
        return  # the Pango library is missing; the HTML above is what the PDF renders
    pdf = tmp_path / "r.pdf"
    report(database_url, pdf)
    assert pdf.read_bytes().startswith(b"%PDF")


async def test_probing_from_sandbox_code_is_counted_on_each_call(make_config) -> None:
    """The efficient probe: one execute_code looping over the guesses. Each call the code makes is
    a tool.call flow (via=code) and carries its own count; the code itself is not scanned."""
    code = (
        "from servers import crm\n"
        f"guesses = {GUESSES!r}\n"
        "for g in guesses:\n"
        "    try:\n"
        "        crm.get_customer(customer_id=g)\n"
        "    except Exception:\n"
        "        pass\n"
        "print(len(guesses))"
    )
    async with serving(make_config(expose="both")) as (gateway, url):
        start = mark(gateway)
        async with Client(url, mode="legacy", read_timeout_seconds=120) as agent:
            got = await agent.call_tool("execute_code", {"code": code})
            assert not got.is_error, got
        rows = session_rows(gateway, start)
    calls = [r for r in rows if r.kind == "tool.call"]
    assert len(calls) == len(GUESSES) and all(r.detail.get("via") == "code" for r in calls)
    counts: dict[str, int] = {}
    for r in calls:
        for entity_type, n in r.detail.get("agent_raw_pii", {}).items():
            counts[entity_type] = counts.get(entity_type, 0) + n
    assert counts == {"PHONE_NUMBER": len(PHONES), "EMAIL_ADDRESS": len(EMAILS)}
    assert all("agent_raw_pii" not in r.detail for r in rows if r.kind == "code.execute")
    assert leaked("\n".join(r.whole for r in rows)) == []
