"""What a call's stages build is freed by reference counting, not left to the cycle collector.

The gateway raises the collector's youngest-generation threshold (``settle_heap``) on the
strength of this: when every walk left a reference cycle (closures holding the walk that held
them), each call handed the collector hundreds of objects and it ran 70 times a second under
load (bench/RESULTS.md, "Garbage per call"). Each test runs its stage with the collector off and
then asks it how many unreachable objects it found: none may be left.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from veil.proxy.shaping import protect, restore, withhold_binary
from veil.tokenizer.nlp import YOUNG_GENERATION_THRESHOLD, settle_heap
from veil.tokenizer.walker import walk

from .test_tokenizer import CUSTOMER


@pytest.fixture
def collector_off() -> Iterator[Callable[[], int]]:
    """Yields a function that reports the cyclic garbage made since the fixture started."""
    gc.collect()
    gc.disable()
    try:
        yield gc.collect
    finally:
        gc.enable()


# A tool result as an MCP SDK server sends it: the record as pretty-printed JSON text (the
# embedded-document path, re-serialised with ``indent``) and as structured content. Built here,
# not in a test: serialising it with ``indent`` makes cycles of its own.
RESULT = {
    "content": [{"type": "text", "text": json.dumps(CUSTOMER, indent=2)}],
    "structuredContent": CUSTOMER,
    "isError": False,
}


def _encoder_cycles() -> int:
    """What the stdlib's pure-Python JSON encoder (``indent``) leaves per document it serialises."""
    gc.collect()
    gc.disable()
    try:
        json.dumps(CUSTOMER, ensure_ascii=False, indent=2)
        return gc.collect()
    finally:
        gc.enable()


ENCODER_CYCLES = _encoder_cycles()


def _walk_and_replace(value: Any, replace: bool) -> Any:
    w = walk(value, None)
    if replace:
        for slot in w.slots:
            if "Maria" in slot.text:
                slot.replacement = slot.text.replace("Maria", "[PERSON_1]")
    return w.finish()


@pytest.mark.parametrize("replace", [False, True], ids=["unchanged", "replaced"])
def test_walk_leaves_no_cycles(collector_off, replace):
    out = _walk_and_replace(RESULT, replace)
    text = out["content"][0]["text"]
    assert ("[PERSON_1]" in text) is replace and ("Maria" in text) is not replace  # the walk did its job
    del out, text
    found = collector_off()
    # A changed document is serialised once (with ``indent``, like the original), an unchanged one
    # not at all.
    assert found == (ENCODER_CYCLES if replace else 0), f"{found} objects were left to the cycle collector"


def test_shaping_leaves_no_cycles(collector_off):
    value = {
        "content": [
            {"type": "image", "data": "aGVsbG8=", "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "file:///a", "blob": "aGk=", "mimeType": "application/pdf"}},
            {"type": "text", "text": "Maria Lopez"},
        ],
        "tools": [{"name": "get_customer", "inputSchema": {"type": "object"}}],
    }
    shown = withhold_binary(value, lambda mime: mime == "image/png", saved := [])
    guarded, saved = protect(shown, frozenset({"name", "inputSchema"}), saved)
    back = restore(guarded, saved)
    assert back["content"][0]["data"] == "aGVsbG8=" and "withheld" in back["content"][1]["resource"]["text"]
    assert back["tools"] == value["tools"]
    del value, shown, guarded, saved, back
    assert collector_off() == 0


def test_tokenize_leaves_no_cycles(tokenizer, scope, collector_off):
    """The whole tokenizer on a customer record, Presidio and the vault included: nothing but the
    one serialisation of the changed text."""
    tokenizer.tokenize(RESULT, scope, "crm")  # first call: caches filled, kept for good
    gc.collect()
    out = tokenizer.tokenize(RESULT, scope, "crm").value
    assert "Maria" not in json.dumps(out)
    del out
    found = collector_off()
    assert found == ENCODER_CYCLES, f"{found} objects were left to the cycle collector"


def test_settle_heap_raises_the_young_threshold():
    """What docs/deployment.md says the gateway does once its models are loaded."""
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *before[1:])
        assert YOUNG_GENERATION_THRESHOLD == 50_000  # the number docs/deployment.md gives
        assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)
