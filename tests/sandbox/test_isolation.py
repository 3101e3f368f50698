"""Hostile code: each attempt is contained, and the manager answers a normal execution afterwards.

Every test runs the attack in a real firejail sandbox and then checks that ``1 + 1`` still works
in the same manager (``assert_healthy``).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from conftest import CATALOGUE, TokenisedCrm, run

from veil.config import SandboxConfig
from veil.sandbox import ExecutionResult, SandboxManager

pytestmark = pytest.mark.req("sandbox:isolation")


def attack(make_manager, code: str, *, session: str = "s1", setup: str | None = None, **overrides):
    """Run ``code`` (after optional ``setup`` in another session) and then a normal execution."""
    crm = TokenisedCrm(n=5)

    async def body() -> tuple[ExecutionResult, ExecutionResult]:
        async with make_manager(**overrides) as manager:
            if setup is not None:
                prepared = await manager.execute("victim", setup, catalogue=CATALOGUE, call_tool=crm.call_tool)
                assert prepared.outcome == "ok", prepared.stderr
            hostile = await manager.execute(session, code, catalogue=CATALOGUE, call_tool=crm.call_tool)
            after = await manager.execute(session, "1 + 1", catalogue=CATALOGUE, call_tool=crm.call_tool)
            return hostile, after

    hostile, after = run(body())
    assert after.outcome == "ok" and after.result == "2", "the manager must recover after an attack"
    return hostile


def probe(make_manager, code: str, **kw) -> str | None:
    """An attack written as an expression that evaluates to what the code managed to see."""
    result = attack(make_manager, code, **kw)
    assert result.outcome == "ok", result.stderr
    return result.result


OPEN = (
    "def tryread(p):\n"
    "    try:\n"
    "        return open(p, 'rb').read()[:100]\n"
    "    except OSError as e:\n"
    "        return type(e).__name__\n"
)


def test_etc_shadow_is_unreadable(make_manager):
    assert probe(make_manager, OPEN + "tryread('/etc/shadow')") in ("'PermissionError'", "'FileNotFoundError'")


def test_veil_data_dir_repo_and_etc_configs_are_invisible(make_manager, tmp_path):
    data = Path("/var/lib") / f"veil-test-data-{os.getpid()}"
    data.mkdir(exist_ok=True)
    key = data / "master.key"
    key.write_text("SECRET-KEY-MATERIAL")
    key.chmod(0o644)  # even a world-readable key must stay out of reach
    data.chmod(0o755)
    tmp_key = tmp_path / "master.key"
    tmp_key.write_text("SECRET-KEY-MATERIAL")
    repo_config = Path(__file__).resolve().parents[2] / "pyproject.toml"
    etc_config = Path(f"/etc/veil-test-{os.getpid()}.yaml")
    etc_config.write_text("database_url: postgresql://veil:SECRET-PASSWORD@db/veil\n")
    etc_config.chmod(0o644)
    paths = [str(key), str(tmp_key), str(repo_config), str(etc_config)]
    try:
        seen = probe(make_manager, OPEN + f"[tryread(p) for p in {paths!r}]")
    finally:
        key.unlink()
        data.rmdir()
        etc_config.unlink()
    assert "SECRET" not in seen and "project" not in seen
    assert seen.count("Error") == 4


@pytest.mark.parametrize("parent", ["/tmp", "/srv"])
def test_other_sessions_workspace_is_invisible(parent):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    root = Path(tempfile.mkdtemp(prefix="veil-test-ws-", dir=parent))
    root.chmod(0o711)
    crm = TokenisedCrm(n=5)
    code = (
        OPEN
        + "import os, glob\n"
        + "found = [p for d in ('/home', '/tmp', '/var', '/srv', '/work', '/run', '/opt') "
        + "for p in glob.glob(d + '/**/secret.txt', recursive=True)]\n"
        + f"[found, tryread({str(root)!r} + '/' + VICTIM + '/secret.txt')]"
    )

    async def body():
        manager = SandboxManager(SandboxConfig(pool_size=0), root)
        try:
            victim = await manager.execute(
                "victim", "open('secret.txt', 'w').write('VICTIM-SECRET')", catalogue=CATALOGUE, call_tool=crm.call_tool
            )
            assert victim.outcome == "ok"
            name = manager._workspace_for("victim").name
            assert (root / name / "secret.txt").read_text() == "VICTIM-SECRET"
            return await manager.execute(
                "attacker", code.replace("VICTIM", repr(name)), catalogue=CATALOGUE, call_tool=crm.call_tool
            )
        finally:
            await manager.aclose()

    try:
        result = run(body())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert result.outcome == "ok", result.stderr
    assert "VICTIM-SECRET" not in result.result
    assert result.result.startswith("[[], '") and result.result.endswith("Error']")


def test_no_secret_environment_and_no_host_processes(make_manager, monkeypatch):
    monkeypatch.setenv("VEIL_CANARY_SECRET", "canary-7f3e")
    code = (
        OPEN
        + "import os\n"
        + "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        + "envs = [tryread(f'/proc/{p}/environ') for p in pids]\n"
        + "[dict(os.environ), len(pids), envs]"
    )
    seen = probe(make_manager, code)
    assert "canary-7f3e" not in seen and "VEIL_CANARY" not in seen
    assert "DATABASE_URL" not in seen
    pids = int(seen.split("}, ")[1].split(",")[0])
    assert pids <= 3  # firejail's init, the interpreter (and nothing of the host)


def test_network_is_unreachable_even_on_loopback(make_manager):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    code = (
        "import socket\n"
        "def connect(host, port):\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=2).close()\n"
        "        return 'connected'\n"
        "    except OSError as e:\n"
        "        return type(e).__name__\n"
        "def resolve(name):\n"
        "    try:\n"
        "        return socket.getaddrinfo(name, 80)[0][4][0]\n"
        "    except OSError as e:\n"
        "        return type(e).__name__\n"
        f"[connect('127.0.0.1', {port}), connect('127.0.0.1', 5432), resolve('example.com'), resolve('pypi.org')]"
    )
    try:
        seen = probe(make_manager, code)
    finally:
        listener.close()
    assert "connected" not in seen
    assert seen.count("gaierror") == 2


def test_database_socket_is_invisible(make_manager):
    code = (
        "import os, glob\n"
        "[os.path.exists('/var/run/postgresql'), os.path.exists('/run/postgresql/.s.PGSQL.5432'),"
        " glob.glob('/tmp/.s.PGSQL*'), glob.glob('/run/*/.s.PGSQL*')]"
    )
    assert probe(make_manager, code) in ("[False, False, [], []]", "[True, False, [], []]")


def test_writing_outside_the_workspace_fails_or_stays_private(make_manager):
    marker = f"veil-escape-{os.getpid()}"
    code = (
        "def trywrite(p):\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "        return 'wrote'\n"
        "    except OSError as e:\n"
        "        return type(e).__name__\n"
        f"[trywrite('/etc/{marker}'), trywrite('/usr/{marker}'), trywrite('/tmp/{marker}'),"
        f" trywrite('/dev/shm/{marker}'), trywrite('/home/{marker}'), trywrite('/var/lib/{marker}')]"
    )
    seen = probe(make_manager, code)
    etc, usr = seen.strip("[]").split(", ")[0:2]
    assert etc in ("'OSError'", "'PermissionError'") and usr == "'OSError'"  # read-only or not ours
    for place in ("/etc", "/usr", "/tmp", "/dev/shm", "/home", "/var/lib"):
        assert not Path(place, marker).exists()


def test_killing_the_parent_or_everything_is_contained(make_manager):
    result = attack(
        make_manager, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)"
    )
    assert result.outcome in ("error", "killed")


def test_fork_bomb_is_stopped(make_manager):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = attack(make_manager, code, timeout_s=3.0)
    assert result.outcome == "timeout"
    assert "did not finish within 3 s" in result.message


def test_memory_exhaustion_is_reported(make_manager):
    result = attack(
        make_manager, "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))", memory_mb=256
    )
    assert result.outcome in ("memory", "killed")
    assert "memory" in result.message


def test_disk_exhaustion_hits_the_file_size_limit(make_manager):
    code = "with open('big.bin', 'wb') as f:\n    for _ in range(64):\n        f.write(bytes(1024 * 1024))"
    result = attack(make_manager, code, max_file_mb=8)
    assert result.outcome == "error"
    assert "File too large" in result.stderr


def test_infinite_loop_times_out(make_manager):
    result = attack(make_manager, "while True:\n    pass", timeout_s=1.0)
    assert result.outcome == "timeout"


def test_output_flood_is_stopped(make_manager):
    result = attack(make_manager, "while True:\n    print('x' * 4096)", max_output_bytes=4096)
    assert result.outcome == "output_limit"
    assert result.truncated and len(result.stdout) < 4096 + 200


def test_ptrace_unshare_and_setuid_are_refused(make_manager):
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def setuid():\n"
        "    try:\n"
        "        os.setuid(0)\n"
        "        return 'root'\n"
        "    except OSError as e:\n"
        "        return type(e).__name__\n"
        "[libc.ptrace(0, 0, 0, 0), libc.unshare(0x10000000), libc.unshare(0x40000000), libc.unshare(0x20000),"
        " setuid(), os.getuid() != 0, os.geteuid() != 0]"
    )
    seen = probe(make_manager, code)
    assert seen == "[-1, -1, -1, -1, 'OSError', True, True]"


def test_forged_channel_messages_stop_the_sandbox(make_manager):
    code = (
        "import os, _veil_runtime\n"
        'os.write(_veil_runtime.CHAN_OUT_FD, b\'{"type": "call", "id": 1, "upstream": "crm", "tool": "ping",'
        ' "args": {}, "reveal": true}\\n\')\n'
        "import time; time.sleep(5)"
    )
    result = attack(make_manager, code)
    assert result.outcome == "killed"
    assert "broke the channel protocol" in result.message


def test_printing_a_channel_message_does_not_forge_one(make_manager):
    code = 'print(\'{"type": "call", "id": 1, "upstream": "crm", "tool": "ping", "args": {}}\')\n"printed"'
    result = attack(make_manager, code)
    assert result.outcome == "ok" and result.tool_calls == 0
    assert result.stdout.startswith('{"type": "call"')


@pytest.mark.parametrize("code", ["import os\nos.kill(os.getpid(), 9)", "import os\nos._exit(3)"])
def test_a_dead_interpreter_is_replaced_and_the_agent_told(make_manager, code):
    result = attack(make_manager, code)
    assert result.outcome == "killed"
    assert "ended during the execution" in result.message and "Variables are lost" in result.message


def test_code_output_never_reaches_veils_logs(make_manager, caplog):
    caplog.set_level("DEBUG")
    canary = "[EMAIL_ADDRESS_42] canary-output-5d1c"
    result = attack(make_manager, f"import sys\nprint({canary!r})\nprint({canary!r}, file=sys.stderr)\n1/0")
    assert canary in result.stdout and canary in result.stderr
    assert "canary-output" not in caplog.text


def test_cpu_time_limit_interrupts_the_execution_and_keeps_the_interpreter(make_manager):
    crm = TokenisedCrm(n=5)

    async def body():
        async with make_manager(cpu_s=1, timeout_s=20.0) as manager:
            run_ = manager.execute
            await run_("s1", "kept = 'yes'", catalogue=CATALOGUE, call_tool=crm.call_tool)
            spin = await run_("s1", "while True:\n    pass", catalogue=CATALOGUE, call_tool=crm.call_tool)
            again = await run_("s1", "sum(range(10**6)) > 0", catalogue=CATALOGUE, call_tool=crm.call_tool)
            after = await run_("s1", "kept", catalogue=CATALOGUE, call_tool=crm.call_tool)
            return spin, again, after

    spin, again, after = run(body())
    assert spin.outcome == "timeout" and "CPU-time limit of 1 s" in spin.message
    assert "CPUTimeExceeded" in spin.stderr
    assert again.outcome == "ok" and again.result == "True"  # the next execution gets a fresh budget
    assert after.result == "'yes'" and not after.restarted
