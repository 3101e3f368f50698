"""Chain status for the explorer's header: the last signed checkpoint and the chain since it.

Walking a whole month on every page view would cost seconds, so the header verifies the tail
(from the last checkpoint to the head, which the checkpoint's signature anchors; usually
``audit.checkpoint_every_events`` rows, and never more than ``TAIL_MAX``) and caches the answer
for ``TTL_S``. The whole chain is
verified on request (a button on the explorer), as ``veil audit verify`` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from veil.audit.chain import read_head
from veil.audit.verify import verify
from veil.console.services import ConsoleServices

TTL_S = 30.0
TAIL_MAX = 10_000


@dataclass
class ChainStatus:
    ok: bool
    scope: str  # "since checkpoint #N" or "whole chain"
    events: int
    first_seq: int | None
    last_seq: int | None
    problem: str | None
    checkpoint: dict[str, Any] | None
    checkpoints_checked: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


_cache: dict[int, tuple[float, ChainStatus]] = {}


def last_checkpoint(conn: sa.Connection) -> dict[str, Any] | None:
    row = (
        conn.execute(sa.text("SELECT id, seq, ts, key_id FROM audit_checkpoints ORDER BY seq DESC, id DESC LIMIT 1"))
        .mappings()
        .first()
    )
    return dict(row) if row else None


def status(services: ConsoleServices, *, whole: bool = False) -> ChainStatus:
    key = id(services)
    if not whole:
        cached = _cache.get(key)
        if cached and time.monotonic() - cached[0] < TTL_S:
            return cached[1]
    began = time.perf_counter()
    # One snapshot for the whole walk: the gateway keeps appending while we read, and rows
    # committed between reading the events and reading the chain head would look like a cut tail.
    with services.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        cp = last_checkpoint(conn)
        head = read_head(conn).seq
        start, scope = None, "whole chain"
        if not whole and cp is not None and cp["seq"] >= head - TAIL_MAX:
            start, scope = cp["ts"], f"since checkpoint #{cp['id']} (seq {cp['seq']})"
        elif not whole and head > TAIL_MAX:
            start = conn.execute(sa.text("SELECT ts FROM audit_events WHERE seq = :s"), {"s": head - TAIL_MAX}).scalar()
            scope = f"last {TAIL_MAX:,} events" if start is not None else scope
        result = verify(
            conn,
            start=start,
            public_key=services.public_key,
            checkpoint_file=services.checkpoint_file
            if services.checkpoint_file and services.checkpoint_file.exists()
            else None,
        )
    out = ChainStatus(
        ok=result.ok,
        scope=scope,
        events=result.events,
        first_seq=result.first_seq,
        last_seq=result.last_seq,
        problem=str(result.problem) if result.problem else None,
        checkpoint=cp,
        checkpoints_checked=len(result.checkpoints),
        notes=result.notes,
        seconds=time.perf_counter() - began,
    )
    _cache[key] = (time.monotonic(), out)
    return out
