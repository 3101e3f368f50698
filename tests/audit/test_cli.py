"""``veil audit``: verify, checkpoint, export-public-key and retention from the command line."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from veil.audit import AuditWriter
from veil.cli import main

from .conftest import tamper, tool_event


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.req("audit:tamper-evident")
def test_checkpoint_export_and_verify(fresh_url: str, fresh_engine: sa.Engine, tmp_path: Path) -> None:
    with AuditWriter(fresh_engine) as writer:
        for i in range(4):
            writer.record_sync(tool_event(i))
    data = str(tmp_path / "data")
    code, out, _ = run("audit", "checkpoint", "--database-url", fresh_url, "--data-dir", data)
    assert code == 0 and "checkpoint #1: seq 4" in out
    pem = tmp_path / "audit.pub"
    code, _, _ = run("audit", "export-public-key", "--data-dir", data, "--out", str(pem))
    assert code == 0 and pem.read_text().startswith("-----BEGIN PUBLIC KEY-----")

    code, out, _ = run("audit", "verify", "--database-url", fresh_url, "--public-key", str(pem))
    assert code == 0, out
    assert "seq 1..5, 5 events verified" in out and "checkpoint #1 at seq 4" in out and "OK" in out

    tamper(fresh_engine, "UPDATE audit_events SET tool = 'other' WHERE seq = 2")
    code, out, err = run("audit", "verify", "--database-url", fresh_url, "--public-key", str(pem))
    assert code == 1
    assert "BROKEN: seq 2 (event " in err and "FAILED" in err


def test_verify_a_period_and_an_empty_trail(fresh_url: str) -> None:
    code, out, _ = run("audit", "verify", "--database-url", fresh_url, "--from", "2020-01-01", "--to", "2020-01-31")
    assert code == 0 and "no audit events in the period" in out
    code, _, err = run("audit", "verify", "--database-url", fresh_url, "--from", "yesterday")
    assert code == 2 and "not a date" in err


@pytest.mark.req("audit:retention")
def test_retention_command(fresh_url: str, fresh_engine: sa.Engine) -> None:
    with AuditWriter(fresh_engine) as writer:
        writer.record_sync(tool_event())
    code, out, _ = run("audit", "retention", "--database-url", fresh_url, "--months", "2")
    assert code == 0 and "nothing to drop" in out
    code, _, err = run("audit", "retention", "--database-url", fresh_url, "--months", "0")
    assert code == 2 and "--months" in err


def test_verify_while_the_gateway_appends(fresh_url: str, fresh_engine: sa.Engine, tmp_path: Path) -> None:
    """A live trail is not a cut one: events appended while verify walks must not look like rows
    missing behind the chain head (verify reads the events and the head in one snapshot)."""
    stop = threading.Event()

    def append_until_stopped() -> None:
        with AuditWriter(fresh_engine) as writer:
            i = 0
            while not stop.is_set():
                writer.record_sync(tool_event(i))
                i += 1

    with AuditWriter(fresh_engine) as writer:
        for i in range(200):
            writer.record_sync(tool_event(i))
    appender = threading.Thread(target=append_until_stopped)
    appender.start()
    try:
        outcomes = [run("audit", "verify", "--database-url", fresh_url, "--data-dir", str(tmp_path)) for _ in range(15)]
    finally:
        stop.set()
        appender.join()
    for code, out, err in outcomes:
        assert code == 0, out + err
    counts = [int(out.split(", ")[1].split()[0]) for _, out, _ in outcomes]
    assert counts[-1] > counts[0], "the trail did not grow while verify ran; the test proved nothing"
