"""A database holding a known set of audit events, written through the real AuditWriter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from veil import db
from veil.audit import AuditWriter
from veil.audit import events as ev
from veil.audit.chain import append_events
from veil.audit.events import AuditEvent, Untokenised


def _call(principal: str, upstream: str, tool: str, **kw: object) -> AuditEvent:
    return AuditEvent(
        kind=ev.TOOL_CALL,
        principal=principal,
        roles=["support"],
        session_id=f"sess-{principal}",
        scope=f"session:sess-{principal}",
        upstream=upstream,
        tool=tool,
        args_digest="sha256:" + "00" * 32,
        duration_ms=10.0,
        policy_version="p1" * 32,
        **kw,  # type: ignore[arg-type]
    )


def known_events() -> list[AuditEvent]:
    events: list[AuditEvent] = [
        AuditEvent(
            kind=ev.POLICY_LOAD,
            principal="veil",
            policy_version="p1" * 32,
            detail={"path": "policy.yaml", "reason": "start"},
        ),
    ]
    for who in ("alice", "bob", "carol"):
        events.append(
            AuditEvent(kind=ev.SESSION_OPEN, principal=who, session_id=f"sess-{who}", scope=f"session:sess-{who}")
        )
    for i in range(4):
        events.append(
            _call(
                "alice",
                "crm",
                "find_customers",
                entities={"EMAIL_ADDRESS": 2, "PERSON": 3},
                tokens=[f"[EMAIL_ADDRESS_{i}]", f"[PERSON_{i}]"],
            )
        )
    for i in range(2):
        events.append(
            _call(
                "alice",
                "mailer",
                "send_email",
                decision="allow",
                rule="flows[0]:crm-to-mailer",
                untokenised=[
                    Untokenised(
                        f"[EMAIL_ADDRESS_{i}]", "EMAIL_ADDRESS", "mailer__send_email:to", "flows[0]:crm-to-mailer"
                    )
                ],
            )
        )
    events.append(
        _call(
            "bob",
            "crm",
            "delete_customer",
            outcome=ev.DENIED,
            decision="deny",
            rule="access[1]",
            detail={"error": "AccessDenied"},
        )
    )
    for _ in range(2):
        events.append(
            _call(
                "bob",
                "mailer",
                "send_email",
                outcome=ev.DENIED,
                decision="deny",
                rule="default:same-upstream",
                detail={"error": "FlowDenied", "entity_type": "EMAIL_ADDRESS"},
            )
        )
    events.append(
        _call(
            "carol",
            "tickets",
            "create_ticket",
            outcome=ev.ERROR,
            entities={"PHONE_NUMBER": 1},
            tokens=["[PHONE_NUMBER_1]"],
            detail={"error": "UpstreamError"},
        )
    )
    for outcome, who in (("ok", "alice"), ("ok", "alice"), ("timeout", "carol"), ("memory", "carol")):
        events.append(
            AuditEvent(
                kind=ev.CODE_EXECUTE,
                principal=who,
                session_id=f"sess-{who}",
                scope=f"session:sess-{who}",
                tool="execute_code",
                outcome=outcome,
                entities={"PHONE_NUMBER": 1} if outcome == "ok" else {},
                duration_ms=50.0,
                detail={"cpu_s": 0.5, "max_rss_mb": 40.0},
            )
        )
    for _ in range(2):
        events.append(
            AuditEvent(
                kind=ev.AUTH_FAILED, outcome=ev.DENIED, detail={"reason": "unknown API key", "client": "10.0.0.9"}
            )
        )
    return events


@dataclass
class Seeded:
    url: str
    engine: sa.Engine
    events: list[AuditEvent]
    day: date  # the UTC day the writer stamped them with

    @property
    def start(self) -> str:
        return (self.day - timedelta(days=1)).isoformat()

    @property
    def end(self) -> str:
        return (self.day + timedelta(days=1)).isoformat()


@pytest.fixture(scope="module")
def seeded(make_database: Callable[[], str]) -> Iterator[Seeded]:
    url = make_database()
    engine = db.create_engine(url)
    # Noise outside the reported period, months earlier (backfilled with an explicit clock).
    with engine.begin() as conn:
        append_events(conn, [_call("mallory", "crm", "export_all")] * 1, clock=datetime(2025, 1, 5, tzinfo=UTC))
    events = known_events()
    with AuditWriter(engine) as writer:
        for event in events:
            writer.record_sync(event)
    with engine.connect() as conn:
        day = conn.execute(sa.text("SELECT max(ts) FROM audit_events")).scalar_one().astimezone(UTC).date()
    yield Seeded(url, engine, events, day)
    engine.dispose()
