"""The canonical encoding of an audit record and the hash chain over it.

Why a standard encoding: an auditor must be able to re-implement verification without reading
Veil's code. Each stored row is turned into a JSON object with a fixed set of members
(:data:`FIELDS`) and serialised with RFC 8785 (JSON Canonicalization Scheme: sorted keys, no
whitespace, ECMAScript number formatting, UTF-8). The chain hash of row *n* is

    hash_n = SHA-256(hash_{n-1} || JCS(record_n))        hash_0 = 32 zero bytes

Values are normalised *before* hashing and storing (see :func:`json_value`) so that what comes
back from PostgreSQL (``jsonb`` re-orders keys and rewrites numbers) encodes to the same bytes:
integers outside the IEEE-754 safe range become doubles, non-finite numbers are refused, and NUL
characters (which PostgreSQL text cannot hold) become U+FFFD. ``docs/audit.md`` documents this.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring as _quote  # type: ignore[attr-defined]
from typing import Any

import rfc8785

ENCODING_VERSION = 1
GENESIS_HASH = bytes(32)
MAX_SAFE_INT = 2**53 - 1

# Members of the canonical record, in the order of the audit_events columns (order does not
# matter for JCS, which sorts keys; the list is the contract of which members exist).
FIELDS = (
    "v",
    "seq",
    "ts",
    "occurred_at",
    "id",
    "kind",
    "outcome",
    "principal",
    "roles",
    "tenant",
    "session_id",
    "scope",
    "upstream",
    "tool",
    "args_digest",
    "entities",
    "tokens",
    "untokenised",
    "decision",
    "rule",
    "duration_ms",
    "policy_version",
    "detail",
)


class EncodingError(ValueError):
    """A value cannot be put in the audit trail (names the field, never the value)."""


def _text(value: str) -> str:
    """PostgreSQL text holds neither NUL nor lone surrogates: replace them rather than fail a batch."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def json_value(value: Any, where: str) -> Any:
    """``value`` as plain JSON data that survives a PostgreSQL ``jsonb`` round trip unchanged."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, int):
        return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EncodingError(f"audit field {where!r} holds a non-finite number; use null or a string")
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if isinstance(k, bool) or not isinstance(k, str | int):
                raise EncodingError(f"audit field {where!r} has a {type(k).__name__} key; keys must be strings")
            out[_text(str(k))] = json_value(v, f"{where}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return format_ts(value)
    if is_dataclass(value) and not isinstance(value, type):
        return json_value(asdict(value), where)
    raise EncodingError(
        f"audit field {where!r} holds a {type(value).__name__}; only JSON values (dict, list, str, number, "
        "bool, None) can be audited"
    )


def format_ts(value: datetime) -> str:
    """UTC, microseconds always present: ``2026-11-24T17:20:30.123456Z``."""
    if value.tzinfo is None:
        raise EncodingError("audit timestamps must be timezone-aware")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be")


def _sorted_keys(mapping: Mapping[str, Any]) -> list[str]:
    """Member names in UTF-16 code unit order (RFC 8785); for ASCII names that is plain order."""
    keys = sorted(mapping)
    if not all(k.isascii() for k in keys):
        keys.sort(key=_utf16_key)
    return keys


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_quote(value))
    elif isinstance(value, int):
        # Outside the safe range an integer is the double it rounds to (see json_value).
        out.append(str(value) if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else _float(float(value)))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(_sorted_keys(value)):
            if i:
                out.append(",")
            out.append(_quote(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise EncodingError(f"cannot canonicalise a {type(value).__name__}")


def _float(value: float) -> str:
    if not math.isfinite(value):
        raise EncodingError("a non-finite number cannot be canonicalised")
    if value.is_integer() and abs(value) <= MAX_SAFE_INT:
        return str(int(value))  # what ECMAScript prints for integral doubles in this range
    return rfc8785.dumps(value).decode("ascii")  # ECMAScript number formatting


def jcs(value: Any) -> bytes:
    """RFC 8785 canonical JSON bytes of already-normalised JSON data.

    Same output as ``rfc8785.dumps`` (a test checks it), several times faster: strings go through
    the C JSON string encoder, whose escaping is exactly RFC 8785's, and members are sorted by
    UTF-16 code units as the RFC requires; only floats take the reference formatter.
    """
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")


def canonical_json(value: Any) -> bytes:
    """Normalise then canonicalise: the bytes :func:`digest_args` and the chain hash are over."""
    return jcs(json_value(value, "value"))


def digest_args(args: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of (already tokenised) tool arguments.

    The audit row holds this digest instead of the arguments, so two calls with the same
    arguments can be matched without keeping the arguments themselves.
    """
    return "sha256:" + hashlib.sha256(canonical_json(args)).hexdigest()


def record_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical record of one row (a mapping with the audit_events columns), as JSON data.

    The readable definition of what is hashed; :func:`encode_record` produces ``JCS`` of it
    directly. Values are normalised again, as rows read back from PostgreSQL need (``jsonb``
    may return the double 1e16 as the integer 10000000000000000).
    """
    doc: dict[str, Any] = {"v": ENCODING_VERSION}
    for name in FIELDS[1:]:
        value = row[name]
        if name in ("ts", "occurred_at"):
            doc[name] = format_ts(value)
        elif name == "id":
            doc[name] = str(value)
        else:
            doc[name] = json_value(value, name)
    return doc


_MEMBERS = sorted(FIELDS)  # all ASCII: UTF-16 order is plain order
_PREFIX = {name: _quote(name) + ":" for name in FIELDS}


def encode_record(row: Mapping[str, Any]) -> bytes:
    """``JCS(record_document(row))`` without building the document (the hot path of verify).

    Identical bytes for rows fresh from :func:`veil.audit.chain.prepare` and rows read back from
    PostgreSQL: strings there are already normalised, and the encoder itself treats integers
    beyond the safe range as doubles. A test checks it against ``rfc8785.dumps``.
    """
    out: list[str] = ["{"]
    for i, name in enumerate(_MEMBERS):
        if i:
            out.append(",")
        out.append(_PREFIX[name])
        if name == "v":
            out.append(str(ENCODING_VERSION))
        elif name in ("ts", "occurred_at"):
            out.append('"' + format_ts(row[name]) + '"')
        elif name == "id":
            out.append('"' + str(row[name]) + '"')
        else:
            _encode(row[name], out)
    out.append("}")
    return "".join(out).encode("utf-8")


def chain_hash(prev_hash: bytes, row: Mapping[str, Any]) -> bytes:
    """``SHA-256(prev_hash || JCS(record))``: the link that makes any edit visible."""
    return hashlib.sha256(bytes(prev_hash) + encode_record(row)).digest()


def to_json_text(value: Any) -> str:
    """Text for a ``jsonb`` parameter (value already normalised)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
