"""Session workspaces with a hard size quota: each one is its own small ext4 filesystem.

Why a filesystem per workspace: ``RLIMIT_FSIZE`` bounds one file, not the total, and the host's
filesystem has no per-directory quota that works everywhere (ext4 project quotas need a mount
option the host may not have). A sparse image file of ``quota_mb`` formatted as ext4 and
loop-mounted on the workspace directory is a hard limit on bytes *and* inodes that the kernel
enforces (writes past it fail with ``ENOSPC``), costs disk only for what is written, and needs
only ``mkfs.ext4`` and ``mount``, present on every Linux host that runs firejail.

Layout under the workspace root (hidden from every sandbox): ``NAME.img`` (root-owned, 0600) and
``NAME/`` (its mount point, ``nosuid,nodev``, owned by the sandbox user). Creating one costs about
40 ms (format and mount); the warm pool prepares them ahead. ``remove`` unmounts (the loop device
is released when the last jail using it has exited) and deletes both.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

from veil.errors import SandboxError

FIX = "Install e2fsprogs and util-linux (mkfs.ext4, mount) and make sure loop devices are available."


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(
            f"cannot prepare a sandbox workspace: {argv[0]} failed ({type(exc).__name__}). {FIX}"
        ) from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise SandboxError(f"cannot prepare a sandbox workspace: {argv[0]} said {said[0][:200]!r}. {FIX}")


def create(path: Path, *, quota_mb: int, owner: tuple[int, int]) -> None:
    """Make ``path`` a fresh, empty workspace of at most ``quota_mb`` MiB owned by ``owner``."""
    image = path.with_name(path.name + ".img")
    path.mkdir(mode=0o700)
    try:
        with open(image, "xb") as handle:
            handle.truncate(quota_mb * 1024 * 1024)  # sparse: disk is used only as files are written
        image.chmod(0o600)
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-m",
                "0",
                "-O",
                "^has_journal",
                "-E",
                f"root_owner={owner[0]}:{owner[1]}",
                str(image),
            ]
        )
        _run(["mount", "-o", "loop,nosuid,nodev", str(image), str(path)])
    except BaseException:
        with contextlib.suppress(OSError):
            image.unlink()
        with contextlib.suppress(OSError):
            path.rmdir()
        raise
    with contextlib.suppress(OSError):
        (path / "lost+found").rmdir()  # root's, not the code's; fsck recreates it if ever needed
    path.chmod(0o700)


def is_mounted(path: Path) -> bool:
    return path.is_mount()


def remove(path: Path) -> None:
    """Unmount and delete a workspace (and anything a sandbox planted in it, without following links)."""
    if path.is_symlink():
        path.unlink()
        return
    if path.is_mount():
        done = subprocess.run(["umount", str(path)], capture_output=True, check=False, timeout=30)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False, timeout=30)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)  # fd-based: symlinks inside are removed, not followed
    with contextlib.suppress(OSError):
        path.with_name(path.name + ".img").unlink()


def used_bytes(path: Path) -> int:
    """Bytes in use on a workspace's filesystem (for tests and status)."""
    usage = shutil.disk_usage(path)
    return usage.used
