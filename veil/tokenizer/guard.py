"""The exact-match guard: once a value is in the vault for a scope, it is replaced wherever it
reappears in that scope, even where detection would miss it (a name from a ``full_name`` field
inside a free-text note that NER did not tag, a city inside a sentence).

One Aho-Corasick automaton (pyahocorasick) per scope finds all known values in one pass over a
string. Full values match case-insensitively on word boundaries. The given and family names of a
known PERSON value also match when they appear alone ("Maria" after "Maria Lopez"), but only with
their original capitalisation, at least two letters, and never when the part is an English stop
word ("Will", "May"), so that ordinary words are not swallowed. One-word values ("Denver", a
first name) follow the same rule: original capitalisation, never a stop word.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import ahocorasick
from spacy.lang.en.stop_words import STOP_WORDS

# Values of these types are too generic to replace on sight elsewhere ("Friday", "American").
UNGUARDED_TYPES = frozenset({"DATE_TIME", "NRP", "URL"})
MIN_VALUE_CHARS = 3


@dataclass(frozen=True)
class GuardHit:
    start: int
    end: int
    entity_type: str
    value: str  # the known value (full) or the name part as written in the text
    token: str | None  # the known token for full values; None for name parts (they get their own)


def _bounded(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_")


def name_parts(value: str) -> list[str]:
    words = value.split()
    if len(words) < 2:
        return []
    parts = []
    for w in (words[0], words[-1]):
        w = w.strip(".,")
        plain = w.replace("-", "").replace("'", "")
        if len(w) >= 2 and w[0].isupper() and plain.isalpha() and w.lower() not in STOP_WORDS:
            parts.append(w)
    return parts


class Guard:
    """Finds known values of one scope in strings."""

    def __init__(self, known: Iterable[tuple[str, str, str]]) -> None:
        """``known``: (value, token, entity_type) for every live vault entry of the scope."""
        self._ci = ahocorasick.Automaton()
        self._cs = ahocorasick.Automaton()
        full: dict[str, tuple[str, str, str]] = {}
        parts: dict[str, str] = {}
        for value, token, entity_type in known:
            if entity_type in UNGUARDED_TYPES or len(value.strip()) < MIN_VALUE_CHARS:
                continue
            v = value.strip()
            full.setdefault(v.lower(), (v, token, entity_type))
            if entity_type == "PERSON":
                for part in name_parts(v):
                    parts.setdefault(part, "PERSON")
        for key, payload in full.items():
            value = payload[0]
            if value.replace("-", "").replace("'", "").isalpha() and " " not in value:
                # a one-word value ("May", "Denver") is matched with its capitalisation only, and
                # never when it is also a stop word: "may" in a sentence is not Ms. May
                if key not in STOP_WORDS:
                    self._cs.add_word(value, ("full", len(value), *payload))
                continue
            self._ci.add_word(key, ("full", len(key), *payload))
            self._cs.add_word(value, ("full", len(value), *payload))
        for part, entity_type in parts.items():
            if part.lower() not in full:
                self._cs.add_word(part, ("part", len(part), part, None, entity_type))
        self.empty = not full
        self._ci_empty = len(self._ci) == 0
        if full:
            if not self._ci_empty:
                self._ci.make_automaton()
            if len(self._cs):
                self._cs.make_automaton()
            else:
                self.empty = True

    def find(self, text: str) -> list[GuardHit]:
        if self.empty:
            return []
        hits: list[GuardHit] = []
        lowered = text.lower()
        if len(lowered) == len(text) and not self._ci_empty:
            for end, (_kind, n, value, token, entity_type) in self._ci.iter(lowered):
                start = end - n + 1
                if _bounded(text, start, end + 1):
                    hits.append(GuardHit(start, end + 1, entity_type, value, token))
        for end, (kind, n, value, token, entity_type) in self._cs.iter(text):
            start = end - n + 1
            if _bounded(text, start, end + 1):
                hits.append(
                    GuardHit(start, end + 1, entity_type, value if kind == "full" else text[start : end + 1], token)
                )
        return hits


class Guards:
    """Several guards searched as one (the vault keeps a large, rarely rebuilt base automaton and a
    small one for values added since, so a busy scope does not rebuild everything per call)."""

    def __init__(self, *guards: Guard) -> None:
        self._guards = [g for g in guards if not g.empty]

    def find(self, text: str) -> list[GuardHit]:
        if len(self._guards) == 1:
            return self._guards[0].find(text)
        return [hit for g in self._guards for hit in g.find(text)]
