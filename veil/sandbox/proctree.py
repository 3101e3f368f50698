"""What the host reads from /proc to decide, itself, whether an execution has ended.

The code runs in the same process as the in-sandbox runtime, so anything the runtime could say
over the channel ("done") the code can say too. The host therefore treats ``done`` as a claim and
checks kernel state it alone can read (Veil is root; the jail hides the host's /proc):

* the interpreter's main thread is blocked in ``read()`` on the channel's inbound pipe, identified
  by its inode: the runtime is waiting for the host's next message, so nothing of the code runs
  in that thread (code that blocks there itself is not running either);
* the interpreter has no other thread;
* no other process of the sandbox is alive besides firejail's two and the interpreter (the
  sandbox's cgroup lists them all, however they were started; the host kills the rest).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# read(2)'s number per architecture (/proc/PID/syscall prints the number in decimal).
_READ = {"x86_64": 0, "aarch64": 63, "arm64": 63, "riscv64": 63}
READ_SYSCALL = _READ.get(platform.machine())
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def blocked_reading(pid: int, pipe_inode: int) -> bool:
    """True when ``pid``'s main thread sleeps in read() on the pipe with inode ``pipe_inode``."""
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/syscall").read_text().split()
    except OSError:
        return False
    if len(fields) < 2 or not fields[0].isdigit() or int(fields[0]) != READ_SYSCALL:
        return False  # "running", another syscall, or an architecture we do not know (never quiescent)
    try:
        fd = int(fields[1], 16)
        return os.readlink(f"/proc/{pid}/fd/{fd}") == f"pipe:[{pipe_inode}]"
    except (OSError, ValueError):
        return False


def thread_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def alive(pid: int) -> bool:
    """Running or sleeping (a zombie or a vanished pid is not)."""
    state = _stat(pid)
    return state is not None and state[0] not in ("Z", "X", "x")


def stopped(pid: int) -> bool:
    state = _stat(pid)
    return state is not None and state[0] in ("T", "t")


def cpu_seconds(pid: int) -> float:
    """User + system time of ``pid`` and its reaped children."""
    state = _stat(pid)
    if state is None:
        return 0.0
    # after the state: ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
    ticks = sum(int(v) for v in state[11:15])
    return ticks / CLOCK_TICKS


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def pipe_inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (the command name may contain spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()
