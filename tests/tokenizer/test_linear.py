"""Detection is linear in its input, checked without a clock.

Two facts together make it so: every regex of Veil's own recognizers and pre-checks bounds each
repetition (so one match attempt costs a bounded number of steps), and every recognizer, Veil's,
Presidio's and the policy's, sees a long string only in windows of bounded size (so even a
pattern that backtracks badly costs a bounded amount per window). The second is measured with the
detector's deterministic work counters at n and 4n characters of each pathological input.
Timings per MB are in bench/pathological_inputs.py and bench/RESULTS.md.
"""

from __future__ import annotations

import time

import pytest

from veil.errors import TokenizeBudgetExceeded, VeilError
from veil.tokenizer import detector as detector_mod
from veil.tokenizer import recognizers
from veil.tokenizer.detector import MAX_SPAN, TextItem

PATHOLOGICAL = {
    "A- repetition": lambda n: "12 " + "A-" * (n // 2),
    "digit run": lambda n: "7" * n,
    "digits and spaces": lambda n: "1 " * (n // 2),
    "capitalised run": lambda n: "Aaaa " * (n // 5),
    "e-mail-like run": lambda n: "a.b@c" * (n // 5),
    "dotted run": lambda n: "a." * (n // 2),
    "whitespace": lambda n: " " * n + "x",
    "separators": lambda n: "-/." * (n // 3),
    "nested JSON text": lambda n: "[" * (n // 2) + "]" * (n // 2),
    "address-like lines": lambda n: "12 Oak Street,\n" * (n // 15),
}


def unbounded_quantifiers(pattern: str) -> list[int]:
    """Offsets of ``*``, ``+`` and ``{n,}`` quantifiers outside character classes."""
    found: list[int] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            if i <= len(pattern) and pattern[i - 1] in "pPN" and i < len(pattern) and pattern[i] == "{":
                i = pattern.index("}", i) + 1  # \p{Lu}
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "]" or pattern[i + 1 : i + 3] == "^]":
                i += 2 if pattern[i + 1] == "]" else 3
                continue
        elif c in "*+" and not (i > 0 and pattern[i - 1] == "("):
            found.append(i)
        elif c == "{":
            close = pattern.find("}", i)
            body = pattern[i + 1 : close]
            if body.endswith(",") and body[:-1].isdigit():
                found.append(i)
        i += 1
    return found


def veil_patterns(detector) -> list[tuple[str, str]]:
    out = []
    for rec in detector.analyzer.registry.recognizers:
        if type(rec).__module__ != recognizers.__name__ or not hasattr(rec, "patterns"):
            continue
        out.extend((f"{type(rec).__name__}:{p.name}", p.regex) for p in rec.patterns)
    out.append(("phone candidates", recognizers._PHONE_CANDIDATE.pattern))
    for name, gate in [("gate", detector_mod._GATE), *detector_mod._GATED.items()]:
        out.append((f"gate {name}", gate.pattern))
    return out


def test_the_quantifier_check_sees_unbounded_repetition():
    assert unbounded_quantifiers(r"\b\d+x") == [4]
    assert unbounded_quantifiers(r"[a-z]*@") == [5]
    assert unbounded_quantifiers(r"a{2,}") == [1]
    assert unbounded_quantifiers(r"[*+]{1,4}\p{Lu}{2,40}(?:x|y){0,3}") == []


@pytest.mark.req("tokenize:linear-time")
def test_veil_regexes_bound_every_repetition(detector):
    patterns = veil_patterns(detector)
    assert len(patterns) > 20
    offenders = {name: unbounded_quantifiers(rx) for name, rx in patterns if unbounded_quantifiers(rx)}
    assert offenders == {}


@pytest.mark.req("tokenize:linear-time")
@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_work_grows_linearly_with_input(detector, name):
    make = PATHOLOGICAL[name]
    work = []
    for n in (40_000, 160_000):
        before = dict(detector.work)
        text = make(n)
        detector.patterns([TextItem(text)])
        delta = {k: detector.work[k] - before.get(k, 0) for k in detector.work}
        work.append((len(text), delta))
    (n1, w1), (n4, w4) = work
    # characters handed to the regex engines per input character: bounded and the same at 4x
    assert w4["pattern_chars"] <= 2 * n4 * len(detector._groups)
    assert w4["pattern_chars"] / n4 <= 1.1 * w1["pattern_chars"] / n1 + 0.01
    assert w4["analyze_calls"] <= 4.5 * max(w1["analyze_calls"], 1)


@pytest.mark.req("tokenize:linear-time")
def test_no_recognizer_sees_more_than_a_window(detector, monkeypatch):
    seen: list[int] = []
    original = detector.analyzer.analyze

    def spy(text, *args, **kwargs):
        seen.append(len(text))
        return original(text, *args, **kwargs)

    monkeypatch.setattr(detector.analyzer, "analyze", spy)
    detector.patterns([TextItem("12 " + "A-" * 100_000), TextItem("x" * 50_000 + " 415-555-0132")])
    bound = detector_mod._CHUNK_CHARS + detector_mod._WINDOW + detector_mod._LEAD + MAX_SPAN + 64
    assert seen and max(seen) <= bound


@pytest.mark.req("tokenize:linear-time")
def test_a_value_across_a_window_edge_is_found(detector):
    edge = detector_mod._WINDOW
    for shift in (-20, -6, 0, 5):
        text = "x " * ((edge + shift) // 2) + "mail jane.roe@example.com now " + "y " * 5000
        [spans] = detector.detect([TextItem(text)])
        assert [text[s.start : s.end] for s in spans if s.entity_type == "EMAIL_ADDRESS"] == ["jane.roe@example.com"]


@pytest.mark.req("tokenize:detection-budget")
def test_a_passed_deadline_fails_closed(detector):
    items = [TextItem("Call Maria Lopez on 415-555-0132 about the renewal. " * 50, ner=True) for _ in range(40)]
    with pytest.raises(TokenizeBudgetExceeded) as err:
        detector.detect(items, deadline=time.monotonic() - 1)
    assert isinstance(err.value, VeilError)
    assert "415" not in str(err.value) and "Maria" not in str(err.value)


@pytest.mark.req("tokenize:detection-budget")
def test_a_deadline_in_the_future_changes_nothing(detector):
    items = [TextItem("Call Maria Lopez on 415-555-0132 about the renewal.", ner=True)]
    assert detector.detect(items, deadline=time.monotonic() + 600) == detector.detect(items)
