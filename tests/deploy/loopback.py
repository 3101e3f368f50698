"""Several ``veil serve --http`` replicas behind the shipped HAProxy config, on loopback, sharing one
PostgreSQL: the scale-out of docs/deployment.md, as real processes. Used by
tests/deploy/test_scale_out.py and bench/scale_out.py.

Every replica gets the same secrets from its environment, as in a container: ``VEIL_DATABASE_URL``
(the config file names no database), ``VEIL_MASTER_KEY`` (so the replicas share the vault's keys)
and ``VEIL_AUDIT_SIGNING_KEY`` (one key signs every replica's checkpoints). Each replica has its
own data directory and its own demo CRM upstream, whose call log tells which replica's upstream
received a value. HAProxy runs ``deploy/haproxy/haproxy.cfg`` with only the ``bind`` and ``server``
addresses replaced.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import sqlalchemy as sa
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from examples.crm_data import generate_customers
from veil import db

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
CRM = ROOT / "examples" / "crm_server.py"
REPLICA_HEADER = "x-veil-replica"
CUSTOMERS = {c["id"]: c for c in generate_customers(40, 7)}  # what each replica's demo CRM serves (CRM_RECORDS=40)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shared_secrets(database_url: str) -> dict[str, str]:
    """What a Kubernetes Secret gives every replica (deploy/kubernetes/secret.example.yaml)."""
    signing = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return {
        "VEIL_DATABASE_URL": database_url,
        "VEIL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "VEIL_AUDIT_SIGNING_KEY": base64.b64encode(signing).decode(),
    }


@dataclass
class Replica:
    name: str
    port: int
    work: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def crm_log(self) -> Path:
        return self.work / "crm-calls.jsonl"

    @property
    def log(self) -> Path:
        return self.work / "veil.log"

    def crm_calls(self) -> list[dict[str, Any]]:
        """The calls this replica's CRM received, with the arguments as it saw them."""
        if not self.crm_log.exists():
            return []
        return [json.loads(line) for line in self.crm_log.read_text().splitlines() if line.strip()]

    def kill(self) -> None:
        """SIGKILL: a crashed replica (no graceful shutdown, no session closes)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


def replica_config(replica: Replica, *, token_scope: str = "principal", auth: bool = True) -> dict[str, Any]:
    """The replica's config file: everything but the secrets (those come from the environment)."""
    return {
        "upstreams": {
            "crm": {
                "command": sys.executable,
                "args": [str(CRM)],
                "env": {"CRM_RECORDS": "40", "CRM_CALL_LOG": str(replica.crm_log)},
            }
        },
        "policy": str(ROOT / "policies" / "default.yaml"),
        "data_dir": str(replica.work / "data"),
        "expose": "direct",
        "token_scope": token_scope,
        "auth": {"required": auth},
        "principal": {"name": "loopback", "roles": ["support"]},
        "limits": {"ner_workers": 1},
        "audit": {"checkpoint_every_events": None},
    }


def start_replicas(
    count: int, work: Path, secrets: dict[str, str], *, tree: Path = ROOT, timeout_s: float = 120.0, **config: Any
) -> list[Replica]:
    """Start ``count`` replicas of the Veil in ``tree`` (a checkout) at once; return when every one
    is listening (or raise with its log)."""
    replicas = []
    for i in range(1, count + 1):
        replica = Replica(f"veil{i}", free_port(), work / f"veil{i}")
        replica.work.mkdir(parents=True)
        (replica.work / "veil.yaml").write_text(yaml.safe_dump(replica_config(replica, **config)))
        env = {**os.environ, **secrets, "PYTHONPATH": str(tree)}
        with replica.log.open("wb") as log:
            replica.proc = subprocess.Popen(
                [sys.executable, "-m", "veil", "serve", "--config", "veil.yaml", "--http", f"127.0.0.1:{replica.port}"],
                cwd=replica.work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        replicas.append(replica)
    deadline = time.monotonic() + timeout_s
    waiting = list(replicas)
    try:
        while waiting:
            for replica in list(waiting):
                assert replica.proc is not None
                if "serving MCP on" in replica.log.read_text(errors="replace") and listening(replica.port):
                    waiting.remove(replica)
                elif replica.proc.poll() is not None:
                    raise RuntimeError(f"{replica.name} exited: {replica.log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{[r.name for r in waiting]} did not start within {timeout_s} s")
            time.sleep(0.1)
    except BaseException:
        stop(replicas)
        raise
    return replicas


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def stop(replicas: list[Replica]) -> None:
    for replica in replicas:
        if replica.proc is not None and replica.proc.poll() is None:
            replica.proc.terminate()
    for replica in replicas:
        if replica.proc is None:
            continue
        try:
            replica.proc.wait(30)
        except subprocess.TimeoutExpired:
            replica.proc.kill()
            replica.proc.wait()


def haproxy_config(lb_port: int, replicas: list[Replica]) -> str:
    """The shipped config with its ``bind`` line and ``server`` lines pointed at these processes;
    every other directive is used as shipped."""
    text = HAPROXY_CFG.read_text()
    text, binds = re.subn(r"(?m)^(\s*bind\s+)\S+", rf"\g<1>127.0.0.1:{lb_port}", text)
    assert binds == 1, "the shipped haproxy.cfg should have one bind line"
    lines = [line for line in text.splitlines() if not re.match(r"\s*server\s", line)]
    indent = "    "
    servers = [f"{indent}server {r.name} 127.0.0.1:{r.port}" for r in replicas]
    return "\n".join(lines + servers) + "\n"


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise RuntimeError("haproxy is not installed: apt-get install haproxy (.ci/run installs it)")
    return found


@contextmanager
def haproxy(work: Path, replicas: list[Replica], *, timeout_s: float = 30.0) -> Iterator[str]:
    """Run HAProxy in the foreground in front of ``replicas``; yields the gateway URL once every
    replica has answered through it (HAProxy's health check marked it up)."""
    port = free_port()
    cfg = work / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, replicas))
    with (work / "haproxy.log").open("wb") as log:
        proc = subprocess.Popen([haproxy_binary(), "-db", "-f", str(cfg)], stdout=log, stderr=log)
    try:
        wait_until_routed(f"http://127.0.0.1:{port}", {r.name for r in replicas}, timeout_s, proc)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until_routed(
    base: str, names: set[str], timeout_s: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``/readyz`` through the balancer until each of ``names`` has answered 200."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5, trust_env=False) as http:
        while seen != names:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the balancer routed to {sorted(seen)} only, not {sorted(names)}, in {timeout_s} s")
            try:
                response = http.get(f"{base}/readyz")
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if response.status_code == 200 and response.headers.get(REPLICA_HEADER):
                seen.add(response.headers[REPLICA_HEADER])
            else:
                time.sleep(0.1)


@dataclass
class Agent:
    """A real MCP client (the SDK's streamable HTTP transport) and the replicas that answered it,
    read from the balancer's ``X-Veil-Replica`` response header."""

    client: Client
    replicas: list[str] = field(default_factory=list)

    @property
    def replica(self) -> str | None:
        return self.replicas[-1] if self.replicas else None


@asynccontextmanager
async def agent(url: str, key: str | None, *, mode: str = "legacy", terminate: bool = True) -> Any:
    agent = Agent(client=None)  # type: ignore[arg-type]

    async def seen(response: httpx2.Response) -> None:
        name = response.headers.get(REPLICA_HEADER)
        if name:
            agent.replicas.append(name)

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = httpx2.Timeout(30, read=120)
    async with httpx2.AsyncClient(
        headers=headers, timeout=timeout, trust_env=False, event_hooks={"response": [seen]}
    ) as http:
        transport = streamable_http_client(url, http_client=http, terminate_on_close=terminate)
        async with Client(transport, mode=mode, read_timeout_seconds=120) as client:  # type: ignore[arg-type]
            agent.client = client
            yield agent


def audit_count(database_url: str, *, kind: str | None = None, tool: str | None = None) -> int:
    """Audit events of ``kind`` and/or ``tool`` in the trail of the database the replicas share."""
    engine = db.create_engine(database_url)
    try:
        with engine.connect() as conn:
            query = sa.text(
                "SELECT count(*) FROM audit_events"
                " WHERE (CAST(:kind AS text) IS NULL OR kind = :kind) AND (CAST(:tool AS text) IS NULL OR tool = :tool)"
            )
            return conn.execute(query, {"kind": kind, "tool": tool}).scalar_one()
    finally:
        engine.dispose()
