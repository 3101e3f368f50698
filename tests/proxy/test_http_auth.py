"""HTTP authentication at the gateway, end to end: raw HTTP requests to see the status codes, a real
MCP client (over httpx2 with an Authorization header) for the success path, real Postgres for the
API keys and the audit trail, and the demo upstreams as real subprocesses.

A refused request must be answered with 401 before the MCP layer sees it: it is audited as
``auth.failed``, opens no session and so starts and calls no upstream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from proxy.harness import serving
from veil.auth import create_key, revoke_key

pytestmark = pytest.mark.anyio

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}},
}
# A well-formed Veil API key that was never issued.
WRONG_KEY = "veil_aaaaaaaaaaaa_" + "A" * 43
ISSUER = "https://idp.example.test/"
AUDIENCE = "veil-gateway-tests"


async def post_initialize(url: str, credential: str | None) -> httpx.Response:
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    if credential is not None:
        headers["authorization"] = f"Bearer {credential}"
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(url, json=INITIALIZE, headers=headers)


@asynccontextmanager
async def agent_with(url: str, credential: str) -> AsyncIterator[Client]:
    """A real MCP client whose every request carries ``Authorization: Bearer <credential>``."""
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {credential}"}) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode="legacy", read_timeout_seconds=60) as client:
            yield client


def last_seq(gateway: Any) -> int:
    with gateway.engine.connect() as conn:
        return conn.execute(sa.text("SELECT coalesce(max(seq), 0) FROM audit_events")).scalar_one()


def events_since(gateway: Any, seq: int, kind: str) -> list[Any]:
    """Events of ``kind`` after ``seq`` (the test database is shared by the run; tests run one by one)."""
    with gateway.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT kind, outcome, principal, roles, tool, detail FROM audit_events "
                "WHERE seq > :seq AND kind = :kind ORDER BY seq"
            ),
            {"seq": seq, "kind": kind},
        ).all()


def upstream_processes() -> list[str]:
    """Command lines of demo upstream subprocesses of this test process's own gateway (direct
    children: a session-scoped ``veil serve`` of another test package has its own upstreams,
    which are its children, not ours)."""
    import psutil

    lines = []
    for p in psutil.Process().children(recursive=False):
        try:
            lines.append(" ".join(p.cmdline()))
        except (psutil.ZombieProcess, psutil.NoSuchProcess):  # exited between listing and reading
            continue
    return [line for line in lines if "_server.py" in line]


async def tenant_key(gateway: Any, principal: str, roles: list[str], tenant: str) -> tuple[str, str]:
    return await gateway.in_thread(lambda: create_key(gateway.engine, principal, roles, tenant=tenant))


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["error"]["message"].startswith("unauthorized:")


@pytest.mark.req("auth:http")
@pytest.mark.req("auth:api-keys")
async def test_api_keys_missing_wrong_valid_and_revoked(make_config, tmp_path: Path) -> None:
    crm_log = tmp_path / "crm-calls.jsonl"
    async with serving(make_config(auth={"required": True})) as (gateway, url):
        start = last_seq(gateway)
        missing = await post_initialize(url, None)
        wrong = await post_initialize(url, WRONG_KEY)
        assert_refused(missing)
        assert_refused(wrong)
        assert WRONG_KEY not in wrong.text  # the credential is not echoed back
        failed = events_since(gateway, start, "auth.failed")
        assert [r.outcome for r in failed] == ["denied", "denied"]
        assert "missing" in failed[0].detail["reason"] and failed[0].detail["path"] == "/mcp"
        assert all(WRONG_KEY not in str(r.detail) for r in failed)
        # Nothing behind the gateway moved: no session, no upstream started or called.
        assert gateway.sessions == {}
        assert events_since(gateway, start, "session.open") == []
        assert upstream_processes() == []
        assert not crm_log.exists()

        key_id, key = await gateway.in_thread(create_key, gateway.engine, "bob", ["support"])
        async with agent_with(url, key) as bob:
            got = await bob.call_tool("crm__get_customer", {"customer_id": "C0001"})
            assert not got.is_error and got.structured_content["id"] == "C0001"
            calls = events_since(gateway, start, "tool.call")
            assert [(r.principal, list(r.roles), r.tool) for r in calls] == [("bob", ["support"], "get_customer")]
            assert crm_log.exists()
            assert any("crm_server.py" in line for line in upstream_processes())  # the check above can see them

            # Revocation takes effect at once, also inside an MCP session that is already open.
            assert await gateway.in_thread(revoke_key, gateway.engine, key_id)
            mark = last_seq(gateway)
            with pytest.raises(MCPError) as cut_off:
                await bob.call_tool("crm__ping", {})
            assert cut_off.value.message.startswith("unauthorized:") and "revoked" in cut_off.value.message
            assert key not in cut_off.value.message
        assert len(events_since(gateway, mark, "tool.call")) == 0
        revoked = await post_initialize(url, key)
        assert_refused(revoked)
        # auth.failed rows are aggregated per source, reason and minute (veil/audit/aggregate.py): the
        # first revoked-key refusal of the minute is a row, later ones are counted into one more.
        refusals = [r for r in events_since(gateway, start, "auth.failed") if "revoked" in r.detail["reason"]]
        assert len(refusals) == 1 and refusals[0].detail["count"] == 1
        assert key not in str(refusals[0].detail)


@pytest.mark.req("auth:http")
async def test_optional_auth_still_refuses_wrong_credentials(make_config, tmp_path: Path) -> None:
    async with serving(make_config(auth={"required": False})) as (gateway, url):
        start = last_seq(gateway)
        assert_refused(await post_initialize(url, WRONG_KEY))
        assert_refused(await post_initialize(url, "not-a-credential"))
        assert len(events_since(gateway, start, "auth.failed")) == 2
        assert gateway.sessions == {} and not (tmp_path / "crm-calls.jsonl").exists()

        # Without credentials the request runs as the configured principal.
        async with Client(url, mode="legacy", read_timeout_seconds=60) as agent:
            assert (await agent.call_tool("crm__ping", {})).structured_content == {"ok": True}
        calls = events_since(gateway, start, "tool.call")
        assert [(r.principal, list(r.roles)) for r in calls] == [("alice", ["support"])]


@pytest.fixture
def signing_key(tmp_path: Path) -> tuple[ed25519.Ed25519PrivateKey, Path]:
    private = ed25519.Ed25519PrivateKey.generate()
    public = tmp_path / "idp-public.pem"
    public.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def make_jwt(private: ed25519.Ed25519PrivateKey, *, sub: str, roles: list[str], expires_in: int) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles, "iat": now, "exp": now + expires_in}
    if expires_in < 0:
        claims["iat"] = now + 2 * expires_in
    return jwt.encode(claims, private, algorithm="EdDSA")


@pytest.mark.req("auth:http")
@pytest.mark.req("auth:jwt")
async def test_jwt_valid_and_expired(make_config, signing_key, tmp_path: Path) -> None:
    private, public = signing_key
    auth = {"required": True, "jwt": {"issuer": ISSUER, "audience": AUDIENCE, "public_key_file": str(public)}}
    async with serving(make_config(auth=auth)) as (gateway, url):
        start = last_seq(gateway)
        expired = make_jwt(private, sub="carol", roles=["support"], expires_in=-3600)
        assert_refused(await post_initialize(url, expired))
        failed = events_since(gateway, start, "auth.failed")
        assert len(failed) == 1 and "expired" in failed[0].detail["reason"]
        assert gateway.sessions == {} and not (tmp_path / "crm-calls.jsonl").exists()

        valid = make_jwt(private, sub="carol", roles=["support"], expires_in=600)
        async with agent_with(url, valid) as carol:
            assert (await carol.call_tool("crm__ping", {})).structured_content == {"ok": True}
        calls = events_since(gateway, start, "tool.call")
        assert [(r.principal, list(r.roles), r.tool) for r in calls] == [("carol", ["support"], "ping")]


@pytest.mark.req("auth:http")
@pytest.mark.req("session:identity-bound")
async def test_an_mcp_session_presented_by_another_identity_is_refused(make_config, tmp_path: Path) -> None:
    """Bob of acme opens a session. A key of another tenant whose principal is also called bob,
    and Eve, present its id on POST, GET and DELETE: refused and audited; Bob's session lives on."""
    async with serving(make_config(auth={"required": True})) as (gateway, url):
        start = last_seq(gateway)
        _, bob = await tenant_key(gateway, "bob", ["support"], "acme")
        _, other_bob = await tenant_key(gateway, "bob", ["supervisor"], "globex")
        _, eve = await tenant_key(gateway, "eve", ["support"], "acme")
        headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        async with httpx.AsyncClient(timeout=30) as http:

            def extra(credential: str, session: str | None) -> dict[str, str]:
                out = {**headers, "authorization": f"Bearer {credential}", "mcp-protocol-version": "2025-06-18"}
                if session is not None:
                    out["mcp-session-id"] = session
                return out

            async def post(credential: str, message: dict[str, Any], session: str | None = None) -> httpx.Response:
                return await http.post(url, json=message, headers=extra(credential, session))

            opened = await post(bob, INITIALIZE)
            assert opened.status_code == 200
            session = opened.headers["mcp-session-id"]
            await post(bob, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
            get = {"name": "crm__get_customer", "arguments": {"customer_id": "C0001"}}
            as_bob = await post(bob, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": get}, session)
            assert '"result"' in as_bob.text and "[EMAIL_ADDRESS_1]" in as_bob.text

            # Same principal name, other tenant and key (whose role may export), and Eve: neither gets
            # Bob's tools or tokens, on any HTTP method.
            mail = {"name": "mailer__send_email", "arguments": {"to": "[EMAIL_ADDRESS_1]", "subject": "s", "body": "b"}}
            export = {"name": "crm__export_customers", "arguments": {}}
            for n, (who, method, params) in enumerate(
                [
                    (other_bob, "tools/call", export),
                    (other_bob, "tools/call", get),
                    (eve, "tools/call", mail),
                    (eve, "tools/list", {}),
                ]
            ):
                refused = await post(who, {"jsonrpc": "2.0", "id": 10 + n, "method": method, "params": params}, session)
                assert refused.status_code == 404 and '"result"' not in refused.text, refused.text
                assert refused.json()["error"]["code"] == -32004  # AuthError's code
            stream = await http.get(url, headers=extra(other_bob, session))
            assert stream.status_code == 404
            ended = await http.delete(url, headers=extra(eve, session))
            assert ended.status_code == 404

            # Bob's session is untouched.
            again = await post(bob, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": get}, session)
            assert '"result"' in again.text and "[EMAIL_ADDRESS_1]" in again.text
        principals = {(s.principal.name, s.principal.tenant) for s in gateway.sessions.values()}
        refusals = events_since(gateway, start, "auth.failed")
    assert [(r.principal, r.outcome) for r in refusals] == [("bob", "denied")] * 2 + [("eve", "denied")] * 2 + [
        ("bob", "denied"),
        ("eve", "denied"),
    ]
    assert all(r.detail["reason"] == "session_of_another_identity" for r in refusals)
    assert [r.detail["http_method"] for r in refusals][-2:] == ["GET", "DELETE"]
    assert principals == {("bob", "acme")}
    assert not (tmp_path / "outbox.jsonl").exists()
    crm_calls = (tmp_path / "crm-calls.jsonl").read_text().splitlines()
    assert len(crm_calls) == 2 and "export" not in "".join(crm_calls)  # Bob's calls only


@pytest.mark.req("session:identity-bound")
async def test_2026_agents_are_keyed_by_their_full_identity(make_config) -> None:
    """Without transport sessions, two keys whose principals share a name get two agent sessions."""
    async with serving(make_config(auth={"required": True})) as (gateway, url):
        start = last_seq(gateway)
        _, acme = await tenant_key(gateway, "bob", ["support"], "acme")
        _, globex = await tenant_key(gateway, "bob", ["support"], "globex")
        for key in (acme, globex, acme):
            async with (
                create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}) as http,
                Client(streamable_http_client(url, http_client=http), mode="auto") as agent,
            ):
                assert agent.protocol_version >= "2026"
                await agent.call_tool("crm__get_customer", {"customer_id": "C0001"})
        with gateway.engine.connect() as conn:
            calls = conn.execute(
                sa.text(
                    "SELECT tenant, session_id FROM audit_events WHERE seq > :s AND kind = 'tool.call' ORDER BY seq"
                ),
                {"s": start},
            ).all()
    assert [c.tenant for c in calls] == ["acme", "globex", "acme"]
    assert calls[0].session_id == calls[2].session_id != calls[1].session_id


@pytest.mark.req("session:idle-timeout")
async def test_idle_http_sessions_end_and_their_upstreams_stop(make_config) -> None:
    import anyio

    config = make_config(limits={"session_idle_timeout_s": 1})
    async with serving(config) as (gateway, url):
        start = last_seq(gateway)
        async with Client(url, mode="auto", read_timeout_seconds=60) as modern:
            await modern.call_tool("crm__ping", {})
            async with Client(url, mode="legacy", read_timeout_seconds=60) as legacy:
                await legacy.call_tool("crm__ping", {})
                assert gateway.sessions and upstream_processes()
                # Both clients stay connected but send nothing: their sessions end all the same.
                with anyio.fail_after(30):
                    while gateway.sessions or upstream_processes():
                        await anyio.sleep(0.1)
        closes = events_since(gateway, start, "session.close")
        opened = events_since(gateway, start, "session.open")
        assert len(opened) == 2  # one per client, each ended while its client was still connected
        assert len(closes) == 2 and {r.detail["reason"] for r in closes} <= {"idle", "closed"}

        # A handshake-era agent that holds its GET stream open and sends nothing: the open stream is
        # not activity (docs/architecture.md), so its session ends and its upstream process stops.
        start = last_seq(gateway)
        headers = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": "2025-06-18",
        }
        ping = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "crm__ping", "arguments": {}}}
        async with httpx.AsyncClient(timeout=30) as http:
            opened = await http.post(url, json=INITIALIZE, headers=headers)
            headers["mcp-session-id"] = opened.headers["mcp-session-id"]
            await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
            assert '"result"' in (await http.post(url, json=ping, headers=headers)).text
            assert upstream_processes()
            async with http.stream("GET", url, headers={**headers, "accept": "text/event-stream"}) as stream:
                assert stream.status_code == 200  # the standalone stream is open ...
                with anyio.fail_after(30):
                    while gateway.sessions or upstream_processes():  # ... and the session ends all the same
                        await anyio.sleep(0.1)
                (idle,) = events_since(gateway, start, "session.close")
                assert idle.detail["reason"] == "idle"
                # The transport session is kept: its next request gets a fresh agent session.
                assert '"result"' in (await http.post(url, json={**ping, "id": 3}, headers=headers)).text
                assert len(events_since(gateway, start, "session.open")) == 2
