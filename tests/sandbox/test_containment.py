"""The sandbox holds against code that attacks its boundaries, each attack in real firejail.

* ``sandbox:ipc-namespace``: SysV message queues and shared memory of one session are invisible to
  another and die with the session.
* ``sandbox:tmp-bounded``: RAM-backed storage (/tmp, /dev/shm, SysV shm) stays inside the
  session's memory limit.
* ``sandbox:quota``: a workspace holds at most ``workspace_mb``; ``max_processes`` bounds one
  session, and a fork bomb in one session leaves another's forks working.
* ``sandbox:wall-clock``: when a call returns, nothing the execution started is running (forked,
  double-forked, ``setsid``, SIGTERM-ignoring, threads, timers), and a timeout kills everything.
* ``sandbox:channel-integrity``: what the code writes to the channel cannot end a call early.

The host's view (which processes exist, their state) is read from /proc by the test itself,
walking firejail's process tree, independently of the manager's cgroup bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from pathlib import Path

import pytest
from conftest import CATALOGUE, TokenisedCrm, run

from veil.sandbox import ExecutionResult, SandboxManager
from veil.sandbox.process import SandboxProcess


def tree(sandbox: SandboxProcess) -> list[int]:
    """Host pids of every live process under the sandbox's firejail, itself included."""
    found, todo = [], [sandbox.proc.pid]
    while todo:
        pid = todo.pop()
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(pid)
        todo += [int(k) for k in kids]
    return found


def state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def execute(manager: SandboxManager, code: str, session: str = "s1", crm=None, **kw) -> ExecutionResult:
    crm = crm or TokenisedCrm(n=5)
    return await manager.execute(session, code, catalogue=CATALOGUE, call_tool=crm.call_tool, **kw)


# -- IPC namespace ----------------------------------------------------------------------------

SYSV = """
import ctypes, ctypes.util, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
IPC_CREAT, IPC_NOWAIT = 0o1000, 0o4000
class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 64)]
def send(key, text):
    q = libc.msgget(key, IPC_CREAT | 0o666)
    m = Msg(1, text.encode())
    return q >= 0 and libc.msgsnd(q, ctypes.byref(m), 64, IPC_NOWAIT) == 0
def receive(key):
    q = libc.msgget(key, 0o666)
    if q < 0:
        return "no queue"
    m = Msg()
    n = libc.msgrcv(q, ctypes.byref(m), 64, 0, IPC_NOWAIT)
    return m.mtext.decode() if n >= 0 else "empty"
def shm(key, size):
    i = libc.shmget(key, size, IPC_CREAT | 0o666)
    addr = libc.shmat(i, None, 0)
    ctypes.memset(addr, 1, size)
    libc.shmdt(ctypes.c_void_p(addr))
    return i >= 0
def shm_exists(key):
    return libc.shmget(key, 0, 0o666) >= 0
"""
KEY = 0x5EC00000 + os.getpid() % 0x100000  # per run: a leftover of another run cannot interfere


def host_sysv(kind: str, pid: int | None = None) -> str:
    """/proc/sysvipc/<kind> as the host sees it, or inside the IPC namespace of ``pid``."""
    if pid is None:
        return Path(f"/proc/sysvipc/{kind}").read_text()
    argv = ["nsenter", f"--ipc=/proc/{pid}/ns/ipc", "cat", f"/proc/sysvipc/{kind}"]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def ipc_namespaces_in_use() -> set[str]:
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            found.add(os.readlink(f"/proc/{pid}/ns/ipc"))
    return found


def has_key(table: str) -> bool:
    return any(line.split()[:1] == [str(KEY)] for line in table.splitlines()[1:])


@pytest.mark.req("sandbox:ipc-namespace")
def test_sysv_message_queue_does_not_carry_a_value_between_sessions(make_manager):
    async def body():
        async with make_manager() as manager:
            sent = await execute(manager, SYSV + f"send({KEY}, 'tenant-a-secret')", "tenant-a")
            worker = manager._sessions["tenant-a"].sandbox.worker
            inside_a = host_sysv("msg", worker)
            got = await execute(manager, SYSV + f"receive({KEY})", "tenant-b")
            return sent, got, inside_a, host_sysv("msg")

    sent, got, inside_a, on_host = run(body())
    assert sent.result == "True", sent.stderr
    assert has_key(inside_a)  # the queue exists, in tenant A's namespace only
    assert got.outcome == "ok" and got.result == "'no queue'"
    assert not has_key(on_host)


@pytest.mark.req("sandbox:ipc-namespace")
@pytest.mark.req("sandbox:tmp-bounded")
def test_sysv_shared_memory_is_private_bounded_and_dies_with_the_session(make_manager):
    async def body():
        async with make_manager(memory_mb=384) as manager:
            small = await execute(manager, SYSV + f"shm({KEY}, 16 * 2**20)", "tenant-a")
            worker = manager._sessions["tenant-a"].sandbox.worker
            ns = os.readlink(f"/proc/{worker}/ns/ipc")
            inside_a = host_sysv("shm", worker)
            other = await execute(manager, SYSV + f"shm_exists({KEY})", "tenant-b")
            # 3 x 200 MB of segments, each detached after it is touched: 600 MB > 384 MB.
            big = await execute(
                manager,
                SYSV + f"made = 0\nfor k in range(3):\n    shm({KEY} + 1 + k, 200 * 2**20)\n    made += 1\n"
                "    open('made.txt', 'w').write(str(made))\nmade",
                "hog",
            )
            made = int((manager._sessions["hog"].workspace / "made.txt").read_text())
            await manager.close_session("tenant-a")
            ns_gone = ns not in ipc_namespaces_in_use()
            return small, inside_a, other, big, made, ns_gone

    small, inside_a, other, big, made, ns_gone = run(body())
    assert small.result == "True", small.stderr
    assert has_key(inside_a) and not has_key(host_sysv("shm"))
    assert other.result == "False"
    assert big.outcome != "ok" and made < 2  # the second 200 MB segment did not fit in 384 MB
    assert ns_gone  # no process holds tenant A's IPC namespace: its segments are freed with it


# -- RAM-backed /tmp and /dev/shm ---------------------------------------------------------------


@pytest.mark.req("sandbox:tmp-bounded")
@pytest.mark.parametrize("place", ["/dev/shm", "/tmp"])
def test_ram_backed_directories_stay_inside_the_memory_limit(make_manager, place):
    code = (
        "written = 0\n"
        "for i in range(12):\n"
        f"    with open('{place}/fill-%d' % i, 'wb') as f:\n"
        "        f.write(bytes(50 * 2**20))\n"
        "    written += 50\n"
        "    open('written.txt', 'w').write(str(written))\n"
        "written"
    )

    async def body():
        async with make_manager(memory_mb=384, max_file_mb=64) as manager:
            result = await execute(manager, code)
            written = int((manager._sessions["s1"].workspace / "written.txt").read_text())
            after = await execute(manager, f"import os\nsorted(os.listdir('{place}'))")
            return result, written, after

    result, written, after = run(body())
    assert result.outcome in ("killed", "error", "memory"), result.message
    assert written < 384  # 600 MB were attempted
    assert after.outcome == "ok" and after.restarted  # a fresh sandbox: the RAM-backed files are gone
    assert "fill" not in (after.result or "")


# -- workspace quota and process limit ----------------------------------------------------------


@pytest.mark.req("sandbox:quota")
def test_workspace_quota_bounds_the_total_not_only_each_file(make_manager):
    code = (
        "import os\n"
        "written = 0\n"
        "try:\n"
        "    for i in range(10):\n"
        "        with open('part-%d.bin' % i, 'wb') as f:\n"
        "            f.write(os.urandom(8 * 2**20))\n"
        "        written += 8\n"
        "except OSError as e:\n"
        "    failure = e.strerror\n"
        "(written, failure)"
    )

    async def body():
        async with make_manager(workspace_mb=32, max_file_mb=16) as manager:
            result = await execute(manager, code)
            workspace = manager._sessions["s1"].workspace
            used = sum(p.stat().st_size for p in workspace.iterdir() if p.is_file())
            image = workspace.with_name(workspace.name + ".img")
            return result, used, image.stat().st_blocks * 512

    result, used, image_bytes = run(body())
    assert result.outcome == "ok", result.stderr
    written, failure = eval(result.result)  # a tuple repr made by the test's own code
    assert written < 32 and failure == "No space left on device"
    assert used <= 32 * 2**20 and image_bytes <= 33 * 2**20


# Forks until the kernel refuses; every child sleeps, holding its task; ``n`` counts them.
FORK_UNTIL_REFUSED = (
    "import os, time\n"
    "n = 0\n"
    "while True:\n"
    "    try:\n"
    "        pid = os.fork()\n"
    "    except OSError:\n"
    "        break\n"
    "    if pid == 0:\n"
    "        time.sleep(60)\n"
    "        os._exit(0)\n"
    "    n += 1\n"
)


@pytest.mark.req("sandbox:quota")
def test_process_limit_is_per_session(make_manager):
    """Session A forks until it cannot and holds its processes; meanwhile session B forks freely."""
    bomb = (
        "from servers import crm\n"
        + FORK_UNTIL_REFUSED
        + "crm.ping()\n"  # the test holds this call until session B is done
        "n"
    )
    forks = (
        "import os\n"
        "pids = []\n"
        "for _ in range(5):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os._exit(0)\n"
        "    pids.append(pid)\n"
        "[os.waitpid(p, 0) for p in pids]\n"
        "len(pids)"
    )
    crm = TokenisedCrm(n=5)

    async def body():
        async with make_manager(max_processes=16) as manager:
            holding, release = asyncio.Event(), asyncio.Event()

            async def held_call(upstream, tool, args):
                holding.set()
                await release.wait()
                return await crm.call_tool(upstream, tool, args)

            a = asyncio.create_task(manager.execute("a", bomb, catalogue=CATALOGUE, call_tool=held_call))
            await holding.wait()
            a_processes = len(tree(manager._sessions["a"].sandbox))
            b = await execute(manager, forks, "b")
            release.set()
            return await a, a_processes, b

    a, a_processes, b = run(body())
    assert a.outcome == "ok", a.stderr
    assert int(a.result) < 16 and a_processes <= 16
    assert b.outcome == "ok" and b.result == "5", b.stderr


# -- the wall clock and the end of an execution --------------------------------------------------

LEFTOVERS = {
    "fork": "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)",
    "double-fork-setsid": (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "os.wait()"
    ),
    "ignores-sigterm": (
        "import os, signal, time\n"
        "if os.fork() == 0:\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    while True:\n"
        "        time.sleep(1)"
    ),
    "daemon-subprocess": "import subprocess\nsubprocess.Popen(['sleep', '60'], start_new_session=True)",
    "fork-chain": (
        "import os, time\n"
        "me = os.getpid()\n"
        "for _ in range(4):\n"
        "    if os.fork() != 0:\n"
        "        break\n"
        "if os.getpid() != me:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)"
    ),
}


@pytest.mark.req("sandbox:wall-clock")
@pytest.mark.parametrize("kind", sorted(LEFTOVERS))
def test_nothing_the_execution_started_survives_the_call(make_manager, kind):
    code = "kept = 'yes'\n" + LEFTOVERS[kind]

    async def body():
        async with make_manager() as manager:
            result = await execute(manager, code)
            sandbox = manager._sessions["s1"].sandbox
            alive = tree(sandbox)
            frozen = state_of(sandbox.worker)
            again = await execute(manager, "kept")
            return result, sandbox, alive, frozen, again

    result, sandbox, alive, frozen, again = run(body())
    assert result.outcome == "ok", result.stderr
    assert sorted(alive) == sorted(sandbox.jail_pids)  # firejail, its init, the interpreter: nothing else
    assert "running, which w" in result.message  # the agent is told what was stopped
    assert frozen == "T"  # the interpreter itself is stopped between executions
    assert again.result == "'yes'" and not again.restarted


@pytest.mark.req("sandbox:wall-clock")
def test_a_thread_left_running_ends_with_its_interpreter(make_manager):
    code = "import threading, time\nkept = 1\nthreading.Thread(target=time.sleep, args=(60,)).start()"

    async def body():
        async with make_manager() as manager:
            result = await execute(manager, code)
            live = manager.live_sessions()
            again = await execute(manager, "'kept' in globals()")
            return result, live, again

    result, live, again = run(body())
    assert result.outcome == "ok"
    assert "left 1 thread running" in result.message and "Variables are lost" in result.message
    assert live == [] and again.restarted and again.result == "False"


@pytest.mark.req("sandbox:wall-clock")
def test_a_timer_cannot_run_code_between_executions(make_manager):
    code = (
        "import signal\n"
        "def tick(*_):\n"
        "    open('ticks.txt', 'a').write('x')\n"
        "signal.signal(signal.SIGALRM, tick)\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)\n"
        "'armed'"
    )

    async def body():
        async with make_manager() as manager:
            result = await execute(manager, code)
            sandbox = manager._sessions["s1"].sandbox
            return result, state_of(sandbox.worker), tree(sandbox), sandbox.jail_pids

    result, state, alive, jail = run(body())
    assert result.outcome == "ok" and result.result == "'armed'"
    assert state == "T"  # stopped: the timer's handler cannot run until the next execution starts
    assert sorted(alive) == sorted(jail)


@pytest.mark.req("sandbox:wall-clock")
def test_timeout_kills_every_process_of_the_execution(make_manager):
    code = (
        "import os, signal\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "        while True:\n"
        "            pass\n"
        "while True:\n"
        "    pass"
    )

    async def body():
        async with make_manager(timeout_s=2.0) as manager:
            await execute(manager, "1")
            sandbox = manager._sessions["s1"].sandbox
            result = await execute(manager, code)
            return result, tree(sandbox), sandbox

    result, alive, sandbox = run(body())
    assert result.outcome == "timeout"
    assert alive == [] and sandbox.proc.poll() is not None


# -- channel integrity ---------------------------------------------------------------------------

FORGE = (
    "import os, sys, json, _veil_runtime\n"
    "f = sys._getframe()\n"
    "while 'request' not in f.f_locals:\n"
    "    f = f.f_back\n"
    "forged = {'type': 'done', 'id': f.f_locals['request']['id'], 'status': 'ok', 'error_type': None,"
    " 'result': \"'forged'\"}\n"
    "os.write(_veil_runtime.CHAN_OUT_FD, json.dumps(forged).encode() + b'\\n')\n"
)


@pytest.mark.req("sandbox:channel-integrity")
def test_a_forged_completion_does_not_end_the_call_while_the_code_runs(make_manager):
    code = FORGE + "import time\ntime.sleep(1)\nopen('after.txt', 'w').write('still ran')\n'real'"

    async def body():
        async with make_manager() as manager:
            result = await execute(manager, code)
            after = manager._sessions["s1"].workspace / "after.txt"
            return result, after.exists()

    result, ran_to_the_end = run(body())
    assert ran_to_the_end  # the call did not return before the code finished
    assert result.outcome == "killed" and "broke the channel protocol" in result.message
    assert result.result is None  # the forged result is not passed on as the execution's


@pytest.mark.req("sandbox:channel-integrity")
@pytest.mark.req("sandbox:wall-clock")
def test_a_forged_completion_then_endless_work_times_out(make_manager):
    code = FORGE + "while True:\n    pass"

    async def body():
        async with make_manager(timeout_s=2.0) as manager:
            return await execute(manager, code)

    result = run(body())
    assert result.outcome == "timeout" and result.result is None


@pytest.mark.req("sandbox:channel-integrity")
def test_a_forged_completion_from_a_child_process_is_not_the_end(make_manager):
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n" + "".join("    " + line + "\n" for line in FORGE.splitlines()) + "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(1)\n"
        "open('after.txt', 'w').write('x')\n"
        "'real'"
    )

    async def body():
        async with make_manager() as manager:
            await execute(manager, "1")
            sandbox = manager._sessions["s1"].sandbox
            result = await execute(manager, code)
            return result, (manager._sessions["s1"].workspace / "after.txt").exists(), sandbox

    result, ran_to_the_end, sandbox = run(body())
    assert ran_to_the_end
    assert result.outcome == "killed" and result.result is None
    assert tree(sandbox) == []


@pytest.mark.req("sandbox:channel-integrity")
def test_code_that_poses_as_the_runtime_is_not_taken_for_it(make_manager):
    """A forged ``done`` and then a fake runtime loop waiting on the channel: the host ends an
    execution only when it sees the interpreter stopped, so the call runs into its timeout."""
    code = FORGE + "import _veil_runtime\nwhile True:\n    _veil_runtime._receive()"

    async def body():
        async with make_manager(timeout_s=2.0) as manager:
            await execute(manager, "1")
            sandbox = manager._sessions["s1"].sandbox
            posed = await execute(manager, code)
            return posed, tree(sandbox)

    posed, alive = run(body())
    assert posed.outcome == "timeout" and posed.result is None
    assert alive == []


@pytest.mark.req("sandbox:channel-integrity")
@pytest.mark.req("sandbox:wall-clock")
def test_a_forged_completion_that_stops_itself_resumes_only_inside_the_next_execution(make_manager):
    """Residual, documented: code that forges ``done`` and stops itself looks finished, so the
    call ends with its claimed result. It cannot run until the host continues it with the next
    execution of the same session, whose wall clock then bounds it."""
    code = (
        FORGE + "import signal\nos.kill(os.getpid(), signal.SIGSTOP)\n"
        "open('resumed.txt', 'w').write('x')\nwhile True:\n    pass"
    )

    async def body():
        async with make_manager(timeout_s=2.0) as manager:
            first = await execute(manager, code)
            sandbox = manager._sessions["s1"].sandbox
            workspace = manager._sessions["s1"].workspace
            between = (state_of(sandbox.worker), tree(sandbox), (workspace / "resumed.txt").exists())
            second = await execute(manager, "'next'")
            return first, sandbox.jail_pids, between, second, (workspace / "resumed.txt").exists(), tree(sandbox)

    first, jail, between, second, resumed, after = run(body())
    assert first.result == "'forged'"  # the claim is the code's own output, tokenised like any other
    state, alive, resumed_between = between
    assert state == "T" and sorted(alive) == sorted(jail) and not resumed_between
    assert second.outcome == "timeout" and resumed and after == []


@pytest.mark.req("sandbox:wall-clock")
def test_a_child_that_keeps_waking_the_interpreter_cannot_outlive_the_call(make_manager):
    """A child sends SIGCONT and SIGUSR1 (whose handler forks) to the interpreter in a loop, so
    the interpreter may be running again while the host kills the rest. Whatever the
    interleaving, when the call returns the interpreter is stopped with nothing else alive, or
    the whole sandbox is gone."""
    code = (
        "import os, signal, time\n"
        "def spawn(*_):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "    except OSError:\n"
        "        pass\n"
        "signal.signal(signal.SIGUSR1, spawn)\n"
        "parent = os.getpid()\n"
        "if os.fork() == 0:\n"
        "    while True:\n"
        "        os.kill(parent, signal.SIGCONT)\n"
        "        os.kill(parent, signal.SIGUSR1)\n"
        "'started'"
    )

    async def body():
        async with make_manager(max_processes=24, timeout_s=3.0) as manager:
            await execute(manager, "1")
            sandbox = manager._sessions["s1"].sandbox
            result = await execute(manager, code)
            kept = manager._sessions["s1"].sandbox is sandbox
            return result, kept, tree(sandbox), sandbox, state_of(sandbox.worker) if kept else None

    result, kept, alive, sandbox, state = run(body())
    if kept:
        assert sorted(alive) == sorted(sandbox.jail_pids) and state == "T"
    else:
        assert alive == [] and result.outcome in ("killed", "error", "timeout")
