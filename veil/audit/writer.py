"""The durable, batched audit writer: one sink for every audit event.

Why batching: a commit costs a WAL flush; one transaction per event caps the gateway at a few
hundred audited calls per second and adds the flush to every call. Callers queue events; the
writer takes up to ``batch_max_events`` of them (waiting at most ``batch_max_delay_ms`` after the
first for more to arrive, but only while the previous batch held more than one event, so a lone
caller never waits), appends them to the hash chain in one transaction and then wakes every
caller of the batch. ``record`` returns only after the commit; if the batch cannot be committed,
every caller in it gets :class:`AuditUnavailable` and the gateway refuses the call (fail closed).

Two lanes write the same chain:

* the **event-loop lane** (after ``await start_async()`` or ``async with``; the gateway's): a
  flusher task on the loop drains the queue while one commit is in flight and sends each batch
  as one statement on an asyncio connection (through ``veil_audit_append`` where the database is
  hardened, so the server need not parse it again: ``chain.TRUSTED_APPEND_CALL``). Why: with a
  writer thread every call paid two GIL hand-offs (the queue put woke the thread, the wake-up
  came back through ``call_soon_threadsafe``), the largest cost on the gateway's per-call path. The rare paths
  (first batch, head conflict, under the chain lock, partitions, checkpoints, the clock check)
  run in a worker thread, awaited by the flusher, so batches stay in order. ``record_sync`` from
  another thread hands its event to the loop;
* the **thread lane** (``start()``, ``with``, or ``record_sync`` with no loop bound, or on the
  bound loop's own thread, where waiting for the loop would deadlock): a background thread.

Both lanes may append at once: the chain is kept by the database (the one-statement append moves
the head only where it still is what the lane last saw), never by shared memory.

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
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import psycopg
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.audit.aggregate import AuthFailures
from veil.audit.canonical import EncodingError
from veil.audit.chain import (
    Appended,
    Head,
    append,
    append_if_head,
    append_if_head_async,
    link,
    lock_head,
    prepare,
    trusted_append_call,
    trusted_append_call_async,
)
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
    """An event queued for the writer thread; its caller waits on ``future`` (any thread)."""

    row: dict[str, Any]
    future: Future[Appended]


@dataclass
class _Waiter:
    """An event queued on the event-loop lane; its caller awaits ``future`` on that loop."""

    row: dict[str, Any]
    future: asyncio.Future[Appended]


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _timed_out(kind: str, timeout_s: float) -> AuditUnavailable:
    return AuditUnavailable(
        f"audit event {kind!r} was not committed within {timeout_s:g}s; check the database is reachable and not locked"
    )


# A one-statement attempt: (appended, None), or (None, what a failed attempt may have committed).
_FastOutcome = tuple[list[Appended] | None, list[Appended] | None]


def _fast_failed(exc: BaseException, out: list[Appended]) -> list[Appended] | None:
    """A one-statement append raised: what it may have committed. A lost connection leaves the
    commit unknown (the locked retry checks before appending again); any other error rolled it
    back."""
    log.warning("audit one-statement append failed (%s); retrying under the chain lock", _reason(exc))
    return out if isinstance(exc, psycopg.OperationalError) else None


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
    """Batches events into hash-chained transactions, on the event loop or a background thread."""

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
        self._closing = False  # close has begun: pending auth-failure counts are being written
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
        # What the one-statement path needs (shared by both lanes: a stale head only costs a conflict).
        self._head: Head | None = None  # the head this writer left, while it is the last to append
        self._clock_offset = timedelta(0)  # database clock minus ours, measured under the lock
        self._slow_at = 0.0  # when that was (monotonic)
        self._fast_after = 0.0  # no one-statement append before this (monotonic), after a conflict
        self._raw: Any = None  # the writer thread's own connection (detached from the pool), autocommit
        self._call: bytes | None = None  # on _raw: the trusted veil_audit_append call, or None (the statement)
        # The event-loop lane (start_async): its loop, queue, flusher task and connection.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._pending: deque[_Waiter] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._company: asyncio.Future[None] | None = None  # set when a batch's worth is queued
        self._aconn: psycopg.AsyncConnection[Any] | None = None
        self._acall: bytes | None = None  # on _aconn: the trusted veil_audit_append call, or None
        self._rare: anyio.CapacityLimiter | None = None  # the worker thread of the lane's rare paths
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
        self._try_prepare_partitions()

    async def start_async(self) -> None:
        """Bind the event-loop lane to the running loop (idempotent): from now on ``record`` on
        this loop writes without a thread hop, and ``record_sync`` from other threads goes
        through the loop. Close with ``await aclose()`` on the same loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed or self._closing:
                raise AuditUnavailable("the audit writer is closed; create a new AuditWriter")
            if self._loop is loop:
                return
            if self._loop is not None:
                raise RuntimeError("this audit writer is bound to another event loop; create one per loop")
            self._loop, self._loop_thread = loop, threading.get_ident()
            self._rare = anyio.CapacityLimiter(1)
        await self._in_thread(self._try_prepare_partitions)

    def _try_prepare_partitions(self) -> None:
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
        """Write what is queued (pending auth-failure counts too), then stop. Later ``record``
        calls fail. With the event-loop lane bound, call ``await aclose()`` on that loop instead
        (from another thread, this waits for it)."""
        loop = self._loop
        if loop is not None and loop.is_running() and not self._closed:
            if threading.get_ident() == self._loop_thread:
                raise RuntimeError(
                    "AuditWriter.close() was called on the event loop its lane is bound to, which would "
                    "block the flush it waits for; use `await writer.aclose()`"
                )
            with contextlib.suppress(TimeoutError):
                asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout_s)
            return
        with self._lock:
            if self._closing:
                return
            self._closing = True
        if self._thread is not None or loop is not None:
            self.auth_failures.close()
        self._stop_thread(timeout_s)
        if loop is not None:  # its loop is gone: nothing queued there can be written or answered
            self._pending.clear()
            conn, self._aconn = self._aconn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.pgconn.finish()

    def _stop_thread(self, timeout_s: float) -> None:
        """Stop the writer thread after what is queued for it (refusing new events first)."""
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
            thread.join(timeout_s)
        self._fail_pending(AuditUnavailable("the audit writer was closed before the event was written"))

    async def aclose(self) -> None:
        """Write what is queued on both lanes (pending auth-failure counts too), then stop."""
        loop = self._loop
        if loop is None or asyncio.get_running_loop() is not loop:
            await anyio.to_thread.run_sync(self.close)
            return
        with anyio.CancelScope(shield=True):
            with self._lock:
                if self._closing:
                    return
                self._closing = True
            # Its record_sync calls come back to this loop, which is free while this waits.
            await anyio.to_thread.run_sync(self.auth_failures.close)
            self._closed = True  # record() refuses from here on; the flusher drains what is queued
            flusher = self._flusher
            if flusher is not None:
                await asyncio.wait({flusher}, timeout=self.timeout_s)
            closed = AuditUnavailable("the audit writer was closed before the event was written")
            while self._pending:
                waiter = self._pending.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(closed)
            await self._drop_aconn()
            await anyio.to_thread.run_sync(self._stop_thread, self.timeout_s)

    async def __aenter__(self) -> AuditWriter:
        await self.start_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> AuditWriter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self) -> tuple[int, bool]:
        """(events queued and not yet in a batch, whether the writer runs): read by /readyz and
        /metrics (veil/ops), so they need not reach into the queues, the loop or the thread."""
        queued = self._queue.qsize() + len(self._pending)
        if self._closed:
            return queued, False
        loop, thread = self._loop, self._thread
        if loop is not None:
            return queued, loop.is_running()
        return queued, thread is not None and thread.is_alive()

    # -- recording ---------------------------------------------------------------------------

    def _prepare(self, event: AuditEvent) -> dict[str, Any]:
        try:
            row = prepare(event)
        except EncodingError as exc:
            raise AuditUnavailable(f"audit event {event.kind!r} cannot be recorded: {exc}") from None
        if self._closed:
            raise AuditUnavailable("the audit writer is closed; the call was refused")
        return row

    def _submit(self, row: dict[str, Any]) -> Future[Appended]:
        """Queue a row for the writer thread."""
        if self._thread is None:
            self.start()
        if self._closed:
            raise AuditUnavailable("the audit writer is closed; the call was refused")
        future: Future[Appended] = Future()
        self._queue.put(_Item(row, future))
        return future

    async def record(self, event: AuditEvent) -> None:
        """Return once ``event`` is committed; raise :class:`AuditUnavailable` if it cannot be."""
        row = self._prepare(event)
        loop = self._loop
        try:
            if loop is None:  # no lane on a loop: the writer thread
                await asyncio.wait_for(asyncio.wrap_future(self._submit(row)), self.timeout_s)
            elif asyncio.get_running_loop() is loop:
                await asyncio.wait_for(self._enqueue(row), self.timeout_s)
            else:  # another loop (thread) than the lane's: hand the event over to it
                handed = asyncio.run_coroutine_threadsafe(self._record_on_loop(row), loop)
                await asyncio.wait_for(asyncio.wrap_future(handed), self.timeout_s)
        except TimeoutError:
            raise _timed_out(event.kind, self.timeout_s) from None

    def record_sync(self, event: AuditEvent) -> Appended:
        """Blocking ``record`` for threads and CLI code; returns the seq and hash appended.

        With the event-loop lane bound, the event goes through that loop, except on the loop's
        own thread (a policy check run there): waiting for the loop there would never end, so
        the writer thread takes it (the database keeps the two lanes on one chain)."""
        row = self._prepare(event)
        loop = self._loop
        future: Future[Appended]
        if loop is not None and threading.get_ident() != self._loop_thread and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._record_on_loop(row), loop)
        else:
            future = self._submit(row)
        try:
            return future.result(self.timeout_s)
        except TimeoutError:
            future.cancel()
            raise _timed_out(event.kind, self.timeout_s) from None

    # -- the event-loop lane -------------------------------------------------------------------

    def _enqueue(self, row: dict[str, Any]) -> asyncio.Future[Appended]:
        """Queue a row on the lane (on its loop) and make sure the flusher runs."""
        if self._closed:
            raise AuditUnavailable("the audit writer is closed; the call was refused")
        assert self._loop is not None
        future: asyncio.Future[Appended] = self._loop.create_future()
        self._pending.append(_Waiter(row, future))
        if self._flusher is None:
            self._flusher = self._loop.create_task(self._flush(), name="veil-audit-flusher")
        elif self._company is not None and not self._company.done() and len(self._pending) >= self.batch_max_events:
            self._company.set_result(None)
        return future

    async def _record_on_loop(self, row: dict[str, Any]) -> Appended:
        return await self._enqueue(row)

    async def _flush(self) -> None:
        """The lane's one flusher: while a batch commits, the next callers queue up behind it
        and share the next transaction. Ends when the queue is empty (the next caller starts
        another), so a lone caller is written at once."""
        batch: list[_Waiter] = []
        try:
            while self._pending:
                if self._last_batch > 1 and self.batch_max_delay_s > 0:
                    await self._await_company()
                batch = []
                while self._pending and len(batch) < self.batch_max_events:
                    waiter = self._pending.popleft()
                    if not waiter.future.done():  # callers that gave up before their batch are not written
                        batch.append(waiter)
                self._last_batch = len(batch)
                if batch:
                    await self._write_async(batch)
                batch = []
        except BaseException as exc:  # cancelled with its loop, or a defect: nobody waits for ever
            error = AuditUnavailable(f"the audit writer stopped ({type(exc).__name__}); the call was refused")
            log.error("audit flusher stopped: %s", _reason(exc))
            for waiter in [*batch, *self._pending]:
                if not waiter.future.done():
                    waiter.future.set_exception(error)
            self._pending.clear()
            raise
        finally:
            self._flusher = None

    async def _await_company(self) -> None:
        """Wait at most ``batch_max_delay_ms`` for a full batch (while batches are shared)."""
        if len(self._pending) >= self.batch_max_events:
            return
        assert self._loop is not None
        company: asyncio.Future[None] = self._loop.create_future()
        self._company = company
        timer = self._loop.call_later(self.batch_max_delay_s, _settle, company)
        try:
            await company
        finally:
            timer.cancel()
            self._company = None

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        """A rare path (under the chain lock, DDL, checkpoint) in the lane's worker thread."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._rare)

    async def _write_async(self, batch: list[_Waiter]) -> None:
        rows = [waiter.row for waiter in batch]
        appended, unsure = await self._append_fast_async(rows)
        ensured: set[Month] = set()
        if appended is None:
            try:
                appended, ensured = await self._in_thread(self._append_locked, rows, unsure)
            except Exception as exc:
                self._fail(batch, exc)
                return
        upcoming = self._committed_batch(appended, ensured)
        if upcoming is not None:
            await self._in_thread(self._ensure_ahead, upcoming)
        for waiter, done in zip(batch, appended, strict=True):
            if not waiter.future.done():
                waiter.future.set_result(done)
        if self._checkpoint_due():
            await self._in_thread(self._checkpoint)

    async def _append_fast_async(self, rows: list[dict[str, Any]]) -> _FastOutcome:
        """The one-statement append on the lane's connection: (appended, None), or (None, what
        a failed attempt may have committed) when the batch must go under the chain lock."""
        plan = self._fast_plan(rows)
        if plan is None:
            return None, None
        head, params, out = plan
        try:
            conn = await self._direct_async()
        except Exception as exc:  # nothing was sent
            log.warning("audit one-statement connection failed (%s); appending under the chain lock", _reason(exc))
            return None, None
        try:
            inserted = await append_if_head_async(conn, head, params, out, self._acall)
        except Exception as exc:
            await self._drop_aconn()
            return None, _fast_failed(exc, out)
        return self._fast_result(inserted, out), None

    async def _direct_async(self) -> psycopg.AsyncConnection[Any]:
        """The lane's own asyncio connection, with the engine's connect settings, in autocommit."""
        if self._aconn is None:
            _, params = self.engine.dialect.create_connect_args(self.engine.url)
            # Never server-side prepared: behind PgBouncer in transaction mode (before 1.21) a
            # statement prepared on one server connection is missing on the next.
            params.update(autocommit=True, prepare_threshold=None)
            conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(**params), self.timeout_s)
            try:
                self._acall = await trusted_append_call_async(conn)
            except psycopg.Error:
                await conn.close()
                raise
            self._aconn = conn
        return self._aconn

    async def _drop_aconn(self) -> None:
        self._head = None
        conn, self._aconn, self._acall = self._aconn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken
                await conn.close()

    # -- the writer thread ---------------------------------------------------------------------

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
        appended, unsure = self._append_fast_sync(rows)
        ensured: set[Month] = set()
        if appended is None:
            try:
                appended, ensured = self._append_locked(rows, unsure)
            except Exception as exc:
                self._fail(batch, exc)
                return
        upcoming = self._committed_batch(appended, ensured)
        if upcoming is not None:
            self._ensure_ahead(upcoming)
        for item, done in zip(batch, appended, strict=True):
            item.future.set_result(done)
        if self._checkpoint_due():
            self._checkpoint()

    def _append_fast_sync(self, rows: list[dict[str, Any]]) -> _FastOutcome:
        """``_append_fast_async`` on the writer thread's own connection."""
        plan = self._fast_plan(rows)
        if plan is None:
            return None, None
        head, params, out = plan
        try:
            conn = self._direct()
            inserted = append_if_head(conn, head, params, out, self._call)
        except Exception as exc:
            self._drop_direct()
            return None, _fast_failed(exc, out)
        return self._fast_result(inserted, out), None

    # -- shared by both lanes ------------------------------------------------------------------

    def _append_locked(
        self, rows: list[dict[str, Any]], unsure: list[Appended] | None
    ) -> tuple[list[Appended], set[Month]]:
        """Append under the chain lock (blocking; a worker thread on the loop lane). Also
        re-measures the database clock. Raises what made the batch fail."""
        appended: list[Appended] | None = None
        ensured: set[Month] = set()
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
                raise
            except Exception:
                self._head = None
                raise
            break
        assert appended is not None
        self._slow_at = time.monotonic()
        return appended, ensured

    def _committed_batch(self, appended: list[Appended], ensured: set[Month]) -> Month | None:
        """Book a committed batch; returns next month when its partition is still to be made."""
        last = appended[-1]
        self._head = Head(last.seq, last.hash, last.ts)
        self._partitions.add(ensured)
        self.batches += 1
        self.events += len(appended)
        self._since_checkpoint += len(appended)
        upcoming = Month.of(last.ts).next()
        return None if self._partitions.known(upcoming) else upcoming

    def _fast_ready(self) -> bool:
        """Use :func:`append_if_head` when this writer knows the head (it wrote last), the clock
        offset to the database is fresh, and no other writer moved the head lately."""
        if self._head is None or not self.fast_append:
            return False
        return time.monotonic() - self._slow_at < _CLOCK_CHECK_S and time.monotonic() >= self._fast_after

    def _fast_plan(self, rows: list[dict[str, Any]]) -> tuple[Head, list[dict[str, Any]], list[Appended]] | None:
        """The rows linked after the head this writer left, for the one-statement append; None
        when the batch must go under the lock."""
        head = self._head
        if head is None or not self._fast_ready():
            return None
        ts = max(datetime.now(UTC) + self._clock_offset, head.ts)  # the database's clock, estimated
        if not self._partitions.known(Month.of(ts)):
            return None
        params, out = link(head, ts, rows)
        return head, params, out

    def _fast_result(self, inserted: int, out: list[Appended]) -> list[Appended] | None:
        """What a one-statement append appended; None when it found the head moved."""
        if inserted == len(out):
            self.fast_appends += 1
            return out
        if inserted:  # pragma: no cover - the statement inserts all rows or none
            raise AuditUnavailable(f"audit append inserted {inserted} of {len(out)} rows")
        # Another writer (process, retention, checkpoint) moved the head: nothing was written.
        self.head_conflicts += 1
        self._head = None
        self._fast_after = time.monotonic() + _CONFLICT_BACKOFF_S
        return None

    def _direct(self) -> psycopg.Connection[Any]:
        """The writer thread's own connection (taken from the engine, so its connect settings
        apply), in autocommit: each fast append is one statement and one transaction."""
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
            try:
                self._call = trusted_append_call(driver)
            except psycopg.Error:
                raw.close()
                raise
            self._raw = (raw, driver)
        return self._raw[1]

    def _drop_direct(self) -> None:
        self._head = None
        raw, self._raw, self._call = self._raw, None, None
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

    def _fail(self, batch: list[_Item] | list[_Waiter], exc: BaseException) -> None:
        log.error("audit batch of %d event(s) not written: %s", len(batch), _reason(exc))
        error = AuditUnavailable(
            # The agent sees this: the error's class and SQLSTATE, never the server's own words
            # (they name the database host or socket); the log above has them.
            f"the audit trail could not be written ({_brief(exc)}); the call was refused. "
            "Check that PostgreSQL is reachable and migrated (`veil db upgrade`)."
        )
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    def _fail_pending(self, error: AuditUnavailable) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(error)

    def _checkpoint_due(self) -> bool:
        if self.signing_key is None:
            return False
        return bool(
            (self.checkpoint_every_events and self._since_checkpoint >= self.checkpoint_every_events)
            or (self.checkpoint_every_s and time.monotonic() - self._last_checkpoint >= self.checkpoint_every_s)
        )

    def _checkpoint(self) -> None:
        assert self.signing_key is not None
        self._head = None  # the checkpoint event moves the head: the next batch goes under the lock
        try:
            with self.engine.begin() as conn:
                make_checkpoint(conn, self.signing_key, self.checkpoint_file)
        except Exception as exc:  # a missed checkpoint is retried after the next batch
            log.warning("audit checkpoint failed: %s", _reason(exc))
            return
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
