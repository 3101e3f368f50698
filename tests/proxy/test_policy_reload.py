"""Policy hot reload through a running gateway: the agent's MCP session keeps working while the
policy file is replaced; the new version decides the next calls and is audited; a broken file is
rejected and the old version stays in force."""

from __future__ import annotations

import hashlib
import os
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from examples.crm_data import generate_customers
from proxy.harness import outbox, serving

pytestmark = pytest.mark.anyio

CUSTOMERS = generate_customers(40, 7)

POLICY = textwrap.dedent(
    """
    metadata:
      name: reload-tests
      purposes: [testing]
    detection:
      entities: [PERSON, EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, US_SSN]
    tokens:
      scope: session
    flows:
      - id: {rule}
        entities: [EMAIL_ADDRESS]
        to: ["mailer__send_email"]
        effect: {effect}
    access:{extra_access}
      - id: everyone
        tools: ["*"]
        effect: allow
    """
)
NO_TICKETS = "\n  - id: no-tickets\n    tools: ['tickets__*']\n    effect: deny"
DENYING = POLICY.format(rule="no-mail-yet", effect="deny", extra_access="")
# The new version allows the e-mail and withdraws the tickets tools.
ALLOWING = POLICY.format(rule="mail-now-allowed", effect="allow", extra_access=NO_TICKETS)
# Fails to load: an unknown effect.
BROKEN = POLICY.format(rule="broken", effect="perhaps", extra_access="")


def replace_atomically(path: Path, text: str) -> str:
    """Write ``text`` to a temporary file next to ``path`` and rename it over ``path``; returns its sha256."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return hashlib.sha256(text.encode()).hexdigest()


def events(gateway: Any, kind: str, since: int = 0) -> list[Any]:
    with gateway.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT seq, kind, outcome, tool, rule, session_id, policy_version, detail FROM audit_events "
                "WHERE kind = :kind AND seq > :since ORDER BY seq"
            ),
            {"kind": kind, "since": since},
        ).all()


def last_seq(gateway: Any) -> int:
    with gateway.engine.connect() as conn:
        return conn.execute(sa.text("SELECT coalesce(max(seq), 0) FROM audit_events")).scalar_one()


async def until(predicate: Any, what: str, *, timeout_s: float = 10.0) -> Any:
    """Poll ``predicate`` (bounded) until it returns something truthy."""
    try:
        with anyio.fail_after(timeout_s):
            while True:
                value = await predicate()
                if value:
                    return value
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what} within {timeout_s:g} s") from None


@pytest.mark.req("policy:hot-reload")
async def test_policy_change_takes_effect_without_dropping_the_session(make_config, tmp_path: Path) -> None:
    config = make_config(policy_text=DENYING)
    policy_file = Path(config.policy)
    old_version = hashlib.sha256(DENYING.encode()).hexdigest()
    async with serving(config) as (gateway, url), Client(url, mode="legacy", read_timeout_seconds=60) as agent:
        assert gateway.policy.version == old_version
        record = (await agent.call_tool("crm__get_customer", {"customer_id": "C0001"})).structured_content
        mail = {"to": record["email"], "subject": "Hello", "body": "Your order shipped."}
        with pytest.raises(MCPError) as refused:
            await agent.call_tool("mailer__send_email", mail)
        assert "no-mail-yet" in refused.value.message
        assert "tickets__create_ticket" in {t.name for t in (await agent.list_tools()).tools}
        (session_id,) = gateway.sessions
        start = last_seq(gateway)

        # The agent keeps calling in the same session while the policy file is replaced.
        stop = anyio.Event()
        background: dict[str, int] = {"ok": 0, "failed": 0}

        async def keep_calling() -> None:
            while not stop.is_set():
                try:
                    got = await agent.call_tool("crm__ping", {})
                    background["ok" if got.structured_content == {"ok": True} else "failed"] += 1
                except MCPError:
                    background["failed"] += 1

        async def mail_goes_through() -> bool:
            await anyio.to_thread.run_sync(gateway.policies.check)  # do not wait for the watcher's poll
            try:
                await agent.call_tool("mailer__send_email", mail)
            except MCPError as exc:
                assert "no-mail-yet" in exc.message  # refused under the old version only
                return False
            return True

        async def calls_running() -> bool:
            return background["ok"] > 0

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_calling)
            await until(calls_running, "the agent's calls did not start")
            new_version = replace_atomically(policy_file, ALLOWING)
            await until(mail_goes_through, "the new policy did not take effect")
            await agent.call_tool("crm__ping", {})
            stop.set()

        assert background["failed"] == 0 and background["ok"] > 0
        assert gateway.policy.version == new_version != old_version
        assert list(gateway.sessions) == [session_id]  # the same agent session throughout
        names = {t.name for t in (await agent.list_tools()).tools}
        assert "mailer__send_email" in names and not any(n.startswith("tickets__") for n in names)
        sent = outbox(tmp_path / "outbox.jsonl")
        assert [m["arguments"]["to"] for m in sent] == [CUSTOMERS[0]["email"]]

        loads = events(gateway, "policy.load", start)
        assert [(r.policy_version, r.detail["reason"]) for r in loads] == [(new_version, "file changed")]
        # A call carries the version that decided it: pings in flight during the switch may carry
        # the old one, the successful e-mail and every call begun after the switch the new one.
        mails = [r for r in events(gateway, "tool.call", start) if r.tool == "send_email"]
        assert [(r.outcome, r.rule, r.policy_version) for r in mails][-1] == (
            "ok",
            "flows[0]:mail-now-allowed",
            new_version,
        )
        assert all(r.policy_version == old_version for r in mails[:-1] if r.outcome == "denied")
        assert all(r.session_id == session_id for r in events(gateway, "tool.call", start))
        mark = last_seq(gateway)
        await agent.call_tool("crm__ping", {})
        await agent.call_tool("crm__get_customer", {"customer_id": "C0002"})
        later = events(gateway, "tool.call", mark)
        assert [(r.tool, r.policy_version) for r in later] == [("ping", new_version), ("get_customer", new_version)]

        # A broken policy is rejected: the old (allowing) version stays in force, calls keep working.
        mark = last_seq(gateway)
        replace_atomically(policy_file, BROKEN)

        async def rejected() -> list[Any]:
            await anyio.to_thread.run_sync(gateway.policies.check)
            return events(gateway, "policy.rejected", mark)

        rejections = await until(rejected, "the broken policy was not rejected")
        assert len(rejections) == 1 and rejections[0].outcome == "error"
        assert rejections[0].policy_version == new_version
        assert str(policy_file) in rejections[0].detail["path"]
        assert gateway.policy.version == new_version
        again = await agent.call_tool("mailer__send_email", mail)
        assert not again.is_error
        assert len(outbox(tmp_path / "outbox.jsonl")) == 2
        assert list(gateway.sessions) == [session_id]
        after = events(gateway, "tool.call", mark)
        assert [(r.tool, r.outcome, r.policy_version) for r in after] == [("send_email", "ok", new_version)]
        assert events(gateway, "policy.load", mark) == []
