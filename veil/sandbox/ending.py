"""The end of an execution, decided by the host: the runtime's ``done`` is only a claim.

The code shares the interpreter with the runtime, so it can write a ``done`` itself (or a whole
fake runtime). The host therefore accepts ``done`` only once it sees, in /proc, the interpreter's
main thread waiting for the host's next message (``proctree.blocked_reading``); code still running
after a forged ``done`` keeps the call open until it stops or the wall clock kills it, and the
real ``done`` that follows a forged one is a protocol violation. An interpreter with threads
left is replaced (by the manager). Otherwise the interpreter is stopped with SIGSTOP (until the
next execution) and then every other process of the sandbox is killed, so nothing of this
execution (a background process, a timer, a signal handler) runs after the call has returned.
All of this runs inside the execution's wall-clock limit.
"""

from __future__ import annotations

import asyncio

from veil.sandbox import proctree
from veil.sandbox.process import Exit, Flood, SandboxProcess


async def settle(sandbox: SandboxProcess) -> tuple[str | None, int, int]:
    """After a ``done`` claim: wait until the host sees the interpreter waiting for its next
    message, stop it, then kill every other process of the sandbox and check that nothing
    continued the interpreter meanwhile. Returns (why the interpreter must go or None, threads
    it had left running, processes killed). Any message after ``done``
    (a forged ``done`` followed by the real one, a call) is a protocol violation. Runs inside
    the execution's wall clock: code still running after a forged ``done`` times out."""
    delay = 0.0002
    while True:
        sandbox.drain_channel()
        if not sandbox.messages.empty():
            return _after_done(sandbox.messages.get_nowait()), 0, 0
        if sandbox.waiting():
            sandbox.drain_channel()  # a message written just before it blocked
            if not sandbox.messages.empty():
                return _after_done(sandbox.messages.get_nowait()), 0, 0
            break
        if not proctree.alive(sandbox.worker):
            return "exit", 0, 0
        try:
            message = await asyncio.wait_for(sandbox.messages.get(), delay)
        except TimeoutError:
            delay = min(delay * 2, 0.02)
            continue
        return _after_done(message), 0, 0
    threads = sandbox.extra_threads()
    if threads:
        return None, threads, 0  # threads die only with their process: the manager kills the sandbox
    # Stop the interpreter first, so it cannot start anything while the rest is killed.
    if not await freeze(sandbox):
        return "violation", 0, 0
    killed: set[int] = set()
    for attempt in range(200):
        strays = sandbox.strays()
        if not strays:
            break
        killed.update(strays)
        sandbox.kill_strays()
        await asyncio.sleep(0.0005 * min(attempt + 1, 20))
    else:
        return "violation", 0, len(killed)  # processes that would not die: stop the sandbox
    if not proctree.stopped(sandbox.worker):
        return "violation", 0, len(killed)  # a stray continued the interpreter before it died
    return None, 0, len(killed)


async def freeze(sandbox: SandboxProcess) -> bool:
    """Stop the interpreter (SIGSTOP) and wait until the kernel shows it stopped, so nothing of
    this execution (a timer, a signal handler) runs before the next execution starts."""
    sandbox.freeze()
    delay = 0.00005
    for _ in range(60):
        if proctree.stopped(sandbox.worker):
            return True
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.01)
    return False


def _after_done(message: object) -> str:
    if isinstance(message, Exit):
        return "exit"
    if isinstance(message, Flood):
        return "flood"
    return "violation"
