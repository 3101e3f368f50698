"""The corpus's leak finder must find a value in every form an attacker would use, and must not
cry wolf on tokens, timestamps and unrelated numbers (a finder that cannot fail proves nothing)."""

from __future__ import annotations

import pytest

from security.leakcheck import Haystack, decode_char_codes, leaks

SSN, PHONE, EMAIL, NAME, ZIP = (
    "356-78-5967",
    "215-555-0178",
    "ngoc.korhonen@meridianhealth.org",
    "Ngoc Korhonen",
    "19107",
)


@pytest.mark.parametrize(
    ("text", "value", "form"),
    [
        (f"id '9{SSN}9' not found", SSN, "text"),
        ("ssn 356785967", SSN, "alnum"),
        ("ssn " + SSN.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"}), SSN, "text"),
        ("7695-87-653", SSN, "text reversed"),
        ("2155550178", PHONE, "alnum"),
        ("(215) 555 0178", PHONE, "alnum"),
        ("NGOC KORHONEN", NAME, "text"),
        ("ngockorhonen57", NAME, "alnum"),
        ("https://crm.example/people/ngoc-korhonen", NAME, "alnum"),
        ("N\u200bg\u200bo\u200bc\u200b \u200bK\u200bo\u200brhonen", NAME, "text"),
        ("N g o c   K o r h o n e n", NAME, "alnum"),
        ("nenohrokcogn", NAME, "alnum reversed"),
        ("gro.htlaehnaidirem@nenohrok.cogn", EMAIL, "text reversed"),
        (str([ord(c) for c in EMAIL]), EMAIL, "text"),
        (" ".join(str(ord(c)) for c in SSN), SSN, "text"),
        (f'{{"{EMAIL}": 1}}', EMAIL, "text"),
        ("zip 19107.", ZIP, "word"),
        ("mailto:ngoc.korhonen%40meridianhealth.org", EMAIL, "text"),
        ("ssn=356%2D78%2D5967", SSN, "text"),
        ("".join(f"&#{ord(c)};" for c in EMAIL), EMAIL, "text"),
        ("Ngoc&nbsp;Korhonen", NAME, "text"),
        ("Ng\\u006fc Korhonen", NAME, "text"),
        ("ssn 356-78-<em>5967</em>", SSN, "text"),
        ("Dear [PERSON_1]rhonen, thanks", NAME, "fragment beside a token"),
        ("Dear Ngo[PERSON_1], thanks", NAME, "fragment beside a token"),
    ],
)
def test_finds_each_form(text: str, value: str, form: str) -> None:
    assert Haystack(text).find(value) == form


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("[US_SSN_1] [PHONE_NUMBER_2] [PERSON_3]", SSN),
        ("ts 2026-11-28T22:15:07Z seq 356", SSN),
        ("ticket 191074", ZIP),
        ("Ngoc called", NAME),
        ("Get Sum Tool", NAME),
        ("x[PERSON_1]y and 9[US_SSN_2]9", NAME),  # what an echo glued to a token looks like
        ("[PERSON_1]s order", NAME),  # too short to be part of a word of the value
        ("100%25 sure &amp; 50%off", SSN),
    ],
)
def test_does_not_cry_wolf(text: str, value: str) -> None:
    assert Haystack(text).find(value) is None


def test_reports_where_and_which_value() -> None:
    found = leaks({"agent": "fine [US_SSN_1]", "audit": "moc.elpmaxe@x", "logs": SSN}, [SSN, "x@example.com"])
    assert sorted((f.where, f.value) for f in found) == [("audit", "x@example.com"), ("logs", SSN)]


def test_char_codes_are_decoded_only_from_runs() -> None:
    assert decode_char_codes("[104, 105, 33, 33]") == "hi!!"
    assert decode_char_codes("seq 12 and 13") == ""
