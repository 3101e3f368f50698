"""cgroup v2 decisions of ``veil/sandbox/cgroup.py``, against a fake cgroupfs in a temporary tree.

This machine (and CI) is cgroup v1, so the v2 code cannot run against the kernel here: these tests
give ``Layout.detect`` a plain directory tree as its cgroupfs and a ``write`` that follows the
kernel's rules that matter for the decision (the no-internal-processes rule, controllers only
where the parent enabled them, a write to ``cgroup.procs`` moving a process out of its old group,
a read-only mount). What the kernel does beyond those rules (the limit files a new group gets,
the limits themselves) is exercised on a real kernel by ``test_cgroup_v2_kernel.py``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from veil.errors import SandboxError
from veil.sandbox.cgroup import LEAF, Layout, delegate_v2, v2_base


class FakeCgroup2:
    """A unified hierarchy as plain files: each group is a directory with ``cgroup.controllers``,
    ``cgroup.subtree_control`` and ``cgroup.procs``."""

    def __init__(self, root: Path, *, host_root: bool, read_only: bool = False) -> None:
        self.root = root
        self.host_root = host_root  # the real root group is exempt from the no-internal-processes rule
        self.read_only = read_only
        self.exiting: set[str] = set()  # pids that exit while being moved
        self.writes: list[tuple[Path, str]] = []

    def group(self, rel: str, *, controllers: str = "cpu io memory pids", subtree: str = "", procs: str = "") -> Path:
        directory = self.root / rel.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cgroup.controllers").write_text(controllers + "\n")
        (directory / "cgroup.subtree_control").write_text(subtree + "\n")
        (directory / "cgroup.procs").write_text("".join(f"{p}\n" for p in procs.split()))
        return directory

    @staticmethod
    def words(path: Path) -> list[str]:
        return path.read_text().split() if path.exists() else []

    def controllers(self, directory: Path) -> list[str]:
        # a group made by the code under test (a plain mkdir here) gets what its parent enabled
        if (directory / "cgroup.controllers").exists():
            return self.words(directory / "cgroup.controllers")
        return self.words(directory.parent / "cgroup.subtree_control")

    def procs(self, directory: Path) -> list[str]:
        return self.words(directory / "cgroup.procs")

    def write(self, path: Path, value: str) -> None:
        self.writes.append((path, value))
        if self.read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        directory = path.parent
        if path.name == "cgroup.subtree_control":
            if self.procs(directory) and not (directory == self.root and self.host_root):
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
            enabled = self.words(path)
            for word in value.split():
                if word[1:] not in self.controllers(directory):
                    raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
                if word[1:] not in enabled:
                    enabled.append(word[1:])
            path.write_text(" ".join(enabled) + "\n")
        elif path.name == "cgroup.procs":
            if self.words(directory / "cgroup.subtree_control") and directory != self.root:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
            for listing in self.root.rglob("cgroup.procs"):
                listing.write_text("".join(f"{p}\n" for p in self.words(listing) if p != value))
            if value in self.exiting:
                raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH))
            path.write_text("".join(f"{p}\n" for p in [*self.procs(directory), value]))
        else:
            path.write_text(value)


def self_cgroup(tmp_path: Path, path: str) -> Path:
    """A ``/proc/self/cgroup`` of a process on a pure v2 host."""
    file = tmp_path / "self-cgroup"
    file.write_text(f"0::{path}\n")
    return file


@pytest.fixture
def layouts():
    made: list[Layout] = []
    yield made
    for layout in made:
        layout.remove()


def test_container_group_holding_veil_moves_it_into_a_leaf(tmp_path, layouts):
    """A container with a private cgroup namespace: /sys/fs/cgroup is the container's group, which
    holds tini, Veil and an upstream server. Enabling the controllers there fails until all three
    are in <own>/veil-gateway; the sandboxes' parent is then a sibling of the leaf."""
    fs = FakeCgroup2(tmp_path / "cgroup", host_root=False)
    own = fs.group("/", procs="1 7 12")
    layout = Layout.detect(root=fs.root, self_cgroup=self_cgroup(tmp_path, "/"), write=fs.write)
    layouts.append(layout)

    assert layout.version == 2
    assert fs.procs(own) == []
    assert sorted(fs.procs(own / LEAF), key=int) == ["1", "7", "12"]
    assert set(fs.words(own / "cgroup.subtree_control")) == {"pids", "memory"}
    assert layout.pids_parent == layout.memory_parent
    assert layout.pids_parent.parent == own and layout.pids_parent.name.startswith("veil-sandboxes.")
    assert set(fs.words(layout.pids_parent / "cgroup.subtree_control")) == {"pids", "memory"}
    assert fs.words(own / LEAF / "cgroup.subtree_control") == []  # the leaf stays a leaf


def test_service_group_under_host_root(tmp_path, layouts):
    """Veil as a systemd service with Delegate=pids memory: its group is not the root, so the same
    move happens there, and nothing outside the service's group is touched."""
    fs = FakeCgroup2(tmp_path / "cgroup", host_root=True)
    fs.group("/", subtree="cpu io memory pids", procs="1 2")
    fs.group("/system.slice", subtree="memory pids")
    own = fs.group("/system.slice/veil.service", controllers="memory pids", procs="4242")
    service = self_cgroup(tmp_path, "/system.slice/veil.service")
    layout = Layout.detect(root=fs.root, self_cgroup=service, write=fs.write)
    layouts.append(layout)

    assert fs.procs(own / LEAF) == ["4242"]
    assert fs.procs(fs.root) == ["1", "2"]
    assert layout.pids_parent.parent == own
    assert all(path.is_relative_to(own) for path, _ in fs.writes)


def test_second_manager_reuses_the_leaf(tmp_path, layouts):
    """After the move /proc/self/cgroup names the leaf: the next manager in the same process puts
    its groups beside the leaf again, not in a new leaf inside it."""
    fs = FakeCgroup2(tmp_path / "cgroup", host_root=False)
    own = fs.group("/", procs="1 7")
    layouts.append(Layout.detect(root=fs.root, self_cgroup=self_cgroup(tmp_path, "/"), write=fs.write))
    moved = self_cgroup(tmp_path, f"/{LEAF}")
    assert v2_base(fs.root, moved) == own

    second = Layout.detect(root=fs.root, self_cgroup=moved, write=fs.write)
    layouts.append(second)
    assert second.pids_parent.parent == own
    assert not (own / LEAF / LEAF).exists()
    assert sorted(fs.procs(own / LEAF)) == ["1", "7"]


def test_already_delegated_group_is_used_as_it_is(tmp_path, layouts):
    """A group whose controllers are already enabled for children needs no move."""
    fs = FakeCgroup2(tmp_path / "cgroup", host_root=False)
    own = fs.group("/", subtree="memory pids")
    layouts.append(Layout.detect(root=fs.root, self_cgroup=self_cgroup(tmp_path, "/"), write=fs.write))
    assert not (own / LEAF).exists()
    assert [path.name for path, _ in fs.writes] == ["cgroup.subtree_control"]  # the new parent's only


def test_host_root_group_needs_no_move(tmp_path, layouts):
    """The host's root group may hold processes and still enable controllers."""
    fs = FakeCgroup2(tmp_path / "cgroup", host_root=True)
    own = fs.group("/", procs="1 99")
    layouts.append(Layout.detect(root=fs.root, self_cgroup=self_cgroup(tmp_path, "/"), write=fs.write))
    assert not (own / LEAF).exists()
    assert fs.procs(own) == ["1", "99"]


def test_a_process_exiting_during_the_move_is_skipped(tmp_path, layouts):
    fs = FakeCgroup2(tmp_path / "cgroup", host_root=False)
    own = fs.group("/", procs="1 7 13")
    fs.exiting.add("7")
    layouts.append(Layout.detect(root=fs.root, self_cgroup=self_cgroup(tmp_path, "/"), write=fs.write))
    assert sorted(fs.procs(own / LEAF)) == ["1", "13"]
    assert set(fs.words(own / "cgroup.subtree_control")) == {"pids", "memory"}


def test_read_only_cgroupfs_fails_closed(tmp_path):
    fs = FakeCgroup2(tmp_path / "cgroup", host_root=False, read_only=True)
    own = fs.group("/", procs="1 7")
    with pytest.raises(SandboxError) as info:
        Layout.detect(root=fs.root, self_cgroup=self_cgroup(tmp_path, "/"), write=fs.write)
    message = str(info.value)
    assert "Read-only file system" in message and str(own / "cgroup.subtree_control") in message
    assert "writable /sys/fs/cgroup" in message and "expose: direct" in message
    assert fs.procs(own) == ["1", "7"] and not (own / LEAF).exists()


def test_controllers_not_delegated_to_veil_fail_closed(tmp_path):
    """The parent did not enable pids/memory for Veil's group: nothing can give them to sandboxes,
    so nothing is moved or created and the error names the controllers and the parent's file."""
    fs = FakeCgroup2(tmp_path / "cgroup", host_root=True)
    fs.group("/", subtree="cpu")
    own = fs.group("/veil.service", controllers="cpu", procs="4242")
    with pytest.raises(SandboxError) as info:
        Layout.detect(root=fs.root, self_cgroup=self_cgroup(tmp_path, "/veil.service"), write=fs.write)
    message = str(info.value)
    assert "pids, memory" in message and "cgroup.subtree_control" in message and str(own) in message
    assert "Delegate=pids memory" in message
    assert fs.writes == [] and fs.procs(own) == ["4242"]
    assert sorted(p.name for p in own.iterdir()) == ["cgroup.controllers", "cgroup.procs", "cgroup.subtree_control"]


def test_no_controllers_on_the_host_fail_closed(tmp_path):
    fs = FakeCgroup2(tmp_path / "cgroup", host_root=True)
    fs.group("/", controllers="cpu io")
    with pytest.raises(SandboxError, match="no usable cgroup controllers"):
        Layout.detect(root=fs.root, self_cgroup=self_cgroup(tmp_path, "/"), write=fs.write)


def test_own_group_not_visible_fails_closed(tmp_path):
    """/proc/self/cgroup names a group the mounted cgroupfs does not show (the host's cgroupfs
    without a cgroup namespace, or another namespace's)."""
    fs = FakeCgroup2(tmp_path / "cgroup", host_root=False)
    fs.group("/")
    with pytest.raises(SandboxError, match="is not visible under"):
        delegate_v2(fs.root, self_cgroup(tmp_path, "/kubepods/pod1/abc"), fs.write)
    assert fs.writes == []


def test_processes_that_cannot_be_moved_fail_closed(tmp_path):
    """A process outside Veil's PID namespace is listed as 0 and cannot be moved by Veil: the
    group never empties, and Veil gives up with an error instead of looping or running unbounded."""
    fs = FakeCgroup2(tmp_path / "cgroup", host_root=False)
    own = fs.group("/", procs="0 1")
    with pytest.raises(SandboxError, match="still holds processes"):
        delegate_v2(fs.root, self_cgroup(tmp_path, "/"), fs.write)
    assert fs.words(own / "cgroup.subtree_control") == []
    assert not any(p.name.startswith("veil-sandboxes.") for p in own.iterdir())


def mountinfo(tmp_path: Path, *mounts: tuple[str, Path, str, str]) -> Path:
    """A ``/proc/self/mountinfo`` with one line per (group mounted, mount point, type, options)."""
    file = tmp_path / "mountinfo"
    lines = [
        f"{100 + i} 99 0:{30 + i} {group} {point} rw,nosuid,nodev,noexec,relatime - {kind} {kind} {options}"
        for i, (group, point, kind, options) in enumerate(mounts)
    ]
    file.write_text("\n".join(lines) + "\n")
    return file


def test_v1_container_without_a_cgroup_namespace(tmp_path, layouts):
    """Podman/containerd on a cgroup v1 node without a private cgroup namespace (seen here with
    podman and runc): /proc/self/cgroup names the container's group by its host path, and that
    group is what is mounted at /sys/fs/cgroup/<controller>. The groups go inside it."""
    root = tmp_path / "cgroup"
    for controller in ("pids", "memory"):
        (root / controller).mkdir(parents=True)
        (root / controller / "cgroup.procs").write_text("1\n")
    ctr = "/libpod_parent/libpod-9f5b3c47"
    own = self_cgroup(tmp_path, "")
    own.write_text(f"8:pids:{ctr}\n4:memory:{ctr}\n0::{ctr}\n")
    mounts = mountinfo(
        tmp_path, (ctr, root / "memory", "cgroup", "rw,memory"), (ctr, root / "pids", "cgroup", "rw,pids")
    )
    layout = Layout.detect(root=root, self_cgroup=own, mountinfo=mounts)
    layouts.append(layout)
    assert layout.version == 1
    assert layout.pids_parent.parent == root / "pids" and layout.memory_parent.parent == root / "memory"
    assert layout.pids_parent.is_dir() and layout.memory_parent.is_dir()

    # Without the mount roots the host path does not exist in the container: fail closed, as before.
    with pytest.raises(SandboxError, match="cannot create the sandboxes' cgroups"):
        Layout.detect(root=root, self_cgroup=own, mountinfo=tmp_path / "no-mountinfo")


def test_v2_container_without_a_cgroup_namespace(tmp_path, layouts):
    fs = FakeCgroup2(tmp_path / "cgroup", host_root=False)
    own = fs.group("/", procs="1 7")
    ctr = "/kubepods/pod1/abc"
    mounts = mountinfo(tmp_path, (ctr, fs.root, "cgroup2", "rw"))
    here = self_cgroup(tmp_path, ctr)
    layout = Layout.detect(root=fs.root, self_cgroup=here, write=fs.write, mountinfo=mounts)
    layouts.append(layout)
    assert layout.pids_parent.parent == own
    assert sorted(fs.procs(own / LEAF)) == ["1", "7"]
    # after the move /proc/self/cgroup says .../abc/veil-gateway: still the same base
    assert v2_base(fs.root, self_cgroup(tmp_path, f"{ctr}/{LEAF}"), mounts) == own
