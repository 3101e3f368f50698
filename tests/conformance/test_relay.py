"""Protocol fidelity through the real gateway: capabilities as Veil really behaves, the agent's
roots offered to an upstream that asks, completion through the runner, and a tool that runs
only as a task refused with a clear error (Veil does not relay tasks).

A real MCP client over Streamable HTTP; ``reference_server.py`` as a real stdio upstream.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mcp_types as types
import pytest
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError
from proxy.harness import serving

from veil.config import parse_config

REFERENCE = Path(__file__).with_name("reference_server.py")
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def config(database_url: str, tmp_path: Path):
    return parse_config(
        {
            "upstreams": {"ref": {"command": sys.executable, "args": [str(REFERENCE)]}},
            "database_url": database_url,
            "data_dir": str(tmp_path / "data"),
            "auth": {"required": False},
            "expose": "direct",
        },
        source=tmp_path / "veil.yaml",
    )


@pytest.mark.req("protocol:capabilities")
async def test_capabilities_say_what_veil_does(config) -> None:
    async with serving(config) as (_gw, url), Client(url, mode="legacy") as agent:
        caps = agent.server_capabilities
    assert caps is not None and caps.tools is not None and caps.resources is not None and caps.prompts is not None
    # Veil relays list-changed notifications from its upstreams, so it may not say it does not.
    assert caps.tools.list_changed and caps.resources.list_changed and caps.prompts.list_changed
    assert caps.resources.subscribe and caps.completions is not None and caps.logging is not None
    assert caps.tasks is None  # Veil does not relay tasks (docs/conformance.md), so it does not say it does


@pytest.mark.req("protocol:capabilities")
async def test_a_tool_that_runs_only_as_a_task_is_refused_saying_why(config) -> None:
    async with serving(config) as (_gw, url), Client(url, mode="legacy") as agent:
        listed = {t.name: t for t in (await agent.list_tools()).tools}
        assert listed["ref__research_as_task"].execution.task_support == "required"
        with pytest.raises(MCPError) as refused:
            await agent.call_tool("ref__research_as_task", {})
    assert refused.value.code == -32602
    assert "can only run as a task" in refused.value.message and "does not relay" in refused.value.message


@pytest.mark.req("protocol:roots")
async def test_an_upstream_asking_for_roots_gets_the_agents(config) -> None:
    asked: list[bool] = []

    async def roots(context: object) -> types.ListRootsResult:
        asked.append(True)
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    async with serving(config) as (_gw, url), Client(url, mode="legacy", list_roots_callback=roots) as agent:
        result = await agent.call_tool("ref__list_client_roots", {})
    assert asked == [True]
    assert isinstance(result.content[0], types.TextContent) and result.content[0].text == "file:///work/project"


@pytest.mark.req("protocol:completion")
async def test_completion_reaches_the_upstream_by_prompt_name_and_comes_back(config) -> None:
    async with serving(config) as (_gw, url), Client(url, mode="legacy") as agent:
        ref = types.PromptReference(type="ref/prompt", name="ref__test_prompt_with_arguments")
        result = await agent.complete(ref, {"name": "arg1", "value": "par"})
    assert result.completion.values == ["paris", "park", "party"]
