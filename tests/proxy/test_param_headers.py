"""2026-07-28 ``Mcp-Param-*`` headers (arguments a tool's schema marks ``x-mcp-header``, mirrored
into HTTP headers for intermediaries that route on them): checked against the body by Veil's
tools/call handler, and a call with arguments no longer makes the SDK run (and Veil audit) a
tools/list the agent never sent. A real SDK client in 2026-07-28 mode against a real gateway and
upstream subprocess; the mismatch is made by rewriting the header the client emits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from proxy.harness import serving
from proxy.test_runner import asker_config, mark, rows
from veil.errors import HEADER_MISMATCH

pytestmark = [pytest.mark.anyio]


def _asked(tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "asked.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.req("transport:param-headers")
async def test_param_headers_are_checked_by_veil_and_cost_no_hidden_listing(make_config, tmp_path: Path) -> None:
    seen: list[str | None] = []
    sent_listings = 0

    async def lie_about_the_region(request: httpx2.Request) -> None:
        nonlocal sent_listings
        sent_listings += request.headers.get("mcp-method") == "tools/list"
        if "mcp-param-region" in request.headers:
            seen.append(request.headers["mcp-param-region"])
            if request.headers["mcp-param-region"] == "eu-lie":
                request.headers["mcp-param-region"] = "us"

    statuses: list[int] = []

    async def note_status(response: httpx2.Response) -> None:
        if response.request.headers.get("mcp-method") == "tools/call":
            statuses.append(response.status_code)

    async with serving(asker_config(make_config, tmp_path)) as (gateway, url):
        start = mark(gateway)
        hooks = {"request": [lie_about_the_region], "response": [note_status]}
        http = httpx2.AsyncClient(event_hooks=hooks, timeout=60)
        async with http, Client(streamable_http_client(url, http_client=http), mode="auto") as client:
            assert client.protocol_version >= "2026"
            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert listed["asker__route"].input_schema["properties"]["region"]["x-mcp-header"] == "Region"

            # The client mirrors the argument; header and body agree: the call goes through.
            for n in range(3):
                result = await client.call_tool("asker__route", {"region": f"eu-{n}", "note": "x"})
                assert not result.is_error, result
            assert seen == ["eu-0", "eu-1", "eu-2"]

            # The header says one region, the body another: refused before anything leaves.
            with pytest.raises(MCPError) as refused:
                await client.call_tool("asker__route", {"region": "eu-lie"})
            assert refused.value.error.code == HEADER_MISMATCH
            assert "Mcp-Param-Region" in refused.value.error.message and "eu-lie" not in refused.value.error.message
            assert statuses == [200, 200, 200, 400, 400], statuses  # the SDK maps the code to HTTP 400

        trail = rows(gateway, start)
    assert [a["value"] for a in _asked(tmp_path) if a["kind"] == "route"] == ["eu-0", "eu-1", "eu-2"]
    # The listings audited are the ones the client sent. Before, the SDK ran one more through Veil
    # before every call with arguments to find the schema: audited as listings nobody asked for.
    listings = [r for r in trail if r.detail.get("method") == "tools/list" and r.kind != "call.intent"]
    assert sent_listings >= 1 and len(listings) == sent_listings, (sent_listings, [(r.kind, r.detail) for r in trail])
    calls = [r for r in trail if r.detail.get("method") == "tools/call" and r.kind != "call.intent"]
    # The SDK client answers a mismatch by listing the tools again and retrying once: two refusals,
    # both at admission (before the audit intent: nothing left for the upstream).
    assert [r.outcome for r in calls] == ["ok", "ok", "ok", "error", "error"], [(r.outcome, r.detail) for r in calls]
    for refusal in calls[3:]:
        assert refusal.detail["error"] == "HeaderMismatch" and refusal.detail["stage"] == "admit", refusal.detail
        assert refusal.detail["code"] == HEADER_MISMATCH
