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
    """Command lines of demo upstream subprocesses of this test process."""
    import psutil

    lines = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
    return [line for line in lines if "_server.py" in line]


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
async def test_an_mcp_session_presented_by_another_principal_is_refused(make_config, tmp_path: Path) -> None:
    async with serving(make_config(auth={"required": True})) as (gateway, url):
        start = last_seq(gateway)
        _, bob = await gateway.in_thread(create_key, gateway.engine, "bob", ["support"])
        _, eve = await gateway.in_thread(create_key, gateway.engine, "eve", ["support"])
        headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        async with httpx.AsyncClient(timeout=30) as http:

            async def post(credential: str, message: dict[str, Any], session: str | None = None) -> httpx.Response:
                extra = {"authorization": f"Bearer {credential}", "mcp-protocol-version": "2025-06-18"}
                if session is not None:
                    extra["mcp-session-id"] = session
                return await http.post(url, json=message, headers={**headers, **extra})

            opened = await post(bob, INITIALIZE)
            assert opened.status_code == 200
            session = opened.headers["mcp-session-id"]
            await post(bob, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
            get = {"name": "crm__get_customer", "arguments": {"customer_id": "C0001"}}
            as_bob = await post(bob, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": get}, session)
            assert '"result"' in as_bob.text and "[EMAIL_ADDRESS_1]" in as_bob.text

            # Eve has a valid key but presents Bob's MCP session: she gets neither his tools nor his tokens.
            mail = {"name": "mailer__send_email", "arguments": {"to": "[EMAIL_ADDRESS_1]", "subject": "s", "body": "b"}}
            for n, (method, params) in enumerate([("tools/call", mail), ("tools/call", get), ("tools/list", {})]):
                as_eve = await post(eve, {"jsonrpc": "2.0", "id": 10 + n, "method": method, "params": params}, session)
                assert '"error"' in as_eve.text and "another principal" in as_eve.text, as_eve.text
                assert '"result"' not in as_eve.text
                assert '"code":-32004' in as_eve.text.replace(" ", "")  # AuthError's code
        principals = {s.principal.name for s in gateway.sessions.values()}
        refusals = events_since(gateway, start, "auth.failed")
    assert [(r.principal, r.outcome) for r in refusals] == [("eve", "denied")] * 3
    assert all("another principal" in r.detail["reason"] for r in refusals)
    assert principals == {"bob"}
    assert not (tmp_path / "outbox.jsonl").exists()
    crm_calls = (tmp_path / "crm-calls.jsonl").read_text().splitlines()
    assert len(crm_calls) == 1  # Bob's call only
