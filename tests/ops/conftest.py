"""A real ``veil serve --http`` subprocess in front of the demo upstreams, for the operations tests.

The gateway runs as an operator would run it (``python -m veil -vv serve --config ... --http``),
its stderr captured to a file, so log lines, /metrics, the probes and exported spans are exactly
what a deployment gets.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CRM = {"CRM_RECORDS": "20", "CRM_SEED": "11"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    base: str  # http://127.0.0.1:PORT
    log_path: Path
    data_dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def mcp(self) -> str:
        return f"{self.base}/mcp"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # the operator's Ctrl-C: a graceful stop
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def demo_config(data_dir: Path, database_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": {
            "crm": {"command": sys.executable, "args": [str(EXAMPLES / "crm_server.py")], "env": CRM},
            "mailer": {"command": sys.executable, "args": [str(EXAMPLES / "mailer_server.py")]},
            "tickets": {"command": sys.executable, "args": [str(EXAMPLES / "tickets_server.py")]},
        },
        "database_url": database_url,
        "policy": str(ROOT / "policies" / "crm-gateway.yaml"),
        "data_dir": str(data_dir),
        "expose": "direct",
        "auth": {"required": False},
        "principal": {"name": "ops-test", "roles": ["support"]},
        "limits": {"ner_workers": 1},
        **extra,
    }


@contextmanager
def serve(
    tmp: Path, config: dict[str, Any], *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Iterator[Served]:
    """Start ``veil serve --http`` with ``config`` and wait for /healthz; stop it (SIGINT) after."""
    tmp.mkdir(parents=True, exist_ok=True)
    config_path = tmp / "veil.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = tmp / "veil.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    command = [sys.executable, "-m", "veil", "-vv", *args, "serve", "--config", str(config_path)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*command, "--http", f"127.0.0.1:{port}"],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    served = Served(base, log_path, Path(config["data_dir"]), proc)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"veil serve exited ({proc.returncode}):\n{served.log()[-3000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"veil serve did not answer:\n{served.log()[-3000:]}")
            time.sleep(0.1)  # polling for start-up, not a synchronisation sleep
        yield served
    finally:
        served.stop()


@dataclass
class Collector:
    """A loopback OTLP/HTTP receiver: keeps every export request's body."""

    url: str
    bodies: list[bytes] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def otlp_collector() -> Iterator[Collector]:
    bodies: list[bytes] = []
    arrived = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            bodies.append(self.rfile.read(length))
            arrived.set()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Collector(f"http://127.0.0.1:{server.server_address[1]}", bodies, arrived)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sandbox_data_dir() -> Iterator[Path | None]:
    """A data directory the sandbox user can reach (pytest's tmp_path sits under a 0700 folder);
    None without root, where the sandbox cannot start jails as the 'veil-sandbox' user."""
    if os.geteuid() != 0:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="veil-ops-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        mounts = Path("/proc/mounts").read_text()
        assert f" {path}/" not in mounts, f"veil serve left sandbox filesystems mounted under {path}"
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ops_database(make_database: Callable[[], str]) -> str:
    return make_database()
