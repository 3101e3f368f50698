"""Stopping ``veil serve``: what SIGTERM and SIGINT do (docs/deployment.md#stopping-and-faults).

Service managers stop a process with SIGTERM and, after a grace period, SIGKILL (Kubernetes:
``terminationGracePeriodSeconds``, 30 s by default; systemd: ``TimeoutStopSec``; ``docker stop``:
10 s). An operator's Ctrl-C sends SIGINT. Veil treats both alike:

1. the first signal starts the stop: no new requests are taken (HTTP: the listening socket is
   closed and requests on open connections get 503 with a ``Stopping`` error; stdio: requests get
   the same error), calls in flight run on for at most ``limits.shutdown_grace_s``;
2. then every session is closed and its close audited (``reason: shutdown``): calls still running
   (the grace ran out, or a second signal came) are cut, since their upstream connections and
   sandboxes stop, and each gets an error answer and its audit outcome row; then the sandbox
   manager stops (interpreters killed, workspaces unmounted, cgroups removed), upstream processes
   stop, the audit writer flushes, and the process exits 0;
3. a second signal skips the rest of the grace period; a third exits at once (``os._exit``), as
   SIGKILL would: the sandbox watchdog kills the jails and the next start reclaims the rest.

A signal during start-up aborts the start (whatever was started is stopped) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import select
import signal
import sys
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.shared.message import SessionMessage

from veil.errors import Stopping

if TYPE_CHECKING:
    from veil.proxy.gateway import Gateway

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# After the sessions are closed, how long cut calls get to send their error answer and audit row.
CUT_ANSWER_S = 5.0


class Stop:
    """One ``veil serve``'s stop: requested by the first signal, hurried by the second."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.requested = anyio.Event()
        self.forced = anyio.Event()
        self.signal: str | None = None
        self.serving = False  # False while starting: a signal then aborts the start
        self.in_flight = 0  # HTTP POSTs being served (counted by the transport's middleware)
        self.scope: anyio.CancelScope | None = None  # what a signal during start-up cancels

    @property
    def draining(self) -> bool:
        return self.requested.is_set()

    def error(self) -> Stopping:
        why = self.signal or "a stop request"
        return Stopping(
            f"Veil is stopping ({why}) and takes no new requests; retry on another replica or once it has restarted"
        )

    def request(self, why: str) -> None:
        """Start the stop (the first signal, or a caller); later calls hurry it."""
        if not self.requested.is_set():
            self.signal = why
            self.requested.set()
            if not self.serving and self.scope is not None:
                log.warning("%s during start-up: start aborted, stopping what was started", why)
                self.scope.cancel()
            return
        if not self.forced.is_set():
            self.forced.set()
            log.warning("%s again: calls in flight are cut now; a third signal exits at once", why)
            return
        log.error("%s a third time: exiting at once; the sandbox watchdog and the next start clean up", why)
        sys.stderr.flush()
        os._exit(1)

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Receive SIGTERM and SIGINT until cancelled (replaces Python's KeyboardInterrupt)."""
        with anyio.open_signal_receiver(*SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                self.request(signal.Signals(signum).name)

    async def drain(self, in_flight: Callable[[], int]) -> int:
        """Wait until no call is in flight, at most ``grace_s`` or until a second signal; returns
        how many calls are still in flight."""
        count = in_flight()
        if count:
            log.warning(
                "stopping (%s): waiting up to %gs (limits.shutdown_grace_s) for %d call(s) in flight; "
                "a second signal stops waiting",
                self.signal,
                self.grace_s,
                count,
            )
        else:
            log.warning("stopping (%s): no call in flight", self.signal)
        with anyio.move_on_after(self.grace_s):
            while in_flight() and not self.forced.is_set():
                await anyio.sleep(0.02)  # polls a counter; bounded by the grace period
        left = in_flight()
        if left:
            log.warning("stopping: %d call(s) still in flight are cut (they get an error and are audited)", left)
        return left


def busy_sessions(gateway: Gateway) -> int:
    """Agent requests in flight across the gateway's sessions."""
    return sum(1 for session in list(gateway.sessions.values()) if session.busy)


async def end_sessions(gateway: Gateway, in_flight: Callable[[], int]) -> None:
    """Close every session (audited ``reason: shutdown``). Calls still running are cut: the
    sandboxes executing code are killed first (their execution ends as ``killed``), then each
    session's upstream connections close (a call waiting on one fails with an UpstreamError);
    each cut call then answers and writes its audit outcome row (waited for, bounded)."""
    with anyio.CancelScope(shield=True):
        if in_flight() and gateway.sandbox is not None:
            gateway.sandbox.interrupt()
        for session in list(gateway.sessions.values()):
            await gateway.close_session(session, reason="shutdown")
        with anyio.move_on_after(CUT_ANSWER_S):
            while in_flight():
                await anyio.sleep(0.02)  # polls a counter; bounded


# -- stdio: the agent's pipes, claimed so a stop can cancel a read and never cut a write ------


def _claim(fd: int, replacement: int) -> int:
    """Move ``fd`` to a private descriptor (returned) and put ``replacement`` in its place, so
    Veil's children and stray prints never touch the agent's channel."""
    private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.dup2(replacement, fd)
    return private


def _pollable(fd: int) -> bool:
    """Can the event loop wait on ``fd`` (epoll refuses regular files and some devices)?"""
    import select

    if not hasattr(select, "epoll"):  # not Linux: left to the event loop
        return True
    epoll = select.epoll()
    try:
        epoll.register(fd, select.EPOLLIN)
        return True
    except OSError:
        return False
    finally:
        epoll.close()


class AgentStdin:
    """The agent's lines, read on the event loop (not in a worker thread, which a stop could not
    interrupt while the agent keeps its end open)."""

    LIMIT = 256 * 1024 * 1024  # one line; the runner refuses messages over limits.max_message_bytes

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "rb", buffering=0)
        self._reader: asyncio.StreamReader | None = None

    @classmethod
    def claim(cls) -> AgentStdin | None:
        """fd 0 as an ``AgentStdin`` (fd 0 then reads /dev/null), or None when it is not a pipe,
        socket or terminal (a file: the SDK's reader, which never blocks on one, is used)."""
        import stat

        try:
            mode = os.fstat(0).st_mode
        except OSError:
            return None
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)) or not _pollable(0):
            return None  # e.g. /dev/null: a character device epoll refuses (and reads never block)
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            return cls(_claim(0, null))
        finally:
            os.close(null)

    def __aiter__(self) -> AgentStdin:
        return self

    async def __anext__(self) -> str:
        if self._reader is None:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=self.LIMIT)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), self._file)
            self._reader = reader
        try:
            line = await self._reader.readline()
        except ValueError:  # a line over LIMIT: dropped; what follows of it fails to parse
            return "\n"
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class AgentStdout:
    """The agent's side of stdout: each line written and flushed in one step a cancellation
    cannot split, so an answer handed over before the stop reaches the agent whole."""

    def __init__(self, gate: StdioGate) -> None:
        import stat

        self._private = _claim(1, 2)  # stray prints go to stderr, never into the channel
        self._file = os.fdopen(self._private, "w", encoding="utf-8", closefd=False)
        self._gate = gate
        self._pipe = stat.S_ISFIFO(os.fstat(self._private).st_mode)

    async def write(self, text: str) -> None:
        if not self._write_now(text):
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._write, text)
        self._gate.written()

    def _write_now(self, text: str) -> bool:
        """Write a short line here, on the event loop, when that cannot block: the channel is a
        pipe, the line is at most ``PIPE_BUF`` bytes (written whole: POSIX makes such a pipe
        write atomic) and the pipe has room for it (``POLLOUT``: at least that much is free).
        Most answers are such lines; each saved a hand-off to a worker thread and back. False:
        the worker thread writes it (an agent that stops reading must not stall the loop)."""
        if not self._pipe:
            return False
        data = text.encode("utf-8")
        if len(data) > select.PIPE_BUF:
            return False
        poll = select.poll()
        poll.register(self._private, select.POLLOUT)
        if not poll.poll(0):
            return False
        while data:  # one write: at most PIPE_BUF bytes to a pipe is all or nothing
            data = data[os.write(self._private, data) :]  # the text layer is flushed after every write
        return True

    def _write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()

    async def flush(self) -> None:
        return None

    def restore(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._file.flush()
        with contextlib.suppress(OSError):
            os.dup2(self._private, 1)
            os.close(self._private)


class StdioGate:
    """Between the stdio transport and the MCP server: counts requests until their answer is on
    the wire, and once the stop has begun answers new requests with a ``Stopping`` error."""

    def __init__(self, stop: Stop) -> None:
        self._read: Any = None
        self._write: Any = None
        self._stop = stop
        self._open: set[Any] = set()  # ids of agent requests not answered on the wire yet
        self._order: deque[Any] = deque()  # per message handed to the writer: the id it answers
        self.reader = _GateReader(self)
        self.writer = _GateWriter(self)

    def bind(self, read: Any, write: Any) -> None:
        """The transport's streams (the server is then given ``reader`` and ``writer``)."""
        self._read, self._write = read, write

    @property
    def pending(self) -> int:
        return len(self._open)

    def written(self) -> None:
        if self._order:
            self._open.discard(self._order.popleft())

    async def _receive(self) -> Any:
        while True:
            item = await self._read.receive()
            message = getattr(item, "message", None)
            if not isinstance(message, types.JSONRPCRequest):
                return item
            if not self._stop.draining:
                self._open.add(message.id)
                return item
            error = self._stop.error()
            refusal = types.JSONRPCError(
                jsonrpc="2.0", id=message.id, error=types.ErrorData(code=error.code, message=error.message)
            )
            await self._send(SessionMessage(message=refusal))

    async def _send(self, item: Any) -> None:
        message = getattr(item, "message", None)
        answer = isinstance(message, types.JSONRPCResponse | types.JSONRPCError)
        answers = getattr(message, "id", None) if answer else None
        self._order.append(answers)
        try:
            await self._write.send(item)
        except BaseException:
            self._order.pop()
            raise


class _GateReader:
    def __init__(self, gate: StdioGate) -> None:
        self._gate = gate

    @property
    def last_context(self) -> Any:
        return getattr(self._gate._read, "last_context", None)

    async def receive(self) -> Any:
        return await self._gate._receive()

    async def aclose(self) -> None:
        await self._gate._read.aclose()

    def __aiter__(self) -> _GateReader:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _GateReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _GateWriter:
    def __init__(self, gate: StdioGate) -> None:
        self._gate = gate

    async def send(self, item: Any) -> None:
        await self._gate._send(item)

    async def aclose(self) -> None:
        await self._gate._write.aclose()

    async def __aenter__(self) -> _GateWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
