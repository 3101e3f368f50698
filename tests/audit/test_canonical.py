"""The canonical encoding is RFC 8785 and survives a jsonb round trip."""

from __future__ import annotations

import random
import struct

import pytest
import rfc8785

from veil.audit.canonical import EncodingError, jcs, json_value

TRICKY_FLOATS = [0.0, -0.0, 1.0, 0.1, 1e-7, 1e-6, 123.456, 1e16, 1e21, 1e22, 1.5e300, -2.5e-300, 5e-324, 2.0**53]
TRICKY_STRINGS = ["", 'a"b\\c', "\n\t\r\b\f\x01\x1f\x7f", "é€𝄞", "\u2028\u2029", "\ufb33", "\U0001f600"]


def random_value(rng: random.Random, depth: int = 0):  # type: ignore[no-untyped-def]
    pick = rng.randrange(8 if depth < 3 else 5)
    if pick == 0:
        return rng.choice([None, True, False])
    if pick == 1:
        return rng.randint(-(2**53) + 1, 2**53 - 1)
    if pick == 2:
        return struct.unpack("d", rng.randbytes(8))[0] if rng.random() < 0.5 else rng.choice(TRICKY_FLOATS)
    if pick in (3, 4):
        return rng.choice(TRICKY_STRINGS) + "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(5)))
    if pick in (5, 6):
        return {rng.choice(TRICKY_STRINGS) + str(i): random_value(rng, depth + 1) for i in range(rng.randrange(4))}
    return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


@pytest.mark.req("audit:tamper-evident")
def test_fast_encoder_matches_rfc8785_reference() -> None:
    rng = random.Random(8785)
    checked = 0
    for _ in range(3000):
        value = random_value(rng)
        try:
            value = json_value(value, "v")
        except EncodingError:
            continue  # NaN / infinity from random bytes
        assert jcs(value) == rfc8785.dumps(value)
        checked += 1
    assert checked > 2500
    keys = {"\U0001f600": 1, "\ufb33": 2, "a": 3}  # UTF-16 order differs from code point order here
    assert jcs(keys) == rfc8785.dumps(keys)


def test_normalisation_survives_jsonb_number_rewriting() -> None:
    # jsonb returns 1e16 as the integer 10000000000000000 and 2**60 (a double) as an integer.
    assert jcs(json_value(1e16, "x")) == jcs(json_value(10000000000000000, "x"))
    assert jcs(json_value(float(2**60), "x")) == jcs(json_value(1152921504606847000, "x"))
    assert json_value(1.0, "x") == 1 and jcs(json_value(1.0, "x")) == b"1"


def test_unencodable_values_name_the_field() -> None:
    with pytest.raises(EncodingError, match=r"'detail\.a'"):
        json_value({"a": float("inf")}, "detail")
    with pytest.raises(EncodingError, match=r"'detail'.*set"):
        json_value({1, 2}, "detail")
    assert json_value("lone \ud800 surrogate", "x") == "lone ? surrogate"


def test_record_encoder_matches_the_documented_record() -> None:
    import uuid
    from datetime import UTC, datetime

    from veil.audit.canonical import FIELDS, encode_record, record_document

    rng = random.Random(30)
    for i in range(300):
        row = {name: None for name in FIELDS[1:]}
        row.update(
            seq=i + 1,
            ts=datetime(2026, 11, 1, tzinfo=UTC),
            occurred_at=datetime.now(UTC),
            id=uuid.uuid4(),
            kind="tool.call",
            outcome="ok",
            roles=["a", "\U0001f600"],
            tokens=[],
            entities={"EMAIL_ADDRESS": rng.randint(0, 9), "big": 2**60 + i},  # as jsonb may return it
            untokenised=[{"token": "[X_1]", "entity_type": "X", "destination": "a__b:c", "rule": "r"}],
            detail=json_value(random_value(rng), "detail") if i % 3 else {"\ufb33": 1, "\U0001f600": [1e16, 0.5]},
            duration_ms=rng.random() * 100,
        )
        assert encode_record(row) == rfc8785.dumps(record_document(row))
