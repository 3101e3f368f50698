"""The batched writer: durable before returning, batches concurrent callers, fails closed."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import psycopg
import pytest
import sqlalchemy as sa

from veil.audit import AuditWriter, digest_args
from veil.audit import writer as writer_module
from veil.audit.canonical import encode_record
from veil.audit.chain import COLUMNS, append_events
from veil.audit.events import AuditEvent
from veil.audit.verify import verify
from veil.errors import AuditUnavailable

from .conftest import tool_event

WRITER_SCRIPT = """
import sys, sqlalchemy as sa
from veil import db
from veil.audit import AuditWriter
from veil.audit.events import AuditEvent
engine = db.create_engine(sys.argv[1])
with AuditWriter(engine, batch_max_events=16) as w:
    for i in range(int(sys.argv[2])):
        w.record_sync(AuditEvent(kind="tool.call", principal=sys.argv[3], detail={"i": i}))
engine.dispose()
"""


def verified_details(engine: sa.Engine) -> list[str]:
    """Each event's ``detail.i`` in chain order, once the whole chain verified."""
    with engine.connect() as conn:
        result = verify(conn)
        rows = conn.execute(sa.text("SELECT detail->>'i' FROM audit_events ORDER BY seq")).scalars().all()
    assert result.ok, result.problem
    return list(rows)


@pytest.mark.req("audit:durable")
def test_record_returns_after_commit_with_every_field(fresh_engine: sa.Engine) -> None:
    event = tool_event(7)

    async def run() -> None:
        async with AuditWriter(fresh_engine) as writer:
            await writer.record(event)

    asyncio.run(run())
    with fresh_engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM audit_events WHERE id = :id"), {"id": event.id}).mappings().one()
    assert row["seq"] == 1
    assert row["kind"] == "tool.call" and row["principal"] == "user1" and row["upstream"] == "crm"
    assert row["tokens"] == ["[EMAIL_ADDRESS_7]", "[PERSON_7]"]
    assert row["entities"] == {"EMAIL_ADDRESS": 2, "PERSON": 1}
    assert row["untokenised"] == [
        {
            "token": "[EMAIL_ADDRESS_7]",
            "entity_type": "EMAIL_ADDRESS",
            "destination": "mailer__send:to",
            "rule": "flows[0]:mail",
        }
    ]
    assert row["occurred_at"] == event.ts
    assert row["prev_hash"] == bytes(32)


@pytest.mark.req("audit:durable")
def test_concurrent_async_callers_share_batches_and_one_chain(fresh_engine: sa.Engine) -> None:
    events = [tool_event(i) for i in range(300)]

    async def run() -> AuditWriter:
        async with AuditWriter(fresh_engine, batch_max_events=64) as writer:
            await asyncio.gather(*(writer.record(e) for e in events))
        return writer

    writer = asyncio.run(run())
    assert writer.events == 300
    assert writer.batches < 300  # callers were grouped into shared transactions
    with fresh_engine.connect() as conn:
        result = verify(conn)
        ids = set(conn.execute(sa.text("SELECT id FROM audit_events")).scalars())
    assert result.ok, result.problem
    assert result.events == 300
    assert ids == {e.id for e in events}


@pytest.mark.req("audit:chain")
def test_threads_and_two_processes_produce_one_valid_chain(fresh_url: str, fresh_engine: sa.Engine) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, fresh_url, "150", f"proc{n}"]) for n in range(2)]
    errors: list[BaseException] = []
    with AuditWriter(fresh_engine, batch_max_events=8, batch_max_delay_ms=0) as writer:

        def work(n: int) -> None:
            try:
                for i in range(50):
                    writer.record_sync(AuditEvent(kind="tool.call", principal=f"thread{n}", detail={"i": i}))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    for p in procs:
        assert p.wait(120) == 0
    assert not errors
    with fresh_engine.connect() as conn:
        result = verify(conn)
        by = dict(conn.execute(sa.text("SELECT principal, count(*) FROM audit_events GROUP BY 1")).all())
        seqs = list(conn.execute(sa.text("SELECT seq FROM audit_events ORDER BY seq")).scalars())
    assert result.ok, result.problem
    assert seqs == list(range(1, 501))
    assert by == {"proc0": 150, "proc1": 150, **{f"thread{n}": 50 for n in range(4)}}
    assert writer.fast_appends > 0  # the one-statement path was used, and lost no race


@pytest.mark.req("audit:chain")
def test_one_statement_append_yields_to_other_writers(fresh_engine: sa.Engine) -> None:
    """Another writer (here the CLI path, under the lock) moves the head between two batches: the
    writer's one-statement append writes nothing, notices, and appends under the lock."""
    with AuditWriter(fresh_engine) as writer:
        writer.record_sync(tool_event(1))
        writer.record_sync(tool_event(2))
        assert writer.fast_appends == 1  # the first batch learnt the head under the lock
        with fresh_engine.begin() as conn:
            append_events(conn, [tool_event(3, principal="cli")])
        writer._fast_after = 0.0
        writer.record_sync(tool_event(4))
        assert writer.head_conflicts == 1
        writer.record_sync(tool_event(5))
    with fresh_engine.connect() as conn:
        result = verify(conn)
        rows = conn.execute(sa.text("SELECT seq, detail->>'i' FROM audit_events ORDER BY seq")).all()
    assert result.ok, result.problem
    assert [(r[0], r[1]) for r in rows] == [(1, "1"), (2, "2"), (3, "3"), (4, "4"), (5, "5")]


@pytest.mark.req("audit:durable")
def test_commit_with_lost_answer_is_not_appended_twice(
    fresh_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies after the database committed but before the writer heard back: the
    retry under the lock finds the batch's last hash at its seq and does not append it again."""
    real = writer_module.append_if_head
    lost: list[int] = []

    def commit_then_lose_the_answer(driver, head, params, out, call=None):  # type: ignore[no-untyped-def]
        inserted = real(driver, head, params, out, call)
        if not lost:
            lost.append(inserted)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return inserted

    monkeypatch.setattr(writer_module, "append_if_head", commit_then_lose_the_answer)
    with AuditWriter(fresh_engine) as writer:
        writer.record_sync(tool_event(1))
        writer.record_sync(tool_event(2))  # committed, answer lost, must not be written again
        writer.record_sync(tool_event(3))
    assert lost == [1]
    assert verified_details(fresh_engine) == ["1", "2", "3"]


@pytest.mark.req("audit:fail-closed")
def test_unreachable_database_raises_audit_unavailable() -> None:
    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere?connect_timeout=2")
    writer = AuditWriter(engine, timeout_s=20)
    try:
        with pytest.raises(AuditUnavailable, match="could not be written"):
            asyncio.run(writer.record(tool_event()))
        with pytest.raises(AuditUnavailable, match="could not be written"):
            writer.record_sync(tool_event())
    finally:
        writer.close()
        engine.dispose()


@pytest.mark.req("audit:fail-closed")
def test_closed_writer_and_unencodable_event_are_refused(engine: sa.Engine) -> None:
    writer = AuditWriter(engine)
    with pytest.raises(AuditUnavailable, match=r"'detail\.x'"):
        writer.record_sync(tool_event(detail={"x": float("nan")}))
    writer.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        writer.record_sync(tool_event())


def test_digest_args_is_canonical() -> None:
    assert digest_args({"b": 1, "a": [1.0, "x"]}) == digest_args({"a": [1, "x"], "b": 1})
    assert digest_args({"a": 1}) != digest_args({"a": 2})
    assert digest_args({}).startswith("sha256:") and len(digest_args({})) == 7 + 64


@pytest.mark.req("audit:chain")
def test_one_statement_batches_store_every_column_as_given(fresh_engine: sa.Engine) -> None:
    """The one-statement append sends the batch as one JSON document: awkward strings, empty
    lists and missing values come back exactly, and the chain verifies."""
    odd = ['quote " back\\slash', "{brace, comma}", "NULL", "", "emoji \U0001f600 \u00fc", "[TOKEN_1]"]
    events = [
        tool_event(
            i,
            roles=odd[: i % 7],
            tokens=list(reversed(odd[: i % 5])),
            duration_ms=None if i % 2 else i / 3,
            upstream=None if i % 3 == 0 else odd[i % 6],
        )
        for i in range(12)
    ]

    async def run() -> AuditWriter:
        async with AuditWriter(fresh_engine, batch_max_events=8) as writer:
            await writer.record(tool_event(99))  # the first batch learns the head under the lock
            await asyncio.gather(*(writer.record(e) for e in events))
        return writer

    writer = asyncio.run(run())
    assert writer.fast_appends >= 1
    with fresh_engine.connect() as conn:
        result = verify(conn)
        query = sa.text("SELECT id, roles, tokens, duration_ms, upstream FROM audit_events")
        rows = {r.id: r for r in conn.execute(query)}
    assert result.ok, result.problem
    for e in events:
        r = rows[e.id]
        assert (r.roles, r.tokens, r.upstream, r.duration_ms) == (e.roles, e.tokens, e.upstream, e.duration_ms)


@pytest.mark.req("audit:chain")
def test_one_statement_append_stores_what_the_lock_path_stores(fresh_engine: sa.Engine) -> None:
    """Each awkward event is appended twice: in one statement (the batch as a JSON document)
    and under the chain lock (COPY). Both rows hold the same values, bit for bit where the hash
    depends on them (timestamps to the microsecond whatever the time zone, floats, unicode,
    NULLs, empty lists, a large detail), and the chain verifies."""
    deep: dict[str, object] = {"leaf": [None, True, False, 0, -1, 2**53 - 1]}
    for level in range(60):
        deep = {f"l{level}": deep, "n": level / 7}
    awkward = [
        AuditEvent(kind="session.open"),  # every optional column NULL, every list and object empty
        tool_event(1, ts=datetime(2026, 11, 29, 13, 5, 7, 123456, tzinfo=ZoneInfo("America/St_Johns"))),
        tool_event(2, ts=datetime(2026, 11, 29, 23, 59, 59, 999999, tzinfo=ZoneInfo("Asia/Kathmandu"))),
        tool_event(3, ts=datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=ZoneInfo("Europe/Amsterdam"))),  # +00:19:32
        tool_event(5, ts=datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)),
        tool_event(
            6,
            principal="Zo\u00eb \u674e \U0001f600 \u202e rtl \u2028 sep",
            roles=["", "NULL", "{a,b}", 'q"uote', "back\\slash", "\x01\x1f\n\t"],
            tokens=["\U0001f600"],
            tool="nul\x00inside",
            session_id="lone \ud800 surrogate",
            detail={"\u00fcml\u00e4ut": "\u0000 and \\u0000", "\U0001f600": ["\ufb33", "a"], "": {}},
        ),
        tool_event(7, duration_ms=5e-324, detail={"tiny": 1e-320, "max": 1.7976931348623157e308, "third": 1 / 3}),
        tool_event(8, duration_ms=-0.0, detail={"big": 2**60, "neg": -(2**63), "safe": 2**53 - 1, "zero": -0.0}),
        tool_event(9, duration_ms=123456789.12345679, detail={"blob": "x\u00e9" * 300_000, "deep": deep}),
        tool_event(10, entities={}, tokens=[], untokenised=[], roles=[], detail={}, duration_ms=None),
    ]
    with AuditWriter(fresh_engine) as writer:
        writer.record_sync(tool_event(0))  # the first batch learns the head under the lock
        for event in awkward:
            for fast in (True, False):
                writer.fast_append = fast
                writer.record_sync(dataclasses.replace(event, id=uuid.uuid4(), detail={**event.detail, "fast": fast}))
        assert writer.fast_appends == len(awkward)
        writer.fast_append = True
        # A UTC offset with microseconds: COPY's text cannot carry it (the lock path refuses the
        # event); the one statement sends the UTC time that is hashed.
        odd_zone = timezone(-timedelta(microseconds=3))
        writer.record_sync(tool_event(4, ts=datetime(2026, 3, 1, 0, 0, 0, 7, tzinfo=odd_zone)))
        assert writer.fast_appends == len(awkward) + 1

        # and all of them again as one batch of the event-loop lane
        async def batch() -> None:
            async with AuditWriter(fresh_engine, batch_max_events=64) as lane:
                await lane.record(tool_event(11))
                await asyncio.gather(*(lane.record(dataclasses.replace(e, id=uuid.uuid4())) for e in awkward))
                assert lane.fast_appends >= 1

        asyncio.run(batch())
    with fresh_engine.connect() as conn:
        result = verify(conn)
        rows = conn.execute(sa.text("SELECT * FROM audit_events ORDER BY seq")).mappings().all()
    assert result.ok, result.problem
    pairs = [rows[1 + 2 * i : 3 + 2 * i] for i in range(len(awkward))]
    for event, (fast, locked) in zip(awkward, pairs, strict=True):
        assert fast["detail"].pop("fast") is True and locked["detail"].pop("fast") is False
        assert fast["occurred_at"] == locked["occurred_at"] == event.ts
        assert fast["ts"] <= locked["ts"]
        for column in COLUMNS:
            if column not in ("seq", "ts", "id", "prev_hash", "hash"):
                assert fast[column] == locked[column], column
        same = {"seq": 0, "ts": locked["ts"], "id": locked["id"]}
        assert encode_record({**fast, **same}) == encode_record({**locked, **same})
    assert len(rows) == 3 + 3 * len(awkward)  # the lane's batch: verified with the rest


def test_nul_characters_are_stored_and_hash_consistently(fresh_engine: sa.Engine) -> None:
    with AuditWriter(fresh_engine) as writer:
        writer.record_sync(tool_event(tool="a\x00b", detail={"k\x00": "v\x00", "big": 2**60}))
    with fresh_engine.connect() as conn:
        assert verify(conn).ok
        row = conn.execute(sa.text("SELECT tool, detail FROM audit_events")).one()
    assert row.tool == "a\ufffdb"
    assert row.detail["k\ufffd"] == "v\ufffd"
    # jsonb prints the double as an integer; it still encodes (and hashes) as the same double.
    assert float(row.detail["big"]) == float(2**60)


def test_event_ids_are_unique_per_row(engine: sa.Engine) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    with AuditWriter(engine) as writer:
        for i in ids:
            writer.record_sync(AuditEvent(kind="session.open", id=i))
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT count(*) FROM audit_events WHERE id = ANY(:ids)"), {"ids": ids}).scalar()
    assert found == 3


# -- the event-loop lane (start_async / async with: the gateway's) ----------------------------


@pytest.mark.req("audit:durable")
def test_the_loop_lane_writes_on_the_loop_without_a_writer_thread(fresh_engine: sa.Engine) -> None:
    """A lone sequential caller on the bound loop: each event is committed on its own, in one
    statement after the first batch, and no writer thread is ever started."""

    async def run() -> AuditWriter:
        async with AuditWriter(fresh_engine) as writer:
            for i in range(5):
                await writer.record(tool_event(i))
            assert writer._thread is None
            assert writer.health() == (0, True)
        return writer

    writer = asyncio.run(run())
    assert (writer.batches, writer.events, writer.fast_appends) == (5, 5, 4)
    assert writer.health() == (0, False)
    assert verified_details(fresh_engine) == ["0", "1", "2", "3", "4"]


@pytest.mark.req("audit:chain")
def test_the_loop_lane_takes_events_from_threads_and_from_its_own_thread(fresh_engine: sa.Engine) -> None:
    """record_sync from other threads goes through the bound loop (interleaved with async
    callers); on the loop's own thread (a policy check run there) it cannot wait for the loop and
    uses the writer thread instead. Both lanes append to one valid chain."""

    async def run() -> AuditWriter:
        async with AuditWriter(fresh_engine, batch_max_events=8) as writer:

            def work(n: int) -> None:
                for i in range(30):
                    writer.record_sync(AuditEvent(kind="tool.call", principal=f"thread{n}", detail={"i": i}))

            async def on_loop(i: int) -> None:
                await writer.record(AuditEvent(kind="tool.call", principal="loop", detail={"i": i}))

            threads = [asyncio.to_thread(work, n) for n in range(3)]
            await asyncio.gather(*threads, *(on_loop(i) for i in range(60)))
            assert writer._thread is None  # the threads' events went through the loop
            writer.record_sync(AuditEvent(kind="tool.call", principal="loop-thread"))
            assert writer._thread is not None
            await writer.record(AuditEvent(kind="tool.call", principal="loop"))
        return writer

    writer = asyncio.run(run())
    assert writer.events == 152
    with fresh_engine.connect() as conn:
        result = verify(conn)
        by = dict(conn.execute(sa.text("SELECT principal, count(*) FROM audit_events GROUP BY 1")).all())
    assert result.ok, result.problem
    assert by == {"loop": 61, "loop-thread": 1, **{f"thread{n}": 30 for n in range(3)}}


@pytest.mark.req("audit:chain")
def test_the_loop_lane_yields_to_other_writers(fresh_engine: sa.Engine) -> None:
    async def run() -> AuditWriter:
        async with AuditWriter(fresh_engine) as writer:
            await writer.record(tool_event(1))
            await writer.record(tool_event(2))
            assert writer.fast_appends == 1
            with fresh_engine.begin() as conn:
                append_events(conn, [tool_event(3, principal="cli")])
            writer._fast_after = 0.0
            await writer.record(tool_event(4))
            assert writer.head_conflicts == 1
            await writer.record(tool_event(5))
        return writer

    asyncio.run(run())
    assert verified_details(fresh_engine) == ["1", "2", "3", "4", "5"]


@pytest.mark.req("audit:durable")
def test_the_loop_lane_never_appends_a_commit_with_a_lost_answer_twice(
    fresh_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = writer_module.append_if_head_async
    lost: list[int] = []

    async def commit_then_lose_the_answer(driver, head, params, out, call=None):  # type: ignore[no-untyped-def]
        inserted = await real(driver, head, params, out, call)
        if not lost:
            lost.append(inserted)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return inserted

    monkeypatch.setattr(writer_module, "append_if_head_async", commit_then_lose_the_answer)

    async def run() -> AuditWriter:
        async with AuditWriter(fresh_engine) as writer:
            for i in (1, 2, 3):  # 2: committed, answer lost, must not be written again
                await writer.record(tool_event(i))
        return writer

    writer = asyncio.run(run())
    assert lost == [1]
    assert writer.fast_appends == 1  # 3, on a new connection
    assert verified_details(fresh_engine) == ["1", "2", "3"]


@pytest.mark.req("audit:durable")
def test_closing_the_loop_lane_writes_what_is_queued(fresh_engine: sa.Engine) -> None:
    async def run() -> tuple[list[BaseException | None], AuditWriter]:
        writer = AuditWriter(fresh_engine, batch_max_events=16)
        await writer.start_async()
        tasks = [asyncio.create_task(writer.record(tool_event(i))) for i in range(100)]
        await asyncio.sleep(0)  # every task has queued its event; the first batch has not committed
        assert writer.health()[0] > 0
        await writer.aclose()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        with pytest.raises(AuditUnavailable, match="closed"):
            await writer.record(tool_event())
        return results, writer

    results, writer = asyncio.run(run())
    assert results == [None] * 100
    assert writer.events == 100 and writer.batches < 100
    with fresh_engine.connect() as conn:
        assert verify(conn).events == 100


@pytest.mark.req("audit:fail-closed")
def test_the_loop_lane_fails_closed_when_the_database_is_unreachable() -> None:
    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere?connect_timeout=2")

    async def run() -> None:
        async with AuditWriter(engine, timeout_s=20) as writer:
            with pytest.raises(AuditUnavailable, match="could not be written"):
                await writer.record(tool_event())
            with pytest.raises(AuditUnavailable, match="could not be written"):
                await asyncio.to_thread(writer.record_sync, tool_event())

    try:
        asyncio.run(run())
    finally:
        engine.dispose()


@pytest.mark.req("audit:checkpoints")
def test_the_loop_lane_makes_periodic_checkpoints(fresh_engine: sa.Engine) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()

    async def run() -> None:
        async with AuditWriter(fresh_engine, batch_max_events=1, signing_key=key, checkpoint_every_events=5) as writer:
            for i in range(12):
                await writer.record(tool_event(i))

    asyncio.run(run())
    with fresh_engine.connect() as conn:
        result = verify(conn, public_key=key.public_key())
    assert result.ok, result.problem
    assert len(result.checkpoints) == 2


def test_closing_a_bound_writer_on_its_own_loop_thread_is_refused(engine: sa.Engine) -> None:
    async def run() -> None:
        writer = AuditWriter(engine)
        await writer.start_async()
        with pytest.raises(RuntimeError, match="aclose"):
            writer.close()
        await writer.aclose()

    asyncio.run(run())
