"""``veil serve`` stopped the way service managers stop it (SIGTERM: systemd, docker stop,
Kubernetes) or the way an operator does (SIGINT) finishes the calls in flight, takes no new ones,
closes its sessions (each close audited) and sandboxes (workspace filesystems unmounted, cgroups
removed), stops its upstream processes and exits 0. A second signal cuts the calls still running:
each still gets an answer and its audit row. A Veil killed outright (SIGKILL) leaves its
workspaces mounted; the next one reclaims them when it starts.

Real processes throughout: ``veil serve`` (HTTP and stdio) in a subprocess, the demo CRM as a
stdio upstream, firejail sandboxes, PostgreSQL for the audit trail. The sandboxed code waits for a
file the test writes into its workspace, so "in flight" is a state the test controls, not a race.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import psutil
import pytest
import sqlalchemy as sa
import yaml
from mcp.client.client import Client

from security.conftest import ROOT, _free_port
from veil import db

pytestmark = pytest.mark.anyio
T = TypeVar("T")

# Sandboxed code that is "in flight" until the test lets it go.
WAIT_FOR_GO = """
import os, time
open('started', 'w').close()
while not os.path.exists('go'):
    time.sleep(0.02)
print('finished after the stop began')
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(database_url: str, principal: str, data_dir: Path) -> Path:
    config = {
        "upstreams": {"crm": {"command": sys.executable, "args": [str(ROOT / "examples" / "crm_server.py")]}},
        "database_url": database_url,
        "policy": str(ROOT / "policies" / "default.yaml"),
        "data_dir": str(data_dir),
        "expose": "both",
        "auth": {"required": False},
        "principal": {"name": principal, "roles": ["support"]},
        "limits": {"shutdown_grace_s": 60, "ner_workers": 1},
        "sandbox": {"pool_size": 1},
    }
    path = data_dir / "veil.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _data_dir() -> Path:
    data_dir = Path(tempfile.mkdtemp(prefix="veil-sec-stop-"))
    data_dir.chmod(0o711)
    return data_dir


def _wait_for(what: str, check: Callable[[], T], proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> T:
    """Poll ``check`` until it returns something truthy; fail with the log if Veil exits or hangs."""
    deadline = time.monotonic() + timeout  # a hang guard, not a timing assertion
    while True:
        value = check()
        if value:
            return value
        assert proc.poll() is None or what == "exit", f"veil exited while waiting for {what}:\n" + _tail(log)
        assert time.monotonic() < deadline, f"no {what} within {timeout}s:\n" + _tail(log)
        time.sleep(0.05)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _sandbox_groups(pid: int) -> list[Path]:
    """The cgroup parents of the sandbox manager of Veil process ``pid`` (any hierarchy)."""
    return [p for p in Path("/sys/fs/cgroup").glob(f"**/veil-sandboxes.{pid}.*") if p.is_dir()]


def _mounted_under(data_dir: Path) -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if f" {data_dir}/" in line]


def _audit(database_url: str, principal: str) -> list[dict[str, Any]]:
    engine = db.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT kind, outcome, tool, detail FROM audit_events WHERE principal = :p ORDER BY seq"),
                {"p": principal},
            ).mappings()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def _leftovers(tree: list[psutil.Process]) -> list[str]:
    # multiprocessing's resource tracker exits when it reads EOF from the gone Veil: let it
    psutil.wait_procs(tree, timeout=10)
    alive = []
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(" ".join(process.cmdline())[:120])
    return alive


@contextlib.contextmanager
def _cleanup(data_dir: Path, procs: list[subprocess.Popen[bytes]], tree: list[psutil.Process]) -> Iterator[None]:
    """Leave the machine clean whatever the outcome (these processes and mounts are the test's)."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for process in tree:
            with contextlib.suppress(psutil.Error):
                process.kill()
        for point in _mounted_under(data_dir):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(data_dir, ignore_errors=True)


def _assert_nothing_left(
    sig: str, veil_pid: int, data_dir: Path, tree: list[psutil.Process], groups: list[Path]
) -> None:
    assert _leftovers(tree) == [], f"processes of veil (upstreams, jails, workers) outlived it after {sig}"
    assert _mounted_under(data_dir) == [], f"workspace filesystems still mounted after {sig}"
    assert [g for g in groups if g.exists()] == [] and _sandbox_groups(veil_pid) == [], f"cgroups left after {sig}"
    assert not any((data_dir / "workspaces").glob("*.img")), f"workspace images left after {sig}"


@pytest.mark.req("serve:clean-stop")
async def test_sigterm_over_http_finishes_the_call_in_flight_then_leaves_nothing(database_url: str) -> None:
    principal = f"stop-{uuid.uuid4().hex[:8]}"
    data_dir = _data_dir()
    log = data_dir / "veil.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    config = _config(database_url, principal, data_dir)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "veil", "-v", "serve", "--config", str(config), "--http", f"127.0.0.1:{port}"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    tree: list[psutil.Process] = []
    with _cleanup(data_dir, [proc], tree):
        _wait_for("the HTTP listener", lambda: _answers(url), proc, log, timeout=180)
        stack = contextlib.AsyncExitStack()
        agent = await stack.enter_async_context(Client(url, mode="legacy", read_timeout_seconds=120))
        warm = await agent.call_tool(
            "execute_code", {"code": "from servers import crm\nprint(len(crm.find_customers(segment='gold', limit=2)))"}
        )
        assert not warm.is_error, warm
        tree += _descendants(proc.pid)
        commands = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "crm_server.py" in commands and "firejail" in commands, commands  # what must stop with it
        groups = _sandbox_groups(proc.pid)
        assert groups, "the sandbox manager made no cgroup"

        answers: list[Any] = []
        refused: list[Any] = []
        async with anyio.create_task_group() as tg:

            async def in_flight() -> None:
                answers.append(await agent.call_tool("execute_code", {"code": WAIT_FOR_GO}))

            tg.start_soon(in_flight)
            started = await anyio.to_thread.run_sync(
                lambda: _wait_for("the code to start", lambda: list(data_dir.glob("workspaces/*/started")), proc, log)
            )
            proc.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(
                lambda: _wait_for("the drain", lambda: "1 call(s) in flight" in _tail(log), proc, log)
            )
            async with httpx.AsyncClient(timeout=10) as other:  # a new agent during the drain
                try:
                    response = await other.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
                    refused.append(response.status_code)
                except httpx.TransportError as exc:
                    refused.append(type(exc).__name__)  # the listening socket is closed: also refused
            (started[0].parent / "go").touch()
        code = await anyio.to_thread.run_sync(lambda: _wait_for("exit", lambda: proc.poll() is not None, proc, log))
        with contextlib.suppress(Exception):  # the client's goodbye to a gone server may fail: not the point
            await stack.aclose()

        assert code and proc.returncode == 0, _tail(log)
        assert refused in ([503], ["ConnectError"]), refused
        assert not answers[0].is_error, answers[0]
        assert "finished after the stop began" in json.dumps(answers[0].model_dump()), answers[0]
        _assert_nothing_left("SIGTERM", proc.pid, data_dir, tree, groups)
        rows = _audit(database_url, principal)
        executions = [r for r in rows if r["kind"] == "code.execute"]
        assert [r["outcome"] for r in executions] == ["ok", "ok"], executions  # the in-flight call's row too
        opened = [r for r in rows if r["kind"] == "session.open"]
        closed = [r for r in rows if r["kind"] == "session.close"]
        assert len(opened) >= 1 and len(closed) == len(opened), rows
        assert {r["detail"]["reason"] for r in closed} == {"shutdown"}, closed


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.TransportError:
        return False


# A SandboxManager process that dies by SIGKILL with a session open: its workspace stays mounted.
KILLED_MANAGER = """
import asyncio, os, signal, sys
from pathlib import Path
from veil.config import SandboxConfig
from veil.sandbox import SandboxManager

async def call_tool(upstream, tool, args):
    return None

async def main():
    manager = SandboxManager(SandboxConfig(pool_size=0), Path(sys.argv[1]))
    await manager.execute("s", "open('kept.txt', 'w').write('x')", catalogue=[], call_tool=call_tool)
    print(os.getpid(), manager._cgroups.watchdog.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


class _Stdio:
    """A raw JSON-RPC line client on ``veil serve``'s stdin/stdout (what a desktop agent does)."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.log = proc, log
        self.buffer = b""
        self.seen: dict[Any, dict[str, Any]] = {}

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def answer(self, request_id: int, timeout: float = 120) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout  # a hang guard, not a timing assertion
        while request_id not in self.seen:
            assert time.monotonic() < deadline, f"no answer to {request_id}:\n" + _tail(self.log)
            if select.select([self.proc.stdout], [], [], 0.5)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
                assert chunk, f"veil closed stdout before answering {request_id}:\n" + _tail(self.log)
                self.buffer += chunk
                *lines, self.buffer = self.buffer.split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "id" in message and "method" not in message:
                        self.seen[message["id"]] = message
        return self.seen[request_id]


@pytest.mark.req("serve:clean-stop")
async def test_a_second_sigint_over_stdio_cuts_the_call_and_a_sigkilled_veils_workspaces_are_reclaimed(
    database_url: str,
) -> None:
    principal = f"stop-{uuid.uuid4().hex[:8]}"
    data_dir = _data_dir()
    log = data_dir / "veil.log"
    workspaces = data_dir / "workspaces"
    procs: list[subprocess.Popen[bytes]] = []
    tree: list[psutil.Process] = []
    with _cleanup(data_dir, procs, tree):
        # 1. A Veil killed outright: the watchdog kills its jails and removes its cgroups, and the
        #    workspace stays mounted (nothing in the dead process could unmount it).
        killed = subprocess.run(
            [sys.executable, "-c", KILLED_MANAGER, str(workspaces)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        dead_pid, watchdog = (int(n) for n in killed.stdout.split()[:2])
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(watchdog).wait(30)
        stale = _mounted_under(data_dir)
        assert len(stale) == 1 and Path(stale[0], "kept.txt").exists(), stale
        assert _sandbox_groups(dead_pid) == []  # the watchdog removed them

        # 2. The next veil serve (stdio) reclaims it at start.
        config = _config(database_url, principal, data_dir)
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "veil", "-v", "serve", "--config", str(config)],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        procs.append(proc)
        agent = _Stdio(proc, log)
        agent.send(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "0"},
                },
            }
        )
        assert "result" in agent.answer(0, timeout=180)
        assert stale[0] not in _mounted_under(data_dir), "the stale workspace was not reclaimed at start"
        assert not Path(stale[0]).exists() and not Path(stale[0] + ".img").exists()
        agent.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

        # 3. A call in flight, SIGINT: new requests are refused, the call runs on; a second SIGINT cuts it.
        call = {"name": "execute_code", "arguments": {"code": WAIT_FOR_GO}}
        agent.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call})
        _wait_for("the code to start", lambda: list(workspaces.glob("*/started")), proc, log)
        tree += _descendants(proc.pid)
        groups = _sandbox_groups(proc.pid)
        assert groups and "firejail" in " ".join(" ".join(p.cmdline()) for p in tree)
        proc.send_signal(signal.SIGINT)
        _wait_for("the drain", lambda: "1 call(s) in flight" in _tail(log), proc, log)
        agent.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        refusal = agent.answer(2)
        assert refusal.get("error", {}).get("code") == -32012, refusal  # Stopping
        assert proc.poll() is None  # still waiting for the call
        proc.send_signal(signal.SIGINT)
        cut = agent.answer(1)
        assert _wait_for("exit", lambda: proc.poll() is not None, proc, log) and proc.returncode == 0, _tail(log)

        text = json.dumps(cut)
        assert cut.get("result", {}).get("isError") is True or "error" in cut, cut  # an answer, not silence
        assert "finished after the stop began" not in text
        _assert_nothing_left("a second SIGINT", proc.pid, data_dir, tree, groups)
        rows = _audit(database_url, principal)
        executions = [r for r in rows if r["kind"] == "code.execute"]
        assert [r["outcome"] for r in executions] == ["killed"], executions  # the cut call is audited
        closed = [r for r in rows if r["kind"] == "session.close"]
        assert [r["detail"]["reason"] for r in closed] == ["shutdown"], rows


@pytest.mark.req("serve:clean-stop")
def test_stale_cgroups_are_reclaimed_and_a_live_veils_workspaces_are_not(tmp_path: Path) -> None:
    """The watchdog died with Veil (systemd's KillMode=control-group): the next start kills what
    is left in the dead Veil's sandbox cgroups and removes them. A workspace root another live
    Veil holds is left alone."""
    from veil.sandbox import reclaim
    from veil.sandbox.cgroup import ROOT as CGROUP_ROOT
    from veil.sandbox.cgroup import _own_path

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a Veil pid that no longer runs
    hierarchy = CGROUP_ROOT / "pids"
    if not (hierarchy / "cgroup.procs").exists():
        hierarchy = CGROUP_ROOT
    parent = hierarchy / _own_path("pids" if hierarchy.name == "pids" else "").lstrip("/")
    parent = parent / f"veil-sandboxes.{gone.pid}.{uuid.uuid4().hex[:8]}"
    group = parent / "sb-test"
    group.mkdir(parents=True)
    jailed = subprocess.Popen(["sleep", "300"])
    try:
        (group / "cgroup.procs").write_text(str(jailed.pid))
        assert reclaim.reclaim_cgroups() >= 1
        assert jailed.wait(10) == -signal.SIGKILL
        assert not parent.exists()
    finally:
        if jailed.poll() is None:
            jailed.kill()
            jailed.wait()
        for directory in (group, parent):
            with contextlib.suppress(OSError):
                directory.rmdir()

    root = tmp_path / "workspaces"
    root.mkdir()
    held = reclaim.claim_root(root)  # a live manager's shared lock, then its session's workspace
    assert held is not None
    (root / "s-live").mkdir()
    try:
        reclaim.claim_root(root, hold=False)  # another Veil starting on the same root
        assert (root / "s-live").exists()
    finally:
        os.close(held)
    reclaim.claim_root(root, hold=False)  # nobody holds it now: everything in it is stale
    assert [p.name for p in root.iterdir()] == [reclaim.LOCK_NAME]


READ_STDIN = """
import asyncio, sys
from veil.proxy.lifecycle import AgentStdin

async def main():
    stdin = AgentStdin.claim()
    lines = [line async for line in stdin] if stdin else []
    print("claimed" if stdin else "sdk", len(lines))

asyncio.run(main())
"""


@pytest.mark.parametrize("source", ["pipe", "file", "devnull"])
def test_stdio_reads_the_agent_on_the_event_loop_where_it_can_wait(source: str, tmp_path: Path) -> None:
    """A pipe (what agents use) is read on the event loop, so a stop can interrupt a read; what
    epoll cannot wait on (/dev/null, a file: reads never block there) is left to the SDK's reader,
    instead of a reader that never wakes."""
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"a": 1}\n{"b": 2}\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", READ_STDIN]
    if source == "pipe":
        done = subprocess.run(argv, input=lines.read_bytes(), capture_output=True, env=env, timeout=60)
    else:
        with open(lines if source == "file" else os.devnull, "rb") as stdin:
            done = subprocess.run(argv, stdin=stdin, capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = {"pipe": ["claimed", "2"], "file": ["sdk", "0"], "devnull": ["sdk", "0"]}[source]
    assert done.stdout.decode().split() == expected
