"""Start the demo upstreams (``examples/*_server.py``) as real subprocesses, for any test suite.

Import it as ``from examples.upstreams import crm_stdio_params, start_http_server`` (``tests/`` is
on ``sys.path`` during a pytest session, and ``tests/examples/__init__.py`` also makes the demo
modules themselves importable as ``examples.crm_data`` / ``examples.crm_server``).

* ``crm_stdio_params(env=...)`` (and ``mailer_…``/``tickets_…``): a ``StdioServerParameters`` for
  ``mcp.Client(params)`` or ``stdio_client(params)``; the same ``command``/``args``/``env`` go into a
  Veil config's ``upstreams`` entry (``stdio_upstream_config``).
* ``start_http_server(script, env)``: context manager yielding ``(url, process)`` for a server
  listening on a free loopback port at ``/mcp``; waits (bounded, short polling) until it answers
  HTTP and terminates it at exit.

Why subprocesses and not in-process servers: the gateway's upstream pool is exercised for real
(process start, stdio framing, HTTP), exactly as in production.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from mcp.client.stdio import StdioServerParameters

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "examples"
CRM_SERVER = EXAMPLES_DIR / "crm_server.py"
MAILER_SERVER = EXAMPLES_DIR / "mailer_server.py"
TICKETS_SERVER = EXAMPLES_DIR / "tickets_server.py"
PYTHON = sys.executable  # the venv's interpreter: it has the mcp package

__all__ = [
    "CRM_SERVER",
    "EXAMPLES_DIR",
    "MAILER_SERVER",
    "PYTHON",
    "TICKETS_SERVER",
    "crm_stdio_params",
    "mailer_stdio_params",
    "server_env",
    "start_http_server",
    "stdio_params",
    "stdio_upstream_config",
    "tickets_stdio_params",
]


def _script(script: str | os.PathLike[str]) -> Path:
    """``"crm_server.py"``, ``"crm"`` or a path -> the script's absolute path."""
    path = Path(script)
    if path.is_absolute():
        return path
    for candidate in (EXAMPLES_DIR / path, EXAMPLES_DIR / f"{path}_server.py", path.resolve()):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"demo server script {str(script)!r} not found in {EXAMPLES_DIR}")


def server_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a demo server runs with: ours (PATH, HOME, …) plus ``env`` on top.

    The full environment is passed on purpose: ``stdio_client`` otherwise keeps only a few safe
    variables, and tests set ``CRM_CALL_LOG`` and friends through ``env``.
    """
    merged = dict(os.environ)
    merged.pop("PYTHONPATH", None)  # the scripts find their siblings themselves
    merged["PYTHONUNBUFFERED"] = "1"
    merged.update(env or {})
    return merged


def stdio_params(script: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> StdioServerParameters:
    """How to spawn a demo server over stdio (``script``: "crm", "crm_server.py" or a path)."""
    return StdioServerParameters(
        command=PYTHON, args=[str(_script(script))], env=server_env(env), cwd=str(EXAMPLES_DIR)
    )


def crm_stdio_params(env: Mapping[str, str] | None = None) -> StdioServerParameters:
    """The crm server over stdio; ``env`` may set CRM_RECORDS, CRM_SEED, CRM_CALL_LOG."""
    return stdio_params(CRM_SERVER, env)


def mailer_stdio_params(env: Mapping[str, str] | None = None) -> StdioServerParameters:
    """The mailer server over stdio; ``env`` may set MAILER_OUTBOX."""
    return stdio_params(MAILER_SERVER, env)


def tickets_stdio_params(env: Mapping[str, str] | None = None) -> StdioServerParameters:
    """The tickets server over stdio; ``env`` may set TICKETS_LOG, CRM_RECORDS, CRM_SEED."""
    return stdio_params(TICKETS_SERVER, env)


def stdio_upstream_config(script: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An ``upstreams.NAME`` entry for a Veil config dict that spawns this demo server.

    Only ``env`` (not our whole environment) goes into the entry: Veil's stdio transport adds the
    safe defaults (PATH, HOME) itself.
    """
    return {"command": PYTHON, "args": [str(_script(script))], "env": dict(env or {}), "cwd": str(EXAMPLES_DIR)}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers_http(url: str) -> bool:
    """True once anything answers HTTP at ``url`` (a bare GET on /mcp gets a 4xx: still alive)."""
    try:
        httpx.get(url, timeout=0.5)
    except httpx.TransportError:
        return False
    return True


@contextmanager
def start_http_server(
    script: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    startup_timeout_s: float = 30.0,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run a demo server with ``--http 127.0.0.1:<free port>``; yield ``(url, process)``.

    ``url`` ends in ``/mcp``. Waits until the server answers HTTP (polling every 50 ms, at most
    ``startup_timeout_s``); if the process dies first (e.g. the port was taken in the meantime) it
    is retried on another port, twice. The server's stderr goes to a temporary file that is
    quoted in the error when startup fails. At exit the process is terminated (then killed).
    """
    path = _script(script)
    last_error = ""
    for _attempt in range(3):
        port = _free_port()
        url = f"http://127.0.0.1:{port}/mcp"
        with tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(
                [PYTHON, str(path), "--http", f"127.0.0.1:{port}"],
                env=server_env(env),
                cwd=str(EXAMPLES_DIR),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            try:
                deadline = time.monotonic() + startup_timeout_s
                while process.poll() is None and time.monotonic() < deadline:
                    if _answers_http(url):
                        break
                    time.sleep(0.05)  # polling interval, not a synchronisation sleep
                else:
                    stderr.seek(0)
                    tail = stderr.read().decode(errors="replace")[-2000:]
                    status = "exited" if process.poll() is not None else "did not answer in time"
                    last_error = f"{path.name} on port {port} {status}: {tail}"
                    continue
                yield url, process
                return
            finally:
                _stop(process)
    raise RuntimeError(f"could not start demo server over HTTP: {last_error}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
