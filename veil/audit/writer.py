"""The durable, batched audit writer: one sink for every audit event.

Why batching: a commit costs a WAL flush; one transaction per event caps the gateway at a few
hundred audited calls per second and adds the flush to every call. Here callers put events on a
queue; one background thread takes up to ``batch_max_events`` of them (waiting at most
``batch_max_delay_ms`` after the first for more to arrive, but only while the previous batch held
more than one event, so a lone caller never waits), appends them to the hash chain in one
transaction and then wakes every caller of the batch. ``record`` returns only after the commit;
if the batch cannot be committed, every caller in it gets :class:`AuditUnavailable` and the
gateway refuses the call (fail closed).

Usage::

    async with AuditWriter(engine) as audit:
        await audit.record(AuditEvent(kind=TOOL_CALL, ...))

    writer.record_sync(event)   # from CLI code or other threads
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.audit.aggregate import AuthFailures
from veil.audit.canonical import EncodingError
from veil.audit.chain import Appended, Head, append, append_if_head, link, lock_head, prepare
from veil.audit.checkpoints import make_checkpoint
from veil.audit.events import AuditEvent
from veil.audit.partitions import Month, PartitionCache, ensure_partition
from veil.errors import AuditUnavailable

log = logging.getLogger(__name__)

_STOP = object()
_CLOCK_CHECK_S = 60.0  # the one-statement path re-reads the database clock (under the lock) this often
_CONFLICT_BACKOFF_S = 1.0  # after another writer moved the head, append under the lock for this long


@dataclass
class _Item:
    row: dict[str, Any]
    future: Future[Appended]


def _reason(exc: BaseException) -> str:
    """A short, payload-free description of a database failure."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
            # Connection-level messages (refused, timeout, shutdown) carry no row data.
            first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
            return f"{type(exc.orig).__name__}: {first}"
        return f"{type(exc.orig).__name__} (SQLSTATE {sqlstate})"
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):  # the writer's own connection
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first}"
    if isinstance(exc, psycopg.Error):
        return f"{type(exc).__name__} (SQLSTATE {exc.sqlstate})"
    return type(exc).__name__


def _brief(exc: BaseException) -> str:
    """The failure's class (and SQLSTATE when there is one), for messages that leave Veil."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    sqlstate = getattr(orig, "sqlstate", None)
    return f"{type(orig).__name__}, SQLSTATE {sqlstate}" if sqlstate else type(orig).__name__


class AuditWriter:
    """Batches events into hash-chained transactions on a background thread."""

    def __init__(
        self,
        engine: sa.Engine,
        batch_max_events: int = 256,
        batch_max_delay_ms: float = 2.0,
        *,
        timeout_s: float = 30.0,
        signing_key: Ed25519PrivateKey | None = None,
        checkpoint_every_events: int | None = None,
        checkpoint_every_s: float | None = None,
        checkpoint_file: Path | None = None,
    ) -> None:
        if batch_max_events < 1:
            raise ValueError("batch_max_events must be at least 1")
        self.engine = engine
        self.batch_max_events = batch_max_events
        self.batch_max_delay_s = max(0.0, batch_max_delay_ms) / 1000.0
        self.timeout_s = timeout_s
        self.signing_key = signing_key
        self.checkpoint_every_events = checkpoint_every_events
        self.checkpoint_every_s = checkpoint_every_s
        self.checkpoint_file = checkpoint_file  # checkpoints are also appended here (outside the database)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._partitions = PartitionCache()
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._last_batch = 0
        self.batches = 0  # committed batches, for benchmarks and tests
        self.events = 0
        self.fast_appends = 0  # batches appended in one statement (append_if_head)
        self.head_conflicts = 0  # one-statement appends that found the head moved by another writer
        self.fast_append = True  # False: always append under the lock (tests compare both paths)
        # The writer thread's own state for the one-statement path.
        self._head: Head | None = None  # the head this writer left, while it is the last to append
        self._raw: Any = None  # its own connection (detached from the pool), autocommit
        self._clock_offset = timedelta(0)  # database clock minus ours, measured under the lock
        self._slow_at = 0.0  # when that was (monotonic)
        self._fast_after = 0.0  # no one-statement append before this (monotonic), after a conflict
        self._fast_attempt: list[Appended] | None = None
        # Refused logins go through here, not record(): one row per source, reason and minute.
        self.auth_failures = AuthFailures(self)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (idempotent); also makes this and next month's partitions."""
        with self._lock:
            if self._closed:
                raise AuditUnavailable("the audit writer is closed; create a new AuditWriter")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="veil-audit-writer", daemon=True)
            self._thread.start()
        try:
            self._prepare_partitions()
        except sa.exc.SQLAlchemyError as exc:
            # Not fatal here: each batch ensures its own month; record() reports the failure.
            log.warning("could not pre-create audit partitions (%s)", _reason(exc))

    def _prepare_partitions(self) -> None:
        """Create the current and next month ahead of time, outside the hot path, so month
        rollover does not take a DDL lock while callers wait."""
        with self.engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
            conn.execute(sa.text("SELECT seq FROM audit_chain_head WHERE id FOR UPDATE"))
            now = conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
            months = [Month.of(now), Month.of(now).next()]
            for month in months:
                ensure_partition(conn, month)
        self._partitions.add(months)

    def _ensure_ahead(self, month: Month) -> None:
        """Create next month's partition now, in its own short transaction, so that the first
        batch of that month does not take a DDL lock on ``audit_events`` while callers wait."""
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
                conn.execute(sa.text("SELECT seq FROM audit_chain_head WHERE id FOR UPDATE"))
                ensure_partition(conn, month)
        except sa.exc.SQLAlchemyError as exc:  # retried after a later batch; the batch path also ensures
            log.warning("could not create the audit partition for %s ahead of time (%s)", month, _reason(exc))
            return
        self._partitions.add([month])

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued (pending auth-failure counts too), then stop the thread. Later
        ``record`` calls fail."""
        if self._thread is not None and not self._closed:
            self.auth_failures.close()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout_s)
        self._fail_pending(AuditUnavailable("the audit writer was closed before the event was written"))

    async def __aenter__(self) -> AuditWriter:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def __enter__(self) -> AuditWriter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self) -> tuple[int, bool]:
        """(events queued for the writer thread, whether that thread is running): read by /readyz
        and /metrics (veil/ops), so they need not reach into the queue or the thread."""
        thread = self._thread
        return self._queue.qsize(), thread is not None and thread.is_alive() and not self._closed

    # -- recording ---------------------------------------------------------------------------

    def _submit(self, event: AuditEvent) -> Future[Appended]:
        try:
            row = prepare(event)
        except EncodingError as exc:
            raise AuditUnavailable(f"audit event {event.kind!r} cannot be recorded: {exc}") from None
        if self._thread is None:
            self.start()
        if self._closed:
            raise AuditUnavailable("the audit writer is closed; the call was refused")
        future: Future[Appended] = Future()
        self._queue.put(_Item(row, future))
        return future

    async def record(self, event: AuditEvent) -> None:
        """Return once ``event`` is committed; raise :class:`AuditUnavailable` if it cannot be."""
        future = self._submit(event)
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            raise AuditUnavailable(
                f"audit event {event.kind!r} was not committed within {self.timeout_s:g}s; "
                "check the database is reachable and not locked"
            ) from None

    def record_sync(self, event: AuditEvent) -> Appended:
        """Blocking ``record`` for threads and CLI code; returns the seq and hash appended."""
        future = self._submit(event)
        try:
            return future.result(self.timeout_s)
        except TimeoutError:
            future.cancel()
            raise AuditUnavailable(
                f"audit event {event.kind!r} was not committed within {self.timeout_s:g}s; "
                "check the database is reachable and not locked"
            ) from None

    # -- the background thread ---------------------------------------------------------------

    def _next_batch(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.batch_max_delay_s
        # Wait for company only when there is some: a lone sequential caller (last batch held one
        # event) is written at once instead of paying the delay on every call.
        wait = self._last_batch > 1
        while len(batch) < self.batch_max_events:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if not wait:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._next_batch(first)
            # Callers that gave up (timeout) before their batch started are not written.
            batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
            self._last_batch = len(batch)
            if batch:
                self._write(batch)
        self._drop_direct()
        self._fail_pending(AuditUnavailable("the audit writer was closed before the event was written"))

    def _write(self, batch: list[_Item]) -> None:
        rows = [item.row for item in batch]
        appended: list[Appended] | None = None
        unsure: list[Appended] | None = None  # what an attempt that may have committed appended
        ensured: set[Month] = set()
        if self._fast_ready():
            try:
                appended = self._append_fast(rows)
            except Exception as exc:
                # A lost connection leaves the commit unknown; any other error rolled it back.
                unsure = self._fast_attempt if isinstance(exc, psycopg.OperationalError) else None
                log.warning("audit one-statement append failed (%s); retrying under the chain lock", _reason(exc))
                self._drop_direct()
        if appended is None:
            for attempt in (1, 2):
                try:
                    with self.engine.begin() as conn:
                        head, now = lock_head(conn)
                        self._clock_offset = now - datetime.now(UTC)
                        if unsure is not None and self._committed(conn, unsure):
                            appended = unsure  # the earlier attempt did commit: never append twice
                        else:
                            unsure = None
                            appended, ensured = append(conn, rows, self._partitions, locked=(head, now))
                            unsure = appended  # from here on a failure may be after the commit
                except sa.exc.DBAPIError as exc:
                    self._head = None
                    if attempt == 1 and exc.connection_invalidated:
                        continue  # a stale pooled connection: one fresh try
                    self._fail(batch, exc)
                    return
                except Exception as exc:
                    self._head = None
                    self._fail(batch, exc)
                    return
                break
            assert appended is not None
            self._slow_at = time.monotonic()
        last = appended[-1]
        self._head = Head(last.seq, last.hash, last.ts)
        self._partitions.add(ensured)
        upcoming = Month.of(last.ts).next()
        if not self._partitions.known(upcoming):
            self._ensure_ahead(upcoming)
        self.batches += 1
        self.events += len(batch)
        for item, done in zip(batch, appended, strict=True):
            item.future.set_result(done)
        self._since_checkpoint += len(batch)
        self._maybe_checkpoint()

    # -- the one-round-trip append ---------------------------------------------------------

    def _fast_ready(self) -> bool:
        """Use :func:`append_if_head` when this writer knows the head (it wrote last), the clock
        offset to the database is fresh, and no other writer moved the head lately."""
        if self._head is None or not self.fast_append:
            return False
        return time.monotonic() - self._slow_at < _CLOCK_CHECK_S and time.monotonic() >= self._fast_after

    def _append_fast(self, rows: list[dict[str, Any]]) -> list[Appended] | None:
        """One statement, one round trip, its own commit; None when it must go under the lock."""
        head = self._head
        assert head is not None
        ts = max(datetime.now(UTC) + self._clock_offset, head.ts)  # the database's clock, estimated
        if not self._partitions.known(Month.of(ts)):
            return None
        params, out = link(head, ts, rows)
        self._fast_attempt = out
        inserted = append_if_head(self._direct(), head, params, out)
        if inserted == len(rows):
            self.fast_appends += 1
            return out
        if inserted:  # pragma: no cover - the statement inserts all rows or none
            raise AuditUnavailable(f"audit append inserted {inserted} of {len(rows)} rows")
        # Another writer (process, retention, checkpoint) moved the head: nothing was written.
        self.head_conflicts += 1
        self._head = None
        self._fast_after = time.monotonic() + _CONFLICT_BACKOFF_S
        return None

    def _direct(self) -> psycopg.Connection[Any]:
        """The writer's own connection (taken from the engine, so its connect settings apply), in
        autocommit: each fast append is one statement and one transaction."""
        if self._raw is None:
            raw = self.engine.raw_connection()
            raw.detach()  # not returned to the pool: the writer thread owns it
            driver = raw.dbapi_connection
            if not isinstance(driver, psycopg.Connection):  # pragma: no cover - Veil ships psycopg 3
                raw.close()
                raise TypeError("the one-statement audit append needs the psycopg driver")
            if driver.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                driver.rollback()
            driver.autocommit = True
            # Never server-side prepared: behind PgBouncer in transaction mode (before 1.21) a
            # statement prepared on one server connection is missing on the next.
            driver.prepare_threshold = None
            self._raw = (raw, driver)
        return self._raw[1]

    def _drop_direct(self) -> None:
        self._head = None
        raw, self._raw = self._raw, None
        if raw is not None:
            with contextlib.suppress(Exception):  # already broken
                raw[1].close()

    @staticmethod
    def _committed(conn: sa.Connection, appended: list[Appended]) -> bool:
        """Did an append whose commit went unanswered (connection lost) commit after all? Its last
        row's hash covers every event of the batch, so finding it at its seq proves it."""
        last = appended[-1]
        found = conn.execute(
            sa.text("SELECT hash FROM audit_events WHERE seq = :seq AND ts = :ts"), {"seq": last.seq, "ts": last.ts}
        ).scalar()
        return found is not None and bytes(found) == last.hash

    def _fail(self, batch: list[_Item], exc: BaseException) -> None:
        log.error("audit batch of %d event(s) not written: %s", len(batch), _reason(exc))
        error = AuditUnavailable(
            # The agent sees this: the error's class and SQLSTATE, never the server's own words
            # (they name the database host or socket); the log above has them.
            f"the audit trail could not be written ({_brief(exc)}); the call was refused. "
            "Check that PostgreSQL is reachable and migrated (`veil db upgrade`)."
        )
        for item in batch:
            item.future.set_exception(error)

    def _fail_pending(self, error: AuditUnavailable) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(error)

    def _maybe_checkpoint(self) -> None:
        if self.signing_key is None:
            return
        due = (self.checkpoint_every_events and self._since_checkpoint >= self.checkpoint_every_events) or (
            self.checkpoint_every_s and time.monotonic() - self._last_checkpoint >= self.checkpoint_every_s
        )
        if not due:
            return
        self._head = None  # the checkpoint event moves the head: the next batch goes under the lock
        try:
            with self.engine.begin() as conn:
                make_checkpoint(conn, self.signing_key, self.checkpoint_file)
        except Exception as exc:  # a missed checkpoint is retried after the next batch
            log.warning("audit checkpoint failed: %s", _reason(exc))
            return
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
