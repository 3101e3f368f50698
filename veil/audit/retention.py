"""Retention: drop whole months of audit events, leaving an anchor so the rest still verifies.

Why whole months: dropping a partition is instant and is not an UPDATE or DELETE, so the
append-only trigger stays in force for everything else. Because ``ts`` is monotonic with
``seq``, the dropped months are always a prefix of the chain; the ``retention.drop`` event
appended in the same transaction records that prefix (``from_seq``, ``to_seq``, count) and the
hash of its last event, which is where verification of the remainder starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from veil.audit import events as ev
from veil.audit.chain import append, lock_head, prepare
from veil.audit.partitions import Month, drop_partition, ensure_partition, existing, months_in_default
from veil.audit.verify import verify
from veil.errors import VeilError


@dataclass
class RetentionResult:
    cutoff: Month
    dropped: list[Month] = field(default_factory=list)
    from_seq: int | None = None
    to_seq: int | None = None
    events: int = 0
    event_seq: int | None = None  # seq of the retention.drop event


def apply_retention(conn: sa.Connection, months: int, *, principal: str = "veil") -> RetentionResult:
    """Drop every month that ended more than ``months`` months before the current one.

    Runs in ``conn``'s transaction holding the chain lock: writers wait for the few milliseconds
    the drop takes. The part to be dropped is verified first; a broken chain is not dropped
    (the evidence would go with it).
    """
    if months < 1:
        raise VeilError("retention --months must be at least 1 (the current month is never dropped)")
    head, now = lock_head(conn)
    cutoff = Month.of(max(now, head.ts)).minus(months)
    result = RetentionResult(cutoff)
    for month in months_in_default(conn):
        ensure_partition(conn, month)  # stray rows in DEFAULT move to their month first
    to_drop = [m for m in existing(conn) if m < cutoff]
    if not to_drop:
        return result
    bounds = conn.execute(
        sa.text("SELECT min(seq), max(seq), count(*) FROM audit_events WHERE ts < :c"), {"c": cutoff.start}
    ).one()
    if bounds[2]:
        lo, hi, count = bounds
        after = conn.execute(sa.text("SELECT min(seq) FROM audit_events WHERE ts >= :c"), {"c": cutoff.start}).scalar()
        if after is not None and after != hi + 1:
            raise VeilError(
                f"retention refused: events before {cutoff} are not a prefix of the chain (seq {hi} then {after})"
            )
        check = verify(conn, end=cutoff.start)
        if check.problem is not None:
            raise VeilError(f"retention refused: the events to be dropped do not verify ({check.problem})")
        last = conn.execute(sa.text("SELECT hash FROM audit_events WHERE seq = :s"), {"s": hi}).scalar_one()
        result.from_seq, result.to_seq, result.events = lo, hi, count
    else:
        last = None
    result.dropped = to_drop
    # The event goes first: the database lets a month be dropped only right after a
    # retention.drop event naming it (veil_audit_drop_month), so no month vanishes unrecorded.
    event = ev.AuditEvent(
        kind=ev.RETENTION_DROP,
        principal=principal,
        detail={
            "months": [str(m) for m in to_drop],
            "before": cutoff.start.isoformat(),
            "from_seq": result.from_seq,
            "to_seq": result.to_seq,
            "events": result.events,
            "last_hash": bytes(last).hex() if last is not None else None,
        },
    )
    appended, _ = append(conn, [prepare(event)])
    result.event_seq = appended[0].seq
    for month in to_drop:
        drop_partition(conn, month)
    return result
