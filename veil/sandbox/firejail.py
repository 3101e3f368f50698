"""The firejail command line for one sandbox: what the code can see, do and use.

Policy: hide by default. Every top-level directory that the Python interpreter does not need is
blacklisted (that covers Veil's repo, data dir and config wherever they live under /work, /srv,
/opt, /var, /root, ...), every entry of /run except firejail's own (the PostgreSQL socket dir
among them), every other home directory, and the workspace root (other sessions). /tmp and /dev
are private; the session's workspace, mounted as the user's home, is the only writable place.
Network: ``--net=none`` (no interfaces but a private loopback, no DNS). Privileges: run as the
unprivileged sandbox user, ``--noroot`` user namespace, no capabilities, no new privileges, the
default seccomp blacklist (ptrace, mount, kexec, ...) plus ``--restrict-namespaces``. IPC: its
own namespace (``--ipc-namespace``), so SysV message queues, semaphores and shared memory are
invisible to other sandboxes and die with the jail. Per-process limits are rlimits; per-sandbox
ones (tasks, memory including /tmp, /dev/shm and SysV shm) are the sandbox's cgroup
(``cgroup.py``); the workspace quota is its own filesystem (``workspace.py``); the wall clock is
enforced by the host (firejail's own ``--timeout`` adds about two seconds).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from veil.config import SandboxConfig
from veil.errors import SandboxError

# Top-level entries the interpreter needs (read-only for the sandbox user by file permissions).
_VISIBLE_TOP = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev", "tmp", "home"}
PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3")
# /etc is rebuilt from these entries only (a config file with a database password under /etc/veil,
# or anything else an operator keeps there, stays out of sight).
ETC_KEEP = "passwd,group,hosts,localtime,nsswitch.conf,ld.so.cache"  # each entry costs start-up time
FIX = "Install it: apt-get install firejail"
# RLIMIT_CPU counts a process's whole life, but an interpreter serves many executions. The hard
# limit is this many executions' worth; each execution gets ``cpu_s`` through the soft limit,
# which the runtime moves forward before every execution (SIGXCPU then raises in the code).
CPU_LIFETIME_FACTOR = 20


@dataclass(frozen=True)
class JailPaths:
    workspace: Path
    workspace_root: Path
    home: Path  # the sandbox user's home; firejail mounts the workspace there
    shared_skills: Path | None


def find_firejail() -> str:
    path = shutil.which("firejail")
    if path is None:
        raise SandboxError(f"firejail is not installed, so code cannot run safely. {FIX}")
    return path


def find_python() -> str:
    """A system interpreter outside any home or repo (e.g. a pyenv under /root is invisible)."""
    for candidate in PYTHON_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise SandboxError(
        "no system python3 for the sandbox (looked for " + ", ".join(PYTHON_CANDIDATES) + "). "
        "Install it: apt-get install python3"
    )


def _hidden_paths(paths: JailPaths) -> list[str]:
    hidden = [f"/{name}" for name in sorted(os.listdir("/")) if name not in _VISIBLE_TOP | {"run"}]
    run = Path("/run")
    if run.is_dir() and not run.is_symlink():
        hidden += [str(p) for p in sorted(run.iterdir()) if p.name != "firejail" and not p.is_symlink()]
    home_root = Path("/home")
    if home_root.is_dir():
        hidden += [str(p) for p in sorted(home_root.iterdir()) if p != paths.home and not p.is_symlink()]
    root_dir = paths.workspace_root.resolve()
    if not _under(root_dir, hidden) and not _under(root_dir, ["/tmp"]):
        hidden.append(str(root_dir))
    hidden += ["/usr/bin/firejail"]
    if paths.shared_skills is not None:
        hidden = _carve(hidden, paths.shared_skills.resolve())
    return [h for h in hidden if os.path.lexists(h)]


def _carve(hidden: list[str], keep: Path) -> list[str]:
    """Hide everything under a hidden directory except the path down to ``keep`` (the shared
    skills dir): each ancestor's other children are blacklisted instead of the ancestor."""
    out: list[str] = []
    for entry in hidden:
        top = Path(entry)
        if not _under(keep, [entry]) or top == keep:
            if top != keep:
                out.append(entry)
            continue
        current = top
        for part in keep.relative_to(top).parts:
            out += [str(p) for p in sorted(current.iterdir()) if p.name != part and not p.is_symlink()]
            current = current / part
    return out


def _under(path: Path, roots: list[str]) -> bool:
    return any(path == Path(r) or Path(r) in path.parents for r in roots)


def command(config: SandboxConfig, paths: JailPaths, chan_fd: int, bootstrap: str) -> list[str]:
    """The full argv that starts ``python3 -I -S -c BOOTSTRAP`` inside the jail."""
    mib = 1024 * 1024
    args = [
        find_firejail(),
        "--quiet",
        "--noprofile",
        "--net=none",
        "--nodbus",
        "--noroot",
        "--nonewprivs",
        "--caps.drop=all",
        "--seccomp",
        "--restrict-namespaces",
        "--nogroups",
        "--private-dev",
        "--private-tmp",
        "--ipc-namespace",
        f"--private={paths.workspace}",
        "--deterministic-shutdown",
        "--hostname=sandbox",
        f"--private-etc={ETC_KEEP}",
        f"--rlimit-as={config.memory_mb * mib}",
        f"--rlimit-cpu={config.cpu_s * CPU_LIFETIME_FACTOR}",
        f"--rlimit-fsize={config.max_file_mb * mib}",
        f"--rlimit-nofile={config.max_open_files}",
        f"--keep-fd={chan_fd}",
    ]
    args += [f"--blacklist={p}" for p in _hidden_paths(paths)]
    if paths.shared_skills is not None:
        args.append(f"--read-only={paths.shared_skills.resolve()}")
    args += [find_python(), "-I", "-S", "-c", bootstrap]
    return args


def environment() -> dict[str, str]:
    """Built from scratch: nothing of Veil's environment (keys, URLs) reaches the code."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
