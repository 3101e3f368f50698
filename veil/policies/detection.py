"""Detection for ``policy explain --text/--json`` and ``policy test`` detection cases.

Detection belongs to the tokenizer. This module drives its public pieces the way the tokenizer
does — ``walker.walk`` to find the strings in a JSON value with their key hints, and
``detector.Detector`` for the batched Presidio + spaCy pass — without a database or a vault, so
policy tooling shows what the gateway would detect. For the "why" it asks the same Presidio
analyzer for its decision process on each span (recognizer name, pattern, context words).

When the tokenizer's detection cannot be imported, ``make_detector`` returns a sentence saying
so, detection cases are skipped with that message and ``explain --text`` refuses clearly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from veil.tokenizer.settings import DetectionSettings

# spaCy pipelines loaded by policy tooling, by configured model name: ``policy test`` on several
# policies (and the test suite) loads each model once. Policy tooling is single-threaded.
_PIPELINES: dict[str, tuple[Any, str]] = {}

UNAVAILABLE = "detection cases need veil.tokenizer's detector, which cannot be loaded here ({}): skipped"


@dataclass(frozen=True)
class Finding:
    """One detected span. ``path`` is the JSON path for structured input ('' for plain text)."""

    path: str
    start: int
    end: int
    entity_type: str
    score: float
    recognizer: str
    why: str
    text: str


class PolicyDetector:
    """The tokenizer's detection for one policy's settings, reporting findings with reasons."""

    def __init__(self, settings: DetectionSettings) -> None:
        from veil.tokenizer.detector import Detector, TextItem
        from veil.tokenizer.hints import HintTable
        from veil.tokenizer.nlp import load_ner_pipeline
        from veil.tokenizer.walker import Slot, is_free_text, walk

        self._item, self._slot = TextItem, Slot
        self._walk, self._free = walk, is_free_text
        self.settings = settings
        if settings.spacy_model not in _PIPELINES:
            _PIPELINES[settings.spacy_model] = load_ner_pipeline(settings.spacy_model)
        nlp, model_name = _PIPELINES[settings.spacy_model]
        self.detector = Detector(settings, nlp=nlp, model_name=model_name)
        self.hints = HintTable(settings.field_hints)

    def _slots(self, value: Any) -> list[Any]:
        if isinstance(value, str):
            return [self._slot(value, "", None, self._free(value), "", lambda _v: None)]
        return self._walk(value, self.hints).slots

    def explain(self, value: Any) -> list[Finding]:
        slots = self._slots(value)
        out: list[Finding] = []
        free = [s for s in slots if s.hint is None]
        for s in slots:
            if s.hint is not None and self.detector.wants(s.hint) and not self.detector.allowed_value(s.text):
                key = s.path.rsplit(".", 1)[-1]
                why = f"the key '{key}' marks its whole value as {s.hint} (field hint)"
                out.append(Finding(s.path, 0, len(s.text), s.hint, 1.0, "field hint", why, s.text))
        items = [self._item(s.text, s.context, s.ner) for s in free]
        for slot, spans in zip(free, self.detector.detect(items), strict=True):
            for sp in spans:
                recognizer, why = self._why(slot, sp)
                text = slot.text[sp.start : sp.end]
                out.append(Finding(slot.path, sp.start, sp.end, sp.entity_type, sp.score, recognizer, why, text))
        return sorted(out, key=lambda f: (f.path, f.start, f.end))

    def _why(self, slot: Any, span: Any) -> tuple[str, str]:
        """Which recognizer found the span, and Presidio's own explanation of the score."""
        analyzer = self.detector.analyzer
        text = (f"{slot.context}: " if slot.context else "") + slot.text
        offset = len(text) - len(slot.text)
        try:
            results = analyzer.analyze(
                text,
                language=self.settings.language,
                entities=[span.entity_type],
                return_decision_process=True,
                score_threshold=0,
            )
        except Exception:  # explanation is best effort; the span itself came from the detector
            results = []
        for r in results:
            if r.start - offset < span.end and span.start < r.end - offset and r.analysis_explanation is not None:
                ex = r.analysis_explanation
                why = ex.textual_explanation or f"matched pattern {ex.pattern_name or '?'}"
                if ex.supportive_context_word:
                    why += f"; context word '{ex.supportive_context_word}' raised the score"
                return ex.recognizer or "?", why
        if span.ner:
            return "spaCy NER", f"named entity recognised by {self.detector.model_name or 'the spaCy model'}"
        return "?", ""


def make_detector(settings: DetectionSettings) -> Any:
    """A ``PolicyDetector`` or a string explaining why detection is not available."""
    try:
        return PolicyDetector(settings)
    except ImportError as exc:
        return UNAVAILABLE.format(exc)


def detect(detector: Any, value: Any) -> list[Finding]:
    return detector.explain(value)


def check_detection(detector: Any, spec: dict[str, Any], expect: dict[str, Any]) -> str | None:
    """None when every expected entity is found and nothing listed as ``not_detected`` is."""
    value = spec["text"] if "text" in spec else spec["json"]
    findings = detect(detector, value)
    problems = []
    for want in expect.get("detected", []):
        hits = [f for f in findings if f.entity_type == want["type"]]
        if "value" in want:
            hits = [f for f in hits if f.text == want["value"]]
        if not hits:
            what = f"{want['type']} '{want['value']}'" if "value" in want else want["type"]
            found = ", ".join(f"{f.entity_type} '{f.text}'" for f in findings) or "nothing"
            problems.append(f"{what} not detected (found: {found})")
    for value_text in expect.get("not_detected", []):
        hits = [f for f in findings if value_text in f.text or (f.text and f.text in value_text)]
        if hits:
            problems.append(f"'{value_text}' should be left alone but was detected as {hits[0].entity_type}")
    return "; ".join(problems) or None
