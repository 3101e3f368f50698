from __future__ import annotations

import pytest

from veil.tokenizer.hints import HintTable, builtin_hint, snake


def test_snake_case_of_keys():
    assert snake("firstName") == "first_name"
    assert snake("E-Mail") == "e_mail"
    assert snake("Card Number") == "card_number"


@pytest.mark.parametrize(
    "key, entity",
    [
        ("email", "EMAIL_ADDRESS"),
        ("workEmail", "EMAIL_ADDRESS"),
        ("email_address", "EMAIL_ADDRESS"),
        ("phone", "PHONE_NUMBER"),
        ("mobile_phone", "PHONE_NUMBER"),
        ("first_name", "PERSON"),
        ("lastName", "PERSON"),
        ("contact_name", "PERSON"),
        ("account_manager", "PERSON"),
        ("ssn", "US_SSN"),
        ("iban", "IBAN_CODE"),
        ("address", "STREET_ADDRESS"),
        ("street", "STREET_ADDRESS"),
        ("city", "LOCATION"),
        ("zip", "ZIP_CODE"),
        ("dob", "DATE_OF_BIRTH"),
        ("date_of_birth", "DATE_OF_BIRTH"),
        ("card_number", "CREDIT_CARD"),
        ("ip_address", "IP_ADDRESS"),
        ("company_name", "ORGANIZATION"),
        ("product_name", None),
        ("file_name", None),
        ("segment", None),
        ("name", None),  # alone, a bare ``name`` could be anything
    ],
)
@pytest.mark.req("tokenize:key-hints")
def test_builtin_hints(key, entity):
    assert builtin_hint(key) == entity


@pytest.mark.req("tokenize:key-hints")
def test_name_is_a_person_among_person_siblings_or_under_a_person_parent():
    table = HintTable({})
    assert table.hint("name", "customer.name", ["name", "email", "phone"], "customer") == "PERSON"
    assert table.hint("name", "x.name", ["name", "email"], None) == "PERSON"
    assert table.hint("name", "owner.name", ["name"], "owner") == "PERSON"
    assert table.hint("name", "product.name", ["name", "sku", "price"], "product") is None


@pytest.mark.req("tokenize:key-hints")
def test_policy_field_hints_win_and_match_paths():
    table = HintTable({"badge": "EMPLOYEE_ID", "*_handle": "PERSON", "order.ref": "ORDER_REF", "email": "PERSON"})
    assert table.hint("badge", "badge", [], None) == "EMPLOYEE_ID"
    assert table.hint("twitter_handle", "x.twitter_handle", [], None) == "PERSON"
    assert table.hint("ref", "order.ref", [], None) == "ORDER_REF"
    assert table.hint("ref", "invoice.ref", [], None) is None
    assert table.hint("email", "email", [], None) == "PERSON"


@pytest.mark.req("tokenize:hinted-types-count")
def test_hinted_types_count_whatever_the_entity_list(session_engine, keyring, scope):
    from veil.tokenizer import DetectionSettings, Tokenizer, TokenSettings

    record = {"name": "Ann Bell", "email": "ann@example.com", "dob": "1985-03-02", "zip": 80202, "born": "1985"}
    narrow = Tokenizer(session_engine, keyring, DetectionSettings(entities=("EMAIL_ADDRESS",)), TokenSettings())
    out = narrow.tokenize(record, scope, "crm").value
    assert out["dob"].startswith("[DATE_OF_BIRTH_") and out["zip"].startswith("[ZIP_CODE_")
    assert out["name"].startswith("[PERSON_") and out["email"].startswith("[EMAIL_ADDRESS_")

    excluded = Tokenizer(
        session_engine, keyring, DetectionSettings(entities=("EMAIL_ADDRESS",), exclude=("ZIP_CODE",)), TokenSettings()
    )
    out = excluded.tokenize(record, scope, "crm").value
    assert out["zip"] == 80202 and out["dob"].startswith("[DATE_OF_BIRTH_")


@pytest.mark.req("tokenize:hinted-types-count")
@pytest.mark.parametrize(
    "key, entity",
    [
        ("patient_dob", "DATE_OF_BIRTH"),
        ("birthDate", "DATE_OF_BIRTH"),
        ("born", "DATE_OF_BIRTH"),
        ("billing_zip", "ZIP_CODE"),
        ("postalCode", "ZIP_CODE"),
    ],
)
def test_more_birth_and_postal_keys(key, entity):
    assert builtin_hint(key) == entity


@pytest.mark.req("tokenize:person-normalised")
def test_the_same_person_gets_one_token_from_different_spans(tokenizer, scope):
    note = "Dr. Jane Roe called. Later Jane Roe's assistant confirmed; Jane Roe will visit."
    out = tokenizer.tokenize({"notes": note}, scope, "crm").value["notes"]
    tokens = set(__import__("re").findall(r"\[PERSON_\d+\]", out))
    assert "Jane" not in out and "Roe" not in out
    assert len(tokens) == 1, out


@pytest.mark.req("tokenize:key-hints")
def test_parts_of_a_name_object_and_tax_ids():
    table = HintTable({})
    assert table.hint("last", "name.last", ("first", "last"), "name") == "PERSON"
    assert table.hint("first", "contact_name.first", ("first",), "contact_name") == "PERSON"
    assert table.hint("first", "ranking.first", ("first",), "ranking") is None
    assert builtin_hint("taxId") == "US_SSN"
