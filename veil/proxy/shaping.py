"""Converting MCP messages to plain JSON for the tokenizer and back.

The tokenizer works on JSON-like values, so every upstream message is dumped to its wire form,
tokenised as a whole (every string in it is scanned, so a field added by a future protocol
revision is covered too), and validated back into its model.

Binary payloads (image and audio content, resource blobs) cannot be scanned for PII, so they are
withheld and replaced by a note saying what was removed: the safe default for a privacy gateway.
An upstream's ``binary`` setting (config) may let some MIME types pass; a passed payload is kept
out of the tokenizer's reach (a base64 string must not be "detected" and corrupted) exactly like
the identifiers ``protect`` keeps, and put back by ``restore``.
"""

from __future__ import annotations

from collections.abc import Callable
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


def _withhold_all(mime: str | None) -> bool:
    return False


def withhold_binary(
    value: Any, passes: Callable[[str | None], bool] = _withhold_all, saved: list[Any] | None = None
) -> Any:
    """Replace image/audio content blocks and resource blobs with a text note, recursively.

    A payload whose MIME type ``passes`` is kept; with ``saved``, it is swapped for a placeholder
    appended there (``restore`` puts it back after tokenisation)."""
    # Module-level recursion rather than a nested function that calls itself: such a function
    # is a reference cycle (it holds the cell that holds it), garbage for the cycle collector on
    # every message (bench/RESULTS.md, Throughput, stop 18).
    if isinstance(value, list):
        return [withhold_binary(x, passes, saved) for x in value]
    if not isinstance(value, dict):
        return value
    kind, mime = value.get("type"), value.get("mimeType")
    if kind in ("image", "audio") and isinstance(value.get("data"), str):
        if passes(mime):
            return {**value, "data": _keep(value["data"], saved)}
        return _note(kind, mime, len(value["data"]))
    if "blob" in value and isinstance(value.get("blob"), str) and "uri" in value:
        if passes(mime):
            return {**value, "blob": _keep(value["blob"], saved)}
        return {"uri": value["uri"], "mimeType": "text/plain", "text": _note("blob", mime, len(value["blob"]))["text"]}
    return {k: withhold_binary(x, passes, saved) for k, x in value.items()}


def _keep(payload: str, saved: list[Any] | None) -> Any:
    if saved is None:
        return payload
    saved.append(payload)
    return {_SLOT: len(saved) - 1}


def protect(value: Any, keys: frozenset[str], saved: list[Any] | None = None) -> tuple[Any, list[Any]]:
    """Swap the values under ``keys`` (at any depth) for placeholders, so identifiers and schemas
    (a tool's ``name``, its ``inputSchema``, a resource's ``uri``) are not tokenised: they are the
    upstream's interface, not data. ``restore`` puts them back after tokenisation. ``saved`` may
    already hold placeholders (``withhold_binary``'s); new ones are appended."""
    saved = [] if saved is None else saved
    return _protected(value, keys, saved), saved


def _protected(value: Any, keys: frozenset[str], saved: list[Any]) -> Any:
    if isinstance(value, list):
        return [_protected(x, keys, saved) for x in value]
    if isinstance(value, dict):
        out = {}
        for k, x in value.items():
            if k in keys:
                saved.append(x)
                out[k] = {_SLOT: len(saved) - 1}
            else:
                out[k] = _protected(x, keys, saved)
        return out
    return value


def restore(value: Any, saved: list[Any]) -> Any:
    if isinstance(value, list):
        return [restore(x, saved) for x in value]
    if isinstance(value, dict):
        if set(value) == {_SLOT}:
            return saved[value[_SLOT]]
        return {k: restore(x, saved) for k, x in value.items()}
    return value


_SLOT = "__veil_protected__"
