"""Veil's database work through a real PgBouncer (Debian's package), as docs/deployment.md says:

* session mode: the vault (transaction-scoped advisory locks, inserts) and the audit writer
  (``SELECT ... FOR UPDATE`` on the chain head, ``SET LOCAL``), from several threads at once,
  work through the pooler;
* transaction mode with a PgBouncer older than 1.21 (Debian 12 ships 1.18): psycopg's automatic
  server-side prepared statements break once a statement has run a few times on a connection
  ("prepared statement ... does not exist / already exists"), now and then in Veil's own vault
  work too. When this test fails because the
  error is gone (a newer PgBouncer with ``max_prepared_statements``, or Veil turning psycopg's
  preparing off), the pooling section of docs/deployment.md needs updating.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from veil import db
from veil.audit import events as ev
from veil.audit.writer import AuditWriter
from veil.tokenizer.keyring import Keyring
from veil.tokenizer.vault import Vault

THREADS = 3
ROUNDS = 25


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None)
    if found is None:
        pytest.fail("pgbouncer is not installed: apt-get install pgbouncer (.ci/run installs it)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def pgbouncer(database_url: str, mode: str) -> Iterator[str]:
    """A PgBouncer in ``mode`` in front of ``database_url``'s server; yields the URL through it."""
    url = make_url(db.normalise_url(database_url))
    work = Path(tempfile.mkdtemp(prefix="veil-pgbouncer-"))
    work.chmod(0o755)  # PgBouncer refuses to run as root: it runs as nobody and must read its files
    port = free_port()
    user = url.username or "postgres"
    (work / "users.txt").write_text(f'"{user}" "{url.password or ""}"\n')
    (work / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={url.host or '127.0.0.1'} port={url.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = {'plain' if url.password else 'trust'}\nauth_file = {work / 'users.txt'}\n"
        # Session mode: each client connection holds a server connection for its life, so the pool
        # must be as large as Veil's; transaction mode shares two among all of them.
        f"pool_mode = {mode}\ndefault_pool_size = {20 if mode == 'session' else 2}\nmax_client_conn = 50\n"
        "query_wait_timeout = 20\n"
        # Hand out the least recently used server connection (the default is the most recent): a
        # client's consecutive transactions then land on different server connections even when
        # nothing else runs, as they do under load with either setting.
        "server_round_robin = 1\n"
    )
    for path in work.iterdir():
        path.chmod(0o644)
    argv = [pgbouncer_binary(), str(work / "pgbouncer.ini")]
    if os.geteuid() == 0:
        argv[1:1] = ["-u", "nobody"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start: {proc.stderr.read().decode()[-500:]}") from None
                time.sleep(0.05)
        yield url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def veil_workload(url: str) -> list[str]:
    """What a replica does on its connections: vault inserts and look-ups and audit appends, from
    several threads; the first line of every database error."""
    engine = db.create_engine(url, pool_size=THREADS)
    vault = Vault(engine, Keyring.from_keys(os.urandom(32)))
    errors: list[str] = []
    try:
        with AuditWriter(engine) as writer:

            def work(n: int) -> None:
                try:
                    for i in range(ROUNDS):
                        scope = f"session:pgbouncer-{n}"
                        (entry,) = vault.assign(scope, [(f"person{n}.{i}@example.com", "EMAIL_ADDRESS")], "crm")
                        assert vault.resolve(scope, [entry.token])
                        writer.record_sync(ev.AuditEvent(kind=ev.TOOL_CALL, principal=f"p{n}", tool="ping"))
                except sa.exc.DBAPIError as exc:
                    errors.append(str(exc.orig).splitlines()[0])
                except Exception as exc:  # the audit writer reports a failed batch as its own error
                    errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

            threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
    except Exception as exc:  # closing the writer after failures
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        engine.dispose()
    return errors


def audit_rows(url: str) -> int:
    engine = db.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM audit_events WHERE tool = 'ping'")).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.req("deploy:pooling")
def test_session_mode_pooling_carries_the_vault_and_the_audit_writer(make_database: Callable[[], str]) -> None:
    database_url = make_database()
    with pgbouncer(database_url, "session") as pooled:
        assert veil_workload(pooled) == []
    assert audit_rows(database_url) == THREADS * ROUNDS


def prepared_statement_error(message: str) -> bool:
    """psycopg's own message, or Veil's wrapped one naming the SQLSTATE (26000: no such prepared
    statement; 42P05: it exists already)."""
    return "prepared statement" in message or "(26000)" in message or "(42P05)" in message


def repeated_statement(url: str) -> list[str]:
    """One statement run over and over on Veil's engine from several threads (as the same query
    runs for every call in a busy gateway): psycopg prepares it server-side after 5 runs."""
    engine = db.create_engine(url, pool_size=THREADS)
    errors: list[str] = []

    def work() -> None:
        try:
            for n in range(ROUNDS):
                with engine.begin() as conn:
                    conn.execute(sa.text("SELECT count(*) + CAST(:n AS int) FROM audit_events"), {"n": n}).scalar()
        except sa.exc.DBAPIError as exc:
            errors.append(str(exc.orig).splitlines()[0])

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    engine.dispose()
    return errors


@pytest.mark.req("deploy:pooling")
def test_transaction_mode_carries_veils_transactions_but_not_prepared_statements_before_pgbouncer_1_21(
    make_database: Callable[[], str],
) -> None:
    version = subprocess.run([pgbouncer_binary(), "--version"], capture_output=True, text=True).stdout
    major_minor = tuple(int(x) for x in version.split()[1].split(".")[:2])
    assert major_minor < (1, 21), f"{version.strip()}: protocol-level prepared statements exist; update the docs"
    database_url = make_database()
    with pgbouncer(database_url, "transaction") as pooled:
        # Nothing Veil's vault and audit writer need outlives a transaction, but Veil's engine
        # leaves psycopg's automatic server-side prepared statements on: the workload fails now
        # and then (the vault's "(26000)" is invalid_sql_statement_name) and only so, and one
        # statement repeated from several threads always does.
        workload_errors = veil_workload(pooled)
        errors = repeated_statement(pooled)
    assert all(prepared_statement_error(e) for e in workload_errors), workload_errors
    assert errors and all(prepared_statement_error(e) for e in errors), errors
