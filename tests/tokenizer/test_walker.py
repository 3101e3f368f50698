from __future__ import annotations

import json

from veil.tokenizer.hints import HintTable
from veil.tokenizer.walker import is_free_text, walk


def test_walk_rebuilds_same_shape_without_touching_the_input():
    value = {"a": [1, "x", {"email": "a@b.co"}], "n": None, "ok": True, "zip": 80202}
    w = walk(value, HintTable({}))
    by_path = {s.path: s for s in w.slots}
    assert set(by_path) == {"$.a[1]", "$.a[2].email", "$.zip"}
    assert by_path["$.a[2].email"].hint == "EMAIL_ADDRESS"
    assert by_path["$.zip"].hint == "ZIP_CODE"
    by_path["$.a[2].email"].replacement = "[EMAIL_ADDRESS_1]"
    by_path["$.zip"].replacement = "[ZIP_CODE_1]"
    out = w.finish()
    assert out == {"a": [1, "x", {"email": "[EMAIL_ADDRESS_1]"}], "n": None, "ok": True, "zip": "[ZIP_CODE_1]"}
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
