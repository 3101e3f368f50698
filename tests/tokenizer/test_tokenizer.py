"""End to end through the real Tokenizer (Presidio, spaCy, PostgreSQL)."""

from __future__ import annotations

import json
import logging
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from veil.errors import FlowDenied, TokenError
from veil.tokenizer import TOKEN_RE, DetectionSettings, Scope, Tokenizer, TokenSettings

from .conftest import allow_all

CUSTOMER = {
    "id": "C0042",
    "full_name": "Maria Lopez",
    "first_name": "Maria",
    "email": "Maria.Lopez@example.com",
    "phone": "+1 415-555-0132",
    "address": {"street": "88 Pine Street", "city": "Denver", "zip": "80202"},
    "ssn": "219-09-9999",
    "card_number": "4111 1111 1111 1111",
    "date_of_birth": "1981-03-14",
    "segment": "gold",
    "lifetime_value": 1234.5,
}


def dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)


@pytest.mark.req("tokenize:key-hints")
def test_fields_by_key_hint(tokenizer, scope):
    out = tokenizer.tokenize(CUSTOMER, scope, "crm")
    v = out.value
    for key in ("full_name", "first_name", "email", "phone", "ssn", "card_number", "date_of_birth"):
        assert TOKEN_RE.fullmatch(v[key]), key
    assert v["full_name"].startswith("[PERSON_") and v["email"].startswith("[EMAIL_ADDRESS_")
    assert v["address"]["street"].startswith("[STREET_ADDRESS_") and v["address"]["city"].startswith("[LOCATION_")
    assert v["address"]["zip"].startswith("[ZIP_CODE_")
    assert (v["id"], v["segment"], v["lifetime_value"]) == ("C0042", "gold", 1234.5)
    assert out.entities["PERSON"] == 2
    assert set(out.tokens) == {m.group(0) for m in TOKEN_RE.finditer(dumps(v))}
    text = dumps(v)
    for raw in ("Maria", "Lopez", "example.com", "555-0132", "Pine", "Denver", "80202", "9999", "1111", "1981"):
        assert raw not in text


@pytest.mark.req("tokenize:ner")
def test_free_text_ner_and_patterns(tokenizer, scope):
    note = "Spoke with Jonathan Whitfield from Boston; he asked us to email jw@whitfield.example or call 617-555-0199."
    out = tokenizer.tokenize({"notes": note}, scope, "crm").value["notes"]
    for raw in ("Jonathan", "Whitfield", "Boston", "jw@whitfield.example", "617-555-0199"):
        assert raw not in out
    assert out.startswith("Spoke with [PERSON_")


@pytest.mark.req("tokenize:street-address")
def test_street_address_in_text(tokenizer, scope):
    out = tokenizer.tokenize(["Deliver to 77 Mission St Apt 4B by noon."], scope, "crm").value[0]
    assert re.fullmatch(r"Deliver to \[STREET_ADDRESS_\d+\] by noon\.", out)


@pytest.mark.req("tokenize:json-in-text")
def test_json_inside_mcp_text_content(tokenizer, scope):
    result = {"content": [{"type": "text", "text": json.dumps({"customers": [CUSTOMER]})}], "isError": False}
    out = tokenizer.tokenize(result, scope, "crm").value
    inner = json.loads(out["content"][0]["text"])
    assert inner["customers"][0]["email"].startswith("[EMAIL_ADDRESS_")
    assert "Lopez" not in out["content"][0]["text"] and out["isError"] is False


@pytest.mark.req("tokenize:exact-match-guard")
def test_guard_catches_known_name_in_a_note(tokenizer, scope):
    first = tokenizer.tokenize({"full_name": "Xochitl Nakamura-Oyelaran"}, scope, "crm").value["full_name"]
    # lower-case and alone: NER would not tag it, the guard does
    note = "left a message for xochitl nakamura-oyelaran about the renewal"
    out = tokenizer.tokenize({"comment": note}, scope, "tickets").value["comment"]
    assert out == f"left a message for {first} about the renewal"
    # a first name alone after its full name was seen: replaced too (a PERSON token of its own)
    out = tokenizer.tokenize({"comment": "Xochitl asked for a callback."}, scope, "tickets").value["comment"]
    assert re.fullmatch(r"\[PERSON_\d+\] asked for a callback\.", out)
    assert out.split()[0] != first


@pytest.mark.req("tokenize:deterministic")
def test_deterministic_within_scope_and_separate_across_scopes(tokenizer, scope):
    a = tokenizer.tokenize(CUSTOMER, scope, "crm").value
    b = tokenizer.tokenize({"contact": {"email": "maria.lopez@EXAMPLE.com"}}, scope, "crm").value
    assert b["contact"]["email"] == a["email"]
    other = Scope(f"session:{uuid.uuid4().hex}")
    tokenizer.tokenize({"email": "someone.first@example.org"}, other, "crm")
    c = tokenizer.tokenize(CUSTOMER, other, "crm").value
    assert c["email"] != a["email"]
    with pytest.raises(TokenError):
        tokenizer.untokenize({"to": a["full_name"]}, Scope(f"session:{uuid.uuid4().hex}"), allow_all)


@pytest.mark.req("tokenize:roundtrip")
def test_roundtrip_and_tokens_inside_longer_strings(tokenizer, scope):
    v = tokenizer.tokenize(CUSTOMER, scope, "crm").value
    args = {
        "to": f"mailto:{v['email']}",
        "body": f"Dear {v['full_name']},\nwe will call {v['phone']}.",
        "cc": [v["email"]],
        "payload": json.dumps({"name": v["full_name"], "quote": 'He said "hi"'}),
        "count": 3,
    }
    seen = []
    out = tokenizer.untokenize(args, scope, lambda ref, path: seen.append((ref.token, ref.entity_type, path)))
    assert out.value["to"] == "mailto:Maria.Lopez@example.com"
    assert out.value["body"] == "Dear Maria Lopez,\nwe will call +1 415-555-0132."
    assert out.value["cc"] == ["Maria.Lopez@example.com"]
    assert json.loads(out.value["payload"]) == {"name": "Maria Lopez", "quote": 'He said "hi"'}
    assert out.value["count"] == 3
    assert (v["email"], "EMAIL_ADDRESS", "$.to") in seen and (v["email"], "EMAIL_ADDRESS", "$.cc[0]") in seen
    assert len(seen) == len(out.used) == 5
    assert all(ref.sources == frozenset({"crm"}) for ref, _ in out.used)


@pytest.mark.req("tokenize:unknown-token")
@pytest.mark.parametrize("fake", ["[FOO_1]", "[PERSON_987654]"])
def test_unknown_or_agent_made_token_is_an_error(tokenizer, scope, fake):
    tokenizer.tokenize(CUSTOMER, scope, "crm")
    with pytest.raises(TokenError) as exc:
        tokenizer.untokenize({"body": f"Hello {fake}!"}, scope, allow_all)
    assert fake in str(exc.value) and "not known" in str(exc.value)


@pytest.mark.req("tokenize:unknown-token")
def test_erased_token_is_an_error(tokenizer, scope):
    v = tokenizer.tokenize({"email": "erase.me.please@example.net"}, scope, "crm").value
    tokenizer.vault.erase_entries("erase.me.please@example.net")
    with pytest.raises(TokenError, match="erased"):
        tokenizer.untokenize({"to": v["email"]}, scope, allow_all)


@pytest.mark.req("tokenize:unknown-token")
def test_expired_token_is_an_error(session_engine, keyring, scope):
    short = Tokenizer(session_engine, keyring, DetectionSettings(), TokenSettings(ttl_seconds=60))
    v = short.tokenize({"email": "soon.gone@example.net"}, scope, "crm").value
    with session_engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE vault_entries SET expires_at = now() - interval '1 minute' WHERE scope = %s", (scope.key,)
        )
    with pytest.raises(TokenError, match="expired"):
        short.untokenize({"to": v["email"]}, scope, allow_all)


@pytest.mark.req("flow:decide-before-substitute")
def test_refusal_substitutes_nothing(tokenizer, scope):
    v = tokenizer.tokenize(CUSTOMER, scope, "crm").value
    args = {"to": v["email"], "note": f"ssn {v['ssn']}"}
    calls = []

    def decide(ref, path):
        calls.append(ref.entity_type)
        if ref.entity_type == "US_SSN":
            raise FlowDenied("US_SSN may not flow to mailer", rule="flows[0]", entity_type="US_SSN")

    with pytest.raises(FlowDenied):
        tokenizer.untokenize(args, scope, decide)
    assert "US_SSN" in calls
    assert args == {"to": v["email"], "note": f"ssn {v['ssn']}"}  # the input is never modified


def test_thread_safe_and_consistent(tokenizer, scope):
    records = [{"email": f"user{i}@example.com", "notes": f"Ticket {i} from user{i}@example.com"} for i in range(30)]

    def run(k: int):
        return tokenizer.tokenize(records[k % 3 :: 3] + records, scope, "crm").value

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(run, range(6)))
    tail = [o[-30:] for o in outs]
    assert all(t == tail[0] for t in tail)
    assert all(r["email"] in r["notes"] for r in tail[0])


@pytest.mark.req("tokenize:no-raw-in-logs")
def test_logs_never_hold_values(session_engine, keyring, scope, caplog):
    with caplog.at_level(logging.DEBUG, logger="veil"):
        t = Tokenizer(session_engine, keyring, DetectionSettings(), TokenSettings())
        v = t.tokenize(CUSTOMER, scope, "crm").value
        t.untokenize({"to": v["email"]}, scope, allow_all)
        t.vault.erase_entries("Maria.Lopez@example.com")
    for raw in ("Maria", "Lopez", "555-0132", "Pine", "219-09-9999", "4111"):
        assert raw not in caplog.text


def test_update_settings_applies_to_next_call(session_engine, keyring, scope):
    t = Tokenizer(session_engine, keyring, DetectionSettings(), TokenSettings())
    assert t.tokenize({"badge": "B-778812"}, scope, "hr").value == {"badge": "B-778812"}
    t.update_settings(DetectionSettings(field_hints={"badge": "EMPLOYEE_ID"}), TokenSettings(ttl_seconds=30))
    assert t.tokenize({"badge": "B-778812"}, scope, "hr").value["badge"].startswith("[EMPLOYEE_ID_")
    assert t.vault.ttl_seconds == 30
