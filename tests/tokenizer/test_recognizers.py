from __future__ import annotations

import pytest

from veil.tokenizer.detector import TextItem


def found(detector, text: str) -> list[tuple[str, str]]:
    [spans] = detector.detect([TextItem(text, ner=True)])
    return [(s.entity_type, text[s.start : s.end]) for s in spans]


@pytest.mark.req("tokenize:street-address")
@pytest.mark.parametrize(
    "text, address",
    [
        ("He lives at 1234 Oak Street with his family.", "1234 Oak Street"),
        ("New tenant at 77 Mission St Apt 4B since May.", "77 Mission St Apt 4B"),
        ("Ship it to 88 Pine Street, Denver, CO 80202 please.", "88 Pine Street, Denver, CO 80202"),
        ("Send the cheque to PO Box 4411 instead.", "PO Box 4411"),
        ("Send the cheque to P.O. Box 98 instead.", "P.O. Box 98"),
        ("Our office: Koepenicker Str. 74 in Berlin.", "Koepenicker Str. 74"),
        ("Meet at Via Roma 131 tomorrow.", "Via Roma 131"),
    ],
)
def test_street_addresses(detector, text, address):
    assert ("STREET_ADDRESS", address) in found(detector, text)


def test_street_words_without_numbers_are_not_addresses(detector):
    assert [t for t, _ in found(detector, "We walked down the street to the main road.")] == []


@pytest.mark.req("tokenize:patterns")
def test_pattern_types_in_free_text(detector):
    text = (
        "Reach me at maria.lopez@example.com or call 415-555-0132; card 4111 1111 1111 1111, "
        "ssn 219-09-9999, iban DE89370400440532013000."
    )
    got = dict((v, t) for t, v in found(detector, text))
    assert got["maria.lopez@example.com"] == "EMAIL_ADDRESS"
    assert got["415-555-0132"] == "PHONE_NUMBER"
    assert got["4111 1111 1111 1111"] == "CREDIT_CARD"
    assert got["219-09-9999"] == "US_SSN"
    assert got["DE89370400440532013000"] == "IBAN_CODE"


@pytest.mark.req("tokenize:ner")
def test_ner_on_free_text(detector):
    got = found(detector, "Yesterday Maria Lopez met our account team in Denver to discuss renewal terms.")
    assert ("PERSON", "Maria Lopez") in got
    assert ("LOCATION", "Denver") in got


def test_allow_values_are_never_pii(tokenizer):
    from dataclasses import replace

    from veil.tokenizer.detector import Detector

    d = tokenizer.detector
    relaxed = Detector(replace(d.settings, allow_values=("support@acme.example",)), nlp=d.nlp, model_name=d.model_name)
    [spans] = relaxed.detect([TextItem("write to support@acme.example or bob@x.org")])
    assert [s.start for s in spans] == [len("write to support@acme.example or ")]


@pytest.mark.req("tokenize:patterns")
@pytest.mark.parametrize(
    "text, entity, value",
    [
        ("They're not answering at 655 437 108, please call again.", "PHONE_NUMBER", "655 437 108"),
        ("Desk: +41 (0)96 471 07 95", "PHONE_NUMBER", "+41 (0)96 471 07 95"),
        ("Please block card no 4415101282806639538", "CREDIT_CARD", "4415101282806639538"),
        ("My name is Akinori", "PERSON", "Akinori"),
        ("Please forward it to Dr. Cindy Holinka today.", "PERSON", "Cindy Holinka"),
        ("Ms. Austin flew to RYSSBY on Sunday morning.", "LOCATION", "RYSSBY"),
        ("Sunniva is very reliable.", "PERSON", "Sunniva"),
        ("directed by Jindrich Holinka and starring Holinka", "PERSON", "Holinka"),
    ],
)
def test_veil_recognizers(detector, text, entity, value):
    assert (entity, value) in found(detector, text)


def test_key_value_lines_are_not_people(detector):
    text = "Status: open\nPriority: high\nInvoice was sent on time."
    assert [t for t, _ in found(detector, text) if t == "PERSON"] == []


def test_order_numbers_without_context_are_not_phones(detector):
    assert [t for t, _ in found(detector, "Order 2024 1187 shipped") if t == "PHONE_NUMBER"] == []
