"""The driver of the adversarial corpus (``corpus.py``): every case attacks the invariant through
the real gateway with a real MCP client, and every case is checked in all four places the
invariant covers: what the agent received, what the sandbox saw, the audit rows, Veil's logs."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from security import hostile_server
from security.conftest import CUSTOMERS, GatewayProcess, customer
from security.corpus import CASES, CLASSES, Case
from security.leakcheck import leaks

pytestmark = pytest.mark.anyio

FIRST_CASE_CUSTOMER = 2  # C0002 for the first case, C0003 for the next, ... (C0101+ are hostile's)
HOSTILE_FIRST = min(hostile_server.VECTOR_PERSON.values())
assert FIRST_CASE_CUSTOMER + len(CASES) <= HOSTILE_FIRST + 1, "more cases than customers: raise CRM_RECORDS"
UNREACHABLE = "is unreachable"  # the gateway's error for an upstream that is down (veil/proxy/upstreams.py)
PLACEHOLDER = re.compile(r"<<([a-z_]+)(?:\.([a-z_.]+))?>>")


class Capture:
    """Everything the agent side receives during one case, as text, from every vector."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def add(self, value: Any) -> None:
        if isinstance(value, BaseException):
            value = getattr(value, "message", None) or str(value)
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
        self.seen.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))

    def text(self) -> str:
        return "\n".join(self.seen)


class Agent:
    """One MCP session shared by the corpus (a long agent session, as a real one would be: each
    case uses a customer of its own, so cases cannot see each other's values). Notifications
    that arrive go to the current case's capture."""

    def __init__(self) -> None:
        self.cap = Capture()
        self.client: Client

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.cap.add(params)

    async def on_message(self, message: Any) -> None:
        self.cap.add(message)

    def connect(self, url: str) -> Client:
        return Client(
            url, mode="legacy", logging_callback=self.on_log, message_handler=self.on_message, read_timeout_seconds=300
        )


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
async def corpus_agent(corpus_gateway: GatewayProcess) -> AsyncIterator[Agent]:
    agent = Agent()
    async with agent.connect(corpus_gateway.url) as client:
        agent.client = client
        yield agent


def _lookup(record: dict[str, Any], path: str) -> str:
    value: Any = record
    for part in path.split("."):
        value = value[part]
    return str(value)


class Env:
    """Fills ``<<...>>`` placeholders for one case."""

    def __init__(self, case: Case, cid: str, gateway: GatewayProcess) -> None:
        self.case, self.cid, self.gw = case, cid, gateway
        self.tokens: dict[str, Any] = {}
        self.sandbox = ""

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return PLACEHOLDER.sub(self._one, value)
        if isinstance(value, dict):
            return {self.fill(k): self.fill(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.fill(v) for v in value]
        return value

    def _one(self, m: re.Match[str]) -> str:
        name, path = m.group(1), m.group(2)
        if name == "cid":
            return self.cid
        if name == "files":
            return str(self.gw.files_dir)
        if name == "case":
            return self.case.id
        if name == "raw":
            return _lookup(customer(self.cid), path)
        if name == "c":
            if not self.tokens:
                raise AssertionError(f"{self.case.id}: <<c.{path}>> needs prefetch=True")
            return _lookup(self.tokens, path)
        raise AssertionError(f"{self.case.id}: unknown placeholder {m.group()}")


def needle_values(case: Case, cid: str) -> list[str]:
    out = []
    for needle in case.needles:
        if needle.startswith("hostile:"):
            _, vector, fld = needle.split(":")
            out.append(str(CUSTOMERS[hostile_server.VECTOR_PERSON[vector]][fld]))
        elif needle == "date_of_birth_us":
            year, month, day = customer(cid)["date_of_birth"].split("-")
            out.append(f"{month}/{day}/{year}")
        elif needle == "email_local":
            out.append(customer(cid)["email"].split("@")[0])
        elif needle in ("street", "city", "zip"):
            out.append(customer(cid)["address"][needle])
        else:
            out.append(str(customer(cid)[needle]))
    return out


def sandbox_prelude(case: Case) -> str:
    return (
        "def dump(x):\n"
        f"    with open('seen-{case.id}.txt', 'a', encoding='utf-8') as fh:\n"
        "        fh.write(repr(x) + '\\n')\n"
    )


async def run_step(step: tuple[Any, ...], agent: Client, cap: Capture, env: Env, gateway: GatewayProcess) -> None:
    kind = step[0]
    try:
        if kind == "call":
            cap.add(await agent.call_tool(step[1], env.fill(step[2])))
        elif kind == "code":
            code = sandbox_prelude(env.case) + env.fill(step[1])
            cap.add(await agent.call_tool("execute_code", {"code": code}))
            env.sandbox = gateway.sandbox_files(env.case.id)  # read while the session's workspace lives
        elif kind == "list":
            cap.add({"instructions": getattr(agent, "instructions", None)})
            cap.add(await agent.list_tools())
            cap.add(await agent.list_resources())
            cap.add(await agent.list_resource_templates())
            cap.add(await agent.list_prompts())
        elif kind == "read":
            cap.add(await agent.read_resource(env.fill(step[1])))
        elif kind == "prompt":
            cap.add(await agent.get_prompt(step[1], env.fill(step[2])))
        elif kind == "dos":
            await _dos(step, agent, cap, env, gateway)
        else:
            raise AssertionError(f"unknown step kind {kind!r}")
    except MCPError as exc:
        cap.add(exc)


async def _dos(step: tuple[Any, ...], agent: Client, cap: Capture, env: Env, gateway: GatewayProcess) -> None:
    """The heavy call in this session while another session pings; both must complete correctly."""
    pings: list[Any] = []
    done = anyio.Event()

    async def heavy() -> None:
        try:
            cap.add(await agent.call_tool(step[1], env.fill(step[2])))
        except MCPError as exc:
            cap.add(exc)
        finally:
            done.set()

    async with anyio.create_task_group() as tg, Client(gateway.url, mode="legacy") as other:
        tg.start_soon(heavy)
        for _ in range(5):
            pings.append((await other.call_tool("crm__ping", {})).structured_content)
        with anyio.fail_after(600):  # a hang guard for the heavy call, not a timing assertion
            await done.wait()
    assert pings == [{"ok": True}] * 5


def _param(case: Case, index: int) -> Any:
    marks = [pytest.mark.req("security:adversarial-corpus")]
    if case.pending:
        # Only the leak check's AssertionError is the expected failure; any other error fails.
        marks.append(pytest.mark.xfail(strict=True, raises=AssertionError, reason=case.pending))
    return pytest.param(case, index, id=f"{case.cls}-{case.id}", marks=marks)


@pytest.mark.parametrize(("case", "index"), [_param(c, i) for i, c in enumerate(CASES)])
async def test_attack(case: Case, index: int, corpus_gateway: GatewayProcess, corpus_agent: Agent) -> None:
    await run_case(case, index, corpus_gateway, corpus_agent)


# fastmcp's client is a second, independent MCP client implementation: the direct-call and
# listing cases, first of each class, run through it too.
FASTMCP_CASES = [
    (i, c)
    for i, c in enumerate(CASES)
    if all(step[0] in ("call", "list") for step in c.steps)
    and c.id == next(d.id for d in CASES if d.cls == c.cls and all(st[0] in ("call", "list") for st in d.steps))
]


class FastMCPAdapter:
    """fastmcp's ``Client`` behind the method names the driver uses (protocol results, errors as text)."""

    def __init__(self, client: Any) -> None:
        self.c = client

    @property
    def instructions(self) -> str | None:
        result = getattr(self.c, "initialize_result", None)
        return getattr(result, "instructions", None)

    async def _run(self, call: Any) -> Any:
        try:
            return await call
        except Exception as exc:  # fastmcp raises its own error types; the driver captures text
            return f"{type(exc).__name__}: {exc}"

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        return await self._run(self.c.call_tool_mcp(name, arguments))

    async def list_tools(self) -> Any:
        return await self._run(self.c.list_tools_mcp())

    async def list_resources(self) -> Any:
        return await self._run(self.c.list_resources_mcp())

    async def list_resource_templates(self) -> Any:
        return await self._run(self.c.list_resource_templates_mcp())

    async def list_prompts(self) -> Any:
        return await self._run(self.c.list_prompts_mcp())


@pytest.fixture(scope="session")
async def fastmcp_agent(corpus_gateway: GatewayProcess) -> AsyncIterator[Agent]:
    import fastmcp

    agent = Agent()
    async with fastmcp.Client(corpus_gateway.url, timeout=300) as client:
        agent.client = FastMCPAdapter(client)  # type: ignore[assignment]
        yield agent


@pytest.mark.parametrize(("case", "index"), [_param(c, i) for i, c in FASTMCP_CASES])
async def test_attack_with_fastmcp_client(
    case: Case, index: int, corpus_gateway: GatewayProcess, fastmcp_agent: Agent
) -> None:
    await run_case(case, index, corpus_gateway, fastmcp_agent)


async def run_case(case: Case, index: int, gw: GatewayProcess, holder: Agent) -> None:
    """Run one case in ``holder``'s session and check all four places."""
    assert case.cls in CLASSES
    cid = CUSTOMERS[FIRST_CASE_CUSTOMER + index]["id"]
    env = Env(case, cid, gw)
    cap = holder.cap = Capture()
    agent = holder.client
    log_from, audit_from = gw.log_offset(), gw.audit_seq()
    if case.prefetch:
        got = await agent.call_tool("crm__get_customer", {"customer_id": cid})
        assert not isinstance(got, str) and not got.is_error, got
        env.tokens = got.structured_content
        cap.add(got)
    prefetched = len(cap.seen)
    for step in case.steps:
        await run_step(step, agent, cap, env, gw)
    after_prefetch = "\n".join(cap.seen[prefetched:])
    # a case whose upstream never answered proves nothing (it passed vacuously without dbhub)
    assert UNREACHABLE not in after_prefetch, f"{case.id}: an upstream was unreachable:\n{after_prefetch[-600:]}"
    captured = {
        "agent": cap.text(),
        "sandbox": env.sandbox,
        "audit": gw.audit_since(audit_from),
        "logs": gw.log_since(log_from),
    }
    if os.environ.get("VEIL_SEC_DUMP"):  # debugging aid: what each case captured, one file per place
        for where, text in captured.items():
            Path(os.environ["VEIL_SEC_DUMP"], f"{case.id}.{where}.txt").write_text(text)
    found = leaks({k: v for k, v in captured.items() if k in case.places}, needle_values(case, cid))
    problems = [f"{leak.where}: {leak.value!r} ({leak.form})" for leak in found]
    problems += [
        f"agent received the record's own token {t}" for t in env.fill(list(case.forbid)) if t in after_prefetch
    ]
    problems += [
        f"agent did not receive {t!r} intact" for t in env.fill(list(case.intact)) if t not in captured["agent"]
    ]
    assert not problems, f"{CLASSES[case.cls]} / {case.id}:\n  " + "\n  ".join(problems)
