"""Converting MCP messages to plain JSON for the tokenizer and back.

The tokenizer works on JSON-like values, so every upstream message is dumped to its wire form,
tokenised as a whole (every string in it is scanned, so a field added by a future protocol
revision is covered too), and validated back into its model.

Binary payloads (image and audio content, resource blobs) cannot be scanned for PII, so they are
withheld and replaced by a note saying what was removed: the safe default for a privacy gateway.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def to_wire(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def from_wire(cls: type[M], data: dict[str, Any]) -> M:
    return cls.model_validate(data, by_alias=True)


def _note(kind: str, mime: str | None, size: int) -> dict[str, Any]:
    return {
        "type": "text",
        "text": f"[Veil withheld {kind} content ({mime or 'unknown type'}, {size} bytes of base64): "
        "binary data cannot be checked for personal data]",
    }


def withhold_binary(value: Any) -> Any:
    """Replace image/audio content blocks and resource blobs with a text note, recursively."""
    if isinstance(value, list):
        return [withhold_binary(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get("type")
    if kind in ("image", "audio") and isinstance(value.get("data"), str):
        return _note(kind, value.get("mimeType"), len(value["data"]))
    if "blob" in value and isinstance(value.get("blob"), str) and "uri" in value:
        return {
            "uri": value["uri"],
            "mimeType": "text/plain",
            "text": _note("blob", value.get("mimeType"), len(value["blob"]))["text"],
        }
    return {k: withhold_binary(v) for k, v in value.items()}


def protect(value: Any, keys: frozenset[str]) -> tuple[Any, list[Any]]:
    """Swap the values under ``keys`` (at any depth) for placeholders, so identifiers and schemas
    (a tool's ``name``, its ``inputSchema``, a resource's ``uri``) are not tokenised: they are the
    upstream's interface, not data. ``restore`` puts them back after tokenisation."""
    saved: list[Any] = []

    def walk(v: Any) -> Any:
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if k in keys:
                    saved.append(x)
                    out[k] = {_SLOT: len(saved) - 1}
                else:
                    out[k] = walk(x)
            return out
        return v

    return walk(value), saved


def restore(value: Any, saved: list[Any]) -> Any:
    if isinstance(value, list):
        return [restore(x, saved) for x in value]
    if isinstance(value, dict):
        if set(value) == {_SLOT}:
            return saved[value[_SLOT]]
        return {k: restore(x, saved) for k, x in value.items()}
    return value


_SLOT = "__veil_protected__"
