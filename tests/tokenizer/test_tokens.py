from __future__ import annotations

import pytest

from veil.tokenizer.tokens import TOKEN_RE, Scope, format_token, normal_forms, normalise


@pytest.mark.req("tokenize:token-format")
def test_token_re_matches_tokens_inside_longer_text():
    text = "Dear [PERSON_2], write to mailto:[EMAIL_ADDRESS_13] or [US_SSN_1]."
    found = [(m.group(1), m.group(2)) for m in TOKEN_RE.finditer(text)]
    assert found == [("PERSON", "2"), ("EMAIL_ADDRESS", "13"), ("US_SSN", "1")]


@pytest.mark.req("tokenize:token-format")
def test_token_re_rejects_lookalikes():
    assert TOKEN_RE.fullmatch(format_token("PHONE_NUMBER", 7))
    for text in ("[person_1]", "[PERSON]", "[PERSON_]", "[_1]", "PERSON_1", "[PERSON_1a]"):
        assert TOKEN_RE.fullmatch(text) is None, text


def test_normalise_is_type_aware():
    assert normalise(" Maria.Lopez@Example.COM ", "EMAIL_ADDRESS") == "maria.lopez@example.com"
    assert normalise("+1 (415) 555-0100", "PHONE_NUMBER") == normalise("415.555.0100", "PHONE_NUMBER")
    assert normalise("4111 1111 1111 1111", "CREDIT_CARD") == "4111111111111111"
    assert normalise("078-05-1121", "US_SSN") == "078051121"
    assert normalise("de89 3704 0044 0532 0130 00", "IBAN_CODE") == "DE89370400440532013000"
    assert normalise("Maria   LOPEZ", "PERSON") == "maria lopez"


def test_normal_forms_cover_every_type_form():
    forms = normal_forms("+1 415-555-0100")
    assert normalise("415 555 0100", "PHONE_NUMBER") in forms
    assert normalise("MARIA lopez", "PERSON") in normal_forms("Maria Lopez")


def test_scope_needs_a_key():
    with pytest.raises(ValueError):
        Scope("")
