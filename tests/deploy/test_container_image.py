"""The container image, built and run for real: ``deploy/container/build-local.sh`` builds the
Containerfile with buildah (on a stand-in Debian bookworm base when no registry is reachable), and
podman runs it against the PostgreSQL on 127.0.0.1:5432 with host networking:

* ``veil db upgrade`` migrates an empty scratch database, as the non-root account (uid 10001);
* ``veil serve`` (the image's own ENTRYPOINT and CMD, privileged for code mode) starts; /healthz
  and /readyz answer 200 and the image's HEALTHCHECK passes (``podman healthcheck run``);
* a real MCP client with an API key made by ``veil keys create`` in the image calls
  ``execute_code``: the code runs as ``veil-sandbox`` in a firejail sandbox that ``firejail
  --list`` inside the container shows.

Opt-in (VEIL_CONTAINER_BUILD=1): a cold build takes about ten minutes (debootstrap, every wheel)
and it needs root, buildah, podman, runc and debootstrap. The image's properties are also checked
statically, on every run, by tests/deploy/test_containerfile.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from deploy.loopback import agent, listening
from veil import db

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "deploy" / "container" / "build-local.sh"
IMAGE = "localhost/veil:0.1.0"
PORT = 8080  # the image's CMD and HEALTHCHECK port; with host networking it is the host's

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("VEIL_CONTAINER_BUILD") != "1",
        reason="builds the image with deploy/container/build-local.sh and runs it with podman "
        "(root, buildah, podman, runc, debootstrap; ~10 min cold): set VEIL_CONTAINER_BUILD=1 to run",
    ),
    pytest.mark.anyio,
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def podman_run(*args: str) -> list[str]:
    """``podman run`` as this host needs it (docs/deployment.md#building-without-a-registry):
    runc, since Debian's crun refuses a host with cgroup v1 and a cgroup v2 hierarchy that holds
    any controller (hybrid mode); rlimits no higher than this process's own hard limits, which podman
    would otherwise raise (refused without CAP_SYS_RESOURCE); host networking, to reach PostgreSQL
    on loopback."""
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return [
        "podman",
        "--runtime",
        os.environ.get("VEIL_CONTAINER_RUNTIME", "runc"),
        "run",
        "--network",
        "host",
        "--ulimit",
        f"nofile={min(nofile, 65536)}:{min(nofile, 65536)}",
        "--ulimit",
        "nproc=4096:4096",
        *args,
    ]


def run(cmd: list[str], *, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(cmd[:12])}... exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def image() -> str:
    missing = [tool for tool in ("buildah", "podman", "debootstrap", "runc") if shutil.which(tool) is None]
    assert not missing, f"missing {missing}: apt-get install -y buildah podman runc debootstrap"
    run(["bash", str(BUILD)], timeout=3600, env={**os.environ, "VEIL_IMAGE": IMAGE})
    return IMAGE


@pytest.fixture
def scratch_database(server_url: str) -> Iterator[str]:
    """An empty database (no migrations: the image's `veil db upgrade` makes the schema)."""
    admin = sa.create_engine(db.normalise_url(server_url), isolation_level="AUTOCOMMIT")
    name = f"veil_container_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(db.normalise_url(server_url)).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def secrets_env(database_url: str) -> list[str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signing = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    values = {
        "VEIL_DATABASE_URL": database_url,
        "VEIL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "VEIL_AUDIT_SIGNING_KEY": base64.b64encode(signing).decode(),
    }
    return [arg for name, value in values.items() for arg in ("-e", f"{name}={value}")]


@pytest.mark.req("deploy:container")
async def test_image_migrates_serves_and_runs_code_in_firejail(image: str, scratch_database: str) -> None:
    assert not listening(PORT), f"port {PORT} is taken on this host: the image serves there (host networking)"
    env = secrets_env(scratch_database)

    # Migrations and keys as the non-root account, as docs/deployment.md says they run.
    run(podman_run("--rm", "--user", "10001", *env, image, "db", "upgrade"))
    engine = sa.create_engine(db.normalise_url(scratch_database))
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert {"audit_events", "vault_entries"} <= tables, tables
    created = run(podman_run("--rm", "--user", "10001", *env, image, "keys", "create", "--principal", "smoke"))
    key = next(word for word in created.split() if word.startswith("veil_"))

    name = f"veil-smoke-{secrets.token_hex(4)}"
    run(podman_run("-d", "--name", name, "--privileged", *env, image))  # the image's ENTRYPOINT and CMD
    try:
        deadline = time.monotonic() + 240
        while not listening(PORT):
            state = run(["podman", "inspect", "--format", "{{.State.Status}}", name]).strip()
            assert state == "running", f"the container stopped ({state}):\n{podman_logs(name)}"
            assert time.monotonic() < deadline, f"veil serve did not listen on :{PORT} in 240 s:\n{podman_logs(name)}"
            time.sleep(1)
        for path in ("/healthz", "/readyz"):
            response = httpx.get(f"http://127.0.0.1:{PORT}{path}", timeout=10, trust_env=False)
            assert response.status_code == 200, (path, response.status_code, response.text)
        run(["podman", "healthcheck", "run", name])  # the image's HEALTHCHECK, as the runtime runs it

        async with agent(f"http://127.0.0.1:{PORT}/mcp", key) as client:
            code = "import os, pwd\nprint(pwd.getpwuid(os.getuid()).pw_name, os.getuid() != 0)"
            result = await client.client.call_tool("execute_code", {"code": code})
            text = json.dumps(result.structured_content) + "".join(getattr(c, "text", "") for c in result.content)
            assert "veil-sandbox True" in text, text
            listed = run(["podman", "exec", name, "firejail", "--list"])
            # the sandbox's own cgroups, under the container's group as the container sees it
            groups = run(["podman", "exec", name, "sh", "-c", "ls -d /sys/fs/cgroup/*/veil-sandboxes.*/sb-*"])
        assert "veil-sandbox" in listed, f"firejail --list inside the container shows no sandbox:\n{listed}"
        assert {"pids", "memory"} <= {line.split("/")[4] for line in groups.split()}, groups
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "10", name], capture_output=True, timeout=60)
        remove_runtime_groups()


def remove_runtime_groups() -> None:
    """podman/runc leave empty ``libpod_parent`` groups in the host's hierarchies after the last
    container: remove them (rmdir refuses a group that is in use, so nothing live is touched)."""
    for parent in Path("/sys/fs/cgroup").glob("*/libpod_parent"):
        for group in [*parent.glob("*/"), parent]:
            if group.is_dir():
                with contextlib.suppress(OSError):
                    group.rmdir()


def podman_logs(name: str) -> str:
    done = subprocess.run(["podman", "logs", name], capture_output=True, text=True, timeout=30)
    return (done.stdout + done.stderr)[-3000:]
