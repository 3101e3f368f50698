"""What a Veil that died without closing (SIGKILL, a crash, the OOM killer, a power cut of the
process, not of the host) leaves behind, reclaimed when the next one starts.

After such a death the manager's watchdog kills the jails and removes their cgroups (cgroup.py).
Two things are left: the workspace filesystems (loop-mounted images under the workspace root:
the sessions' files stay on the host, mounted), and, if the watchdog died too (systemd's
``KillMode=control-group`` or a container runtime SIGKILLs every process of the service at once),
the cgroups and any jail still in them. The next manager reclaims both before it creates anything:

* **cgroups**: each manager's groups live under ``veil-sandboxes.<pid>.<tag>`` in Veil's own
  cgroup. One whose ``<pid>`` is no longer running, and that no live watchdog is cleaning, is
  stale: every process in it is killed and the groups are removed.
* **workspaces**: every live manager holds a shared ``flock`` on ``<workspace root>/.owners``
  (released by the kernel when its process dies, however it dies). A manager that starts and
  gets the lock *exclusively* knows no other live Veil uses this workspace root, so everything in
  it is stale: unmounted and deleted. If another live Veil shares the root, nothing is touched
  (its sessions' workspaces are live) and the log says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import signal
import time
from pathlib import Path

from veil.sandbox import workspace
from veil.sandbox.cgroup import ROOT, own_group, v2_base

log = logging.getLogger(__name__)

LOCK_NAME = ".owners"
_GROUP = re.compile(r"^veil-sandboxes\.(\d+)\.[0-9a-f]+$")


def claim_root(root: Path, *, hold: bool = True) -> int | None:
    """Reclaim what dead managers left in ``root`` if no live one uses it, then (with ``hold``)
    keep a shared lock on it for this manager's life: the returned descriptor (close it when
    the manager closes; the kernel does if the process dies). Without ``hold`` (the start of
    ``veil serve``, before any manager exists) the lock is released again and None returned."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            left = [p.name for p in root.iterdir() if p.name != LOCK_NAME]
            if left:
                log.info("workspace root %s is in use by another live Veil: nothing reclaimed", root)
        else:
            reclaimed = reclaim_workspaces(root)
            if reclaimed:
                log.warning("reclaimed %d workspace(s) left in %s by a Veil that did not stop", len(reclaimed), root)
        if not hold:
            os.close(fd)
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)  # converting may let another starter in between: it finds nothing of ours yet
        return fd
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def reclaim_workspaces(root: Path) -> list[str]:
    """Unmount and delete every workspace under ``root`` (callers hold the exclusive lock)."""
    reclaimed: list[str] = []
    prefix = str(root.resolve()) + "/"
    for point in mount_points():
        if point.startswith(prefix) and "/" not in point[len(prefix) :]:
            workspace.remove(Path(point))
            reclaimed.append(Path(point).name)
    for entry in sorted(root.iterdir()):
        if entry.name == LOCK_NAME:
            continue
        if entry.name.endswith(".img") and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(OSError):
                entry.unlink()
            continue
        workspace.remove(entry)
        if entry.name not in reclaimed:
            reclaimed.append(entry.name)
    return reclaimed


def mount_points() -> list[str]:
    """Mount points of this mount namespace (octal escapes of /proc/self/mounts decoded)."""
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 1:
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]))
    return points


def stale_group_parents() -> list[Path]:
    """``veil-sandboxes.*`` directories in Veil's cgroup whose manager process is gone and whose
    watchdog is not running."""
    candidates: list[Path] = []
    for controller in ("pids", "memory"):
        hierarchy = ROOT / controller
        if (hierarchy / "cgroup.procs").exists():
            candidates.append(own_group(hierarchy, controller))
    if not candidates and (ROOT / "cgroup.controllers").exists():
        candidates.append(v2_base())
    watched = _watched_paths()
    stale = []
    for base in candidates:
        with contextlib.suppress(OSError):
            for entry in base.iterdir():
                match = _GROUP.match(entry.name)
                if match and not Path(f"/proc/{match.group(1)}").exists() and str(entry) not in watched:
                    stale.append(entry)
    return stale


def reclaim_cgroups() -> int:
    """Kill what is left in stale sandbox cgroups and remove them; returns how many parents."""
    parents = stale_group_parents()
    for _ in range(100):  # the kernel removes a group once its last process is reaped
        left = False
        for group in [g for p in parents for g in p.glob("sb-*")]:
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left = True
        if not left:
            break
        time.sleep(0.05)  # waiting for the kernel to reap killed processes, bounded (5 s)
    for parent in parents:
        with contextlib.suppress(OSError):
            parent.rmdir()
    if parents:
        log.warning("reclaimed %d sandbox cgroup parent(s) left by a Veil that did not stop", len(parents))
    return len(parents)


def _watched_paths() -> set[str]:
    """Arguments of running processes (the watchdogs name the parents they clean)."""
    seen: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            args = (proc / "cmdline").read_bytes().split(b"\0")
            seen.update(a.decode(errors="replace") for a in args if b"veil-sandboxes." in a)
    return seen


def reclaim_stale(root: Path) -> None:
    """At ``veil serve`` start (as root): stale cgroups, then stale workspaces of ``root``."""
    if os.geteuid() != 0:
        return
    reclaim_cgroups()
    if root.is_dir():
        claim_root(root, hold=False)
