"""The adversarial corpus runs against one real gateway process: ``veil -vv serve --http`` in a
subprocess (its stderr, at debug level, is the captured log), in front of real upstream
subprocesses (the demo crm/mailer/tickets, the hostile test server, and from npm
server-everything, server-filesystem and dbhub on a Postgres database seeded here), with the
real firejail sandbox, real Presidio and a real Postgres for the vault and the audit table.

The policy is the shipped ``policies/default.yaml`` (so fixes to it are tested as shipped) plus
flows that let CRM values reach the echoing third-party tools, as a policy author would allow
for a database lookup, a scratch file or a test tool.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import npm
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from examples.crm_data import generate_customers
from veil import db

ROOT = Path(__file__).resolve().parents[2]
CRM_RECORDS = 120
CUSTOMERS = generate_customers(CRM_RECORDS, 7)
BY_ID = {c["id"]: c for c in CUSTOMERS}

EXTRA_FLOWS = [
    {
        "id": "crm-values-to-echoing-tools",
        "description": "corpus: the third-party echo, file and SQL tools may receive CRM values",
        "from": ["crm"],
        "to": ["everything__echo", "fs__write_file", "db__execute_sql"],
        "effect": "allow",
    }
]


@dataclass
class GatewayProcess:
    url: str
    engine: sa.Engine
    log_path: Path
    data_dir: Path
    files_dir: Path

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", errors="replace")

    def audit_seq(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.text("SELECT coalesce(max(seq), 0) FROM audit_events")).scalar_one()

    def audit_since(self, seq: int) -> str:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT row_to_json(a)::text FROM audit_events a WHERE seq > :seq ORDER BY seq"), {"seq": seq}
            ).scalars()
            return "\n".join(rows)

    def sandbox_files(self, case_id: str) -> str:
        """What the sandbox can see on disk: what a case's code wrote with ``dump()``
        (``seen-CASE.txt`` in its workspace) and the generated ``servers/`` stub modules."""
        root = self.data_dir / "workspaces"
        paths = [*root.glob(f"*/seen-{case_id}.txt"), *root.glob("*/servers/**/*.py")]
        return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(paths))


def _seed_customers_database(server_url: str) -> str:
    """A Postgres database holding the demo CRM's customers, for dbhub (not a Veil database)."""
    name = f"veil_sec_crm_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(db.normalise_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(db.normalise_url(server_url)).set(database=name)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE customers (id text PRIMARY KEY, first_name text, last_name text, full_name text, "
                "email text, phone text, street text, city text, zip text, ssn text, card_number text, "
                "date_of_birth text, notes jsonb)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO customers VALUES (:id, :first_name, :last_name, :full_name, :email, :phone, :street, "
                ":city, :zip, :ssn, :card_number, :date_of_birth, :notes)"
            ),
            [
                {
                    **{k: c[k] for k in ("id", "first_name", "last_name", "full_name", "email", "phone")},
                    **{k: c[k] for k in ("ssn", "card_number", "date_of_birth")},
                    "street": c["address"]["street"],
                    "city": c["address"]["city"],
                    "zip": c["address"]["zip"],
                    "notes": json.dumps(c["notes"]),
                }
                for c in CUSTOMERS
            ],
        )
    engine.dispose()
    return name


def _libpq_dsn(server_url: str, database: str) -> str:
    u = make_url(server_url)
    auth = u.username or "postgres"
    if u.password:
        auth += f":{u.password}"
    return f"postgres://{auth}@{u.host or '127.0.0.1'}:{u.port or 5432}/{database}?sslmode=disable"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def corpus_gateway(server_url: str, tcp_server_url: str, make_database: Callable[[], str]) -> Iterator[GatewayProcess]:
    """One ``veil serve --http`` process for the whole corpus (each case opens its own session)."""
    data_dir = Path(tempfile.mkdtemp(prefix="veil-sec-"))
    data_dir.chmod(0o711)  # the sandbox user must reach its workspace
    files_dir = data_dir / "files"
    files_dir.mkdir()
    crm_db = _seed_customers_database(server_url)

    policy = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())
    policy["metadata"]["name"] = "security-corpus"
    policy["flows"] = list(policy.get("flows") or []) + EXTRA_FLOWS
    policy_path = data_dir / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))

    demo = {"CRM_RECORDS": str(CRM_RECORDS), "CRM_SEED": "7"}
    examples = ROOT / "examples"
    config = {
        "upstreams": {
            "crm": {"command": sys.executable, "args": [str(examples / "crm_server.py")], "env": demo},
            "mailer": {"command": sys.executable, "args": [str(examples / "mailer_server.py")]},
            "tickets": {"command": sys.executable, "args": [str(examples / "tickets_server.py")], "env": demo},
            "hostile": {
                "command": sys.executable,
                "args": [str(Path(__file__).with_name("hostile_server.py"))],
                "env": demo,
            },
            "everything": {
                "command": str(npm.bin_path("@modelcontextprotocol/server-everything", "mcp-server-everything")),
                "args": ["stdio"],
            },
            "fs": {
                "command": str(npm.bin_path("@modelcontextprotocol/server-filesystem", "mcp-server-filesystem")),
                "args": [str(files_dir)],
            },
            "db": {
                "command": str(npm.bin_path("@bytebase/dbhub", "dbhub")),
                "args": ["--transport", "stdio", "--dsn", _libpq_dsn(tcp_server_url, crm_db)],
            },
        },
        "database_url": make_database(),
        "policy": str(policy_path),
        "data_dir": str(data_dir),
        "expose": "both",
        "auth": {"required": False},
        "principal": {"name": "mallory", "roles": ["support"]},
    }
    config_path = data_dir / "veil.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = data_dir / "veil.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "veil", "-vv", "serve", "--config", str(config_path), "--http", f"127.0.0.1:{port}"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"veil serve exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"veil serve did not answer:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(0.1)  # polling for start-up, not a synchronisation sleep
        engine = db.create_engine(str(config["database_url"]))
        yield GatewayProcess(url, engine, log_path, data_dir, files_dir)
        engine.dispose()
    finally:
        # SIGINT: the graceful stop an operator's Ctrl-C gives (sessions, sandboxes, pool closed).
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        admin = sa.create_engine(db.normalise_url(server_url), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{crm_db}" WITH (FORCE)'))
        admin.dispose()
        mounts = Path("/proc/mounts").read_text()
        assert f" {data_dir}/" not in mounts, f"veil serve left sandbox filesystems mounted under {data_dir}"
        shutil.rmtree(data_dir, ignore_errors=True)


def customer(cid: str) -> dict[str, Any]:
    return BY_ID[cid]
