"""Verification passes on an untouched trail and names the first broken link for each tampering."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from veil.audit import AuditWriter
from veil.audit.verify import verify

from .conftest import tamper, tool_event

pytestmark = pytest.mark.req("audit:tamper-evident")


@pytest.fixture
def trail(fresh_engine: sa.Engine) -> sa.Engine:
    with AuditWriter(fresh_engine, batch_max_events=4) as writer:
        for i in range(10):
            writer.record_sync(tool_event(i))
    return fresh_engine


def check(engine: sa.Engine, **kw: object):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return verify(conn, **kw)  # type: ignore[arg-type]


def event_id(engine: sa.Engine, seq: int) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT id FROM audit_events WHERE seq = :s"), {"s": seq}).scalar_one())


def test_untouched_trail_verifies(trail: sa.Engine) -> None:
    result = check(trail)
    assert result.ok and result.problem is None
    assert (result.first_seq, result.last_seq, result.events) == (1, 10, 10)
    assert "genesis" in result.anchor


def test_updated_row_is_detected(trail: sa.Engine) -> None:
    tamper(trail, "UPDATE audit_events SET principal = 'mallory' WHERE seq = 4")
    result = check(trail)
    assert not result.ok
    assert result.problem.seq == 4 and result.problem.event_id == event_id(trail, 4)
    assert "changed" in result.problem.what


def test_updated_jsonb_member_is_detected(trail: sa.Engine) -> None:
    tamper(trail, """UPDATE audit_events SET entities = '{"EMAIL_ADDRESS": 2, "PERSON": 9}' WHERE seq = 6""")
    assert check(trail).problem.seq == 6


def test_rehashed_row_breaks_the_next_link(trail: sa.Engine) -> None:
    from veil.audit.canonical import chain_hash

    tamper(trail, "UPDATE audit_events SET tool = 'export_all' WHERE seq = 5")
    with trail.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM audit_events WHERE seq = 5")).mappings().one()
    tamper(trail, "UPDATE audit_events SET hash = :h WHERE seq = 5", h=chain_hash(bytes(row["prev_hash"]), row))
    result = check(trail)
    assert result.problem.seq == 6
    assert "prev_hash" in result.problem.what


def test_deleted_row_is_detected(trail: sa.Engine) -> None:
    tamper(trail, "DELETE FROM audit_events WHERE seq = 3")
    result = check(trail)
    assert result.problem.seq == 4 and "missing" in result.problem.what


def test_deleted_tail_is_detected_against_the_chain_head(trail: sa.Engine) -> None:
    tamper(trail, "DELETE FROM audit_events WHERE seq >= 9")
    result = check(trail)
    assert not result.ok and "chain head" in result.problem.what


def test_deleted_first_rows_without_retention_are_detected(trail: sa.Engine) -> None:
    tamper(trail, "DELETE FROM audit_events WHERE seq <= 2")
    result = check(trail)
    assert result.problem.seq == 3 and "retention" in result.problem.what


def test_inserted_row_is_detected(trail: sa.Engine) -> None:
    tamper(
        trail,
        "INSERT INTO audit_events SELECT seq, ts + interval '1 microsecond', occurred_at, gen_random_uuid(), kind, "
        "outcome, 'mallory', roles, tenant, session_id, scope, upstream, tool, args_digest, entities, tokens, "
        "untokenised, decision, rule, duration_ms, policy_version, detail, prev_hash, hash "
        "FROM audit_events WHERE seq = 7",
    )
    result = check(trail)
    assert result.problem.seq == 7 and not result.ok


def test_row_appended_behind_the_writers_back_is_detected(trail: sa.Engine) -> None:
    tamper(
        trail,
        "INSERT INTO audit_events SELECT 11, ts, occurred_at, gen_random_uuid(), kind, outcome, principal, roles, "
        "tenant, session_id, scope, upstream, tool, args_digest, entities, tokens, untokenised, decision, rule, "
        "duration_ms, policy_version, detail, hash, hash FROM audit_events WHERE seq = 10",
    )
    result = check(trail)
    assert not result.ok and result.problem.seq in (11, 10)


def test_reordered_rows_are_detected(trail: sa.Engine) -> None:
    tamper(trail, "UPDATE audit_events SET seq = -seq WHERE seq IN (4, 5)")
    tamper(trail, "UPDATE audit_events SET seq = 9 + seq WHERE seq IN (-4, -5)")  # 4 <-> 5
    result = check(trail)
    assert result.problem.seq == 4 and not result.ok


def test_a_period_verifies_on_its_own(trail: sa.Engine) -> None:
    with trail.connect() as conn:
        ts = conn.execute(sa.text("SELECT min(ts) FROM audit_events")).scalar_one()
    result = check(trail, start=ts)
    assert result.ok and result.first_seq == 1


@pytest.mark.req("audit:append-only")
def test_append_only_trigger_rejects_update_delete_truncate(trail: sa.Engine) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from veil.audit.checkpoints import make_checkpoint

    with trail.begin() as conn:
        make_checkpoint(conn, Ed25519PrivateKey.generate())
    with trail.connect() as conn:
        part = conn.execute(sa.text("SELECT tableoid::regclass::text FROM audit_events LIMIT 1")).scalar_one()
    statements = [
        "UPDATE audit_events SET principal = 'x' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
        "TRUNCATE audit_events",
        f"UPDATE {part} SET principal = 'x'",
        f"DELETE FROM {part}",
        f"TRUNCATE {part}",
        "TRUNCATE audit_events_default",
        "UPDATE audit_checkpoints SET seq = 1",
        "DELETE FROM audit_checkpoints",
        "TRUNCATE audit_checkpoints",
    ]
    for sql in statements:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), trail.begin() as conn:
            conn.execute(sa.text(sql))
            pytest.fail(f"not rejected: {sql}")
    assert check(trail).ok
