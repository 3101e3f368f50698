"""Retention drops whole months and the remaining chain still verifies from the anchor."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from veil.audit import AuditWriter
from veil.audit.chain import append_events
from veil.audit.partitions import Month, existing
from veil.audit.retention import apply_retention
from veil.audit.verify import verify
from veil.errors import VeilError

from .conftest import tamper, tool_event

pytestmark = pytest.mark.req("audit:retention")


def backfill(engine: sa.Engine) -> Month:
    """Three events in a month a year ago, two in the month after, then three now."""
    with engine.connect() as conn:
        now = Month.of(conn.execute(sa.text("SELECT now()")).scalar_one())
    old, older_next = now.minus(12), now.minus(11)
    with engine.begin() as conn:
        append_events(conn, [tool_event(i) for i in range(3)], clock=old.start.replace(day=10))
        append_events(conn, [tool_event(i) for i in range(3, 5)], clock=older_next.start.replace(day=3))
    with AuditWriter(engine) as writer:
        for i in range(5, 8):
            writer.record_sync(tool_event(i))
    return old


def test_retention_drops_old_months_and_the_rest_verifies(fresh_engine: sa.Engine) -> None:
    old = backfill(fresh_engine)
    with fresh_engine.begin() as conn:
        last_dropped = conn.execute(sa.text("SELECT hash FROM audit_events WHERE seq = 5")).scalar_one()
        result = apply_retention(conn, 3)
    assert result.dropped == [old, old.next()]
    assert (result.from_seq, result.to_seq, result.events) == (1, 5, 5)
    with fresh_engine.connect() as conn:
        assert old not in existing(conn)
        seqs = list(conn.execute(sa.text("SELECT seq FROM audit_events ORDER BY seq")).scalars())
        event = conn.execute(sa.text("SELECT kind, detail FROM audit_events WHERE seq = 9")).one()
        check = verify(conn)
    assert seqs == [6, 7, 8, 9]
    assert event.kind == "retention.drop"
    assert event.detail["last_hash"] == bytes(last_dropped).hex() and event.detail["to_seq"] == 5
    assert check.ok, check.problem
    assert "retention anchor" in check.anchor and check.first_seq == 6


def test_retention_twice_is_a_no_op_and_verifies(fresh_engine: sa.Engine) -> None:
    backfill(fresh_engine)
    with fresh_engine.begin() as conn:
        apply_retention(conn, 3)
    with fresh_engine.begin() as conn:
        again = apply_retention(conn, 3)
    assert again.dropped == []
    with fresh_engine.connect() as conn:
        assert verify(conn).ok


def test_retention_refuses_to_drop_a_broken_chain(fresh_engine: sa.Engine) -> None:
    backfill(fresh_engine)
    tamper(fresh_engine, "UPDATE audit_events SET principal = 'mallory' WHERE seq = 2")
    with pytest.raises(VeilError, match="do not verify"), fresh_engine.begin() as conn:
        apply_retention(conn, 3)
    with fresh_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one() == 8


def test_retention_needs_at_least_one_month(fresh_engine: sa.Engine) -> None:
    with pytest.raises(VeilError, match="at least 1"), fresh_engine.begin() as conn:
        apply_retention(conn, 0)
