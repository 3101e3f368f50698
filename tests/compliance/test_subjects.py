"""Data-subject requests end to end: real vault, real tokenizer, real audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from veil import db
from veil.audit import AuditWriter
from veil.audit import events as ev
from veil.audit.events import AuditEvent, Untokenised
from veil.audit.verify import verify
from veil.cli import main
from veil.errors import TokenError
from veil.tokenizer import DetectionSettings, Keyring, Scope, Tokenizer, TokenSettings

EMAIL = "jane.doe@example.com"
PHONE = "+1 415 555 0100"
OTHER = "someone.else@example.org"


@dataclass
class World:
    url: str
    engine: sa.Engine
    data_dir: Path
    tokenizer: Tokenizer
    jane_s1: str
    jane_s2: str


@pytest.fixture(scope="module")
def world(make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    url = make_database()
    engine = db.create_engine(url)
    data_dir = tmp_path_factory.mktemp("veil-data")
    hints = {"email": "EMAIL_ADDRESS", "phone": "PHONE_NUMBER"}
    tokenizer = Tokenizer(engine, Keyring.load(data_dir), DetectionSettings(field_hints=hints), TokenSettings())
    s1, s2, s3 = Scope("session:s1"), Scope("session:s2"), Scope("session:s3")
    r1 = tokenizer.tokenize({"email": EMAIL, "phone": PHONE}, s1, "crm")
    r2 = tokenizer.tokenize({"email": EMAIL}, s2, "crm")
    r3 = tokenizer.tokenize({"email": OTHER}, s3, "crm")  # a different person, maybe the same token text
    jane_s1, phone_s1 = r1.value["email"], r1.value["phone"]
    jane_s2, other_s3 = r2.value["email"], r3.value["email"]

    def call(scope: Scope, **kw: object) -> AuditEvent:
        return AuditEvent(
            kind=ev.TOOL_CALL, principal="agent-alice", session_id=scope.key.split(":")[1], scope=scope.key, **kw
        )  # type: ignore[arg-type]

    with AuditWriter(engine) as writer:
        for event in [
            call(s1, upstream="crm", tool="find_customers", tokens=[jane_s1, phone_s1], entities={"EMAIL_ADDRESS": 1}),
            call(
                s1,
                upstream="mailer",
                tool="send_email",
                untokenised=[Untokenised(jane_s1, "EMAIL_ADDRESS", "mailer__send_email:to", "flows[0]:crm-to-mailer")],
            ),
            call(s2, upstream="crm", tool="get_customer", tokens=[jane_s2]),
            call(s3, upstream="crm", tool="get_customer", tokens=[other_s3]),
            call(s1, upstream="crm", tool="list_segments"),
        ]:
            writer.record_sync(event)
    yield World(url, engine, data_dir, tokenizer, jane_s1, jane_s2)
    engine.dispose()


def cli(world: World, *args: str) -> str:
    result = CliRunner().invoke(
        main, [*args, "--database-url", world.url, "--data-dir", str(world.data_dir)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def audit_text(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return "\n".join(conn.execute(sa.text("SELECT row_to_json(a)::text FROM audit_events a")).scalars())


@pytest.mark.req("compliance:subject-find")
def test_find_lists_entries_and_events_without_other_values(world: World) -> None:
    out = cli(world, "subject", "find", "--email", EMAIL)
    assert f"Subject search for {EMAIL!r}: 2 vault entries, 3 audit event(s)" in out
    assert world.jane_s1 in out and "session:s1" in out and "session:s2" in out
    assert "sent to mailer__send_email:to (rule flows[0]:crm-to-mailer)" in out
    assert "session:s3" not in out.split("Audit events")[1]  # same token text, other person: not matched
    assert PHONE not in out and OTHER not in out
    assert out.count(EMAIL) == 1  # only the officer's own input is echoed

    data = json.loads(cli(world, "subject", "find", "--email", EMAIL, "--json"))
    assert sorted((o["scope"], o["tool"]) for o in data["occurrences"]) == [
        ("session:s1", "find_customers"),
        ("session:s1", "send_email"),
        ("session:s2", "get_customer"),
    ]
    with world.engine.connect() as conn:
        kind = conn.execute(
            sa.text("SELECT kind FROM audit_events WHERE seq = :s"), {"s": data["recorded_as_seq"]}
        ).scalar_one()
    assert kind == ev.SUBJECT_FIND
    assert EMAIL not in audit_text(world.engine)


@pytest.mark.req("compliance:subject-erase")
def test_erase_shreds_entries_keeps_the_trail_and_breaks_the_tokens(world: World) -> None:
    out = cli(world, "subject", "erase", "--email", EMAIL, "--yes")
    assert f"erased {world.jane_s1} in session:s1 (EMAIL_ADDRESS)" in out
    assert f"erased {world.jane_s2} in session:s2 (EMAIL_ADDRESS)" in out

    with world.engine.connect() as conn:
        left = conn.execute(
            sa.text(
                "SELECT count(*) FROM vault_entries WHERE erased_at IS NOT NULL AND ciphertext IS NULL "
                "AND wrapped_key IS NULL AND token = ANY(:t)"
            ),
            {"t": [world.jane_s1, world.jane_s2]},
        ).scalar_one()
        live_phone = conn.execute(
            sa.text("SELECT count(*) FROM vault_entries WHERE entity_type = 'PHONE_NUMBER' AND erased_at IS NULL")
        ).scalar_one()
        erase = conn.execute(sa.text("SELECT tokens, detail FROM audit_events WHERE kind = 'subject.erase'")).one()
        result = verify(conn)
    assert left == 2 and live_phone == 1
    assert sorted(erase.tokens) == sorted({world.jane_s1, world.jane_s2})
    assert erase.detail["erased"] == 2 and erase.detail["audit_events_mentioning"] == 3
    assert result.ok, result.problem
    assert EMAIL not in audit_text(world.engine)

    # Later outbound calls with those tokens fail, through the tokenizer's public API.
    with pytest.raises(TokenError, match="erased"):
        world.tokenizer.untokenize({"to": world.jane_s1}, Scope("session:s1"), lambda ref, path: None)

    again = cli(world, "subject", "erase", "--email", EMAIL, "--yes")
    assert "nothing erased" in again
    found = json.loads(cli(world, "subject", "find", "--email", EMAIL, "--json"))
    assert all(e["erased_at"] for e in found["entries"])


def test_exactly_one_value_and_a_master_key_are_required(world: World, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["subject", "find", "--database-url", world.url, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "exactly one of" in result.output
    result = CliRunner().invoke(
        main, ["subject", "find", "--email", EMAIL, "--database-url", world.url, "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1 and "no master key" in result.output
