"""Walking a JSON-like value: every string, every dict key and every number becomes a slot that
detection and the guard fill, and the value is rebuilt with the replacements, in the same shape.

* A dict key with a replacement becomes the tokenised key; when two keys of one dict end up the
  same (``"Maria Lopez"`` and ``"maria lopez"`` both ``[PERSON_1]``), both are kept: the later
  one gets a suffix, `` (2)``, `` (3)``..., in the dict's order, so the result is deterministic.
* A number (int, or a float with no fraction) is a slot of its digits; with a replacement it
  becomes that string (``4111111111111111`` -> ``"[CREDIT_CARD_1]"``).
* Strings that are themselves JSON documents (MCP text content often carries a JSON tool result)
  are parsed, walked like the outer value (keys and numbers included), and serialised again, so
  key hints work inside them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from veil.tokenizer.hints import HintTable, snake

_MAX_DEPTH = 200
# Shorter keys and numbers can hold no value the tokenizer would replace (the guard needs three
# characters, four digits; detection more): not worth a slot. "-123" counts its sign.
_MIN_KEY_CHARS = 3
_MIN_NUMBER_DIGITS = 4


@dataclass(slots=True)
class Slot:
    text: str
    path: str  # JSON path of the value, e.g. ``$.customers[3].notes[0]``
    hint: str | None  # entity type the key implies: the whole value is that entity
    ner: bool  # free text: worth running NER on
    context: str  # words of the key name, as context for pattern recognizers
    write: Callable[[str], None]
    replacement: str | None = None
    kind: str = "value"  # "value" (a string), "key" (a dict key) or "number"


@dataclass
class Walk:
    holder: list[Any] = field(default_factory=lambda: [None])  # [rebuilt root]
    slots: list[Slot] = field(default_factory=list)
    finalisers: list[Callable[[], None]] = field(default_factory=list)
    # one slot per distinct (key, context): the same keys repeat in every record
    key_slots: dict[tuple[str, str], Slot] = field(default_factory=dict)
    renamed: dict[tuple[str, str], str] = field(default_factory=dict)

    def finish(self) -> Any:
        for slot in self.slots:
            if slot.replacement is not None and slot.replacement != slot.text:
                slot.write(slot.replacement)
        for fin in reversed(self.finalisers):
            fin()
        return self.holder[0]


def is_free_text(text: str) -> bool:
    """Several words with letters: worth NER (a two-word string counts if it has a capital)."""
    parts = text.split()
    if len(parts) < 2:  # most strings of a result (ids, codes, "text", "complete"): decided here
        return False
    words = [w for w in parts if any(c.isalpha() for c in w)]
    if len(words) >= 3:
        return True
    return len(words) == 2 and any(c.isupper() for c in text)


@functools.lru_cache(maxsize=4096)
def _free_key(key: str) -> bool:
    """``is_free_text`` for dict keys, which repeat in every record."""
    return is_free_text(key)


def _parse_embedded(text: str) -> Any | None:
    s = text.strip()
    if len(s) < 2 or s[0] not in "[{" or s[-1] not in "]}":
        return None
    try:
        value = json.loads(s)
    except ValueError:
        return None
    return value if isinstance(value, dict | list) else None


def walk(value: Any, hints: HintTable | None) -> Walk:
    """A copy of ``value`` (never mutated) with its slots collected. ``hints`` None: no key is
    evidence of an entity type (interface text: schemas and listings are not records)."""
    w = Walk()
    _visit(value, "$", "", None, None, (), hints, w, _setter(w.holder, 0), 0)
    return w


def _visit(
    value: Any,
    path: str,
    schema: str,
    key: str | None,
    parent_key: str | None,
    siblings: tuple[str, ...],
    hints: HintTable | None,
    w: Walk,
    put: Callable[[Any], None],
    depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"value nested deeper than {_MAX_DEPTH} levels at {path}")
    hint = hints.hint(key, schema, siblings, parent_key) if key is not None and hints is not None else None
    if isinstance(value, dict):
        copy: dict[Any, Any] = {}
        put(copy)
        keys = tuple(str(k) for k in value)
        context = snake(key).replace("_", " ") if key else ""
        # registered before the children's finalisers, so it runs after them (they write values
        # under the original keys, e.g. a re-serialised JSON document)
        w.finalisers.append(functools.partial(_rekey, copy, context, w.renamed))
        for k, v in value.items():
            ks = str(k)
            child_schema = f"{schema}.{ks}" if schema else ks
            _visit(v, f"{path}.{ks}", child_schema, ks, key, keys, hints, w, _setter(copy, k), depth + 1)
            if isinstance(k, str) and len(k) >= _MIN_KEY_CHARS and not k.isspace() and (k, context) not in w.key_slots:
                write = _setter(w.renamed, (k, context))
                slot = Slot(k, f"{path}.{ks}<key>", None, _free_key(k), context, write, kind="key")
                w.key_slots[(k, context)] = slot
                w.slots.append(slot)
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
    if isinstance(value, int | float) and not isinstance(value, bool):
        put(value)
        text = number_text(value)
        if text is not None and (hint is not None or len(text) >= _MIN_NUMBER_DIGITS):
            context = snake(key).replace("_", " ") if key else ""
            w.slots.append(Slot(text, path, hint, False, context, put, kind="number"))
        elif hint is not None:
            w.slots.append(Slot(str(value), path, hint, False, "", put, kind="number"))
        return
    put(value)


def number_text(value: int | float) -> str | None:
    """The digits a number is written with, when it could be an identifier: an int, or a float
    with no fraction (JSON has one number type: 4155550132.0 is the same phone number); None for
    a fraction (1234.5 is an amount) and for values that are not finite."""
    if isinstance(value, float):
        if not value.is_integer() or abs(value) >= 1e21:
            return None
        value = int(value)
    try:
        return str(value)
    except ValueError:  # longer than Python's int-to-str limit: json.loads cannot make one either
        return None


def _rekey(copy: dict[Any, Any], context: str, renamed: dict[tuple[str, str], str]) -> None:
    """Rebuild ``copy`` in place with its tokenised keys, in order; a key that collides with an
    earlier one gets `` (2)``, `` (3)``... (both values are kept)."""
    if not renamed or not any((k, context) in renamed for k in copy if isinstance(k, str)):
        return
    items = list(copy.items())
    copy.clear()
    for k, v in items:
        new = renamed.get((k, context), k) if isinstance(k, str) else k
        name, n = new, 1
        while name in copy:
            n += 1
            name = f"{new} ({n})"
        copy[name] = v


def _visit_embedded(
    original: str, parsed: Any, path: str, hints: HintTable | None, w: Walk, put: Callable[[Any], None], depth: int
) -> None:
    """Walk a JSON document found inside a string; re-serialise it only if something in it changed
    (so an untouched document keeps its exact original bytes)."""
    inner: list[Any] = [None]
    w.finalisers.append(functools.partial(_reserialise, parsed, inner, 2 if "\n" in original else None, put))
    _visit(parsed, f"{path}<json>", "", None, None, (), hints, w, _setter(inner, 0), depth + 1)


def _reserialise(parsed: Any, inner: list[Any], indent: int | None, put: Callable[[Any], None]) -> None:
    """``put`` the walked copy of an embedded document as text, if it differs from the original.

    The copy holds the original's own objects wherever nothing was replaced (containers compare
    their items by identity first, so even a NaN compares equal to itself there), and a
    replacement is only written where it differs from what it replaces: the copy is equal to
    the original exactly when nothing changed. One comparison instead of serialising both (with
    ``indent``, the standard library's pure-Python encoder, whose closures are garbage for the
    cycle collector)."""
    if inner[0] != parsed:
        put(json.dumps(inner[0], ensure_ascii=False, indent=indent))


def _setter(container: Any, index: Any) -> Callable[[Any], None]:
    # The container's own __setitem__, not a closure over the Walk: nothing a walk builds points
    # back at it, so a finished walk is freed by reference counting (a reference cycle per walk
    # left hundreds of objects per call to the cycle collector: bench/RESULTS.md, Throughput,
    # stop 18).
    return functools.partial(container.__setitem__, index)
