"""The exact-match guard: once a value is in the vault for a scope, it is replaced wherever it
reappears in that scope, even where detection would miss it, and however it comes back: glued to
other characters (``9123-45-67899`` after the agent sent ``9[US_SSN_1]9`` to an echoing
upstream), reformatted (``123456789``, ``(415) 555 0132``), run together (``MariaLopez``,
``maria_lopez``, inside a URL), in full-width digits or with zero-width characters inside.

How: every string is folded ONCE into a compact form (``fold``): each character is decomposed
with NFKD, combining marks and format characters (Unicode category Cf: zero-width space, joiner,
soft hyphen, bidi marks) are dropped, the rest is case-folded, and only letters and digits are
kept. An offset map leads from every compact character back to the original one. Every known
value is folded the same way, and one Aho-Corasick automaton (pyahocorasick) per scope finds all
of them in one linear pass over the compact form. Each candidate is then judged on the original
characters it covers, by the rule of its pattern:

* ``free``: a distinctive value (at least 6 letters/digits in two or more parts, an e-mail, or 7+
  digits) spelled as stored matches anywhere, with no word boundary (gluing is the attack);
  spelled differently ("MariaLopez" for "Maria Lopez") it must stand at a word edge;
* ``digits``: phone, card, SSN, IBAN and other identifiers compared by their digits: any
  separators, but the digits must not continue on either side (``80202`` is not found inside
  ``1802021``), unless the value is distinctive and spelled exactly as stored;
* ``word``: short values ("Ann Lee") and the local part of a known e-mail
  (``tammy.alexander57``): any spelling, at a word edge;
* ``name``: one-word values ("Denver", "Xochitl") and the first and last names of a known person
  written alone: spelled as stored, with the stored capitalisation (or all capitals), at a word
  edge, and never an English stop word ("may", "will"), so ordinary words are not swallowed.

A word edge is a side where the neighbouring character is not a letter or digit, or changes
class (letter/digit) or case from lower to upper ("userMariaLopez"). Name parts and e-mail local
parts get a token of their own (the caller stores the text as written); full values come with the
token they already have.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

import ahocorasick
from spacy.lang.en.stop_words import STOP_WORDS

from veil.tokenizer.escapes import decoded
from veil.tokenizer.tokens import ALNUM_TYPES, DIGIT_TYPES, TOKEN_RE, normalise

# Values of these types are too generic to replace on sight elsewhere ("Friday", "American").
UNGUARDED_TYPES = frozenset({"DATE_TIME", "NRP", "URL"})
MIN_VALUE_CHARS = 3
MIN_DIGITS = 4  # a digits-only pattern shorter than this would match everywhere
DISTINCT_CHARS = 6  # a multi-part value at least this long (folded) matches with no word boundary
DISTINCT_DIGITS = 7  # so does a run of at least this many digits spelled as stored
LOCAL_PART_CHARS = 6  # e-mail local parts guarded on their own from this length
_SPREAD = 3  # a match may cover at most this many original characters per folded one (+4)

_ASCII_DROP = re.compile(r"[^0-9A-Za-z]+")
_ALNUM_MASK = bytes(1 if chr(b).isascii() and chr(b).isalnum() else 0 for b in range(256))
_ASCII_RUN_OR_OTHER = re.compile(r"[0-9A-Za-z]+|[^\x00-\x7f]")
_SPACES = re.compile(r"\s+")


# -- folding ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1 << 16)
def _fold_char(ch: str) -> str:
    """One character's compact form: NFKD, no combining marks, no Cf, case-folded, alnum only."""
    if unicodedata.category(ch) == "Cf":
        return ""
    out: list[str] = []
    for c in unicodedata.normalize("NFKD", ch):
        if unicodedata.combining(c):
            continue
        out.extend(d for d in c.casefold() if d.isalnum())
    return "".join(out)


class Folded:
    """A string's compact form and the way back to the original characters."""

    __slots__ = ("_map", "compact", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._map: list[int] | None = None  # original index of every compact character
        if text.isascii():
            self.compact = _ASCII_DROP.sub("", text).lower()
            return
        parts: list[str] = []
        index: list[int] = []
        for m in _ASCII_RUN_OR_OTHER.finditer(text):  # ASCII words in bulk, other characters one by one
            piece, i = m.group(), m.start()
            if piece[0] < "\x80":
                parts.append(piece.lower())
                index.extend(range(i, m.end()))
                continue
            f = _fold_char(piece)
            if f:
                parts.append(f)
                index.extend([i] * len(f))
        self.compact = "".join(parts)
        self._map = index

    def original(self, i: int) -> int:
        """Index in the original string of compact character ``i``."""
        if self._map is None:  # ASCII: the positions of its letters and digits, found in C
            self._map = list(itertools.compress(range(len(self.text)), self.text.encode().translate(_ALNUM_MASK)))
        return self._map[i]


def compact(text: str) -> str:
    """The folded, letters-and-digits-only form of ``text`` (what the automaton matches on)."""
    return Folded(text).compact


@functools.lru_cache(maxsize=1 << 14)
def spelling(text: str) -> str:
    """``text`` folded but with its separators: how it is written, up to case, width, accents,
    zero-width characters, runs of white space and punctuation at its edges."""
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch.lower())
            continue
        if unicodedata.category(ch) == "Cf":
            continue
        for c in unicodedata.normalize("NFKD", ch):
            if not unicodedata.combining(c):
                out.append(c.casefold())
    s = _SPACES.sub(" ", "".join(out))
    start, end = 0, len(s)
    while start < end and not s[start].isalnum():
        start += 1
    while end > start and not s[end - 1].isalnum():
        end -= 1
    return s[start:end]


# -- word edges ---------------------------------------------------------------------------------
_SKIP = 16  # at most this many format characters are skipped looking for a neighbour


def _neighbour(text: str, i: int, step: int) -> str:
    for _ in range(_SKIP):
        if i < 0 or i >= len(text):
            return ""
        ch = text[i]
        if ch.isascii() or unicodedata.category(ch) != "Cf":
            return ch
        i += step
    return ""


def _joined(a: str, b: str) -> bool:
    """Whether ``a`` directly followed by ``b`` reads as one word (no edge between them)."""
    if not (a and b and a.isalnum() and b.isalnum()):
        return False
    if a.isdigit() != b.isdigit():
        return False
    if a.isdigit():
        return True
    return not (a.islower() and b.isupper())  # "userMaria": a camelCase edge


def at_word_edges(text: str, start: int, end: int) -> bool:
    return not _joined(_neighbour(text, start - 1, -1), text[start]) and not _joined(
        text[end - 1], _neighbour(text, end, 1)
    )


def at_digit_edges(text: str, start: int, end: int) -> bool:
    return not _neighbour(text, start - 1, -1).isdigit() and not _neighbour(text, end, 1).isdigit()


# -- patterns -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuardHit:
    start: int
    end: int
    entity_type: str
    value: str  # the known value (full) or the text as written (name part, e-mail local part)
    token: str | None  # the known token for full values; None for parts (they get their own)


@dataclass(frozen=True)
class _Pattern:
    kind: str  # "full" | "part" | "local" ("local-if-name" until a known name is found in it)
    rule: str  # "free" | "digits" | "word" | "name"
    value: str
    token: str | None
    entity_type: str
    spelling: str  # spelling() of the stored value
    distinct: bool  # may match with no word edge when spelled as stored
    upper_first: bool  # for "name": the stored capitalisation


def name_parts(value: str) -> list[str]:
    """The first and last word of a multi-word name, when they can stand alone safely: at least
    two letters, capitalised, not an English stop word ("Will Smith" gives only "Smith")."""
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


def _alnum_runs(value: str) -> int:
    return len(re.findall(r"[^\W_]+", value))


def _patterns(value: str, token: str, entity_type: str) -> list[tuple[str, _Pattern]]:
    """(folded key, pattern) for one known value: the value itself, and for people and e-mails
    the parts that identify them alone."""
    v = value.strip()
    key = compact(v)
    out: list[tuple[str, _Pattern]] = []
    spelled = spelling(v)
    if entity_type in DATE_TYPES:
        for k in date_forms(v):
            rule = "digits" if k.isdigit() else "word"
            out.append((k, _Pattern("full", rule, v, token, entity_type, spelled, False, False)))
    if entity_type in DIGIT_TYPES or (key.isdigit() and entity_type not in ALNUM_TYPES):
        digits = normalise(v, entity_type) if entity_type in DIGIT_TYPES else key
        for k in dict.fromkeys((re.sub(r"\D", "", key), digits)):
            if len(k) >= MIN_DIGITS and k.isdigit():
                p = _Pattern("full", "digits", v, token, entity_type, spelled, len(k) >= DISTINCT_DIGITS, False)
                out.append((k, p))
                # as a JSON number (an integer column) it loses its leading zeros: 056-17-0234 -> 56170234
                if k[0] == "0" and len(k.lstrip("0")) >= DISTINCT_DIGITS:
                    out.append(
                        (k.lstrip("0"), _Pattern("full", "digits", v, token, entity_type, spelled, False, False))
                    )
        return out
    if len(key) < MIN_VALUE_CHARS:
        return out
    runs = _alnum_runs(v)
    if entity_type in ALNUM_TYPES:
        out.append((key, _Pattern("full", "free", v, token, entity_type, spelled, len(key) >= DISTINCT_DIGITS, False)))
        return out
    if runs == 1 and key.isalpha():
        # one word ("Denver", "Xochitl"): as stored, capitalised as stored, never a stop word
        if spelled not in STOP_WORDS:
            out.append((key, _Pattern("full", "name", v, token, entity_type, spelled, False, v[:1].isupper())))
    else:
        distinct = ("@" in v or runs >= 2) and len(key) >= DISTINCT_CHARS
        rule = "free" if distinct else "word"
        out.append((key, _Pattern("full", rule, v, token, entity_type, spelled, distinct, False)))
    if entity_type == "PERSON":
        for part in name_parts(v):
            k = compact(part)
            if len(k) >= 2:  # "Li", "Vu": name_parts already asks for two letters, capitalised
                out.append((k, _Pattern("part", "name", part, None, "PERSON", spelling(part), False, True)))
    if entity_type == "EMAIL_ADDRESS" and v.count("@") == 1:
        local = v.split("@", 1)[0]
        k = compact(local)
        separated = _alnum_runs(local) >= 2 or (any(c.isdigit() for c in k) and any(c.isalpha() for c in k))
        if len(k) >= LOCAL_PART_CHARS and k not in STOP_WORDS:
            # one plain word ("anakamura", but also "support") only where it spells a known name
            kind = "local" if separated else "local-if-name"
            out.append((k, _Pattern(kind, "word", local, None, "EMAIL_ADDRESS", spelling(local), False, False)))
    return out


NAME_EVIDENCE_CHARS = 4  # a known name word this long inside a plain local part makes it a name


#: Types whose values are dates: also found written in the other usual date formats.
DATE_TYPES = frozenset({"DATE_OF_BIRTH"})
_DATE_INPUT = (
    "%Y-%m-%d",
    "%m/%d/%Y",
    "%Y/%m/%d",
    "%d.%m.%Y",
    "%B %d, %Y",
    "%b %d, %Y",
    "%d %B %Y",
    "%d %b %Y",
    "%Y%m%d",
)
_MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)


def date_forms(value: str) -> list[str]:
    """Compact forms of a date in the other usual spellings (1981-03-14: 03/14/1981, 14/03/1981,
    3/14/1981, 19810314, March 14, 1981, 14 Mar 1981, ...); empty when ``value`` is not a date
    with a four-digit year. Two-digit years are left out: six digits match too much."""
    d = None
    for fmt in _DATE_INPUT:
        try:
            d = datetime.strptime(value.strip(), fmt).date()
            break
        except ValueError:
            continue
    if d is None:
        return []
    y, m, day = d.year, d.month, d.day
    month = _MONTHS[m - 1]
    forms = {
        f"{m:02d}{day:02d}{y}",
        f"{day:02d}{m:02d}{y}",
        f"{y}{m:02d}{day:02d}",
        f"{m}{day}{y}",
        f"{day}{m}{y}",
        f"{month}{day}{y}",
        f"{day}{month}{y}",
        f"{month[:3]}{day}{y}",
        f"{day}{month[:3]}{y}",
        f"{month}{day:02d}{y}",
        f"{day:02d}{month}{y}",
    }
    return sorted(forms - {compact(value)})


def _capitalised_like(raw: str, upper_first: bool) -> bool:
    if len(raw) >= 3 and raw.isupper():
        return True  # "MARIA" in a heading
    first = next((c for c in raw if c.isalpha()), "")
    return bool(first) and first.isupper() == upper_first


def _accept(p: _Pattern, text: str, start: int, end: int) -> bool:
    raw = text[start:end]
    if _quick_reject(p, raw):
        return False
    same = spelling(raw) == p.spelling
    if p.rule == "free":
        return (same and p.distinct) or at_word_edges(text, start, end)
    if p.rule == "digits":
        return (same and p.distinct) or at_digit_edges(text, start, end)
    if p.rule == "word":
        return at_word_edges(text, start, end)
    # "name": one word, exactly as stored, never glued into a longer word
    return same and _capitalised_like(raw, p.upper_first) and at_word_edges(text, start, end)


def _quick_reject(p: _Pattern, raw: str) -> bool:
    """A name spelled with the wrong capitalisation (the common case for words such as "Rose")."""
    return p.rule == "name" and raw[0].isupper() != p.upper_first and not raw.isupper()


class Guard:
    """Finds known values of one scope in strings."""

    def __init__(self, known: Iterable[tuple[str, str, str]]) -> None:
        """``known``: (value, token, entity_type) for every live vault entry of the scope."""
        table: dict[str, list[_Pattern]] = {}
        tokens: set[str] = set()
        full_keys: set[str] = set()
        name_words: set[str] = set()
        plain_locals: list[tuple[str, _Pattern]] = []
        for stored, token, entity_type in known:
            tokens.add(token)
            value = decoded(stored)  # texts are searched decoded too (the tokenizer's ``escapes``)
            if entity_type in UNGUARDED_TYPES or len(value.strip()) < MIN_VALUE_CHARS:
                continue
            if entity_type == "PERSON":
                name_words.update(w for w in (compact(x) for x in value.split()) if len(w) >= NAME_EVIDENCE_CHARS)
            for key, p in _patterns(value, token, entity_type):
                if p.kind == "local-if-name":
                    plain_locals.append((key, p))
                    continue
                if p.kind == "full":
                    full_keys.add(key)
                table.setdefault(key, []).append(p)
        if plain_locals and name_words:
            names = ahocorasick.Automaton()
            for w in name_words:
                names.add_word(w, w)
            names.make_automaton()
            for key, p in plain_locals:
                if next(names.iter(key), None) is not None:
                    table.setdefault(key, []).append(replace(p, kind="local"))
        self._auto = ahocorasick.Automaton()
        for key, pats in table.items():
            if key in full_keys:  # a part that is also a known value in full is that value
                pats = [p for p in pats if p.kind == "full"]
            # full values first; among them the ones whose rule accepts most
            pats.sort(key=lambda p: (p.kind != "full", p.rule != "free", p.rule != "digits"))
            self._auto.add_word(key, (len(key), tuple(pats)))
        self.tokens = frozenset(tokens)  # the scope's real tokens: only they shelter what they hold
        self.empty = len(self._auto) == 0
        if not self.empty:
            self._auto.make_automaton()

    def find(self, text: str, real_tokens: frozenset[str] | None = None) -> list[GuardHit]:
        """Every acceptable occurrence of a known value in ``text`` (overlaps included: the
        caller keeps the longest).

        A match inside one of the scope's tokens (``real_tokens``, default this guard's own) is
        not a value ("[US_SSN_1234]" holds no ZIP code); inside anything else shaped like a
        token it is: an upstream asked for ``'[US_SSN_' || ssn || ']'`` returned
        ``[US_SSN_219099999]``, which passed raw while every token-shaped string was skipped."""
        if self.empty or not text:
            return []
        f = Folded(text)
        if not f.compact:
            return []
        hits: list[GuardHit] = []
        real = self.tokens if real_tokens is None else real_tokens
        tokens = [m.span() for m in TOKEN_RE.finditer(text) if m.group() in real] if "[" in text else []
        for end, (n, pats) in self._auto.iter(f.compact):
            start = f.original(end - n + 1)
            stop = f.original(end) + 1
            if stop - start > _SPREAD * n + 4:
                continue  # letters scattered across a long stretch of punctuation: not a spelling
            if tokens and any(start < e and s < stop for s, e in tokens):
                continue  # inside a token already there ("[US_SSN_1234]" holds no ZIP code)
            for p in pats:
                if _accept(p, text, start, stop):
                    value = p.value if p.kind == "full" else text[start:stop]
                    hits.append(GuardHit(start, stop, p.entity_type, value, p.token))
                    break
        return hits


class Guards:
    """Several guards searched as one (the vault keeps a large, rarely rebuilt base automaton and a
    small one for values added since, so a busy scope does not rebuild everything per call)."""

    def __init__(self, *guards: Guard) -> None:
        self._guards = [g for g in guards if not g.empty]
        self.tokens: frozenset[str] = frozenset().union(*(g.tokens for g in guards))

    def find(self, text: str, real_tokens: frozenset[str] | None = None) -> list[GuardHit]:
        real = self.tokens if real_tokens is None else real_tokens
        return [hit for g in self._guards for hit in g.find(text, real)]
