"""End to end through the real Tokenizer (Presidio, spaCy, PostgreSQL)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from veil.errors import FlowDenied, TokenError, TokenizeBudgetExceeded, VeilError
from veil.tokenizer import TOKEN_RE, Deadline, DetectionSettings, Scope, Tokenizer, TokenSettings

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


# -- the guard under attack: echoes, keys, numbers ------------------------------------------------


def known_tokens(tokenizer, scope) -> dict[str, str]:
    v = tokenizer.tokenize(CUSTOMER, scope, "crm").value
    return {k: v[k] for k in ("full_name", "email", "phone", "ssn", "card_number")}


@pytest.mark.req("tokenize:guard-normalised")
def test_an_echoed_value_glued_to_other_characters_gets_its_token_back(tokenizer, scope):
    t = known_tokens(tokenizer, scope)
    # the agent sent 9[US_SSN_1]9 and x[PERSON_1]y; an honest upstream echoed them in an error
    echo = {"error": "customer 9219-09-99999 not found; no match for xMaria Lopezy"}
    out = tokenizer.tokenize(echo, scope, "crm").value["error"]
    assert out == f"customer 9{t['ssn']}9 not found; no match for x{t['full_name']}y"


@pytest.mark.req("tokenize:guard-normalised")
@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("ssn 219099999 on file", "ssn"),  # dbhub: replace(ssn, '-', '')
        ("SSN \uff12\uff11\uff19-\uff10\uff19-\uff19\uff19\uff19\uff19", "ssn"),  # full-width digits
        ("phone 4155550132 (digits only)", "phone"),
        ("card 4111-1111-1111-1111 charged", "card_number"),
        ("login: marialopez", "full_name"),
        ("see https://crm.example/p/Maria_Lopez/notes", "full_name"),
        ("Mar\u200dia Lo\u200bpez called", "full_name"),
    ],
)
def test_reformatted_known_values_are_replaced_by_their_token(tokenizer, scope, text, field):
    t = known_tokens(tokenizer, scope)
    out = tokenizer.tokenize({"comment": text}, scope, "tickets").value["comment"]
    assert t[field] in out, out
    for raw in ("219", "9999", "555", "0132", "1111", "aria", "opez", "\uff12"):
        assert raw not in out.replace(t[field], ""), out


@pytest.mark.req("tokenize:guard-normalised")
def test_email_local_part_alone_is_replaced(tokenizer, scope):
    v = tokenizer.tokenize({"email": "tammy.alexander57@mail.example"}, scope, "crm").value
    out = tokenizer.tokenize({"log": "login by tammy.alexander57 from 10.0.0.9"}, scope, "crm").value["log"]
    assert "tammy" not in out and "alexander" not in out
    token = TOKEN_RE.search(out).group(0)
    assert token.startswith("[EMAIL_ADDRESS_") and token != v["email"]
    back = tokenizer.untokenize({"q": out}, scope, allow_all).value["q"]
    assert back.startswith("login by tammy.alexander57 ")  # exactly the text that was there


@pytest.mark.req("tokenize:keys")
def test_pii_dict_keys_become_token_keys_also_inside_json_text(tokenizer, scope):
    t = known_tokens(tokenizer, scope)
    value = {
        "by_email": {"Maria.Lopez@example.com": {"open": 2}, "new.person@example.org": {"open": 1}},
        "text": json.dumps({"219-09-9999": "flagged", "ok": 1}),
        "Maria Lopez": "vip",
        "maria lopez": "duplicate spelling",
    }
    out = tokenizer.tokenize(value, scope, "crm").value
    assert next(iter(out["by_email"])) == t["email"] and out["by_email"][t["email"]] == {"open": 2}
    assert re.fullmatch(r"\[EMAIL_ADDRESS_\d+\]", list(out["by_email"])[1])
    assert json.loads(out["text"]) == {t["ssn"]: "flagged", "ok": 1}
    assert out[t["full_name"]] == "vip" and out[f"{t['full_name']} (2)"] == "duplicate spelling"
    text = dumps(out)
    for raw in ("Maria", "Lopez", "example.com", "new.person", "219-09"):
        assert raw not in text
    # token keys turn back into the real keys for an upstream
    back = tokenizer.untokenize({"by_email": out["by_email"]}, scope, allow_all).value
    assert "Maria.Lopez@example.com" in back["by_email"]


@pytest.mark.req("tokenize:numbers")
def test_numbers_holding_a_known_or_detected_identifier_become_tokens(tokenizer, scope):
    t = known_tokens(tokenizer, scope)
    digits_only = tokenizer.tokenize({"ssn": "078051120"}, scope, "db").value["ssn"]  # stored as digits
    value = {
        "ref": 219099999,  # the known SSN's digits as a JSON number, under no PII key
        "contact": 4155550132,
        "glued": 90780511209,  # the stored spelling glued to other digits
        "reformatted_glued": 92190999999,  # reformatted (dashes lost) AND glued: digits must be bounded
        "other_card": 5555555555554444,  # not known: detected as a card (Luhn-valid)
        "float_phone": 4155550132.0,
        "amount": 1234.5,
        "count": 42,
        "year": 2026,
    }
    out = tokenizer.tokenize({"rows": [value]}, scope, "db").value["rows"][0]
    assert out["ref"] == t["ssn"] and out["contact"] == t["phone"] and out["float_phone"] == t["phone"]
    assert out["glued"] == f"9{digits_only}9"
    assert out["reformatted_glued"] == 92190999999
    assert re.fullmatch(r"\[CREDIT_CARD_\d+\]", out["other_card"])
    assert (out["amount"], out["count"], out["year"]) == (1234.5, 42, 2026)


# -- modes ------------------------------------------------------------------------------------------


@pytest.mark.req("tokenize:interface-mode")
def test_interface_mode_uses_patterns_and_guard_but_no_ner(tokenizer, scope):
    t = known_tokens(tokenizer, scope)
    listing = {
        "tools": [
            {
                "name": "get_sum",
                "title": "Get Sum Tool",
                "description": "Adds numbers. Owner: Maria Lopez, write to ops.lead@corp.example or MariaLopez.",
                "inputSchema": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "examples": ["Jonathan Whitfield"], "default": "219099999"},
                        "Maria.Lopez@example.com": {"type": "integer"},
                    },
                },
            },
            {"name": "list_people", "title": "List People By City", "description": "Search Sales Force Users"},
        ]
    }
    out = tokenizer.tokenize(listing, scope, "crm", mode="interface").value
    tool = out["tools"][0]
    assert tool["name"] == "get_sum" and tool["title"] == "Get Sum Tool"
    assert out["tools"][1] == listing["tools"][1]  # nothing mangled
    desc = tool["description"]
    assert desc.startswith("Adds numbers. Owner: ") and t["full_name"] in desc
    assert "ops.lead@corp.example" not in desc and "Lopez" not in desc
    props = tool["inputSchema"]["properties"]
    assert props["name"]["default"] == t["ssn"] and t["email"] in props
    # NER is off: a person nobody told the vault about, in an example, is left to patterns
    assert props["name"]["examples"] == ["Jonathan Whitfield"]


def test_unknown_mode_is_refused(tokenizer, scope):
    with pytest.raises(ValueError, match="interface"):
        tokenizer.tokenize("x", scope, "crm", mode="listing")


GUESSES = [f"+1 415-555-01{n:02d}" for n in range(25, 40)]  # the customer's is +1 415-555-0132


@pytest.mark.req("tokenize:no-equality-oracle")
def test_sandbox_output_never_links_values_to_the_scopes_tokens(tokenizer, scope, session_engine):
    t = known_tokens(tokenizer, scope)
    assert "+1 415-555-0132" in GUESSES
    with session_engine.connect() as conn:
        count = "SELECT count(*) FROM vault_entries WHERE scope = :s"
        rows_before = conn.execute(sa.text(count), {"s": scope.key}).scalar_one()
    printed = "\n".join(f"tel: {g}" for g in GUESSES) + f"\nfrom the crm: {t['phone']} and {t['full_name']}\n"
    shown = {"stdout": printed, "result": {"phones": GUESSES, "email": "maria.lopez@example.com"}}
    out = tokenizer.tokenize(shown, scope, "sandbox", mode="sandbox_output")
    lines = out.value["stdout"].splitlines()
    guessed = [line.removeprefix("tel: ") for line in lines[: len(GUESSES)]]
    # every guess became a token of the throwaway per-call scope; none is the customer's token
    assert all(re.fullmatch(r"\[CODE_PHONE_NUMBER_\d+\]", g) for g in guessed), guessed
    assert len(set(guessed)) == len(GUESSES) and t["phone"] not in guessed
    assert out.value["result"]["phones"] == guessed  # deterministic within the call
    assert out.value["result"]["email"] != t["email"] and out.value["result"]["email"].startswith("[CODE_EMAIL")
    # tokens already in the text stay as they are
    assert lines[-1] == f"from the crm: {t['phone']} and {t['full_name']}"
    with session_engine.connect() as conn:
        assert conn.execute(sa.text(count), {"s": scope.key}).scalar_one() == rows_before  # nothing stored
    # and such a token can never be turned into a value
    with pytest.raises(TokenError, match="throwaway tokens that never turn back"):
        tokenizer.untokenize({"to": guessed[7]}, scope, allow_all)
    # the same text in data mode would have linked the customer's number (the oracle this removes)
    data = tokenizer.tokenize({"stdout": "tel: +1 415-555-0132"}, scope, "crm").value["stdout"]
    assert data == f"tel: {t['phone']}"


@pytest.mark.req("tokenize:budget")
def test_a_spent_budget_fails_closed_naming_the_setting(tokenizer, scope, session_engine):
    spent = Deadline(time.monotonic() - 1, 2.0, "detection.budget_seconds")
    with pytest.raises(TokenizeBudgetExceeded) as exc:
        tokenizer.tokenize(CUSTOMER, scope, "crm", deadline=spent)
    assert exc.value.code == -32011 and isinstance(exc.value, VeilError)
    msg = str(exc.value)
    assert "detection.budget_seconds" in msg and "2 s" in msg
    assert "Maria" not in msg and "Lopez" not in msg
    with session_engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM vault_entries WHERE scope = :s"), {"s": scope.key}).scalar_one()
    assert n == 0
    ample = Deadline.after(600, setting="detection.budget_seconds")
    assert tokenizer.tokenize(CUSTOMER, scope, "crm", deadline=ample).value["email"].startswith("[EMAIL_ADDRESS_")


@pytest.mark.req("tokenize:budget")
def test_the_budget_is_checked_between_stages_of_a_large_value(tokenizer, scope):
    """A budget that runs out while the call is under way stops it at the next check."""
    seen: list[str] = []

    class Recording(Deadline):
        def check(self, stage: str) -> None:
            seen.append(stage)
            if len(seen) >= 3:
                super().check(stage)

    big = {"notes": [f"Ticket {i}: call Maria Lopez about 219-09-9999" for i in range(600)]}
    with pytest.raises(TokenizeBudgetExceeded, match="stopped in"):
        tokenizer.tokenize(big, scope, "crm", deadline=Recording(time.monotonic() - 1, 1.0, "x.budget"))
    assert len(seen) == 3


def test_partly_overlapping_hits_become_one_hit_so_nothing_is_left_raw():
    from veil.tokenizer.tokenizer import _Hit, _merge

    text = "Spoke with Eoin Lewandowski today"
    recognizer = _Hit(11, 17, "PERSON", "Eoin L")  # a span cut short inside a name
    guard = _Hit(16, 27, "PERSON", "Lewandowski")
    assert _merge(text, [recognizer], [guard]) == [_Hit(11, 27, "PERSON", "Eoin Lewandowski")]
    inside = _Hit(16, 20, "PERSON", "Lewa")
    assert _merge(text, [guard], [inside]) == [guard]  # wholly covered: the longer one stands
    apart = _Hit(0, 5, "PERSON", "Spoke")
    assert _merge(text, [apart], [guard]) == [apart, guard]


def test_inline_calls_do_the_same_work_or_say_they_would_block(tokenizer, scope, monkeypatch):
    """``inline=True`` (the gateway's event loop, small payloads) returns what a worker thread
    would, or raises ``WouldBlock`` having changed nothing when it would need I/O or the value is
    not small; the gateway then repeats the call in a thread."""
    from veil.tokenizer import WouldBlock

    monkeypatch.setattr(tokenizer.vault, "refresh_seconds", 3600.0)  # no process-wide check falls due
    ok = {"ok": True, "status": "done"}
    with pytest.raises(WouldBlock):  # the scope's cache is not loaded yet: a database read
        tokenizer.tokenize(ok, scope, "crm", inline=True)
    expected = tokenizer.tokenize(ok, scope, "crm")
    assert tokenizer.tokenize(ok, scope, "crm", inline=True) == expected
    with pytest.raises(WouldBlock):  # a value to tokenise: the vault (maybe a write)
        tokenizer.tokenize({"email": "inline.person@example.com"}, scope, "crm", inline=True)
    with pytest.raises(WouldBlock):  # not small
        tokenizer.tokenize({"note": "x" * 600}, scope, "crm", inline=True)
    # sandbox output never reads the vault: inline works on a scope never loaded
    elsewhere = Scope(f"session:{uuid.uuid4().hex}")
    out = tokenizer.tokenize({"n": 3}, elsewhere, "sandbox", mode="sandbox_output", inline=True)
    assert out.value == {"n": 3}
    args = {"customer_id": "C0001"}
    assert tokenizer.untokenize(args, scope, allow_all, inline=True).value == args
    token = tokenizer.tokenize({"email": "inline.person@example.com"}, scope, "crm").value["email"]
    with pytest.raises(WouldBlock):  # a token: the vault is read
        tokenizer.untokenize({"to": token}, scope, allow_all, inline=True)


# -- values under the escapes of URLs, HTML and JSON ----------------------------------------------


@pytest.mark.req("tokenize:escapes")
@pytest.mark.parametrize(
    ("text", "fields"),
    [
        # an upstream that calls a web API echoes the URL it tried
        ("GET /search?ssn=219%2D09%2D9999&mail=Maria.Lopez%40example.com: 404", ("ssn", "email")),
        # a ticket body in HTML; the e-mail obfuscated the way web pages do it
        (
            "<p>Maria&nbsp;Lopez &lt;"
            + "".join(f"&#{ord(c)};" for c in "Maria.Lopez@example.com")
            + "&gt;, tel&#58; &#43;1&#32;415&#45;555&#45;0132</p>",
            ("full_name", "email", "phone"),
        ),
        # a JSON document quoted (so escaped) inside an error message
        ('invalid payload: {"card": "4111\\u00a01111\\u00a01111\\u00a01111"} (code 7)', ("card_number",)),
        # a search upstream highlighting the digits that matched
        ("<li>ssn 219-09-<em>9999</em>, <b>Maria</b> <b>Lopez</b></li>", ("ssn", "full_name")),
    ],
)
def test_known_values_under_escapes_are_replaced_whole(tokenizer, scope, text, fields):
    t = known_tokens(tokenizer, scope)
    out = tokenizer.tokenize({"comment": text}, scope, "tickets").value["comment"]
    for field in fields:
        assert t[field] in out, out
    rest = out
    for field in fields:
        rest = rest.replace(t[field], "")
    for raw in ("219", "9999", "aria", "opez", "555", "0132", "1111"):
        assert raw not in rest, out
    assert not re.search(r"%[0-9A-F]{2}\]|\[%|&#\d*\]", out), "a token splits an escape"


@pytest.mark.req("tokenize:escapes")
def test_new_values_are_detected_under_escapes_and_the_rest_keeps_its_encoding(tokenizer, scope):
    link = "https://crm.example/compose?to=new.person%40corp.example&subject=Hello%20there"
    out = tokenizer.tokenize({"link": link}, scope, "crm").value["link"]
    token = TOKEN_RE.search(out)
    assert token and token.group(0).startswith("[EMAIL_ADDRESS_"), out
    assert out == f"https://crm.example/compose?to={token.group(0)}&subject=Hello%20there"
    back = tokenizer.untokenize({"to": token.group(0)}, scope, allow_all).value["to"]
    assert back == "new.person@corp.example"  # the vault holds the value, not its escaping


@pytest.mark.req("tokenize:escapes")
def test_a_new_value_split_by_markup_is_detected_and_attributes_are_still_read(tokenizer, scope):
    out = tokenizer.tokenize({"hit": "SSN 512-34-<em>1290</em> on file"}, scope, "search").value["hit"]
    assert "1290" not in out and "512" not in out and "[US_SSN_" in out, out
    link = '<a href="mailto:pat.quinn@corp.example">write</a>'
    out = tokenizer.tokenize({"html": link}, scope, "crm").value["html"]
    assert "pat.quinn" not in out and "[EMAIL_ADDRESS_" in out, out


@pytest.mark.req("tokenize:escapes")
def test_an_escaped_value_under_a_pii_key_gets_the_token_of_the_value(tokenizer, scope):
    escaped = tokenizer.tokenize({"name": "Jos\\u00e9 Garc\\u00eda"}, scope, "crm").value["name"]
    plain = tokenizer.tokenize({"name": "José García"}, scope, "crm").value["name"]
    assert escaped == plain and escaped.startswith("[PERSON_")
    echoed = tokenizer.tokenize({"note": "call Jos%C3%A9%20Garc%C3%ADa today"}, scope, "crm").value["note"]
    assert echoed == f"call {plain} today"


@pytest.mark.req("tokenize:look-alikes")
@pytest.mark.parametrize(
    ("text", "entity", "value", "raw"),
    [
        ("SSN 512\u201134\u20111290 on file", "US_SSN", "512-34-1290", ("512", "1290")),
        ("card 4111\u00a01111\u00a01111\u00a01111 expired", "CREDIT_CARD", "4111 1111 1111 1111", ("4111",)),
        ("call +1\u00a0415\u00a0555\u00a00143 after six", "PHONE_NUMBER", "+1 415 555 0143", ("415", "0143")),
        (
            "ssn \uff15\uff11\uff12-\uff13\uff14-\uff11\uff12\uff19\uff10",
            "US_SSN",
            "512-34-1290",
            ("\uff11\uff12\uff19\uff10",),
        ),
        ("write to pat\uff0equinn\uff20corp\uff0eexample", "EMAIL_ADDRESS", "pat.quinn@corp.example", ("quinn",)),
    ],
)
def test_new_values_in_look_alike_characters_are_detected(tokenizer, scope, text, entity, value, raw):
    """Values never seen before, written as word processors, PDFs and East Asian input write
    them: no pattern matched them, so they reached the agent raw."""
    out = tokenizer.tokenize({"note": text}, scope, "crm").value["note"]
    token = next((m.group(0) for m in TOKEN_RE.finditer(out) if m.group(0).startswith(f"[{entity}_")), None)
    assert token is not None, out
    for part in raw:
        assert part not in out, out
    assert out.startswith(text.split(" ")[0] + " ")  # the text around the value is kept as written
    assert tokenizer.untokenize({"v": token}, scope, allow_all).value["v"] == value  # the vault holds it folded


# -- a detected value is replaced whole -------------------------------------------------------------


@pytest.mark.req("tokenize:whole-words")
@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"note": "Dear Maria Lopez, thanks for your order."}, ("Maria", "Lopez")),
        ({"note": "Name: Kwame Osei"}, ("Kwame", "Osei")),
        ({"name": "Kwame Osei"}, ("Kwame", "Osei")),  # a name field's key is read as the cue
        ({"note": "Signed by Tomasz Wojcik yesterday"}, ("Tomasz", "Wojcik")),
        ({"note": "She moved from Villa del Mar last year."}, ("Villa", "del Mar")),
    ],
)
def test_a_value_after_a_cue_is_replaced_whole(tokenizer, scope, value, words):
    """The cue recognizers once stopped at the first capital of the next word ("Maria L"),
    leaving the rest of it raw ("Dear [PERSON_1]opez")."""
    out = json.dumps(tokenizer.tokenize(value, scope, "crm").value)
    assert TOKEN_RE.search(out), out
    for word in words:
        assert word not in out and word[1:] not in out, out


@pytest.mark.req("tokenize:patterns")
def test_a_token_shaped_string_that_is_no_token_of_the_scope_is_analysed(tokenizer, scope):
    """'[US_SSN_' || ssn || ']' from an upstream once passed raw: detection and the guard
    skipped everything shaped like a token. Only the scope's own tokens shelter what they hold."""
    real = tokenizer.tokenize({"ssn": "219-09-9999"}, scope, "crm").value["ssn"]
    out = tokenizer.tokenize({"v": f"{real} [US_SSN_512341292] [PHONE_NUMBER_4155550198]"}, scope, "x").value["v"]
    assert out.startswith(f"{real} [US_SSN_[US_SSN_") and "512341292" not in out and "4155550198" not in out, out
