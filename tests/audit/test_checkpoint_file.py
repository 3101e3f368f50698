"""Checkpoints outside the database: the writer appends them to the file, verify trusts the file
only as far as its signatures go, and a damaged file is named with its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from veil.audit import AuditWriter
from veil.audit.checkpoints import load_signing_key, read_file
from veil.audit.verify import verify
from veil.errors import VeilError

from .conftest import tool_event


@pytest.mark.req("audit:cut-tail")
def test_periodic_checkpoints_are_appended_to_the_file_and_verified(fresh_engine: sa.Engine, tmp_path: Path) -> None:
    key = load_signing_key(tmp_path)
    path = tmp_path / "audit-checkpoints.jsonl"
    with AuditWriter(fresh_engine, signing_key=key, checkpoint_every_events=4, checkpoint_file=path) as writer:
        for i in range(9):
            writer.record_sync(tool_event(i))
    lines = read_file(path)
    assert len(lines) >= 2 and [cp.seq for cp in lines] == sorted(cp.seq for cp in lines)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with fresh_engine.connect() as conn:
        result = verify(conn, public_key=key.public_key(), checkpoint_file=path)
    assert result.ok, result.problem
    from_file = [c for c in result.checkpoints if c.source == str(path)]
    assert len(from_file) == len(lines) and all(c.ok for c in from_file)

    # A line whose signature was altered is caught (the file is not trusted beyond its signatures).
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    raw[0]["signature"] = raw[1]["signature"]
    path.write_text("".join(json.dumps(r) + "\n" for r in raw))
    with fresh_engine.connect() as conn:
        forged = verify(conn, public_key=key.public_key(), checkpoint_file=path)
    assert not forged.ok
    assert any(not c.ok and "signature does not verify" in c.note for c in forged.checkpoints)

    path.write_text(path.read_text() + "not json\n")
    with (
        pytest.raises(VeilError, match=r"audit-checkpoints.jsonl:\d+: not a checkpoint line"),
        fresh_engine.connect() as conn,
    ):
        verify(conn, public_key=key.public_key(), checkpoint_file=path)
