"""Appending to the hash chain: one transaction, one lock, many events.

Every append (the writer's batches, retention, checkpoints) goes through :func:`append` inside a
transaction that holds the ``audit_chain_head`` row lock, or (the writer, when it appended last)
through :func:`append_if_head`: one statement that moves the head only if it is still where the
writer left it. That row is what makes concurrent writers, in one process or several, produce a
single chain: whoever holds its lock reads the head (last seq, last hash, last ts), links its
events after it and moves the head, then commits.

``ts`` (the partition key) is the database's ``clock_timestamp()`` at append time (on the one-
statement path: the writer's clock corrected by its offset to the database clock, measured under
the lock at least once a minute), clamped to be no earlier than the head's, so ``seq`` order and
``ts`` order agree and a month partition is always a contiguous range of the chain (retention
can drop a prefix). The event's own time is
kept in ``occurred_at``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa

from veil.audit.canonical import FIELDS, EncodingError, _text, chain_hash, format_ts, json_value, to_json_text
from veil.audit.events import AuditEvent
from veil.audit.partitions import Month, PartitionCache, ensure_partition

_TEXT_FIELDS = (
    "kind",
    "outcome",
    "principal",
    "tenant",
    "session_id",
    "scope",
    "upstream",
    "tool",
    "args_digest",
    "decision",
    "rule",
    "policy_version",
)

COLUMNS = (*(f for f in FIELDS if f != "v"), "prev_hash", "hash")  # the canonical record, stored
_JSONB = ("entities", "untokenised", "detail")

INSERT = sa.text(
    f"INSERT INTO audit_events ({', '.join(COLUMNS)}) VALUES ("
    + ", ".join(f"CAST(:{c} AS jsonb)" if c in _JSONB else f":{c}" for c in COLUMNS)
    + ")"
)
LOCK_HEAD = sa.text("SELECT seq, hash, ts, clock_timestamp() AS now FROM audit_chain_head WHERE id FOR UPDATE")
MOVE_HEAD = sa.text("UPDATE audit_chain_head SET seq = :seq, hash = :hash, ts = :ts WHERE id")


@dataclass(frozen=True)
class Appended:
    seq: int
    hash: bytes
    ts: datetime


@dataclass(frozen=True)
class Head:
    seq: int
    hash: bytes
    ts: datetime


COPY_SQL = f"COPY audit_events ({', '.join(COLUMNS)}) FROM STDIN"


def _insert(conn: sa.Connection, params: list[dict[str, Any]]) -> None:
    """COPY the rows in (several times faster than INSERT for a batch); INSERT for other drivers."""
    driver = conn.connection.driver_connection
    if isinstance(driver, psycopg.Connection):
        with driver.cursor() as cur, cur.copy(COPY_SQL) as copy:
            for p in params:
                copy.write_row([to_json_text(p[c]) if c in _JSONB else p[c] for c in COLUMNS])
    else:  # pragma: no cover - Veil ships with psycopg 3
        conn.execute(INSERT, [{**p, **{c: to_json_text(p[c]) for c in _JSONB}} for p in params])


def prepare(event: AuditEvent) -> dict[str, Any]:
    """The event's columns, normalised for hashing and storage (no seq, ts or hashes yet).

    Done in the caller's thread so a malformed event fails its own ``record`` call and never
    poisons a batch. Raises :class:`EncodingError` naming the field.
    """
    row: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = getattr(event, name)
        if value is not None and not isinstance(value, str):
            raise EncodingError(f"audit field {name!r} must be a string or None, got {type(value).__name__}")
        row[name] = None if value is None else _text(value)
    if not row["kind"]:
        raise EncodingError("audit field 'kind' is empty; use one of the kinds in veil.audit.events")
    for name in ("roles", "tokens"):
        values = getattr(event, name)
        if isinstance(values, str) or not all(isinstance(v, str) for v in values):
            raise EncodingError(f"audit field {name!r} must be a list of strings")
        row[name] = [_text(v) for v in values]
    row["entities"] = json_value(dict(event.entities), "entities")
    row["untokenised"] = json_value(list(event.untokenised), "untokenised")
    row["detail"] = json_value(dict(event.detail), "detail")
    duration = event.duration_ms
    row["duration_ms"] = None if duration is None else json_value(float(duration), "duration_ms")
    if event.ts.tzinfo is None:
        raise EncodingError("audit field 'ts' must be timezone-aware (use datetime.now(UTC))")
    row["occurred_at"] = event.ts
    row["id"] = event.id
    return row


_TYPES = {
    "seq": "bigint",
    "occurred_at": "timestamptz",
    "id": "uuid",
    "roles": "text[]",
    "tokens": "text[]",
    "entities": "jsonb",
    "untokenised": "jsonb",
    "detail": "jsonb",
    "duration_ms": "float8",
}
_TEXT = "text"
_HEX = ("prev_hash", "hash")  # bytea, sent as hex text and decoded in SQL
_ROW = tuple(c for c in COLUMNS if c != "ts")  # what a batch row carries (ts: the moved head's)
_AS_IS = tuple(c for c in _ROW if c not in ("occurred_at", "id", *_HEX))  # JSON values already


def _column(c: str) -> str:
    if c == "ts":
        return "moved.ts"
    return f"decode(v.{c}, 'hex')" if c in _HEX else f"v.{c}"


#: One statement text for every batch size, with 6 parameters: the batch's rows are ONE jsonb
#: parameter (an array of objects, one per event) unpacked by ``jsonb_to_recordset``; every row
#: takes its ``ts`` from the head the statement moved (:func:`link` gives a batch one ``ts``).
#: A statement with a VALUES row per event (27 parameters each) was new text for every batch
#: size and, over psycopg's 50-parameter cache limit, was re-parsed by psycopg on every append
#: (a tenth of the writer's CPU); one array parameter per column (27 arrays, unnested) was
#: parsed once, but psycopg's adaptation of those arrays was about a quarter of the writer's CPU
#: per event. With the JSON document (made by the C JSON encoder) the writer's CPU per event is
#: 0.5-0.7x that (bench/RESULTS.md, "The batch as one JSON parameter"). Stored values read back
#: exactly as hashed: ``occurred_at`` travels as the UTC text with microseconds that the hash
#: covers, hashes as hex, floats as their shortest round-trip text (jsonb's numeric converts
#: back to the same double). Never server-side prepared, so it works behind PgBouncer.
APPEND_IF_HEAD = (
    "WITH moved AS (UPDATE audit_chain_head SET seq = %s, hash = %s, ts = %s"
    " WHERE id AND seq = %s AND hash = %s RETURNING ts)"
    f" INSERT INTO audit_events ({', '.join(COLUMNS)})"
    f" SELECT {', '.join(_column(c) for c in COLUMNS)}"
    " FROM moved, jsonb_to_recordset(CAST(%s AS jsonb))"
    f" AS v({', '.join(f'{c} {_TYPES.get(c, _TEXT)}' for c in _ROW)})"
).encode()


#: The call of ``veil_audit_append`` (migrations/versions/0006_audit_append.py: the same statement
#: in a PL/pgSQL function, whose parsed form each backend keeps, whatever pools in front), schema-
#: qualified, or no row where the writer must not trust it. Trusted only when it belongs to a
#: superuser and both event triggers of the audit DDL guard are enabled: then the schema owner can
#: neither replace it (not theirs, and the guard refuses any ``veil_audit_*`` function) nor turn
#: the guard off (event triggers and ``session_replication_role`` are the superuser's). A function
#: the owner made or could swap for one that answers "appended" without appending is never called.
TRUSTED_APPEND_CALL = (
    b"SELECT format('SELECT %I.veil_audit_append(%%s, %%s, %%s, %%s, %%s, %%s::jsonb)', n.nspname)"
    b" FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_roles r ON r.oid = p.proowner"
    b" WHERE p.oid = to_regprocedure('veil_audit_append(bigint, bytea, timestamptz, bigint, bytea, jsonb)')"
    b" AND r.rolsuper AND (SELECT count(*) FROM pg_event_trigger"
    b" WHERE evtname IN ('veil_audit_guard_ddl', 'veil_audit_guard_drop') AND evtenabled <> 'D') = 2"
)


def link(head: Head, ts: datetime, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Appended]]:
    """Chain ``rows`` after ``head`` at ``ts``: the parameters to store and what they append."""
    prev, seq = head.hash, head.seq
    params, out = [], []
    for row in rows:
        seq += 1
        full = {**row, "seq": seq, "ts": ts}
        digest = chain_hash(prev, full)
        params.append({**full, "prev_hash": prev, "hash": digest})
        out.append(Appended(seq, digest, ts))
        prev = digest
    return params, out


def append_if_head(
    driver: psycopg.Connection[Any],
    head: Head,
    params: list[dict[str, Any]],
    out: list[Appended],
    call: bytes | None = None,
) -> int:
    """Append rows linked after ``head`` by :func:`link` in ONE statement (one round trip, and
    its own transaction when ``driver`` is in autocommit), provided the chain head is still
    ``head``: the statement moves the head only where it still holds ``head``'s seq and hash, and
    inserts only if it moved it. ``call``: the trusted ``veil_audit_append`` call
    (:data:`TRUSTED_APPEND_CALL`) that runs the same statement, or None to send it.

    Returns how many rows it inserted: all of them, or 0 when another writer moved the head first
    (nothing was written; take the lock and :func:`append`). Concurrent writers serialise on the
    head row exactly as with :func:`lock_head`: an UPDATE that waited for another writer's commit
    re-reads the row, finds the seq moved and writes nothing. The caller makes sure that ``ts``
    is no earlier than ``head.ts`` and that its month's partition exists.
    """
    cur = driver.execute(call or APPEND_IF_HEAD, _append_args(head, params, out))
    return cur.rowcount if call is None else _inserted(cur.fetchone())


async def append_if_head_async(
    driver: psycopg.AsyncConnection[Any],
    head: Head,
    params: list[dict[str, Any]],
    out: list[Appended],
    call: bytes | None = None,
) -> int:
    """:func:`append_if_head` on an asyncio connection: the writer's event-loop lane sends the
    same statement without handing the batch to a thread."""
    cur = await driver.execute(call or APPEND_IF_HEAD, _append_args(head, params, out))
    return cur.rowcount if call is None else _inserted(await cur.fetchone())


def trusted_append_call(driver: psycopg.Connection[Any]) -> bytes | None:
    """:data:`TRUSTED_APPEND_CALL` on ``driver``."""
    row = driver.execute(TRUSTED_APPEND_CALL).fetchone()
    return None if row is None else str(row[0]).encode()


async def trusted_append_call_async(driver: psycopg.AsyncConnection[Any]) -> bytes | None:
    """:data:`TRUSTED_APPEND_CALL` on an asyncio connection."""
    row = await (await driver.execute(TRUSTED_APPEND_CALL)).fetchone()
    return None if row is None else str(row[0]).encode()


def _inserted(row: Any) -> int:
    if row is None or not isinstance(row[0], int):  # pragma: no cover - the function returns a bigint
        raise RuntimeError("veil_audit_append returned no count")
    return int(row[0])


def _append_args(head: Head, params: list[dict[str, Any]], out: list[Appended]) -> list[Any]:
    last = out[-1]
    return [last.seq, last.hash, last.ts, head.seq, head.hash, batch_json(params)]


def batch_json(params: list[dict[str, Any]]) -> str:
    """The rows of :func:`link` as the one JSON parameter of :data:`APPEND_IF_HEAD`."""
    rows = []
    for p in params:
        row = {c: p[c] for c in _AS_IS}
        row["occurred_at"] = format_ts(p["occurred_at"])  # the very text the hash covers
        row["id"] = str(p["id"])
        row["prev_hash"] = p["prev_hash"].hex()
        row["hash"] = p["hash"].hex()
        rows.append(row)
    return to_json_text(rows)


def lock_head(conn: sa.Connection) -> tuple[Head, datetime]:
    """Take the chain lock; returns the head and the database's clock."""
    r = conn.execute(LOCK_HEAD).one()
    return Head(r.seq, bytes(r.hash), r.ts), r.now


def append(
    conn: sa.Connection,
    rows: list[dict[str, Any]],
    cache: PartitionCache | None = None,
    *,
    clock: datetime | None = None,
    locked: tuple[Head, datetime] | None = None,
) -> tuple[list[Appended], set[Month]]:
    """Link ``rows`` (from :func:`prepare`) after the head and insert them, in ``conn``'s transaction.

    Returns what was appended and the months whose partition this transaction ensured (to be
    added to ``cache`` once the transaction has committed). ``clock`` replaces the database
    clock when importing history (tests, benchmarks); ``ts`` still never goes backwards.
    ``locked`` is what :func:`lock_head` returned when the caller took the lock already in
    this transaction.
    """
    head, now = locked or lock_head(conn)
    ts = max(clock or now, head.ts)
    month = Month.of(ts)
    ensured: set[Month] = set()
    if cache is None or not cache.known(month):
        ensure_partition(conn, month)
        ensured.add(month)
    params, out = link(head, ts, rows)
    if params:
        _insert(conn, params)
        conn.execute(MOVE_HEAD, {"seq": out[-1].seq, "hash": out[-1].hash, "ts": ts})
    return out, ensured


def append_events(conn: sa.Connection, events: list[AuditEvent], *, clock: datetime | None = None) -> list[Appended]:
    """Convenience for CLI code that appends inside its own transaction (retention, erase)."""
    appended, _ = append(conn, [prepare(e) for e in events], clock=clock)
    return appended


def read_head(conn: sa.Connection) -> Head:
    r = conn.execute(sa.text("SELECT seq, hash, ts FROM audit_chain_head WHERE id")).one()
    return Head(r.seq, bytes(r.hash), r.ts)
