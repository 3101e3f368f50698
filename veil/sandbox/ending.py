"""The end of an execution, decided by the host: the runtime's ``done`` is only a claim.

The code shares the interpreter with the runtime, so it can write a ``done`` itself (or a whole
fake runtime). The host therefore accepts ``done`` only once it sees, in /proc, the interpreter
stopped: the runtime stops itself (SIGSTOP) right after ``done``, and only the host continues it,
after writing the next execution. Code still running after a forged ``done`` keeps the call open
until it stops or the wall clock kills it, and the real ``done`` that follows a forged one is a
protocol violation. Then every other process of the sandbox is stopped with SIGSTOP until one
listing finds them all stopped (none can then run, fork or wake another) and killed; an
interpreter with threads left is replaced by the manager. The interpreter stays stopped until
the next execution, so nothing of this execution (a background process, a timer, a signal
handler) runs after the call returns. All of this runs inside the execution's wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

from veil.sandbox import proctree
from veil.sandbox.process import Exit, Flood, SandboxProcess


async def settle(sandbox: SandboxProcess) -> tuple[str | None, int, int]:
    """After a ``done`` claim: wait until the interpreter is stopped (the runtime stops itself
    after ``done``), stop every other process of the sandbox until one listing finds them all
    stopped, then kill them. Returns (why the interpreter must go or None, threads it had left
    running, processes killed). Any message after ``done`` (a forged ``done`` followed by the
    real one, a call) is a protocol violation. Runs inside the execution's wall clock: code
    still running after a forged ``done`` times out."""
    interpreter = sandbox.interpreter
    async for _ in _polls():
        sandbox.drain_channel()
        if not sandbox.messages.empty():
            return _after_done(sandbox.messages.get_nowait()), 0, 0
        if interpreter.stopped():
            sandbox.drain_channel()  # a message written just before it stopped
            if not sandbox.messages.empty():
                return _after_done(sandbox.messages.get_nowait()), 0, 0
            break
        if not interpreter.alive():
            return "exit", 0, 0
    sandbox.frozen = True  # from here on the host continues it, with the next execution
    # Stop the world: every other process too, until one listing finds them all stopped. From
    # then on none of them can run, start a process or wake another (SIGCONT).
    strays = sandbox.strays()
    if strays:
        signalled: set[int] = set()
        async for rounds in _polls(limit_s=2.0):
            strays = sandbox.strays()
            again = rounds % 16 == 15  # now and then: anything running again was continued
            for pid in strays:
                if pid not in signalled or (again and not proctree.stopped_or_gone(pid)):
                    signalled.add(pid)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGSTOP)
            if again and not interpreter.stopped():
                sandbox.freeze()
            stopped = interpreter.stopped() and all(proctree.stopped_or_gone(p) for p in strays)
            if stopped and set(sandbox.strays()) <= set(strays):
                break
        else:
            return "violation", 0, 0  # could not be stopped: stop the sandbox
    threads = sandbox.extra_threads()
    if threads:
        return None, threads, len(strays)  # threads die only with their process: the manager kills the sandbox
    killed = set(strays)
    if strays:
        async for _ in _polls(limit_s=2.0):
            if not sandbox.kill_strays():
                break
            killed.update(sandbox.strays())
        else:
            return "violation", 0, len(killed)  # processes that would not die: stop the sandbox
        if not interpreter.stopped():
            return "violation", 0, len(killed)
    return None, 0, len(killed)


async def _polls(limit_s: float | None = None) -> AsyncIterator[int]:
    """Yield until the caller breaks. For the first millisecond, wait between rounds with short
    *blocking* sleeps: the state we wait for is normally tens of microseconds away, but it needs
    the sandbox's process to get a CPU, often this one (it was just woken from here), and only a
    real sleep gives it up (yielding to the event loop keeps the CPU busy; the loop's timers are
    coarser than a millisecond). Then sleep on the event loop, up to 20 ms at a time. Stop after
    ``limit_s`` (None: the execution's wall clock decides)."""
    start = time.perf_counter()
    delay = 0.001
    rounds = 0
    while True:
        yield rounds
        rounds += 1
        elapsed = time.perf_counter() - start
        if limit_s is not None and elapsed > limit_s:
            return
        if elapsed < 0.001:
            time.sleep(0.00002)
        else:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)


def _after_done(message: object) -> str:
    if isinstance(message, Exit):
        return "exit"
    if isinstance(message, Flood):
        return "flood"
    return "violation"
