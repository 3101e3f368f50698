"""Create the unprivileged user the sandboxes run as, idempotently.

firejail refuses ``--noroot`` for sandboxes that root starts, and code must never run as the user
Veil runs as (it could read Veil's data dir). So Veil, running as root, starts every sandbox as a
dedicated system user (``SandboxConfig.user``, default ``veil-sandbox``). firejail only lets users
listed in ``/etc/firejail/firejail.users`` start sandboxes once that file exists, so the user is
listed there too. The user needs a real (empty) home directory: firejail mounts the session's
workspace over it.

Run once per machine, as root: ``python -m veil.sandbox.setup [--user NAME]`` (``setup.py`` is that
command; this module holds the logic so the package can import it without side effects).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from veil.errors import SandboxError

FIREJAIL_USERS = Path("/etc/firejail/firejail.users")


def _home_of(user: str) -> Path:
    return Path("/home") / user


def sandbox_user_ready(user: str) -> bool:
    """True when ``user`` exists, has its home and may start firejail sandboxes."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return False
    if not Path(entry.pw_dir).is_dir():
        return False
    if FIREJAIL_USERS.exists():
        listed = {line.strip() for line in FIREJAIL_USERS.read_text().splitlines()}
        if user not in listed:
            return False
    return True


def ensure_sandbox_user(user: str = "veil-sandbox") -> pwd.struct_passwd:
    """Create ``user`` (system account, no login shell, own group), its home and its
    firejail.users entry when missing. Safe to run repeatedly. Raises SandboxError with the fix
    when it cannot (not root)."""
    if sandbox_user_ready(user):
        return pwd.getpwnam(user)
    if os.geteuid() != 0:
        raise SandboxError(
            f"the sandbox user '{user}' is missing or not allowed to use firejail, and only root can "
            f"create it. Run as root once: python -m veil.sandbox.setup --user {user}"
        )
    if shutil.which("firejail") is None:
        raise SandboxError("firejail is not installed. Install it: apt-get install firejail")
    home = _home_of(user)
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--home-dir", str(home), "--shell", "/usr/sbin/nologin", user],
            check=True,
            capture_output=True,
        )
    entry = pwd.getpwnam(user)
    home = Path(entry.pw_dir)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    os.chmod(home, 0o700)
    FIREJAIL_USERS.parent.mkdir(parents=True, exist_ok=True)
    existing = FIREJAIL_USERS.read_text().splitlines() if FIREJAIL_USERS.exists() else []
    if user not in {line.strip() for line in existing}:
        with FIREJAIL_USERS.open("a") as handle:
            if existing and not FIREJAIL_USERS.read_text().endswith("\n"):
                handle.write("\n")
            handle.write(user + "\n")
    return entry
