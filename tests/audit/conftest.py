"""Fixtures for audit tests: a fresh migrated database per test where the test tampers with it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from veil import db
from veil.audit.events import TOOL_CALL, AuditEvent, Untokenised


@pytest.fixture
def fresh_url(make_database: Callable[[], str]) -> str:
    return make_database()


@pytest.fixture
def fresh_engine(fresh_url: str) -> Iterator[sa.Engine]:
    eng = db.create_engine(fresh_url)
    yield eng
    eng.dispose()


def tool_event(i: int = 0, **overrides: object) -> AuditEvent:
    """A realistic tool.call event carrying only tokens and digests."""
    fields: dict[str, object] = {
        "kind": TOOL_CALL,
        "principal": f"user{i % 3}",
        "roles": ["support"],
        "session_id": f"s{i % 5}",
        "scope": f"session:s{i % 5}",
        "upstream": "crm",
        "tool": "find_customers",
        "args_digest": "sha256:" + "ab" * 32,
        "entities": {"EMAIL_ADDRESS": 1 + i % 2, "PERSON": 1},
        "tokens": [f"[EMAIL_ADDRESS_{i}]", f"[PERSON_{i}]"],
        "untokenised": [Untokenised(f"[EMAIL_ADDRESS_{i}]", "EMAIL_ADDRESS", "mailer__send:to", "flows[0]:mail")],
        "decision": "allow",
        "rule": "access[0]",
        "duration_ms": 1.25 + i,
        "policy_version": "v" * 64,
        "detail": {"i": i, "ratio": 0.1, "nested": {"b": [1, 2.5, None], "a": True}},
    }
    fields.update(overrides)
    return AuditEvent(**fields)  # type: ignore[arg-type]


def tamper(engine: sa.Engine, sql: str, **params: object) -> None:
    """Run SQL as someone with direct database access who disabled the append-only trigger."""
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text(sql), params)
