"""Scale-out, proved with real processes on loopback: two ``veil serve --http`` replicas sharing one
PostgreSQL behind HAProxy running the shipped ``deploy/haproxy/haproxy.cfg``; real MCP clients
(the SDK's streamable HTTP transport) through the balancer.

* Handshake-era sessions stay on the replica that initialised them (``Mcp-Session-Id`` affinity);
  2026-07-28 requests are spread over both replicas.
* The replicas agree on tokens: one value gets one token whichever replica tokenised it, and a
  token issued by one replica is turned back into its value by the other (the shared vault).
* One replica is killed (SIGKILL) while every session is calling: the other replica's sessions
  see no error at all; the dead replica's clients get a clear error and a new session works.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from deploy.loopback import CUSTOMERS, Replica, agent, audit_count, haproxy, shared_secrets, start_replicas, stop
from veil import db
from veil.auth import create_key

pytestmark = pytest.mark.anyio


# What a client of the killed replica is told (the MCP SDK's wording): its call in flight lost its
# response stream, or HAProxy answered for the dead server, or the live replica does not know the
# session (404, the spec's "start a new session").
CLEAR_ERRORS = {
    "SSE stream ended without a response",
    "Server returned an error response",
    "Session not found",
    "Session terminated",
    "Server disconnected without sending a response.",  # the SDK ends the client (httpx2 transport error)
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def cluster(make_database: Callable[[], str], tmp_path: Path) -> Iterator[tuple[list[Replica], str, str, str]]:
    database_url = make_database()
    engine = db.create_engine(database_url)
    try:
        _, key = create_key(engine, "alice", ["support"])  # one key, valid on every replica
    finally:
        engine.dispose()
    replicas = start_replicas(2, tmp_path, shared_secrets(database_url))
    try:
        probe = httpx.get(f"http://127.0.0.1:{replicas[0].port}/readyz", timeout=30)
        # Without the probe endpoints, /readyz is an unknown path (404), refused by authentication (401).
        if probe.status_code in (401, 404):  # the balancer's health check needs it (docs/operations.md)
            pytest.skip("this veil serve --http has no /readyz, which deploy/haproxy/haproxy.cfg checks")
        with haproxy(tmp_path, replicas) as url:
            yield replicas, url, key, database_url
    finally:
        stop(replicas)


def transport_error(exc: BaseException) -> str:
    """The message of the HTTP transport error inside what the SDK raised when it ended a client."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = transport_error(inner)
            if found != "":
                return found
        return ""
    if isinstance(exc, httpx2.TransportError):
        return str(exc)
    return transport_error(exc.__cause__) if exc.__cause__ is not None else ""


@dataclass
class Held:
    """A handshake-era agent living in a task of its own: when a replica dies mid-response the
    SDK ends the whole client (an httpx2 transport error escapes its task group), and that must
    end this agent only, as it would end one process among many agents."""

    url: str
    key: str
    agent: Any = None
    crash: str | None = None
    work: Any = None  # async (agent) -> None, run in this task once ``go`` is set
    go: anyio.Event = field(default_factory=anyio.Event)
    worked: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            async with agent(self.url, self.key) as a:
                self.agent = a
                started = True
                task_status.started()
                await self.go.wait()
                await self.work(a)
                self.worked.set()
                await self.release.wait()
        except Exception as exc:
            if not started:
                raise
            self.crash = transport_error(exc) or repr(exc)
        finally:
            self.worked.set()


def email_token(result) -> str:
    assert not result.is_error, result
    return result.structured_content["email"]


@pytest.mark.req("deploy:scale-out")
async def test_replicas_behind_haproxy_share_tokens_and_survive_a_replica_kill(cluster) -> None:
    replicas, url, key, database_url = cluster
    by_name = {r.name: r for r in replicas}
    real_email = None

    async with anyio.create_task_group() as actors:
        held = [Held(url, key) for _ in range(4)]
        for h in held:
            await actors.start(h.run)
        legacy = [h.agent for h in held]
        holder = {id(h.agent): h for h in held}
        # Affinity: each session's requests (initialize, POSTs, the GET stream) all reached one replica,
        # and the sessions were spread over both.
        tokens = {}

        async def first_call(a) -> None:  # at once: each session starts its own CRM upstream
            tokens[id(a)] = email_token(await a.client.call_tool("crm__get_customer", {"customer_id": "C0001"}))

        async with anyio.create_task_group() as tg:
            for a in legacy:
                tg.start_soon(first_call, a)
        for a in legacy:
            assert len(set(a.replicas)) == 1, a.replicas
        assert {a.replica for a in legacy} == {"veil1", "veil2"}
        # One value, one token, whichever replica tokenised it (principal scope, shared vault).
        assert len(set(tokens.values())) == 1
        token = next(iter(tokens.values()))
        assert token.startswith("[EMAIL_ADDRESS_")

        # 2026-07-28: no session id, so requests are spread over both replicas, with the same token.
        async with agent(url, key, mode="auto") as modern:
            assert modern.client.protocol_version >= "2026"
            seen = set()
            for _ in range(4):
                got = email_token(await modern.client.call_tool("crm__get_customer", {"customer_id": "C0001"}))
                seen.add(modern.replica)
                assert got == token
            assert seen == {"veil1", "veil2"}

        # A token issued on one replica (a customer only veil1 has read) is turned back into its
        # value by the other replica, for that replica's own CRM (the default policy's
        # same-upstream flow), and veil2 gives that value the same token when it reads it itself.
        on1 = next(a for a in legacy if a.replica == "veil1")
        on2 = next(a for a in legacy if a.replica == "veil2")
        issued = email_token(await on1.client.call_tool("crm__get_customer", {"customer_id": "C0003"}))
        assert issued != token
        note = await on2.client.call_tool("crm__add_note", {"customer_id": "C0002", "note": f"write to {issued}"})
        assert not note.is_error, note
        notes = [c for c in by_name["veil2"].crm_calls() if c.get("tool") == "add_note"]
        assert len(notes) == 1
        real_email = notes[0]["arguments"]["note"].removeprefix("write to ")
        assert real_email == CUSTOMERS["C0003"]["email"]
        assert real_email not in json.dumps(note.model_dump(mode="json"))
        assert all(c["arguments"].get("customer_id") != "C0003" for c in by_name["veil2"].crm_calls())
        assert email_token(await on2.client.call_tool("crm__get_customer", {"customer_id": "C0003"})) == issued

        # Under load: every session, and a 2026-07-28 client, calls in a loop; veil1 is killed part-way.
        victims = [a for a in legacy if a.replica == "veil1"]
        survivors = [a for a in legacy if a.replica == "veil2"]
        ok: dict[int, int] = {id(a): 0 for a in legacy}
        errors: dict[int, list[str]] = {id(a): [] for a in legacy}
        killed = anyio.Event()

        async def load(a) -> None:
            calls_after_kill = 0
            while calls_after_kill < 5:
                try:
                    result = await a.client.call_tool("crm__ping", {})
                    assert not result.is_error
                    ok[id(a)] += 1
                except MCPError as exc:
                    errors[id(a)].append(exc.error.message)
                    if a in victims:
                        return  # this session is gone: its client must start a new one
                if killed.is_set():
                    calls_after_kill += 1
                else:
                    await anyio.sleep(0)

        modern_after_kill: list[str | None] = []  # the replica that answered each call started after the kill
        modern_errors: list[tuple[bool, str]] = []  # (started after the kill, message)

        async def modern_load() -> None:
            while len(modern_after_kill) < 5:
                after = killed.is_set()
                try:
                    async with agent(url, key, mode="auto") as a:
                        while len(modern_after_kill) < 5:
                            after = killed.is_set()
                            try:
                                result = await a.client.call_tool("crm__ping", {})
                                assert not result.is_error
                                if after:
                                    modern_after_kill.append(a.replica)
                            except MCPError as exc:
                                modern_errors.append((after, exc.error.message))
                            await anyio.sleep(0)
                except Exception as exc:  # the SDK ends a client whose response was cut off: reconnect
                    modern_errors.append((after, transport_error(exc)))

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for a in legacy:
                    holder[id(a)].work = load
                    holder[id(a)].go.set()
                tg.start_soon(modern_load)
                while min(ok.values()) < 3:  # every session is busy before the kill
                    await anyio.sleep(0.05)
                by_name["veil1"].kill()
                killed.set()
                for h in held:
                    await h.worked.wait()

        for a in survivors:
            assert errors[id(a)] == [] and holder[id(a)].crash is None, (errors[id(a)], holder[id(a)].crash)
            assert len(set(a.replicas)) == 1
        for a in victims:
            told = [*errors[id(a)], *filter(None, [holder[id(a)].crash])]
            assert told, "a session of the killed replica cannot go on silently"
            assert told[-1] in CLEAR_ERRORS, told
        # The 2026-07-28 client goes on: requests meant for veil1 are redispatched to veil2. Only a
        # call in flight on veil1 when it died may fail.
        assert set(modern_after_kill) == {"veil2"}
        assert [m for after, m in modern_errors if after] == []
        assert len(modern_errors) <= 1 and all(m in CLEAR_ERRORS for _, m in modern_errors), modern_errors

        # Its clients reconnect: a new session lands on the live replica, with the same token.
        async with agent(url, key) as again:
            assert email_token(await again.client.call_tool("crm__get_customer", {"customer_id": "C0001"})) == token
            assert again.replica == "veil2"
        for h in held:
            h.release.set()

    # The audit trail of the shared database has both replicas' calls.
    calls = audit_count(database_url, kind="tool.call")
    assert calls >= sum(ok.values())
    assert real_email is not None
