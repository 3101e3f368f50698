"""Per-upstream tool prefixes: an unmodified client sees an upstream's own names (``prefix: ""``),
other upstreams keep ``NAME__``, and a name two upstreams would share is refused, naming both.

Through the real gateway (Streamable HTTP, a real MCP client) with ``names_server.py`` upstreams
as real subprocesses; the name resolution itself also has unit tests over plain data.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError
from proxy.harness import serving

from veil.config import parse_config
from veil.errors import ConfigError, ToolNotFound
from veil.proxy import catalogue as cat
from veil.proxy.gateway import Gateway

NAMES_SERVER = Path(__file__).with_name("names_server.py")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def upstream(server: str, tools: list[str], prefix: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "command": sys.executable,
        "args": [str(NAMES_SERVER)],
        "env": {"NAMES_SERVER": server, "NAMES_TOOLS": ",".join(tools)},
    }
    if prefix is not None:
        entry["prefix"] = prefix
    return entry


@pytest.fixture
def config(database_url: str, tmp_path: Path):
    def make(**upstreams: dict[str, Any]):
        return parse_config(
            {
                "upstreams": upstreams,
                "database_url": database_url,
                "data_dir": str(tmp_path / "data"),
                "auth": {"required": False},
                "expose": "direct",
            },
            source=tmp_path / "veil.yaml",
        )

    return make


def text(result: types.CallToolResult | types.GetPromptResult) -> str:
    content = result.messages[0].content if isinstance(result, types.GetPromptResult) else result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


@pytest.mark.anyio
@pytest.mark.req("names:prefix")
async def test_empty_prefix_serves_the_upstreams_own_names_next_to_prefixed_ones(config) -> None:
    cfg = config(
        one=upstream("one", ["a", "two__only_here"], prefix=""),
        two=upstream("two", ["a", "b"]),
        three=upstream("three", ["a"], prefix="t."),
    )
    async with serving(cfg) as (_gateway, url), Client(url, mode="legacy") as agent:
        names = {t.name for t in (await agent.list_tools()).tools}
        assert names == {"search_tools", "a", "two__only_here", "two__a", "two__b", "t.a"}
        assert text(await agent.call_tool("a", {})) == "one:a"
        assert text(await agent.call_tool("two__a", {})) == "two:a"
        assert text(await agent.call_tool("t.a", {})) == "three:a"
        # Starts with two's prefix, but only one has it: asked, then routed to one.
        assert text(await agent.call_tool("two__only_here", {})) == "one:two__only_here"
        prompts = {p.name for p in (await agent.list_prompts()).prompts}
        assert {"a", "two__a", "t.a"} <= prompts
        assert text(await agent.get_prompt("two__b", {})) == "two:b"
        assert text(await agent.get_prompt("a", {})) == "one:a"
        with pytest.raises(MCPError) as unknown:
            await agent.call_tool("two__nothing", {})
        assert "two__nothing" in unknown.value.message and "'one'" in unknown.value.message


@pytest.mark.anyio
@pytest.mark.req("names:prefix")
async def test_a_name_two_upstreams_share_stops_start_up_naming_both(config) -> None:
    cfg = config(one=upstream("one", ["two__a"], prefix=""), two=upstream("two", ["a"]))
    with pytest.raises(ConfigError) as err:
        async with Gateway(cfg):
            pass
    message = err.value.message
    assert "'two__a'" in message and "upstream 'one'" in message and "upstream 'two'" in message
    assert "prefix" in message


@pytest.mark.anyio
@pytest.mark.req("names:prefix")
async def test_an_upstream_tool_may_not_take_a_name_of_veils_own(config) -> None:
    cfg = config(one=upstream("one", ["search_tools"], prefix=""))
    with pytest.raises(ConfigError) as err:
        async with Gateway(cfg):
            pass
    assert "search_tools" in err.value.message and "'one'" in err.value.message


@pytest.mark.req("names:prefix")
def test_config_refuses_two_upstreams_with_one_prefix(tmp_path: Path) -> None:
    for a, b in [("", ""), ("x__", "x__"), (None, "one__")]:
        raw = {"upstreams": {"one": upstream("one", [], prefix=a), "two": upstream("two", [], prefix=b)}}
        with pytest.raises(ConfigError) as err:
            parse_config(raw, source=tmp_path / "veil.yaml")
        assert "'one' and 'two'" in err.value.message and "upstreams" in err.value.message
    with pytest.raises(ConfigError) as bad:
        parse_config({"upstreams": {"one": upstream("one", [], prefix="no spaces")}}, source=tmp_path / "v.yaml")
    assert "upstreams.one.prefix" in bad.value.message
    cfg = parse_config({"mcpServers": {"one": {"command": "x", "prefix": ""}, "two": {"command": "y"}}})
    assert cfg.prefixes() == {"one": "", "two": "two__"}


# -- name resolution over plain data ------------------------------------------------------------


def _has(tools: dict[str, set[str]]):
    async def has(upstream: str, name: str) -> bool:
        return name in tools[upstream]

    return has


@pytest.mark.anyio
@pytest.mark.req("names:prefix")
async def test_resolution_takes_the_longest_prefix_that_has_the_name_and_refuses_ambiguity() -> None:
    prefixes = {"root": "", "crm": "crm__", "crm2": "crm__2"}
    tools = {"root": {"crm__x", "y"}, "crm": {"find", "2z"}, "crm2": {"z"}}
    assert await cat.resolve("crm__find", prefixes, _has(tools)) == ("crm", "find")
    assert await cat.resolve("crm__x", prefixes, _has(tools)) == ("root", "crm__x")
    assert await cat.resolve("y", prefixes, _has(tools)) == ("root", "y")
    with pytest.raises(ToolNotFound) as ambiguous:
        await cat.resolve("crm__2z", prefixes, _has(tools | {"crm2": {"z"}, "crm": {"2z"}}))
    assert "'crm'" in ambiguous.value.message and "'crm2'" in ambiguous.value.message
    with pytest.raises(ToolNotFound):
        await cat.resolve("x", {"crm": "crm__"}, _has(tools))


@pytest.mark.req("names:prefix")
def test_listings_leave_out_colliding_names_and_say_why() -> None:
    def entry(up: str, name: str, prefix: str | None) -> cat.CatalogueEntry:
        return cat.CatalogueEntry(up, types.Tool(name=name, input_schema={"type": "object"}), prefix)

    entries = [entry("root", "crm__x", ""), entry("crm", "x", None), entry("crm", "y", None)]
    shown, problems = cat.visible([*entries, entry("root", "execute_code", "")])
    assert [e.name for e in shown] == ["crm__y"]
    assert set(problems) == {"crm__x", "execute_code"}
    assert "'root'" in problems["crm__x"] and "'crm'" in problems["crm__x"]
    assert cat.overlapping({"a": "a__", "b": "b__"}) == set()
    assert cat.overlapping({"a": "", "b": "b__"}) == {"a", "b"}


@pytest.mark.anyio
@pytest.mark.req("protocol:instructions")
async def test_upstream_instructions_reach_the_agent_namespaced_and_tokenised(config) -> None:
    one = upstream("one", ["a"], prefix="")
    one["env"]["NAMES_INSTRUCTIONS"] = "Ask Jane Roe (jane.roe@example.com) before deleting anything."
    cfg = config(one=one, two=upstream("two", ["a"]), gone={"command": "/nonexistent/upstream"})
    async with serving(cfg) as (_gateway, url), Client(url, mode="legacy") as agent:
        text = agent.instructions or ""
    assert text.startswith("Veil gateway:")
    assert "## one (tools and prompts: no prefix: its own names)\nAsk " in text and "before deleting anything." in text
    assert "jane.roe@example.com" not in text and "Jane Roe" not in text
    assert "[EMAIL_ADDRESS_" in text and "[PERSON_" in text
    assert "## two" not in text and "## gone" not in text  # no instructions; unreachable at start


@pytest.mark.anyio
@pytest.mark.req("protocol:error-codes")
async def test_upstream_error_code_and_data_reach_the_agent_tokenised(config) -> None:
    cfg = config(one=upstream("one", ["needs_consent"], prefix=""))
    async with serving(cfg) as (_gateway, url), Client(url, mode="legacy") as agent:
        with pytest.raises(MCPError) as err:
            await agent.call_tool("needs_consent", {})
    assert err.value.code == -32042  # URL elicitation required: kept, not rewritten to Veil's -32008
    shown = f"{err.value.message} {err.value.data}"
    assert "jane.roe@example.com" not in shown and "Jane Roe" not in shown
    (elicitation,) = err.value.data["elicitations"]
    assert elicitation["mode"] == "url" and elicitation["elicitationId"] == "consent-1"
    assert elicitation["url"].startswith("https://consent.example/connect?email=[EMAIL_ADDRESS_")
