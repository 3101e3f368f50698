"""The host side of the RPC channel: strict parsing of what the sandbox sends.

Everything arriving from the sandbox is untrusted (the code shares the runtime's process and can
write to the channel fd itself), so each message is checked for size, shape, known fields and
types before the manager acts on it, and a ``done`` is only a claim: the manager ends an execution
when the host sees the interpreter stopped (``ending``), not before. The channel carries tool
calls and execution results only: there is no message that asks for real values, configuration
or anything else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


class ProtocolViolation(Exception):
    """The sandbox sent something that is not a valid channel message (it is then stopped)."""


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class Call:
    id: int
    upstream: str
    tool: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Done:
    id: int
    status: str  # "ok" | "error" | "memory" | "cpu"
    error_type: str | None
    result: str | None


_FIELDS = {
    "ready": {"type", "pid"},
    "call": {"type", "id", "upstream", "tool", "args"},
    "done": {"type", "id", "status", "error_type", "result"},
}


def _int(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise ProtocolViolation(f"field '{field}' must be a non-negative integer")
    return value


def parse(line: bytes, max_result_chars: int) -> Ready | Call | Done:
    """One newline-delimited message -> a typed value, or ProtocolViolation (never echoing it)."""
    if len(line) > MAX_MESSAGE_BYTES:
        raise ProtocolViolation(f"message larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        raw = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolViolation("message is not JSON") from None
    if not isinstance(raw, dict) or raw.get("type") not in _FIELDS:
        raise ProtocolViolation("message has no known 'type'")
    kind = raw["type"]
    if set(raw) != _FIELDS[kind]:
        raise ProtocolViolation(f"'{kind}' message has missing or unknown fields")
    if kind == "ready":
        return Ready(pid=_int(raw["pid"], "pid"))
    if kind == "call":
        upstream, tool, args = raw["upstream"], raw["tool"], raw["args"]
        if not isinstance(upstream, str) or not _NAME.match(upstream):
            raise ProtocolViolation("field 'upstream' must be an upstream name")
        if not isinstance(tool, str) or not _NAME.match(tool):
            raise ProtocolViolation("field 'tool' must be a tool name")
        if not isinstance(args, dict):
            raise ProtocolViolation("field 'args' must be an object")
        return Call(id=_int(raw["id"], "id"), upstream=upstream, tool=tool, args=args)
    status, error_type, result = raw["status"], raw["error_type"], raw["result"]
    if status not in ("ok", "error", "memory", "cpu"):
        raise ProtocolViolation("field 'status' must be ok, error, memory or cpu")
    if error_type is not None and (not isinstance(error_type, str) or not _IDENT.match(error_type)):
        raise ProtocolViolation("field 'error_type' must be a Python class name")
    if result is not None and (not isinstance(result, str) or len(result) > max_result_chars + 1):
        raise ProtocolViolation("field 'result' must be a string within the output limit")
    return Done(id=_int(raw["id"], "id"), status=status, error_type=error_type, result=result)


def encode(message: dict[str, Any]) -> bytes:
    """Host -> sandbox message as one JSON line; values JSON cannot express (dates) become strings."""
    return (json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str) + "\n").encode()
