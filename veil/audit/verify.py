"""Walk the hash chain and report the first broken link.

What each check catches (someone with direct database access can disable the trigger):

* a row's recomputed hash differs from its stored hash   → the row was changed;
* a row's ``prev_hash`` differs from the previous hash   → a row was changed and re-hashed,
  inserted, or rows were reordered;
* a ``seq`` is missing or repeated                       → a row was deleted or inserted;
* the last row differs from ``audit_chain_head``         → rows were cut from, or added to, the end;
* a checkpoint's signature or hash does not match        → the chain up to it was rewritten,
  or the checkpoint was forged;
* a checkpoint (in the table, or in the checkpoint file outside the database) lies beyond the
  last event                                            → the tail was cut and the head moved back;
* a table named like an audit partition is not attached, or is being detached, or the head
  points past an empty table                            → a partition was detached or dropped;
* an audit table's name also names a view or table in another schema → verify might read a
  doctored copy instead of the trail.

A chain whose oldest months were dropped by retention starts at the anchor recorded by the
``retention.drop`` event: the seq and hash of the last dropped event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.audit import events as ev
from veil.audit.canonical import GENESIS_HASH, EncodingError, chain_hash
from veil.audit.chain import read_head
from veil.audit.checkpoints import Checkpoint, checkpoints, raw_public, read_file, signature_valid

_SELECT = "SELECT * FROM audit_events WHERE seq >= :lo AND seq <= :hi ORDER BY seq, ts"


@dataclass(frozen=True)
class Problem:
    seq: int | None
    event_id: str | None
    what: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "chain"
        if self.event_id:
            where += f" (event {self.event_id})"
        return f"{where}: {self.what}"


@dataclass
class CheckpointStatus:
    checkpoint: Checkpoint
    ok: bool
    note: str
    source: str = "database"  # or the checkpoint file's path (checkpoint.id is then its line number)


@dataclass
class VerifyResult:
    first_seq: int | None = None
    last_seq: int | None = None
    events: int = 0
    anchor: str = ""
    problem: Problem | None = None
    checkpoints: list[CheckpointStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None and all(c.ok for c in self.checkpoints)


def _seq_bounds(conn: sa.Connection, start: datetime | None, end: datetime | None) -> tuple[int | None, int | None]:
    lo = conn.execute(
        sa.text("SELECT min(seq) FROM audit_events WHERE CAST(:s AS timestamptz) IS NULL OR ts >= :s"), {"s": start}
    ).scalar()
    hi = conn.execute(
        sa.text("SELECT max(seq) FROM audit_events WHERE CAST(:e AS timestamptz) IS NULL OR ts < :e"), {"e": end}
    ).scalar()
    return lo, hi


def retention_anchors(conn: sa.Connection) -> dict[int, tuple[bytes, int]]:
    """``to_seq + 1`` → (hash of the last dropped event, seq of the retention.drop event)."""
    rows = conn.execute(
        sa.text("SELECT seq, detail FROM audit_events WHERE kind = :k ORDER BY seq"), {"k": ev.RETENTION_DROP}
    ).all()
    anchors: dict[int, tuple[bytes, int]] = {}
    for r in rows:
        try:
            anchors[int(r.detail["to_seq"]) + 1] = (bytes.fromhex(r.detail["last_hash"]), r.seq)
        except (KeyError, TypeError, ValueError):
            continue
    return anchors


def _anchor(conn: sa.Connection, lo: int, result: VerifyResult) -> bytes | None:
    if lo == 1:
        result.anchor = "genesis (seq 1 links to 32 zero bytes)"
        return GENESIS_HASH
    prev = conn.execute(sa.text("SELECT hash FROM audit_events WHERE seq = :s"), {"s": lo - 1}).scalar()
    if prev is not None:
        result.anchor = f"stored hash of seq {lo - 1} (verify from the start to check it too)"
        return bytes(prev)
    anchors = retention_anchors(conn)
    if lo in anchors:
        digest, by = anchors[lo]
        result.anchor = f"retention anchor recorded by the retention.drop event at seq {by}"
        return digest
    return None


_TRAIL = {"audit_events": "p", "audit_chain_head": "r", "audit_checkpoints": "r"}


def shadow_problems(conn: sa.Connection) -> list[str]:
    """The names verify reads must be Veil's tables, in one schema, and nowhere else: a view or
    table of the same name in another schema (one named after the verifying role comes first on
    the default search_path) could show a doctored chain, and verify would check that instead."""
    rows = conn.execute(
        sa.text(
            "SELECT c.relname, c.relkind, n.nspname, c.oid = to_regclass(quote_ident(c.relname)) AS seen "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname IN ('audit_events', 'audit_chain_head', 'audit_checkpoints') ORDER BY 1, 3"
        )
    ).all()
    problems = []
    for name, kind in _TRAIL.items():
        found = [r for r in rows if r.relname == name]
        seen = [r for r in found if r.seen]
        if len(found) > 1:
            places = ", ".join(f"{r.nspname}.{name}" for r in found)
            problems.append(f"{name} exists in several schemas ({places}): which one is the trail cannot be told")
        elif seen and seen[0].relkind != kind:
            problems.append(f"{seen[0].nspname}.{name} is not Veil's table (relkind {seen[0].relkind!r})")
    schemas = {r.nspname for r in rows if r.seen}
    if len(schemas) > 1:
        problems.append(f"the audit tables are read from several schemas ({', '.join(sorted(schemas))})")
    return problems


def partition_problems(conn: sa.Connection) -> list[str]:
    """Tables that look like audit partitions but are not (or are being un-) attached."""
    rows = conn.execute(
        sa.text(
            "SELECT c.relname, i.inhparent IS NOT NULL AS attached, coalesce(i.inhdetachpending, false) AS pending "
            "FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'audit_events'::regclass "
            "WHERE c.relkind IN ('r', 'p') AND c.relname ~ '^audit_events_(y[0-9]{4}m[0-9]{2}|default)$' "
            "AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'audit_events'::regclass) "
            "ORDER BY 1"
        )
    ).all()
    problems = [f"partition {r.relname} is detached from audit_events" for r in rows if not r.attached]
    problems += [f"partition {r.relname} is being detached from audit_events" for r in rows if r.pending]
    if not any(r.relname == "audit_events_default" for r in rows):
        problems.append("the DEFAULT partition audit_events_default is missing (dropped or renamed)")
    return problems


def verify(
    conn: sa.Connection,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    public_key: Ed25519PublicKey | None = None,
    progress: Callable[[int], None] | None = None,
    checkpoint_file: Path | None = None,
) -> VerifyResult:
    """Verify events with ``start <= ts < end`` (whole chain by default) and the checkpoints on them.

    The walk is extended past ``end`` up to the next checkpoint, so the range is bound to a
    signature when one exists after it. ``checkpoint_file`` holds checkpoints written outside the
    database; with the whole chain, a chain that ends before any checkpoint fails.

    On a live trail, pass a connection in a REPEATABLE READ transaction: the walk and the chain
    head must come from one snapshot, or events appended meanwhile look like a cut tail.
    """
    result = VerifyResult()
    whole_tail = end is None
    detached = shadow_problems(conn) or partition_problems(conn)
    if detached:
        result.problem = Problem(None, None, "; ".join(detached))
        return result
    outside = read_file(checkpoint_file) if checkpoint_file is not None else []
    if checkpoint_file is not None and not outside:
        result.notes.append(
            f"no checkpoints in {checkpoint_file}: a tail cut after the last checkpoint in the database "
            "cannot be told from a shorter chain"
        )
    lo, hi = _seq_bounds(conn, start, end)
    if lo is None or hi is None or lo > hi:
        if start is None and whole_tail:
            head = read_head(conn)
            known = max([head.seq, *(cp.seq for cp in outside), *(cp.seq for cp in checkpoints(conn))])
            if known > 0:
                result.problem = Problem(
                    None,
                    None,
                    f"audit_events holds no events, but the chain reached seq {known} "
                    "(rows deleted, or partitions detached or dropped)",
                )
                return result
        result.notes.append("no audit events in the period")
        return result
    later = conn.execute(
        sa.text(
            "SELECT min(seq) FROM audit_checkpoints WHERE seq >= :hi AND seq <= (SELECT max(seq) FROM audit_events)"
        ),
        {"hi": hi},
    ).scalar()
    if later is not None and later > hi:
        result.notes.append(f"walk extended from seq {hi} to seq {later} to reach the next signed checkpoint")
        hi = later
    prev = _anchor(conn, lo, result)
    if prev is None:
        first = conn.execute(sa.text("SELECT id FROM audit_events WHERE seq = :s"), {"s": lo}).scalar()
        result.problem = Problem(
            lo, str(first), f"events before seq {lo} are missing and no retention.drop event accounts for them"
        )
        return result
    result.first_seq = lo
    at_seq: dict[int, bytes] = {}
    wanted = {cp.seq for cp in checkpoints(conn, lo, hi)} | {cp.seq for cp in outside if lo <= cp.seq <= hi}
    expected = lo
    # Stream with a server-side cursor: a month can hold millions of events.
    walk = sa.text(_SELECT).execution_options(stream_results=True, yield_per=5000)
    for row in conn.execute(walk, {"lo": lo, "hi": hi}).mappings():
        seq, eid = row["seq"], str(row["id"])
        if seq < expected:
            result.problem = Problem(seq, eid, f"seq {seq} appears more than once (a row was inserted)")
            break
        if seq > expected:
            result.problem = Problem(seq, eid, f"seq {expected}..{seq - 1} missing (rows were deleted)")
            break
        if bytes(row["prev_hash"]) != prev:
            result.problem = Problem(
                seq, eid, "prev_hash does not match the previous event's hash (a row was inserted, re-hashed or moved)"
            )
            break
        try:
            digest = chain_hash(prev, cast("Mapping[str, Any]", row))  # a RowMapping is a read-only Mapping
        except EncodingError as exc:
            result.problem = Problem(seq, eid, f"row cannot be encoded ({exc}): it was changed")
            break
        if digest != bytes(row["hash"]):
            result.problem = Problem(seq, eid, "content does not match its hash (the row was changed)")
            break
        if seq in wanted:
            at_seq[seq] = digest
        prev = digest
        expected += 1
        result.events += 1
        result.last_seq = seq
        if progress and result.events % 100_000 == 0:
            progress(result.events)
    if result.problem is None and result.last_seq != hi:
        result.problem = Problem(hi, None, f"seq {expected}..{hi} missing (rows were deleted)")
    if result.problem is None and whole_tail:
        head = read_head(conn)
        if head.seq > hi:
            result.problem = Problem(hi, None, f"chain head is at seq {head.seq} but the last event is seq {hi}")
        elif head.seq < hi:
            result.problem = Problem(head.seq + 1, None, f"events after the chain head (seq {head.seq}) were inserted")
        elif head.hash != prev:
            result.problem = Problem(hi, None, "the last event's hash does not match the chain head")
    if result.problem is None and whole_tail:
        _check_tail(conn, hi, outside, checkpoint_file, result)
    _check_checkpoints(conn, lo, hi, at_seq, public_key, result)
    _check_file_checkpoints(outside, lo, hi, at_seq, public_key, checkpoint_file, result)
    return result


def _check_tail(
    conn: sa.Connection, hi: int, outside: list[Checkpoint], path: Path | None, result: VerifyResult
) -> None:
    """The chain must reach every checkpoint ever made: one beyond its end means the tail was cut
    (and the head moved back to hide it)."""
    beyond = conn.execute(sa.text("SELECT max(seq) FROM audit_checkpoints WHERE seq > :hi"), {"hi": hi}).scalar()
    if beyond is not None:
        result.problem = Problem(
            hi,
            None,
            f"the chain ends at seq {hi} but a signed checkpoint in audit_checkpoints is at seq {beyond}: "
            "events were cut from the end",
        )
        return
    last = max((cp.seq for cp in outside), default=0)
    if last > hi:
        result.problem = Problem(
            hi,
            None,
            f"the chain ends at seq {hi} but the checkpoint file {path} holds a signed checkpoint at seq {last}: "
            "events were cut from the end",
        )


def _check_file_checkpoints(
    outside: list[Checkpoint],
    lo: int,
    hi: int,
    at_seq: dict[int, bytes],
    public_key: Ed25519PublicKey | None,
    path: Path | None,
    result: VerifyResult,
) -> None:
    source = str(path)
    for cp in outside:
        if not lo <= cp.seq <= hi:
            continue
        if public_key is None:
            ok, note = cp.seq in at_seq and at_seq[cp.seq] == cp.hash, "no public key to check the signature; hash "
            note += "matches" if ok else "does not match the chain"
        elif not signature_valid(cp, public_key):
            ok, note = False, "signature does not verify against the trusted key (forged or altered)"
        elif cp.seq not in at_seq:
            ok, note = result.problem is not None, "signature valid; chain hash at its seq not recomputed"
        elif at_seq[cp.seq] != cp.hash:
            ok, note = False, "signature valid but the chain no longer hashes to the signed value"
        else:
            ok, note = True, "signature valid and chain matches"
        result.checkpoints.append(CheckpointStatus(cp, ok, note, source))


def _check_checkpoints(
    conn: sa.Connection,
    lo: int,
    hi: int,
    at_seq: dict[int, bytes],
    public_key: Ed25519PublicKey | None,
    result: VerifyResult,
) -> None:
    trusted = raw_public(public_key) if public_key is not None else None
    if trusted is None:
        result.notes.append(
            "signatures were checked against the public keys stored in the database; "
            "pass --public-key (from `veil audit export-public-key`) to trust them independently"
        )
    for cp in checkpoints(conn, lo, hi):
        if trusted is not None and cp.public_key != trusted:
            result.checkpoints.append(CheckpointStatus(cp, False, "signed by a different key than the one trusted"))
            continue
        try:
            key = public_key or Ed25519PublicKey.from_public_bytes(cp.public_key)
        except ValueError:
            result.checkpoints.append(CheckpointStatus(cp, False, "stored public key is not a valid Ed25519 key"))
            continue
        if not signature_valid(cp, key):
            result.checkpoints.append(CheckpointStatus(cp, False, "signature does not verify (forged or altered)"))
        elif cp.seq not in at_seq:
            note = "signature valid; chain hash at its seq not recomputed (walk stopped before it)"
            result.checkpoints.append(CheckpointStatus(cp, result.problem is not None, note))
        elif at_seq[cp.seq] != cp.hash:
            result.checkpoints.append(
                CheckpointStatus(cp, False, "signature valid but the chain no longer hashes to the signed value")
            )
        else:
            result.checkpoints.append(CheckpointStatus(cp, True, "signature valid and chain matches"))
