"""A handshake-era request is answered as one JSON body unless something has to precede its answer
(veil/proxy/lazy_sse.py). Raw HTTP against a real gateway serving a real upstream subprocess, so
the test sees the response type the agent gets; the SDK's own client is exercised over the same
path by the rest of tests/proxy and by the conformance suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.harness import serving
from proxy.test_runner import ADDRESS, asker_config
from veil.proxy import lazy_sse
from veil.tokenizer import TOKEN_RE

pytestmark = [pytest.mark.anyio]

VERSION = "2025-06-18"
BASE_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


async def _open_session(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    """Initialize a session; the headers every later request of it carries."""
    params = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "lazy-sse-test", "version": "1"}}
    opened = await http.post(
        url, headers=BASE_HEADERS, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
    )
    assert opened.status_code == 200, opened.text
    headers = {**BASE_HEADERS, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": VERSION}
    ack = await http.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert ack.status_code == 202, ack.text
    return headers


async def _call(http: httpx.AsyncClient, url: str, headers: dict[str, str], n: int, tool: str, **extra: Any) -> Any:
    params: dict[str, Any] = {"name": tool, "arguments": extra.pop("arguments", {}), **extra}
    return await http.post(
        url, headers=headers, json={"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}
    )


def _sse_messages(body: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an SSE body, in order (pings and empty events skipped)."""
    messages = []
    for event in body.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
        if data:
            messages.append(json.loads(data))
    return messages


@pytest.mark.req("transport:http-response-type")
async def test_an_answer_with_nothing_before_it_is_one_json_body_and_anything_first_makes_a_stream(
    make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(asker_config(make_config, tmp_path)) as (_gateway, url), httpx.AsyncClient(timeout=60) as http:
        headers = await _open_session(http, url)

        # Answered first: application/json, the (tokenised) answer as the whole body.
        fast = await _call(http, url, headers, 1, "asker__record_as_text")
        assert fast.status_code == 200
        assert fast.headers["content-type"].startswith("application/json"), fast.headers
        assert fast.headers["mcp-session-id"] == headers["mcp-session-id"]
        answer = fast.json()
        assert answer["id"] == 1 and not answer["result"].get("isError"), answer
        assert ADDRESS not in fast.text and TOKEN_RE.search(fast.text), fast.text

        # Progress before the answer: a stream, the progress first (tokenised), the answer last.
        progressing = await _call(
            http, url, headers, 2, "asker__slow", arguments={"hold": 0}, _meta={"progressToken": "p-1"}
        )
        assert progressing.headers["content-type"].startswith("text/event-stream"), progressing.headers
        messages = _sse_messages(progressing.text)
        assert [m.get("method") for m in messages[:-1]] == ["notifications/progress"] * 2, messages
        assert messages[-1]["id"] == 2 and "result" in messages[-1], messages
        assert ADDRESS not in progressing.text and TOKEN_RE.search(json.dumps(messages[0])), messages[0]

        # A log line before the answer: a stream too.
        logging = await _call(http, url, headers, 3, "asker__chatty")
        assert logging.headers["content-type"].startswith("text/event-stream"), logging.headers
        messages = _sse_messages(logging.text)
        assert messages[0]["method"] == "notifications/message" and messages[-1]["id"] == 3, messages
        assert ADDRESS not in logging.text

        # Nothing within the window (a long call): the stream starts without waiting longer,
        # and the answer ends it.
        monkeypatch.setattr(lazy_sse, "JSON_WINDOW_S", 0.2)
        slow = await _call(http, url, headers, 4, "asker__slow", arguments={"hold": 1.0})
        assert slow.headers["content-type"].startswith("text/event-stream"), slow.headers
        messages = _sse_messages(slow.text)
        assert len(messages) == 1 and messages[0]["id"] == 4 and "result" in messages[0], messages

        # An error answer is an answer: JSON (a tool the agent may not see is refused by policy).
        monkeypatch.setattr(lazy_sse, "JSON_WINDOW_S", 10.0)
        refused = await _call(http, url, headers, 5, "no_such__tool")
        assert refused.headers["content-type"].startswith("application/json"), refused.headers
        assert refused.json()["id"] == 5 and ("error" in refused.json() or refused.json()["result"]["isError"])


async def test_requests_the_lazy_path_does_not_take_keep_the_sdks_answers(make_config, tmp_path: Path) -> None:
    """Bad bodies and headers get the SDK's own refusals, unchanged."""
    async with serving(asker_config(make_config, tmp_path)) as (_gateway, url), httpx.AsyncClient(timeout=60) as http:
        headers = await _open_session(http, url)
        call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "asker__record_as_text"}}

        not_json = await http.post(url, headers=headers, content=b"{not json")
        assert not_json.status_code == 400 and "Parse error" in not_json.text

        no_sse = await http.post(url, headers={**headers, "accept": "application/json"}, json=call)
        assert no_sse.status_code == 406, no_sse.text

        no_session = {k: v for k, v in headers.items() if k != "mcp-session-id"}
        missing = await http.post(url, headers=no_session, json=call)
        assert missing.status_code in (400, 404), missing.text

        # A notification is acknowledged, not answered.
        ack = await http.post(
            url,
            headers=headers,
            json={"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}},
        )
        assert ack.status_code == 202
