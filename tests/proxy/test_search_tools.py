"""search_tools as an attacker uses it: a principal whose access rules deny a tool searches for
that tool's name and for words of its description, at every level of detail, and must learn
nothing that tells it the tool exists. The search itself is access to ``veil__search_tools`` and
is audited (a principal denied ``veil__search_tools`` is refused at the access stage:
tests/proxy/test_runner.py, access rules). A real gateway over Streamable HTTP, the demo
upstreams as subprocesses, a real MCP client, real Postgres."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
import sqlalchemy as sa
from mcp.client.client import Client

from proxy.harness import serving

pytestmark = pytest.mark.anyio

# crm__find_customers and search_tools allowed; the mailer, crm__export_customers and the rest denied.
NARROW = textwrap.dedent(
    """
    metadata: {name: narrow}
    access:
      - id: lookups
        tools: [crm__find_customers, veil__search_tools]
        effect: allow
    """
)

# Names and description words of tools NARROW denies; a tool that does not exist at all for comparison.
# (Words find_customers also has, like "customers", would find it, as they would without the denied tools.)
PROBES = ["send_email", "mailer", "email", "subject plain-text body", "export", "large result", "outbox", "add_note"]
NOWHERE = "no_such_tool_anywhere"


def audit_rows(gateway: Any, since: int) -> list[Any]:
    with gateway.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT kind, outcome, tool, rule, detail FROM audit_events WHERE seq > :s ORDER BY seq"),
            {"s": since},
        ).all()


def mark(gateway: Any) -> int:
    with gateway.engine.connect() as conn:
        return conn.execute(sa.text("SELECT coalesce(max(seq), 0) FROM audit_events")).scalar_one()


@pytest.mark.req("access:search-tools")
async def test_a_denied_tool_cannot_be_found_by_name_or_description(make_config) -> None:
    async with (
        serving(make_config(policy_text=NARROW)) as (gateway, url),
        Client(url, mode="legacy", read_timeout_seconds=60) as agent,
    ):
        listed = {t.name for t in (await agent.list_tools()).tools}
        assert listed == {"search_tools", "crm__find_customers"}
        start = mark(gateway)

        async def search(query: str, detail: str) -> dict[str, Any]:
            got = await agent.call_tool("search_tools", {"query": query, "detail": detail, "limit": 200})
            assert not got.is_error
            return got.structured_content

        nothing = await search(NOWHERE, "full")
        assert nothing == {"tools": []}
        for detail in ("name", "summary", "full"):
            everything = await search("", detail)
            assert [t["name"] for t in everything["tools"]] == ["crm__find_customers"]
            for probe in PROBES:
                answer = await search(probe, detail)
                # Exactly what a search for a tool that does not exist answers: no name, no count,
                # no "unreachable" or collision report naming it.
                assert answer == nothing, (probe, detail, answer)
                text = json.dumps(answer)
                assert "mailer" not in text and "export" not in text

        # Every search is audited (codes only): kind tools.list, marked as a search, with its count.
        searches = [r for r in audit_rows(gateway, start) if r.detail.get("search")]
        assert len(searches) == 1 + 3 * (1 + len(PROBES))
        assert all(r.kind == "tools.list" and r.outcome == "ok" for r in searches)
        assert {r.detail["count"] for r in searches} == {0, 1}
        assert all("query" not in r.detail for r in searches)  # the query text is not kept
