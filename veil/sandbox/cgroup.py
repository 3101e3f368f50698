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
per Veil process, so the sandboxes stay inside whatever limits the host put on Veil.

cgroup v1 (separate ``pids`` and ``memory`` hierarchies) is what the machines this was built on
have. cgroup v2 (one unified hierarchy) is tested against a fake cgroupfs
(``tests/sandbox/test_cgroup_v2.py``) and on a real v2 kernel in a QEMU guest
(``tests/sandbox/test_cgroup_v2_kernel.py``). On v2 a group may hand controllers to its children
only while it holds no processes itself (the "no internal processes" rule), and Veil's own group
(a container's, a systemd service's) holds Veil: so when enabling ``+pids +memory`` there fails
with EBUSY, every process of that group is moved into a leaf child, ``<own>/veil-gateway``, the
controllers are enabled, and the sandboxes' groups are created beside the leaf. A host where none
of this works (no controllers, controllers not delegated to Veil's group, a read-only cgroupfs)
gets a SandboxError saying what to change, and code never runs without the limits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from veil.errors import SandboxError

Writer = Callable[[Path, str], None]

ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
SELF_MOUNTINFO = Path("/proc/self/mountinfo")
# cgroup v2: the leaf child of Veil's own group that Veil's processes move into, so that its own
# group holds no processes and may enable controllers for the sandboxes' groups.
LEAF = "veil-gateway"
CONTROLLERS = ("pids", "memory")
FIX = (
    "Veil needs the 'pids' and 'memory' cgroup controllers (cgroup v1 hierarchies under /sys/fs/cgroup/pids "
    "and /sys/fs/cgroup/memory, or cgroup v2 with both delegated to Veil's cgroup) to bound each sandbox."
)
V2_FIX = (
    "On cgroup v2 Veil needs a writable /sys/fs/cgroup showing its own cgroup (a private cgroup namespace; "
    "in a container: privileged, see docs/deployment.md#cgroup-v2-nodes) with 'pids' and 'memory' enabled "
    "for it by its parent (systemd: Delegate=pids memory); or run with expose: direct (no code mode)."
)


def _own_path(controller: str, self_cgroup: Path = SELF_CGROUP) -> str:
    """Veil's cgroup path in the hierarchy holding ``controller`` ("" for the v2 unified one)."""
    for line in self_cgroup.read_text().splitlines():
        _num, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return "/"


def _mount_roots(mountinfo: Path) -> dict[str, str]:
    """Mount point -> the group of its cgroup hierarchy that is mounted there ("/" for the whole)."""
    roots: dict[str, str] = {}
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return roots
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and len(fields) > 4 and right.split()[:1] in (["cgroup"], ["cgroup2"]):
            unescape = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), f) for f in fields[3:5]]
            roots[unescape[1]] = unescape[0]
    return roots


def own_group(
    hierarchy: Path, controller: str, self_cgroup: Path = SELF_CGROUP, mountinfo: Path = SELF_MOUNTINFO
) -> Path:
    """Veil's own group's directory in the hierarchy mounted at ``hierarchy``.

    ``/proc/self/cgroup`` names the group from the root of Veil's cgroup namespace, but a
    container without a cgroup namespace of its own (Podman, containerd and Docker on cgroup v1
    nodes) has only its own group mounted at ``/sys/fs/cgroup/<controller>``: ``/proc/self/cgroup``
    says ``/kubepods/.../<container>`` while that group is the mount's top. The mount's root
    (``/proc/self/mountinfo``) is taken off the front; where the whole hierarchy is mounted (a
    host, a private cgroup namespace) the root is ``/`` and nothing changes."""
    own = _own_path(controller, self_cgroup)
    mounted = _mount_roots(mountinfo).get(str(hierarchy), "/").rstrip("/")
    if mounted and (own == mounted or own.startswith(mounted + "/")):
        own = own[len(mounted) :]
    return hierarchy / own.lstrip("/")


def v2_base(root: Path = ROOT, self_cgroup: Path = SELF_CGROUP, mountinfo: Path = SELF_MOUNTINFO) -> Path:
    """The v2 group the managers' groups go in: Veil's own group, or, once Veil has moved itself
    into the ``veil-gateway`` leaf, the leaf's parent (a second manager must not nest a new leaf
    inside the first)."""
    own = own_group(root, "", self_cgroup, mountinfo)
    return own.parent if own.name == LEAF and own != root else own


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _words(path: Path) -> set[str]:
    return set(path.read_text().split())


def delegate_v2(
    root: Path = ROOT, self_cgroup: Path = SELF_CGROUP, write: Writer = _write, mountinfo: Path = SELF_MOUNTINFO
) -> Path:
    """Make Veil's v2 group able to give ``pids`` and ``memory`` to child groups, and return it.

    First the plain way: write ``+pids +memory`` to its ``cgroup.subtree_control``. The kernel
    refuses that with EBUSY while the group holds processes (the no-internal-processes rule; only
    the root group is exempt), which it does whenever Veil is in it. Then every process of the
    group (Veil, and whatever runs beside it in the same container or service: tini, upstream
    servers) is moved into the leaf ``<group>/veil-gateway`` and the write is tried again. Any
    other refusal is a SandboxError naming the group and the fix; nothing is left half-limited,
    since no sandbox group exists yet."""
    base = v2_base(root, self_cgroup, mountinfo)
    if not (base / "cgroup.controllers").is_file():
        raise SandboxError(
            f"Veil's cgroup {base} (from {self_cgroup}) is not visible under {root}: mount the cgroup "
            f"filesystem of Veil's own cgroup namespace there. {V2_FIX}"
        )
    missing = [c for c in CONTROLLERS if c not in _words(base / "cgroup.controllers")]
    if missing:
        raise SandboxError(
            f"the cgroup v2 controller(s) {', '.join(missing)} are not available in Veil's cgroup {base} "
            f"(its cgroup.controllers): the parent group must enable them in its cgroup.subtree_control. {V2_FIX}"
        )
    control = base / "cgroup.subtree_control"
    if all(c in _words(control) for c in CONTROLLERS):
        return base
    leaf = base / LEAF
    for _ in range(100):
        try:
            write(control, " ".join(f"+{c}" for c in CONTROLLERS))
            return base
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise SandboxError(
                    f"cannot enable the pids and memory controllers in {control} ({exc.strerror}). {V2_FIX}"
                ) from None
        # EBUSY: the group holds processes. Move them (again: some may have forked meanwhile).
        try:
            leaf.mkdir(exist_ok=True)
            pids = [p for p in (base / "cgroup.procs").read_text().split() if p != "0"]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                    write(leaf / "cgroup.procs", pid)
        except OSError as exc:
            raise SandboxError(
                f"cannot move Veil's processes from {base} into the leaf group {leaf} "
                f"(needed on cgroup v2 before the sandboxes' groups can have limits; {exc.strerror}). {V2_FIX}"
            ) from None
    raise SandboxError(
        f"Veil's cgroup {base} still holds processes Veil cannot move into {leaf} (outside its PID "
        f"namespace, or started faster than they are moved): run Veil in a cgroup of its own. {V2_FIX}"
    )


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
    def detect(
        cls,
        root: Path = ROOT,
        self_cgroup: Path = SELF_CGROUP,
        write: Writer = _write,
        mountinfo: Path = SELF_MOUNTINFO,
    ) -> Layout:
        """The hierarchies of this host, with the manager's parent directories created and
        watched; or SandboxError. ``root``, ``self_cgroup``, ``write`` and ``mountinfo`` are the
        host's cgroupfs, ``/proc/self/cgroup``, the write to a cgroupfs file and
        ``/proc/self/mountinfo``, replaceable to test the decisions against a fake tree."""
        tag = f"veil-sandboxes.{os.getpid()}.{secrets.token_hex(4)}"
        v1_pids, v1_mem = root / "pids", root / "memory"
        try:
            if (v1_pids / "cgroup.procs").exists() and (v1_mem / "cgroup.procs").exists():
                pids = own_group(v1_pids, "pids", self_cgroup, mountinfo) / tag
                memory = own_group(v1_mem, "memory", self_cgroup, mountinfo) / tag
                pids.mkdir(exist_ok=True)
                memory.mkdir(exist_ok=True)
                layout = cls(1, pids, memory)
            else:
                controllers = root / "cgroup.controllers"
                if not controllers.exists() or not set(CONTROLLERS) <= _words(controllers):
                    raise SandboxError(f"no usable cgroup controllers on this host. {FIX}")
                parent = delegate_v2(root, self_cgroup, write, mountinfo) / tag
                parent.mkdir(exist_ok=True)
                write(parent / "cgroup.subtree_control", "+pids +memory")
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
