"""The sandbox's cgroup v2 path against a real kernel's unified hierarchy.

These run where ``/sys/fs/cgroup`` is cgroup v2 only: inside the guest that
``tests/sandbox/test_cgroup_v2_kernel.py`` boots (this machine and CI are cgroup v1 hosts, where
they skip). There, the guest runs them with Veil in the root group, in a delegated group that
holds processes (a systemd service with ``Delegate=``) and in a private cgroup namespace (a
container). What the fake cgroupfs of ``test_cgroup_v2.py`` cannot show is checked here: the
kernel accepts the writes, the limits are the ones configured, the kernel enforces them per
session, and nothing is left behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run
from test_containment import FORK_UNTIL_REFUSED, execute

from veil.sandbox.cgroup import LEAF, ROOT

pytestmark = pytest.mark.skipif(
    not (ROOT / "cgroup.controllers").exists() or (ROOT / "memory" / "cgroup.procs").exists(),
    reason="needs a cgroup v2 (unified) host: run through tests/sandbox/test_cgroup_v2_kernel.py",
)

MIB = 1024 * 1024


def own_group() -> str:
    """This process's group, as the 0:: line of /proc/self/cgroup names it."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError("no cgroup v2 line in /proc/self/cgroup")


def test_each_session_gets_a_group_of_its_own_with_the_configured_limits(make_manager):
    layout = os.environ.get("VEIL_VM_LAYOUT", "")  # how the guest started this run (see the docstring)
    started_in = own_group()

    async def body():
        async with make_manager(memory_mb=192, max_processes=24) as manager:
            seen = []
            for session in ("a", "b"):
                done = await execute(manager, "import os\nos.getpid() > 0", session)
                assert done.outcome == "ok", done.stderr
                sandbox = manager._sessions[session].sandbox
                group = sandbox.cgroup
                assert group is not None and group.layout.version == 2
                directory = group.pids_dir
                assert directory == group.memory_dir  # one unified group, not one per controller
                swap = directory / "memory.swap.max"
                seen.append(
                    (
                        directory,
                        (directory / "memory.max").read_text().strip(),
                        (directory / "pids.max").read_text().strip(),
                        swap.read_text().strip() if swap.exists() else "0",
                        set(group.procs()),
                        set(sandbox.jail_pids),
                    )
                )
            return seen, manager._cgroups.pids_parent, own_group()

    seen, parent, now_in = run(body())
    (dir_a, mem_a, pids_a, swap_a, procs_a, jail_a), (dir_b, mem_b, pids_b, swap_b, procs_b, jail_b) = seen
    assert jail_a <= procs_a and jail_b <= procs_b, "each jail's processes are in its session's group"
    assert not procs_a & procs_b
    assert dir_a != dir_b and dir_a.parent == dir_b.parent == parent
    assert parent.name.startswith(f"veil-sandboxes.{os.getpid()}.")
    assert (mem_a, pids_a, swap_a) == (mem_b, pids_b, swap_b) == (str(192 * MIB), "24", "0")
    if layout == "root":  # the root group may hold processes and still hand out controllers
        assert started_in == now_in == "/" and parent.parent == ROOT
    elif layout == "delegated":  # the kernel refused the service's group: Veil moved into the leaf
        assert started_in == "/veil.service" and now_in == f"/veil.service/{LEAF}"
        assert parent.parent == ROOT / "veil.service"
    elif layout == "namespace":  # the container's group is the namespace's root, seen as /
        assert started_in == "/" and now_in == f"/{LEAF}" and parent.parent == ROOT
    assert not parent.exists(), "the manager removes its groups when it closes"


def test_memory_is_bounded_per_session_by_the_kernel(make_manager):
    """A session that fills RAM-backed /dev/shm past memory_mb (which no per-process rlimit
    sees) is killed by its group's OOM killer; another session's interpreter, variables
    included, lives on."""
    hog = "for i in range(8):\n    with open('/dev/shm/fill-%d' % i, 'wb') as f:\n        f.write(bytes(40 * 2**20))\n"

    async def body():
        async with make_manager(memory_mb=160, max_file_mb=64, timeout_s=60.0) as manager:
            kept = await execute(manager, "kept = 'still here'\nkept", "calm")
            hogged = await execute(manager, hog, "hog")
            # memory.events counts its descendants' events too: the hog's group may be gone
            events = (manager._cgroups.memory_parent / "memory.events").read_text()
            after = await execute(manager, "kept", "calm")
            return kept, hogged, after, events

    kept, hogged, after, events = run(body())
    assert kept.outcome == "ok", kept
    assert hogged.outcome == "killed", hogged
    assert int(dict(line.split() for line in events.splitlines())["oom_kill"]) >= 1, events
    assert after.outcome == "ok" and after.result == "'still here'", after


def test_forks_are_bounded_per_session_by_the_kernel(make_manager):
    bomb = FORK_UNTIL_REFUSED + "n"

    async def body():
        async with make_manager(max_processes=12) as manager:
            forked = await execute(manager, bomb, "bomb")
            events = (manager._sessions["bomb"].sandbox.cgroup.pids_dir / "pids.events").read_text()
            fork_once = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)[0] == pid"
            other = await execute(manager, fork_once, "other")
            return forked, events, other

    forked, events, other = run(body())
    assert forked.outcome == "ok" and 0 < int(forked.result) < 12, forked
    assert int(events.split()[1]) >= 1, events  # pids.events: "max <times the limit was hit>"
    assert other.outcome == "ok" and other.result == "True", other
