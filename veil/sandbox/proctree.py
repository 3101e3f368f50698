"""What the host reads from /proc to decide, itself, whether an execution has ended.

The code runs in the same process as the in-sandbox runtime, so anything the runtime could say
over the channel ("done") the code can say too. The host therefore treats ``done`` as a claim and
checks kernel state it alone can read (Veil is root; the jail hides the host's /proc):

* the interpreter is stopped (the runtime stops itself after ``done``; code that forged a
  ``done`` and runs on is not stopped);
* the interpreter has no other thread;
* no other process of the sandbox is alive besides firejail's two and the interpreter (the
  sandbox's cgroup lists them all, however they were started; the host kills the rest).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Watch:
    """One process's /proc files, opened once and re-read with ``pread`` on every check (cheaper
    than opening them each time, and bound to that process: a recycled pid is never read)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._dir = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
        self._fds = [self._dir]
        self._stat = self._open("stat")
        self._status = self._open("status")

    def _open(self, name: str) -> int:
        fd = os.open(name, os.O_RDONLY, dir_fd=self._dir)
        self._fds.append(fd)
        return fd

    def _read(self, fd: int) -> str:
        try:
            return os.pread(fd, 8192, 0).decode(errors="replace")
        except OSError:
            return ""  # the process is gone

    def _status_field(self, name: str) -> str:
        text = self._read(self._status)
        at = text.find(f"\n{name}:")
        return text[at + len(name) + 2 : text.find("\n", at + 1)].strip() if at >= 0 else ""

    def state(self) -> str:
        """The state letter (R, S, D, T, t, Z, X) or "" when the process is gone."""
        return self._status_field("State")[:1]

    def alive(self) -> bool:
        return self.state() not in ("", "Z", "X", "x")

    def stopped(self) -> bool:
        return self.state() in ("T", "t")

    def threads(self) -> int:
        value = self._status_field("Threads")
        return int(value) if value.isdigit() else 0

    def peak_rss_bytes(self) -> int:
        """The peak resident set (VmHWM)."""
        fields = self._status_field("VmHWM").split()
        return int(fields[0]) * 1024 if fields and fields[0].isdigit() else 0

    def cpu_seconds(self) -> float:
        """User + system time of the process and its reaped children."""
        text = self._read(self._stat)
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) < 15:
            return 0.0
        # after the state: ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
        return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


def alive(pid: int) -> bool:
    """Running or sleeping (a zombie or a vanished pid is not)."""
    state = _stat(pid)
    return state is not None and state[0] not in ("Z", "X", "x")


def stopped_or_gone(pid: int) -> bool:
    """Stopped (SIGSTOP), a zombie, or gone: in no state to act."""
    state = _stat(pid)
    return state is None or state[0] in ("T", "t", "Z", "X", "x")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (the command name may contain spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()
