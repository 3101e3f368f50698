"""``veil serve`` stopped the way service managers stop it (SIGTERM: systemd, docker stop,
Kubernetes) or the way an operator does (SIGINT) closes its sessions and sandboxes: their
workspace filesystems are unmounted and removed, and every open session's close is audited.
A stop that skips this leaves the sandbox's files mounted on the host and a gap in the trail."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _start(database_url: str, principal: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    data_dir = Path(tempfile.mkdtemp(prefix="veil-sec-stop-"))
    data_dir.chmod(0o711)
    config = {
        "upstreams": {"crm": {"command": sys.executable, "args": [str(ROOT / "examples" / "crm_server.py")]}},
        "database_url": database_url,
        "policy": str(ROOT / "policies" / "default.yaml"),
        "data_dir": str(data_dir),
        "expose": "both",
        "auth": {"required": False},
        "principal": {"name": principal, "roles": ["support"]},
    }
    (data_dir / "veil.yaml").write_text(yaml.safe_dump(config))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    with (data_dir / "veil.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "veil",
                "serve",
                "--config",
                str(data_dir / "veil.yaml"),
                "--http",
                f"127.0.0.1:{port}",
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, (data_dir / "veil.log").read_text()[-2000:]
        try:
            httpx.get(url, timeout=1)
            return proc, url, data_dir
        except httpx.TransportError:
            assert time.monotonic() < deadline, "veil serve did not answer"
            time.sleep(0.1)  # polling for start-up, not a synchronisation sleep


@pytest.mark.parametrize(
    "sig",
    [
        signal.SIGINT,
        pytest.param(
            signal.SIGTERM,
            marks=pytest.mark.xfail(
                strict=True,
                raises=AssertionError,
                reason="runner (h-runner): uvicorn re-raises SIGTERM after serve() returns, so the process "
                "dies before the gateway closes sessions and sandboxes (interpreters orphaned, workspaces mounted)",
            ),
        ),
    ],
    ids=["SIGINT", "SIGTERM"],
)
@pytest.mark.req("serve:clean-stop")
async def test_stopping_serve_closes_sessions_and_unmounts_sandboxes(database_url: str, sig: signal.Signals) -> None:
    principal = f"stop-{uuid.uuid4().hex[:8]}"
    proc, url, data_dir = _start(database_url, principal)
    signalled = False
    try:
        async with Client(url, mode="legacy", read_timeout_seconds=120) as agent:
            ran = await agent.call_tool("execute_code", {"code": "open('note.txt', 'w').write('x')\nprint('ok')"})
            assert not ran.is_error, ran
            proc.send_signal(sig)  # with the session still open: the stop must close it
            signalled = True
            with anyio.fail_after(60):  # a hang guard, not a timing assertion
                while proc.poll() is None:
                    await anyio.sleep(0.1)
    except Exception:
        if not signalled:
            raise  # after the stop, the client's own goodbye to a gone server may fail: not the point
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    left_running = [
        p
        for p in psutil.process_iter(["cmdline", "status"])
        if str(data_dir) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE
    ]
    mounted = [line for line in Path("/proc/mounts").read_text().splitlines() if f" {data_dir}/" in line]
    engine = db.create_engine(database_url)
    try:
        with engine.connect() as conn:
            opened, closed = (
                conn.execute(
                    sa.text("SELECT count(*) FROM audit_events WHERE kind = :k AND principal = :p"),
                    {"k": kind, "p": principal},
                ).scalar_one()
                for kind in ("session.open", "session.close")
            )
    finally:
        engine.dispose()
    # Leave the machine clean whatever the outcome (these processes and mounts are this test's).
    for process in left_running:
        with contextlib.suppress(psutil.Error):
            process.kill()
    for line in mounted:
        subprocess.run(["umount", "-l", line.split()[1]], check=False)
    shutil.rmtree(data_dir, ignore_errors=True)
    assert left_running == [], f"sandbox processes outlived veil serve after {sig.name}"
    assert mounted == [], f"workspace filesystems still mounted after {sig.name}"
    assert opened >= 1 and closed == opened, f"{opened} sessions opened, {closed} closes audited"
