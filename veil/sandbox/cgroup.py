"""One control group per sandbox: its process limit, its memory limit, and the list of its processes.

Why cgroups: rlimits are per process (``RLIMIT_AS``) or per user (``RLIMIT_NPROC``, shared by every
sandbox, since they all run as one account), so neither bounds a *session*. A cgroup does:

* ``pids.max`` caps the tasks (processes and threads) of this sandbox alone: a fork bomb in one
  session makes forks fail there, not in the others;
* the memory limit caps everything the sandbox's processes charge: their pages, and the pages of
  files they write to RAM-backed filesystems (``/tmp``, ``/dev/shm``) and of SysV shared memory,
  so RAM-backed storage cannot grow past the session's ``memory_mb``;
* ``procs()`` lists every process of the sandbox by host pid, however it was started (forked,
  double-forked, ``setsid``, daemonised): a process cannot leave its cgroup without write access
  to cgroupfs, which the jail hides (``/sys`` is blacklisted). The host kills from this list.

The groups are created under Veil's own cgroup (read from ``/proc/self/cgroup``), in a directory
per Veil process, so the sandboxes stay inside whatever limits the host put on Veil. cgroup v1
(separate ``pids`` and ``memory`` hierarchies) and v2 (one unified hierarchy with both controllers)
are supported; a host with neither gets a SandboxError saying so, and code never runs without them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from veil.errors import SandboxError

ROOT = Path("/sys/fs/cgroup")
FIX = (
    "Veil needs the 'pids' and 'memory' cgroup controllers (cgroup v1 hierarchies under /sys/fs/cgroup/pids "
    "and /sys/fs/cgroup/memory, or cgroup v2 with both delegated to Veil's cgroup) to bound each sandbox."
)


def _own_path(controller: str) -> str:
    """Veil's cgroup path in the hierarchy holding ``controller`` ("" for the v2 unified one)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _num, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return "/"


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


# Started with each manager's cgroup parents: waits for EOF on stdin, which comes when the manager
# closes or when Veil dies (even by SIGKILL), then kills every process left in those groups and
# removes them. Without it, interpreters stopped between executions would outlive a crashed Veil.
WATCHDOG = """
import os, pathlib, signal, sys, time
sys.stdin.buffer.read()
parents = [pathlib.Path(p) for p in sys.argv[1:]]
for _ in range(100):
    left = False
    for group in [g for p in parents for g in p.glob("sb-*")]:
        try:
            pids = (group / "cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        try:
            group.rmdir()
        except OSError:
            left = True
    if not left:
        break
    time.sleep(0.05)
for parent in parents:
    try:
        parent.rmdir()
    except OSError:
        pass
"""


@dataclass
class Layout:
    """Where one manager keeps its sandboxes' groups (one parent per controller hierarchy, named
    after Veil's pid and a random tag), and the watchdog that cleans them up if Veil dies."""

    version: int
    pids_parent: Path
    memory_parent: Path
    watchdog: subprocess.Popen[bytes] | None = None

    @classmethod
    def detect(cls) -> Layout:
        """The hierarchies of this host, with the manager's parent directories created and
        watched; or SandboxError."""
        tag = f"veil-sandboxes.{os.getpid()}.{secrets.token_hex(4)}"
        v1_pids, v1_mem = ROOT / "pids", ROOT / "memory"
        try:
            if (v1_pids / "cgroup.procs").exists() and (v1_mem / "cgroup.procs").exists():
                pids = v1_pids / _own_path("pids").lstrip("/") / tag
                memory = v1_mem / _own_path("memory").lstrip("/") / tag
                pids.mkdir(exist_ok=True)
                memory.mkdir(exist_ok=True)
                layout = cls(1, pids, memory)
            else:
                controllers = ROOT / "cgroup.controllers"
                if not controllers.exists() or not {"pids", "memory"} <= set(controllers.read_text().split()):
                    raise SandboxError(f"no usable cgroup controllers on this host. {FIX}")
                parent = ROOT / _own_path("").lstrip("/") / tag
                parent.mkdir(exist_ok=True)
                _write(parent / "cgroup.subtree_control", "+pids +memory")
                layout = cls(2, parent, parent)
        except OSError as exc:
            raise SandboxError(f"cannot create the sandboxes' cgroups ({exc.strerror}). {FIX}") from None
        layout.watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", WATCHDOG, *sorted({str(layout.pids_parent), str(layout.memory_parent)})],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not in Veil's process group: a signal to Veil's group spares it
        )
        return layout

    def remove(self) -> None:
        """Let the watchdog kill what is left and remove the groups and parents, and wait for it."""
        if self.watchdog is None:
            return
        watchdog, self.watchdog = self.watchdog, None
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        try:
            watchdog.wait(10)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()


@dataclass
class SandboxCgroup:
    """The group(s) of one sandbox. ``add`` the jail's processes before any code runs in it."""

    layout: Layout
    name: str

    @classmethod
    def create(cls, layout: Layout, *, max_tasks: int, memory_bytes: int) -> SandboxCgroup:
        group = cls(layout, f"sb-{secrets.token_hex(6)}")
        try:
            for directory in group._dirs():
                directory.mkdir()
            if layout.version == 1:
                _write(group.pids_dir / "pids.max", str(max_tasks))
                _write(group.memory_dir / "memory.limit_in_bytes", str(memory_bytes))
                memsw = group.memory_dir / "memory.memsw.limit_in_bytes"
                if memsw.exists():  # with swap, RAM-backed files must not spill past the limit either
                    _write(memsw, str(memory_bytes))
            else:
                _write(group.pids_dir / "pids.max", str(max_tasks))
                _write(group.memory_dir / "memory.max", str(memory_bytes))
                with contextlib.suppress(OSError):
                    _write(group.memory_dir / "memory.swap.max", "0")
        except OSError as exc:
            group.remove()
            raise SandboxError(f"cannot set up the sandbox's cgroup ({exc.strerror}). {FIX}") from None
        return group

    @property
    def pids_dir(self) -> Path:
        return self.layout.pids_parent / self.name

    @property
    def memory_dir(self) -> Path:
        return self.layout.memory_parent / self.name

    def _dirs(self) -> list[Path]:
        return list(dict.fromkeys([self.pids_dir, self.memory_dir]))

    def add(self, pid: int) -> None:
        """Move one process (all its threads) into the group; later children inherit it."""
        for directory in self._dirs():
            _write(directory / "cgroup.procs", str(pid))

    def procs(self) -> list[int]:
        """Host pids of every process in the sandbox. Opened afresh each time: re-reading an open
        ``cgroup.procs`` from offset 0 can return the previous listing."""
        try:
            fd = os.open(self.pids_dir / "cgroup.procs", os.O_RDONLY)
        except OSError:
            return []
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except OSError:
            return []
        finally:
            os.close(fd)
        return [int(p) for p in b"".join(chunks).split()]

    def peak_memory_bytes(self) -> int:
        """The most memory the sandbox has used at once (its pages, tmpfs and shared memory)."""
        name = "memory.max_usage_in_bytes" if self.layout.version == 1 else "memory.peak"
        try:
            return int((self.memory_dir / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def remove(self) -> bool:
        """Delete the group; False while processes are still in it (call again after reaping)."""
        done = True
        for directory in self._dirs():
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    done = False
        return done
