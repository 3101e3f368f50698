"""Report generation over a month of one million audit events, per format; and chain verification speed.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/report_million.py [N]

1. Creates a scratch database on the server in DATABASE_URL (dropped at the end) and inserts N
   (default 1,000,000) synthetic events for October 2026 with one INSERT ... SELECT
   generate_series. These rows do NOT form a valid hash chain (prev_hash/hash are placeholders):
   report timing does not depend on it, so the reports run with --no-verify.
2. Times `veil report` for each format (json, csv, html, pdf), the Art. 30 export and the access log,
   each as a fresh `veil` process (wall time, as a user sees it).
3. Separately appends a valid chain of V (default 100,000) events through the real append path and
   times `veil audit verify` over it, to give the verification rate the integrity section costs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from veil import db
from veil.audit.chain import append, prepare
from veil.audit.events import TOOL_CALL, AuditEvent, Untokenised
from veil.audit.partitions import Month, ensure_partition

VEIL = str(Path(sys.executable).with_name("veil"))

SYNTHETIC = """
INSERT INTO audit_events (seq, ts, occurred_at, id, kind, outcome, principal, roles, tenant, session_id, scope,
                          upstream, tool, args_digest, entities, tokens, untokenised, decision, rule, duration_ms,
                          policy_version, detail, prev_hash, hash)
SELECT g, ts, ts, gen_random_uuid(),
       CASE WHEN g % 10 = 0 THEN 'code.execute' WHEN g % 97 = 0 THEN 'auth.failed'
            WHEN g % 50 = 1 THEN 'session.open' ELSE 'tool.call' END,
       CASE WHEN g % 23 = 0 THEN 'denied' WHEN g % 31 = 0 THEN 'error'
            WHEN g % 70 = 0 THEN 'timeout' WHEN g % 90 = 0 THEN 'memory' ELSE 'ok' END,
       'user' || (g % 50), '{support}', NULL, 's' || (g / 20), 'session:s' || (g / 20),
       (ARRAY['crm', 'mailer', 'tickets', 'warehouse'])[1 + g % 4],
       (ARRAY['find_customers', 'send_email', 'create_ticket', 'query'])[1 + g % 4],
       'sha256:' || md5(g::text),
       jsonb_build_object('EMAIL_ADDRESS', g % 3, 'PERSON', g % 5, 'PHONE_NUMBER', g % 2),
       ARRAY['[EMAIL_ADDRESS_' || (g % 1000) || ']', '[PERSON_' || (g % 777) || ']'],
       CASE WHEN g % 7 = 0 THEN jsonb_build_array(jsonb_build_object(
            'token', '[EMAIL_ADDRESS_' || (g % 1000) || ']', 'entity_type', 'EMAIL_ADDRESS',
            'destination', 'mailer__send_email:to', 'rule', 'flows[0]\\:crm-to-mailer')) ELSE '[]' END,
       CASE WHEN g % 23 = 0 THEN 'deny' ELSE 'allow' END,
       CASE WHEN g % 23 = 0 THEN 'access[' || (g % 3) || ']' ELSE 'flows[0]' END,
       10.0 + g % 100, 'v1', '{}'::jsonb, '\\x00'::bytea, '\\x00'::bytea
FROM generate_series(1, :n) AS g,
     LATERAL (SELECT timestamptz '2026-10-01T00:00:00Z' + (g * (interval '30 days' / :n)) AS ts) t
"""


def seed_month(engine: sa.Engine, n: int) -> None:
    """``n`` synthetic events over October 2026 (one INSERT ... SELECT), then ANALYZE."""
    with engine.begin() as conn:
        ensure_partition(conn, Month(2026, 10))
        ensure_partition(conn, Month(2026, 11))
        conn.execute(sa.text(SYNTHETIC), {"n": n})
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE audit_events"))


def scratch(server: str) -> tuple[str, str]:
    name = f"veil_bench_{uuid.uuid4().hex[:8]}"
    with sa.create_engine(db.normalise_url(server), isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(db.normalise_url(server)).set(database=name).render_as_string(hide_password=False)
    db.upgrade(url)
    return name, url


def timed(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([VEIL, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main(server: str, n: int, v: int) -> None:
    names = []
    try:
        name, url = scratch(server)
        names.append(name)
        engine = db.create_engine(url)
        t = time.perf_counter()
        seed_month(engine, n)
        print(f"inserted {n:,} synthetic events in {time.perf_counter() - t:.1f}s (INSERT ... SELECT generate_series)")
        out = Path(f"/tmp/veil-report-bench-{os.getpid()}")
        out.mkdir(exist_ok=True)
        period = ["--database-url", url, "--from", "2026-10-01", "--to", "2026-10-31"]
        rows = []
        for label, args in [
            ("full report, json", ["report", *period, "--no-verify", "--out", str(out / "r.json")]),
            ("full report, csv", ["report", *period, "--no-verify", "--out", str(out / "r.csv")]),
            ("full report, html", ["report", *period, "--no-verify", "--out", str(out / "r.html")]),
            ("full report, pdf", ["report", *period, "--no-verify", "--out", str(out / "r.pdf")]),
            ("Art. 30 (ropa), json", ["report", "--kind", "ropa", *period, "--out", str(out / "ropa.json")]),
            ("access log, csv (all rows)", ["report", "--kind", "access-log", *period, "--out", str(out / "a.csv")]),
        ]:
            rows.append((label, timed(args)))
        engine.dispose()

        name, url = scratch(server)
        names.append(name)
        engine = db.create_engine(url)
        event = prepare(
            AuditEvent(
                kind=TOOL_CALL,
                principal="u",
                scope="session:s",
                upstream="crm",
                tool="t",
                entities={"EMAIL_ADDRESS": 2},
                tokens=["[EMAIL_ADDRESS_1]"],
                duration_ms=1.5,
                untokenised=[Untokenised("[EMAIL_ADDRESS_1]", "EMAIL_ADDRESS", "m__s:to", "f")],
            )
        )
        t = time.perf_counter()
        for _ in range(v // 1000):
            with engine.begin() as conn:
                append(
                    conn, [{**event, "id": uuid.uuid4()} for _ in range(1000)], clock=datetime(2026, 10, 2, tzinfo=UTC)
                )
        append_s = time.perf_counter() - t
        verify_s = timed(["audit", "verify", "--database-url", url])
        engine.dispose()
        shutil.rmtree(out, ignore_errors=True)
        print()
        print(f"| operation ({n:,} events in the month) | wall time s |")
        print("|---|---:|")
        for label, seconds in rows:
            print(f"| {label} | {seconds:.1f} |")
        print()
        print(f"| chain of {v:,} valid events | wall time s | events/s |")
        print("|---|---:|---:|")
        print(f"| append (1,000 per transaction) | {append_s:.1f} | {v / append_s:,.0f} |")
        print(f"| `veil audit verify` (whole chain) | {verify_s:.1f} | {v / verify_s:,.0f} |")
    finally:
        with sa.create_engine(db.normalise_url(server), isolation_level="AUTOCOMMIT").connect() as conn:
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    server = os.environ.get("DATABASE_URL")
    if not server:
        sys.exit("set DATABASE_URL to a PostgreSQL server (scratch databases are created on it)")
    main(
        server, int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000, int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    )
