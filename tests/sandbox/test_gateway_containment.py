"""The sandbox holds when attacked through the real gateway's ``execute_code``: a real MCP client
over Streamable HTTP, real upstream subprocesses, real Postgres and Presidio, real firejail.

The code forks a ``setsid`` daemon, forges the runtime's completion message and keeps working:
the call must not return before the code has finished, the forged result must not be taken for
the execution's, and nothing the execution started may be running when the agent gets its answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.client.client import Client
from proxy.conftest import anyio_backend, make_config  # noqa: F401 - fixtures of the gateway tests
from proxy.harness import serving
from test_containment import FORGE, tree

pytestmark = pytest.mark.anyio

ATTACK = (
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        time.sleep(120)\n"
    "    os._exit(0)\n"
    "os.wait()\n" + FORGE + "time.sleep(1)\nopen('after.txt', 'w').write('x')\n'real'"
)


@pytest.mark.req("sandbox:wall-clock")
@pytest.mark.req("sandbox:channel-integrity")
async def test_daemon_and_forged_completion_through_execute_code(make_config) -> None:  # noqa: F811
    async with serving(make_config(expose="code")) as (gateway, url), Client(url, mode="legacy") as client:
        first = await client.call_tool("execute_code", {"code": "1 + 1"})
        assert not first.is_error, first.content
        (session_id,) = gateway.sessions
        managed = gateway.sandbox._sessions[session_id]
        sandbox, workspace = managed.sandbox, Path(managed.workspace)

        left = await client.call_tool(
            "execute_code", {"code": "import subprocess\nsubprocess.Popen(['sleep', '120'], start_new_session=True)\n2"}
        )
        assert not left.is_error and left.structured_content["result"] == "2"
        assert "left 1 process running, which was stopped" in left.structured_content["message"]
        assert sorted(tree(sandbox)) == sorted(sandbox.jail_pids)

        forged = await client.call_tool("execute_code", {"code": ATTACK})
        ran_to_the_end = (workspace / "after.txt").exists()
        leftovers = tree(sandbox)
        after = await client.call_tool("execute_code", {"code": "'fine'"})

    assert ran_to_the_end  # the forged completion did not end the call
    assert forged.is_error and forged.structured_content["outcome"] == "killed"
    assert forged.structured_content["result"] is None and "forged" not in forged.content[0].text
    assert leftovers == []  # the daemon, the interpreter, the jail: all gone before the answer
    assert not after.is_error and after.structured_content["result"] == "'fine'"


@pytest.mark.req("sandbox:policy-reload")
async def test_reloaded_policy_sandbox_limits_reach_the_manager(make_config, tmp_path: Path) -> None:  # noqa: F811
    async with serving(make_config(expose="code")) as (gateway, url), Client(url, mode="legacy") as client:
        before = await client.call_tool("execute_code", {"code": "kept = 1\nimport time\ntime.sleep(1.5)\n'slept'"})
        assert not before.is_error, before.content
        policy = Path(gateway.policies.path)
        policy.write_text(policy.read_text() + "sandbox:\n  timeout_s: 1\n  memory_mb: 300\n")
        assert gateway.policies.check()  # what the watcher thread does on its next poll
        assert gateway.sandbox.config.timeout_s == 1 and gateway.sandbox.config.memory_mb == 300
        after = await client.call_tool("execute_code", {"code": "'kept' in globals()"})
        slow = await client.call_tool("execute_code", {"code": "import time\ntime.sleep(1.5)\n'slept'"})
    assert not after.is_error and after.structured_content["result"] == "False"  # new jail limits: new interpreter
    assert slow.is_error and slow.structured_content["outcome"] == "timeout"
