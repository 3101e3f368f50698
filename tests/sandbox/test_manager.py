"""SandboxManager end to end over real firejail: the data path, the generated API, state, files,
skills, reset and the idle/close lifecycle."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from conftest import CATALOGUE, TokenisedCrm, run

from veil.sandbox import ExecutionResult, SandboxManager

TOKEN = re.compile(r"\[[A-Z][A-Z0-9_]*_\d+\]")


async def execute(manager: SandboxManager, crm: TokenisedCrm, code: str, session: str = "s1", **kw) -> ExecutionResult:
    return await manager.execute(session, code, catalogue=CATALOGUE, call_tool=crm.call_tool, **kw)


@pytest.mark.req("sandbox:data-path")
def test_code_sees_tokenised_objects_and_tokens_flow_back_unchanged(make_manager, crm):
    code = """
from servers import crm, mailer
gold = crm.find_customers(segment="gold", limit=500)
first = gold[0]
mailer.send_email(to=first["email"], subject="Hello", body=f"Dear {first['full_name']}, call {first['phone']}.")
crm.add_note(customer_id=first["id"], note=f"Emailed {first['email']}")
print(len(gold), first["email"])
{"n": len(gold), "card": first["card_number"]}
"""

    async def body():
        async with make_manager() as manager:
            return await execute(manager, crm, code)

    result = run(body())
    assert result.outcome == "ok", result.stderr
    gold = [c for c in crm.customers if c["segment"] == "gold"]
    first = gold[0]
    assert result.stdout == f"{len(gold)} {first['email']}\n"
    assert result.result == repr({"n": len(gold), "card": first["card_number"]})
    assert TOKEN.fullmatch(first["email"])
    assert crm.calls[0] == ("crm", "find_customers", {"segment": "gold", "limit": 500})
    assert crm.calls[1] == (
        "mailer",
        "send_email",
        {"to": first["email"], "subject": "Hello", "body": f"Dear {first['full_name']}, call {first['phone']}."},
    )
    assert crm.calls[2] == ("crm", "add_note", {"customer_id": first["id"], "note": f"Emailed {first['email']}"})
    assert result.tool_calls == 3
    assert result.bytes_returned > 1000
    assert result.max_rss_mb > 5 and result.cpu_s >= 0 and result.duration_ms > 0
    assert len(result.code_sha256) == 64
    # No real value appears anywhere in what the sandbox produced.
    real = {crm.real[0]["email"], crm.real[0]["ssn"], crm.real[0]["full_name"]}
    for text in (result.stdout, result.stderr, result.result or ""):
        assert not any(value in text for value in real)


@pytest.mark.req("sandbox:data-path")
def test_upstream_error_raises_tool_error_with_the_tokenised_message(make_manager, crm):
    code = """
from servers import crm, ToolError
try:
    crm.get_customer("C9999")
except ToolError as exc:
    caught = (exc.kind, str(exc))
caught
"""

    async def body():
        async with make_manager() as manager:
            return await execute(manager, crm, code)

    result = run(body())
    assert result.outcome == "ok"
    assert result.result == repr(("UpstreamError", "Unknown customer id 'C9999'. Use find_customers."))


def test_unknown_tool_is_refused_before_reaching_the_gateway(make_manager, crm):
    code = "import _veil_runtime\n_veil_runtime.call_tool('crm', 'drop_database', {})"

    async def body():
        async with make_manager() as manager:
            return await execute(manager, crm, code)

    result = run(body())
    assert result.outcome == "error"
    assert "no tool 'drop_database' on upstream 'crm'" in result.stderr
    assert crm.calls == []


def test_stub_files_index_and_help(make_manager, crm):
    code = """
import os
from servers import crm
help(crm.get_customer)
print(sorted(os.listdir("servers/crm")))
print(open("servers/INDEX.md").read())
import inspect
str(inspect.signature(crm.find_customers))
"""

    async def body():
        async with make_manager() as manager:
            return await execute(manager, crm, code)

    result = run(body())
    assert result.outcome == "ok", result.stderr
    assert "get_customer(customer_id: str)" in result.stdout
    assert 'One customer record by id, e.g. "C0001".' in result.stdout
    assert "'find_customers.py'" in result.stdout and "'ping.py'" in result.stdout
    assert "## crm" in result.stdout and "## mailer" in result.stdout
    signature = result.result or ""
    assert signature.startswith('"(*, segment: ') and "Literal['gold', 'silver', 'bronze']" in signature
    assert "limit: int = 50)" in signature


@pytest.mark.req("sandbox:state")
def test_variables_and_files_persist_and_reset_starts_clean(make_manager, crm):
    async def body():
        async with make_manager() as manager:
            a = await execute(manager, crm, "x = 41\nopen('notes.txt', 'w').write('kept')")
            b = await execute(manager, crm, "x + 1, open('notes.txt').read()")
            other = await execute(manager, crm, "'x' in globals()", session="s2")
            c = await execute(manager, crm, "import os; 'x' in globals(), os.path.exists('notes.txt')", reset=True)
            return a, b, other, c

    a, b, other, c = run(body())
    assert (a.outcome, a.restarted) == ("ok", True)
    assert (b.result, b.restarted) == (repr((42, "kept")), False)
    assert other.result == "False"
    assert c.result == repr((False, False)) and c.restarted


@pytest.mark.req("sandbox:skills")
def test_saved_skill_is_importable_later_and_survives_reset(make_manager, crm, shared_skills):
    shared = shared_skills / "greeting"
    shared.mkdir(parents=True)
    (shared / "__init__.py").write_text("def hello(name):\n    return f'hello {name}'\n")
    (shared / "SKILL.md").write_text("# greeting\nSay hello.\n")
    save = """
import os
os.makedirs("skills/gold", exist_ok=True)
open("skills/gold/SKILL.md", "w").write("# gold\\nCount gold customers.\\n")
open("skills/gold/__init__.py", "w").write(
    "from servers import crm\\n"
    "def count_gold():\\n"
    "    return len(crm.find_customers(segment='gold', limit=1000))\\n"
)
"""
    use = "from skills.gold import count_gold\nfrom skills.greeting import hello\ncount_gold(), hello('[PERSON_1]')"
    write_shared = f"open({str(shared / 'evil.py')!r}, 'w')"

    async def body():
        async with make_manager(shared_skills_dir=shared.parent) as manager:
            saved = await execute(manager, crm, save)
            used = await execute(manager, crm, use, reset=True)
            denied = await execute(manager, crm, write_shared)
            return saved, used, denied

    saved, used, denied = run(body())
    assert saved.outcome == "ok", saved.stderr
    gold = sum(1 for c in crm.customers if c["segment"] == "gold")
    assert used.outcome == "ok", used.stderr
    assert used.result == repr((gold, "hello [PERSON_1]"))
    assert denied.outcome == "error" and ("Read-only" in denied.stderr or "Permission" in denied.stderr)
    assert not (shared / "evil.py").exists()


def test_final_expression_syntax_error_and_output_cap(make_manager, crm):
    async def body():
        async with make_manager(max_output_bytes=1000) as manager:
            syntax = await execute(manager, crm, "def broken(:\n    pass")
            big = await execute(manager, crm, "print('a' * 5000)\n'b' * 100")
            return syntax, big

    syntax, big = run(body())
    assert syntax.outcome == "error" and "SyntaxError" in syntax.message and "SyntaxError" in syntax.stderr
    assert big.outcome == "ok" and big.truncated
    assert big.result == repr("b" * 100)
    assert "[output truncated:" in big.stdout and len(big.stdout.encode()) < 1100
    assert "Output was cut to 1000 bytes" in big.message


def test_idle_interpreter_is_torn_down_and_close_session_removes_the_workspace(make_manager, crm):
    async def body():
        async with make_manager(idle_timeout_s=0.2) as manager:
            await execute(manager, crm, "y = 1")
            session = manager._sessions["s1"]
            proc = session.sandbox.proc
            await asyncio.to_thread(proc.wait, 20)  # ends when the idle timer fires
            after = await execute(manager, crm, "'y' in globals()")
            workspace = session.workspace
            existed = workspace.is_dir()
            await manager.close_session("s1")
            return proc.returncode, after, existed, workspace.exists()

    returncode, after, existed, exists_after = run(body())
    assert returncode is not None
    assert after.restarted and after.result == "False"
    assert existed and not exists_after


def test_warm_pool_serves_new_sessions(make_manager, crm):
    async def body():
        async with make_manager(pool_size=2) as manager:
            await manager.wait_pool()
            pooled = list(manager._pool)
            first = await execute(manager, crm, "import os; os.getcwd(), sorted(os.listdir('.'))", session="p1")
            taken = manager._sessions["p1"].sandbox
            await manager.wait_pool()
            return pooled, first, taken, manager.pool_ready

    pooled, first, taken, refilled = run(body())
    assert taken in pooled
    assert first.result == repr(("/home/veil-sandbox", ["servers"]))
    assert refilled == 2


def test_timeout_kills_and_next_execution_recovers(make_manager, crm):
    async def body():
        async with make_manager() as manager:
            await execute(manager, crm, "z = 5")
            slow = await execute(manager, crm, "while True: pass", timeout_s=0.5)
            after = await execute(manager, crm, "'z' in globals()")
            return slow, after

    slow, after = run(body())
    assert slow.outcome == "timeout" and "did not finish within 0.5 s" in slow.message
    assert "Variables are lost" in slow.message
    assert after.outcome == "ok" and after.restarted and after.result == "False"


def test_missing_firejail_fails_with_the_fix(make_manager, crm, monkeypatch):
    from veil.errors import SandboxError

    monkeypatch.setenv("PATH", "/nonexistent")

    async def body():
        async with make_manager() as manager:
            return await execute(manager, crm, "1")

    with pytest.raises(SandboxError, match="apt-get install firejail"):
        run(body())


def test_workspace_root_is_not_listable_by_the_sandbox_user(make_manager, crm):
    async def body():
        async with make_manager() as manager:
            await execute(manager, crm, "1")
            return Path(manager.workspace_root).stat().st_mode & 0o777

    assert run(body()) == 0o711


def test_not_root_fails_with_what_to_do(make_manager, crm, monkeypatch):
    from veil.errors import SandboxError

    monkeypatch.setattr("os.geteuid", lambda: 1000)

    async def body():
        async with make_manager() as manager:
            return await execute(manager, crm, "1")

    with pytest.raises(SandboxError, match=r"run as root.*python -m veil.sandbox.setup"):
        run(body())


@pytest.mark.parametrize("where", ["var", "private-parent"])
def test_unusable_workspace_roots_are_refused_with_the_reason(crm, where, tmp_path):
    import os

    from veil.config import SandboxConfig
    from veil.errors import SandboxError

    if os.geteuid() != 0:
        pytest.skip("needs root")
    if where == "var":
        root, match = Path("/var/lib/veil-test-never-created/workspaces"), "under /var"
    else:
        root, match = tmp_path / "private" / "workspaces", "not searchable by others"
        (tmp_path / "private").mkdir(mode=0o700)

    async def body():
        manager = SandboxManager(SandboxConfig(pool_size=0), root)
        try:
            await execute(manager, crm, "1")
        finally:
            await manager.aclose()

    with pytest.raises(SandboxError, match=match):
        run(body())
    assert not Path("/var/lib/veil-test-never-created").exists()


def test_arguments_must_be_json_values(make_manager, crm):
    async def body():
        async with make_manager() as manager:
            code = "from servers import mailer\nmailer.send_email(to={1, 2}, subject='s', body='b')"
            return await execute(manager, crm, code)

    result = run(body())
    assert result.outcome == "error"
    assert "arguments to mailer.send_email must be JSON values" in result.stderr
    assert crm.calls == []
