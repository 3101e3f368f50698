"""The console mounted in ``veil serve --http`` under ``/console``: same identities, same trail,
and the MCP endpoint next to it unchanged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
import sqlalchemy as sa
from proxy.harness import serving

from veil import db
from veil.audit import events as ev
from veil.auth.keys import create_key
from veil.config import parse_config

from .conftest import ROOT

pytestmark = [pytest.mark.req("console:web"), pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_console_is_served_under_slash_console_by_the_gateway(
    make_database: Callable[[], str], data_dir_for: Callable[..., Path]
) -> None:
    url = make_database()
    engine = db.create_engine(url)
    key = create_key(engine, "olivia", ["compliance"])[1]
    security = create_key(engine, "sam", ["security"])[1]
    agent = create_key(engine, "agent-7", ["support"])[1]
    engine.dispose()
    data_dir = data_dir_for("veil-console-", 0o700)
    policy = data_dir / "policy.yaml"
    policy.write_text((ROOT / "policies" / "default.yaml").read_text())
    config = parse_config(
        {
            "database_url": url,
            "data_dir": str(data_dir),
            "policy": str(policy),
            "expose": "direct",
            "limits": {"ner_workers": 1},
        },
        source=data_dir / "veil.yaml",
    )
    async with serving(config) as (gateway, mcp_url), httpx.AsyncClient(timeout=30) as client:
        base = mcp_url.removesuffix("/mcp")
        assert (await client.get(f"{base}/console/login")).status_code == 200
        page = await client.get(f"{base}/console/audit?kind=policy.load", headers={"authorization": f"Bearer {key}"})
        assert page.status_code == 200
        assert "policy.load" in page.text and "chain verified" in page.text
        refused = await client.get(f"{base}/console/audit", headers={"authorization": f"Bearer {agent}"})
        assert refused.status_code == 403
        assert (await client.post(mcp_url, json={})).status_code == 401  # the MCP endpoint keeps its own auth

        # Roll-out writes the file the gateway watches; the gateway puts it in force.
        before = gateway.policy.version
        draft = policy.read_text().replace("name: default", "name: rolled-out", 1)
        rolled = await client.post(
            f"{base}/console/policies/rollout", data={"policy": draft}, headers={"authorization": f"Bearer {security}"}
        )
        assert rolled.status_code == 200 and "rolled out" in rolled.text

        def load_reasons() -> list[str]:
            with gateway.engine.connect() as conn:
                loads = conn.execute(
                    sa.text("SELECT detail->>'reason' FROM audit_events WHERE kind = :k ORDER BY seq"),
                    {"k": ev.POLICY_LOAD},
                )
                return [r[0] for r in loads]

        with anyio.fail_after(30):
            while gateway.policy.version == before:
                await anyio.sleep(0.05)
            # The new policy is in force before its policy.load event is committed: the watcher
            # thread records it through the event loop's audit writer, which this test's loop runs.
            while len(load_reasons()) < 2:
                await anyio.sleep(0.05)
        assert gateway.policy.name == "rolled-out"
        reasons = load_reasons()
        with gateway.engine.connect() as conn:
            views = conn.execute(
                sa.text("SELECT principal, outcome FROM audit_events WHERE kind = :k ORDER BY seq"),
                {"k": ev.CONSOLE_VIEW},
            ).all()
            (rollout,) = conn.execute(
                sa.text("SELECT principal, detail FROM audit_events WHERE kind = :k"), {"k": ev.POLICY_ROLLOUT}
            ).all()
    assert [tuple(v) for v in views] == [("olivia", "ok"), ("agent-7", "denied")]
    assert reasons == ["start", "file changed"]
    assert rollout.principal == "sam" and rollout.detail["old_version"] == before
