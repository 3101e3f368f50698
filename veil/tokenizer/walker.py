"""Walking a JSON-like value: every string (and every number under a PII key) becomes a slot that
detection fills, and the value is rebuilt with the replacements, in the same shape.

Strings that are themselves JSON documents (MCP text content often carries a JSON tool result)
are parsed, walked like the outer value, and serialised again, so key hints work inside them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from veil.tokenizer.hints import HintTable, snake

_MAX_DEPTH = 200


@dataclass
class Slot:
    text: str
    path: str  # JSON path of the value, e.g. ``$.customers[3].notes[0]``
    hint: str | None  # entity type the key implies: the whole value is that entity
    ner: bool  # free text: worth running NER on
    context: str  # words of the key name, as context for pattern recognizers
    write: Callable[[str], None]
    replacement: str | None = None


@dataclass
class Walk:
    holder: list[Any] = field(default_factory=lambda: [None])  # [rebuilt root]
    slots: list[Slot] = field(default_factory=list)
    finalisers: list[Callable[[], None]] = field(default_factory=list)

    def finish(self) -> Any:
        for slot in self.slots:
            if slot.replacement is not None and slot.replacement != slot.text:
                slot.write(slot.replacement)
        for fin in reversed(self.finalisers):
            fin()
        return self.holder[0]


def is_free_text(text: str) -> bool:
    """Several words with letters: worth NER (a two-word string counts if it has a capital)."""
    words = [w for w in text.split() if any(c.isalpha() for c in w)]
    if len(words) >= 3:
        return True
    return len(words) == 2 and any(c.isupper() for c in text)


def _parse_embedded(text: str) -> Any | None:
    s = text.strip()
    if len(s) < 2 or s[0] not in "[{" or s[-1] not in "]}":
        return None
    try:
        value = json.loads(s)
    except ValueError:
        return None
    return value if isinstance(value, dict | list) else None


def walk(value: Any, hints: HintTable) -> Walk:
    """A copy of ``value`` (never mutated) with its slots collected."""
    w = Walk()
    _visit(value, "$", "", None, None, (), hints, w, lambda v: w.holder.__setitem__(0, v), 0)
    return w


def _visit(
    value: Any,
    path: str,
    schema: str,
    key: str | None,
    parent_key: str | None,
    siblings: tuple[str, ...],
    hints: HintTable,
    w: Walk,
    put: Callable[[Any], None],
    depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"value nested deeper than {_MAX_DEPTH} levels at {path}")
    hint = hints.hint(key, schema, siblings, parent_key) if key is not None else None
    if isinstance(value, dict):
        copy: dict[Any, Any] = {}
        put(copy)
        keys = tuple(str(k) for k in value)
        for k, v in value.items():
            ks = str(k)
            child_schema = f"{schema}.{ks}" if schema else ks
            _visit(v, f"{path}.{ks}", child_schema, ks, key, keys, hints, w, _setter(copy, k), depth + 1)
        return
    if isinstance(value, list | tuple):
        items: list[Any] = [None] * len(value)
        put(items)
        for i, v in enumerate(value):
            # list items inherit the key of the list (``emails: [...]`` are all e-mails)
            _visit(v, f"{path}[{i}]", schema, key, parent_key, siblings, hints, w, _setter(items, i), depth + 1)
        return
    if isinstance(value, str):
        put(value)
        if not value.strip():
            return
        embedded = _parse_embedded(value) if hint is None else None
        if embedded is not None:
            _visit_embedded(value, embedded, path, hints, w, put, depth)
            return
        context = snake(key).replace("_", " ") if key else ""
        w.slots.append(Slot(value, path, hint, hint is None and is_free_text(value), context, put))
        return
    if isinstance(value, int | float) and not isinstance(value, bool) and hint is not None:
        put(value)
        text = str(value)
        w.slots.append(Slot(text, path, hint, False, "", put))
        return
    put(value)


def _visit_embedded(
    original: str, parsed: Any, path: str, hints: HintTable, w: Walk, put: Callable[[Any], None], depth: int
) -> None:
    """Walk a JSON document found inside a string; re-serialise it only if something in it changed
    (so an untouched document keeps its exact original bytes)."""
    inner: list[Any] = [None]
    indent = 2 if "\n" in original else None
    before = json.dumps(parsed, ensure_ascii=False, indent=indent)

    def finalise() -> None:
        after = json.dumps(inner[0], ensure_ascii=False, indent=indent)
        if after != before:
            put(after)

    w.finalisers.append(finalise)
    _visit(parsed, f"{path}<json>", "", None, None, (), hints, w, lambda v: inner.__setitem__(0, v), depth + 1)


def _setter(container: Any, index: Any) -> Callable[[Any], None]:
    def put(v: Any) -> None:
        container[index] = v

    return put
