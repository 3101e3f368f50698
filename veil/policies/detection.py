"""Detection for ``policy explain --text/--json`` and ``policy test`` detection cases.

Detection belongs to the tokenizer; this module only adapts its detection-only entry point (no
database, no vault) to what explain and test need, so policy tooling always shows exactly what the
gateway would detect. Until the tokenizer offers such an entry point, ``make_detector`` returns a
sentence saying so and detection cases are skipped with that message.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from veil.tokenizer.settings import DetectionSettings

UNAVAILABLE = "detection cases need veil.tokenizer's detection entry point, which this build does not have yet: skipped"


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


def make_detector(settings: DetectionSettings) -> Any:
    """A callable ``detect(value) -> list[Finding]`` or a string explaining why there is none."""
    try:
        module = importlib.import_module("veil.tokenizer.detect")
    except ImportError:
        return UNAVAILABLE
    factory = getattr(module, "Detector", None)
    if factory is None:
        return UNAVAILABLE
    return factory(settings)


def detect(detector: Any, value: Any) -> list[Finding]:
    raw = detector.explain(value)
    return [
        Finding(
            path=getattr(f, "path", ""),
            start=f.start,
            end=f.end,
            entity_type=f.entity_type,
            score=float(f.score),
            recognizer=getattr(f, "recognizer", ""),
            why=getattr(f, "why", ""),
            text=f.text,
        )
        for f in raw
    ]


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
        hits = [f for f in findings if value_text in f.text or (f.text in value_text and f.text)]
        if hits:
            problems.append(f"'{value_text}' should be left alone but was detected as {hits[0].entity_type}")
    return "; ".join(problems) or None
