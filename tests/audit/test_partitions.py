"""Month partitions: created on demand, stray DEFAULT rows moved, TRUNCATE guarded on each."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from veil.audit import AuditWriter
from veil.audit.chain import append_events
from veil.audit.partitions import Month, ensure_partition, existing
from veil.audit.verify import verify

from .conftest import tool_event

pytestmark = pytest.mark.req("audit:partitions")


def test_month_arithmetic() -> None:
    assert Month(2026, 12).next() == Month(2027, 1)
    assert Month(2026, 2).minus(3) == Month(2025, 11)
    assert Month.of(datetime(2026, 11, 30, 23, 59, tzinfo=UTC)).table == "audit_events_y2026m11"


def test_writer_creates_this_and_next_month(fresh_engine: sa.Engine) -> None:
    with AuditWriter(fresh_engine) as writer:
        writer.record_sync(tool_event())
    with fresh_engine.connect() as conn:
        now = conn.execute(sa.text("SELECT now()")).scalar_one()
        months = existing(conn)
        where = conn.execute(sa.text("SELECT tableoid::regclass::text FROM audit_events")).scalar_one()
    assert Month.of(now) in months and Month.of(now).next() in months
    assert where == Month.of(now).table


def test_history_lands_in_its_own_months(fresh_engine: sa.Engine) -> None:
    with fresh_engine.begin() as conn:
        append_events(conn, [tool_event(0)], clock=datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC))
        append_events(conn, [tool_event(1)], clock=datetime(2026, 4, 1, 0, 0, tzinfo=UTC))
    with fresh_engine.connect() as conn:
        placed = conn.execute(sa.text("SELECT seq, tableoid::regclass::text FROM audit_events ORDER BY seq")).all()
        assert verify(conn).ok
    assert placed == [(1, "audit_events_y2026m03"), (2, "audit_events_y2026m04")]


def test_clock_never_goes_backwards(fresh_engine: sa.Engine) -> None:
    with fresh_engine.begin() as conn:
        append_events(conn, [tool_event(0)], clock=datetime(2026, 5, 2, tzinfo=UTC))
        appended = append_events(conn, [tool_event(1)], clock=datetime(2026, 5, 1, tzinfo=UTC))
    assert appended[0].ts == datetime(2026, 5, 2, tzinfo=UTC)


def test_rows_stranded_in_default_move_when_the_month_is_created(fresh_engine: sa.Engine) -> None:
    stray = datetime(2031, 1, 15, tzinfo=UTC)
    with fresh_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO audit_events (seq, ts, occurred_at, id, kind, outcome, prev_hash, hash) "
                "VALUES (1, :ts, :ts, gen_random_uuid(), 'tool.call', 'ok', '\\x00', '\\x00')"
            ),
            {"ts": stray},
        )
        assert conn.execute(sa.text("SELECT count(*) FROM audit_events_default")).scalar_one() == 1
        assert ensure_partition(conn, Month(2031, 1)) is True
        assert ensure_partition(conn, Month(2031, 1)) is False
    with fresh_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM audit_events_default")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM audit_events_y2031m01")).scalar_one() == 1
        triggers = set(
            conn.execute(
                sa.text("SELECT tgrelid::regclass::text || ':' || tgname FROM pg_trigger WHERE NOT tgisinternal")
            ).scalars()
        )
    for table in ("audit_events_default", "audit_events_y2031m01"):
        assert f"{table}:audit_events_append_only" in triggers
        assert f"{table}:audit_events_no_truncate" in triggers


def test_writer_creates_the_next_month_ahead_of_time(fresh_engine: sa.Engine) -> None:
    late = datetime(2031, 1, 31, 23, 59, tzinfo=UTC)  # the head's ts: later batches never go backwards
    with fresh_engine.begin() as conn:
        append_events(conn, [tool_event(0)], clock=late)
    with AuditWriter(fresh_engine) as writer:
        appended = writer.record_sync(tool_event(1))
    assert Month.of(appended.ts) == Month(2031, 1)
    with fresh_engine.connect() as conn:
        assert Month(2031, 2) in existing(conn)
        assert verify(conn).ok
