"""Sandboxes do not outlive Veil: if the process that runs the manager dies without closing it
(SIGKILL, a crash), the manager's watchdog kills its jails, including interpreters stopped between
executions, and removes their cgroups."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import asyncio, json, os, sys, tempfile
from pathlib import Path
from veil.config import SandboxConfig
from veil.sandbox import SandboxManager

async def call_tool(upstream, tool, args):
    return None

async def main():
    root = Path(sys.argv[1])
    manager = SandboxManager(SandboxConfig(pool_size=1), root / "workspaces")
    await manager.execute("s", "1", catalogue=[], call_tool=call_tool)
    await manager.wait_pool()
    live = [manager._sessions["s"].sandbox] + manager._pool
    print(json.dumps({"pids": [p for s in live for p in s.jail_pids], "watchdog": manager._cgroups.watchdog.pid,
                      "groups": [str(s.cgroup.pids_dir) for s in live]}), flush=True)
    os._exit(0)  # no cleanup at all, as if killed

asyncio.run(main())
"""


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait for ``pid`` to exit (an event, via a pidfd), at most ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


@pytest.mark.req("sandbox:wall-clock")
def test_jails_die_with_the_process_that_runs_the_manager():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    root = Path(tempfile.mkdtemp(prefix="veil-ws-"))
    root.chmod(0o711)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(root)], capture_output=True, text=True, timeout=120, env=env
        )
        assert done.returncode == 0, done.stderr[-2000:]
        seen = json.loads(done.stdout.splitlines()[-1])
        assert len(seen["pids"]) == 6  # firejail, init and interpreter of the session and of the pool
        assert all(wait_gone(pid, 30) for pid in seen["pids"])
        assert wait_gone(seen["watchdog"], 30)  # it exits once the groups are removed
        assert not any(Path(group).exists() for group in seen["groups"])
    finally:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            point = line.split()[1]
            if point.startswith(str(root) + "/"):
                subprocess.run(["umount", "-l", point], check=False)
        subprocess.run(["rm", "-rf", str(root)], check=False)
