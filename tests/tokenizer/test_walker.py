from __future__ import annotations

import json

import pytest

from veil.tokenizer.hints import HintTable
from veil.tokenizer.walker import is_free_text, number_text, walk


def test_walk_rebuilds_same_shape_without_touching_the_input():
    value = {"a": [1, "x", {"email": "a@b.co"}, 4155550132], "n": None, "ok": True, "zip": 80202}
    w = walk(value, HintTable({}))
    by_path = {s.path: s for s in w.slots if s.kind != "key"}
    # every number of four digits or more is a slot (a card or phone number can come as a JSON
    # number); keys of three characters or more are slots (shorter ones can hold nothing)
    assert set(by_path) == {"$.a[1]", "$.a[2].email", "$.a[3]", "$.zip"}
    assert by_path["$.a[3]"].kind == "number" and by_path["$.a[3]"].hint is None
    assert {s.text for s in w.slots if s.kind == "key"} == {"zip", "email"}
    assert by_path["$.a[2].email"].hint == "EMAIL_ADDRESS"
    assert by_path["$.zip"].hint == "ZIP_CODE"
    by_path["$.a[2].email"].replacement = "[EMAIL_ADDRESS_1]"
    by_path["$.zip"].replacement = "[ZIP_CODE_1]"
    out = w.finish()
    assert out == {
        "a": [1, "x", {"email": "[EMAIL_ADDRESS_1]"}, 4155550132],
        "n": None,
        "ok": True,
        "zip": "[ZIP_CODE_1]",
    }
    assert value["a"][2]["email"] == "a@b.co" and value["zip"] == 80202


def test_json_inside_text_is_walked_and_reserialised():
    inner = {"customer": {"name": "Maria Lopez", "email": "m@x.io"}, "count": 1}
    value = {"content": [{"type": "text", "text": json.dumps(inner)}]}
    w = walk(value, HintTable({}))
    paths = {s.path: s for s in w.slots}
    email = paths["$.content[0].text<json>.customer.email"]
    name = paths["$.content[0].text<json>.customer.name"]
    assert email.hint == "EMAIL_ADDRESS" and name.hint == "PERSON"
    email.replacement, name.replacement = "[EMAIL_ADDRESS_1]", "[PERSON_1]"
    out = w.finish()
    assert json.loads(out["content"][0]["text"]) == {
        "customer": {"name": "[PERSON_1]", "email": "[EMAIL_ADDRESS_1]"},
        "count": 1,
    }


def test_untouched_json_text_keeps_its_bytes():
    text = '{"a":  1,\n "b": "plain"}'
    w = walk({"text": text}, HintTable({}))
    assert w.finish() == {"text": text}


def test_free_text():
    assert is_free_text("Customer called about the invoice")
    assert is_free_text("Maria Lopez")
    assert not is_free_text("gold")
    assert not is_free_text("active account")
    assert not is_free_text("C0001")


def _fill(w, mapping: dict[str, str]) -> None:
    for slot in w.slots:
        if slot.text in mapping:
            slot.replacement = mapping[slot.text]


@pytest.mark.req("tokenize:keys")
def test_keys_are_slots_and_tokenised_keys_rebuild_the_dict_in_order():
    value = {"id": 1, "maria@x.io": {"Maria Lopez": "vip"}, "tail": "t", "more": [{"tail": 1}, {"tail": 2}]}
    w = walk(value, HintTable({}))
    keys = [s.text for s in w.slots if s.kind == "key"]
    assert sorted(keys) == ["Maria Lopez", "maria@x.io", "more", "tail", "tail"]  # one slot per key and context
    _fill(w, {"maria@x.io": "[EMAIL_ADDRESS_1]", "Maria Lopez": "[PERSON_1]"})
    out = w.finish()
    assert list(out) == ["id", "[EMAIL_ADDRESS_1]", "tail", "more"]
    assert out["[EMAIL_ADDRESS_1]"] == {"[PERSON_1]": "vip"}
    assert list(value) == ["id", "maria@x.io", "tail", "more"]  # the input is untouched


@pytest.mark.req("tokenize:keys")
def test_keys_that_collide_after_tokenising_are_both_kept_deterministically():
    value = {"Maria Lopez": 1, "x": 0, "maria lopez": 2, "[PERSON_1] (2)": 3}
    w = walk(value, HintTable({}))
    _fill(w, {"Maria Lopez": "[PERSON_1]", "maria lopez": "[PERSON_1]"})
    out = w.finish()
    assert out == {"[PERSON_1]": 1, "x": 0, "[PERSON_1] (2)": 2, "[PERSON_1] (2) (2)": 3}
    assert list(out.values()) == [1, 0, 2, 3]


@pytest.mark.req("tokenize:keys")
def test_keys_inside_json_text_are_tokenised_and_the_document_stays_valid():
    inner = {"by_email": {"maria@x.io": {"note": "called"}}}
    value = {"content": [{"type": "text", "text": json.dumps(inner)}]}
    w = walk(value, HintTable({}))
    _fill(w, {"maria@x.io": "[EMAIL_ADDRESS_1]", "called": "called back"})
    out = w.finish()
    assert json.loads(out["content"][0]["text"]) == {"by_email": {"[EMAIL_ADDRESS_1]": {"note": "called back"}}}


@pytest.mark.req("tokenize:numbers")
def test_numbers_are_slots_of_their_digits_and_become_strings_when_replaced():
    value = {"card": 4111111111111111, "amount": 1234.5, "phone": 4155550132.0, "n": True, "count": 3}
    w = walk(value, HintTable({}))
    nums = {s.path: s for s in w.slots if s.kind == "number"}
    assert nums["$.card"].text == "4111111111111111" and nums["$.card"].hint is None
    assert nums["$.phone"].text == "4155550132"
    assert "$.amount" not in nums and "$.n" not in nums  # a fraction is an amount; bool is no number
    nums["$.card"].replacement = "[CREDIT_CARD_1]"
    out = w.finish()
    assert out == {"card": "[CREDIT_CARD_1]", "amount": 1234.5, "phone": 4155550132.0, "n": True, "count": 3}


def test_number_text():
    assert number_text(12) == "12" and number_text(-7) == "-7"
    assert number_text(4155550132.0) == "4155550132"
    assert number_text(0.5) is None and number_text(float("inf")) is None and number_text(float("nan")) is None


def test_no_hints_in_interface_walks():
    w = walk({"email": "a@b.co", "zip": 80202}, None)
    assert all(s.hint is None for s in w.slots)
