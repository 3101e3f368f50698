"""Strict parsing of messages from the sandbox: anything unexpected is a ProtocolViolation."""

from __future__ import annotations

import json

import pytest

from veil.sandbox.channel import MAX_MESSAGE_BYTES, Call, Done, ProtocolViolation, Ready, parse


def msg(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_valid_messages():
    assert parse(msg(type="ready", pid=3), 100) == Ready(3)
    assert parse(msg(type="call", id=1, upstream="crm", tool="find_customers", args={"a": 1}), 100) == Call(
        1, "crm", "find_customers", {"a": 1}
    )
    done = parse(msg(type="done", id=2, status="error", error_type="NameError", result=None), 100)
    assert done == Done(2, "error", "NameError", None)


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        msg(type="reveal", token="[EMAIL_ADDRESS_1]"),
        msg(type="call", id=1, upstream="crm", tool="x", args={}, untokenise=True),
        msg(type="call", id=1, upstream="crm", tool="x"),
        msg(type="call", id=-1, upstream="crm", tool="x", args={}),
        msg(type="call", id=True, upstream="crm", tool="x", args={}),
        msg(type="call", id=1, upstream="../etc", tool="x", args={}),
        msg(type="call", id=1, upstream="crm", tool="x", args=[1]),
        msg(type="done", id=1, status="fine", error_type=None, result=None),
        msg(type="done", id=1, status="ok", error_type="a b", result=None),
        msg(type="done", id=1, status="ok", error_type=None, result="x" * 200),
        msg(type="done", id=1, status="ok", error_type=None, result=None, cpu_s=0),
    ],
)
def test_invalid_messages_are_violations(line):
    with pytest.raises(ProtocolViolation) as info:
        parse(line, 100)
    assert "EMAIL" not in str(info.value)  # messages never echo the payload


def test_oversized_message():
    with pytest.raises(ProtocolViolation, match="larger than"):
        parse(b" " * (MAX_MESSAGE_BYTES + 1), 100)
