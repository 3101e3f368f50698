"""The report's "raw personal data sent by the agent" section: ranking, threshold, filters and
formats, over audit events written through the real AuditWriter (the gateway end of it is tested
in tests/proxy/test_agent_raw_pii.py)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from veil import db
from veil.audit import AuditWriter
from veil.audit import events as ev
from veil.cli import main

pytestmark = pytest.mark.req("audit:agent-raw-pii-visible")


def _call(who: str, session: str, raw: dict[str, int] | None) -> ev.AuditEvent:
    return ev.AuditEvent(
        kind=ev.TOOL_CALL,
        principal=who,
        session_id=session,
        scope=f"session:{session}",
        upstream="crm",
        tool="get_customer",
        detail={"method": "tools/call", "via": "direct", **({"agent_raw_pii": raw} if raw else {})},
    )


@pytest.fixture(scope="module")
def url(make_database: Callable[[], str]) -> str:
    url = make_database()
    engine = db.create_engine(url)
    events = (
        [_call("mallory", "s-probe", {"PHONE_NUMBER": 3, "EMAIL_ADDRESS": 1}) for _ in range(3)]  # 12 values
        + [_call("bob", "s-edge", {"US_SSN": 5}), _call("bob", "s-edge", {"US_SSN": 5})]  # exactly 10
        + [_call("carol", "s-typo", {"EMAIL_ADDRESS": 1}), _call("carol", "s-typo", None)]  # 1
        + [_call("alice", "s-clean", None) for _ in range(4)]  # tokens only
    )
    with AuditWriter(engine) as writer:
        for event in events:
            writer.record_sync(event)
    engine.dispose()
    return url


def run(url: str, out: Path, *extra: str) -> str:
    today = datetime.now(UTC).date()
    args = ["report", "--database-url", url, "--from", (today - timedelta(days=1)).isoformat()]
    args += ["--to", (today + timedelta(days=1)).isoformat(), "--out", str(out), *extra]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out.read_text()


def test_sessions_ranked_with_types_calls_and_the_threshold_flag(url: str, tmp_path: Path) -> None:
    raw = json.loads(run(url, tmp_path / "r.json"))["agent_raw_pii"]
    got = [
        (s["session_id"], s["principal"], s["raw_values"], s["calls"], s["entity_types"], s["flagged"])
        for s in raw["sessions"]
    ]
    assert got == [
        ("s-probe", "mallory", 12, 3, "EMAIL_ADDRESS PHONE_NUMBER", True),
        ("s-edge", "bob", 10, 2, "US_SSN", True),  # at the threshold: flagged
        ("s-typo", "carol", 1, 1, "EMAIL_ADDRESS", False),
    ]
    assert (raw["threshold"], raw["session_count"], raw["flagged_sessions"], raw["raw_values"]) == (10, 3, 2, 23)
    assert all(s["first"] <= s["last"] for s in raw["sessions"])

    raised = json.loads(run(url, tmp_path / "h.json", "--raw-pii-threshold", "11"))["agent_raw_pii"]
    assert [s["session_id"] for s in raised["sessions"] if s["flagged"]] == ["s-probe"]
    only_bob = json.loads(run(url, tmp_path / "b.json", "--principal", "bob"))["agent_raw_pii"]
    assert [s["session_id"] for s in only_bob["sessions"]] == ["s-edge"]


def test_csv_and_html_carry_the_same_numbers(url: str, tmp_path: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(run(url, tmp_path / "r.csv"))))
    mine = [r for r in rows if r["section"] == "agent_raw_pii"]
    totals = {r["metric"]: int(r["value"]) for r in mine if r["table"] == "totals"}
    assert totals == {"threshold": 10, "session_count": 3, "flagged_sessions": 2, "raw_values": 23}
    flagged = {
        r["key"].split("|")[0]: r["value"] for r in mine if r["table"] == "sessions" and r["metric"] == "flagged"
    }
    assert flagged == {"session_id=s-probe": "1", "session_id=s-edge": "1", "session_id=s-typo": "0"}
    html = run(url, tmp_path / "r.html")
    section = html[html.index("<section id='agent-raw-pii'") :]
    section = section[: section.index("</section>")]
    assert "2 session(s) flagged" in section and section.count("PROBING?") == 2 and "s-clean" not in section


def test_a_bad_threshold_is_explained(url: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "report",
            "--database-url",
            url,
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-02",
            "--out",
            str(tmp_path / "r.json"),
            "--raw-pii-threshold",
            "0",
        ],
    )
    assert result.exit_code == 2 and "--raw-pii-threshold" in result.output
