"""Finding PII inside strings: Presidio's pattern recognizers (plus Veil's) and spaCy NER.

Cost is the design constraint: a tool result can hold thousands of strings, and calling
``AnalyzerEngine.analyze`` once per string costs ~10 ms each (NLP pipeline + ~25 recognizers).
So one ``detect`` call does two batched passes over all strings it is given:

1. patterns: every string that could match a pattern (contains a digit, ``@`` or a dotted name;
   all strings when the policy defines custom patterns or deny lists) is placed, after its key
   name as context words, into a few large chunks; Presidio analyses each chunk once with
   tokenizer-only NLP artifacts (context words still work), and results map back to strings;
2. NER: the strings the caller marks as free text go through one ``nlp.pipe`` call of a pipeline
   that holds only the ``ner`` component.

Long strings are scanned in bounded windows (``_windows``) and reach NER in bounded pieces, so
no input makes detection super-linear; a ``deadline`` is checked between chunks and NER batches.

In the gateway, NER runs in worker processes (``veil/tokenizer/nerpool.py``): spaCy holds the
GIL for long stretches and cannot be stopped mid-call, so a session's large result must not run it
in the gateway's threads. Elsewhere (unit tests, policy tooling) it runs here, under a lock, since
spaCy pipelines are not documented as thread-safe. Pattern passes take no lock: sessions detect
side by side.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import pickle
import re
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import regex
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, RecognizerResult
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import (
    EmailRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UrlRecognizer,
)
from spacy.lang.en.stop_words import STOP_WORDS

from veil.errors import TokenizeBudgetExceeded
from veil.tokenizer import escapes, nerpool
from veil.tokenizer.guard import name_parts
from veil.tokenizer.hints import HINTABLE_TYPES, builtin_hint
from veil.tokenizer.nlp import (
    OfflineSpacyNlpEngine,
    common_words,
    is_common_word,
    load_ner_pipeline,
    pipeline_lock,
)
from veil.tokenizer.recognizers import (
    _VERBS,
    CandidatePhoneRecognizer,
    ContextCardRecognizer,
    ContextPhoneRecognizer,
    CuedLocationRecognizer,
    CuedPersonRecognizer,
    DateOfBirthRecognizer,
    GluedCardRecognizer,
    LowerCasePersonRecognizer,
    NameBeforeVerbRecognizer,
    NameShapeRecognizer,
    ObfuscatedEmailRecognizer,
    OfflineEmailRecognizer,
    PlaceBeforeCodeRecognizer,
    SsnDigitsRecognizer,
    StreetAddressRecognizer,
    UpperCasePlaceRecognizer,
    VeilUrlRecognizer,
    ZipCodeRecognizer,
    custom_recognizers,
)
from veil.tokenizer.settings import DetectionSettings
from veil.tokenizer.tokens import TOKEN_RE

log = logging.getLogger(__name__)

# spaCy label -> Veil entity type. ORG is only reported when a policy asks for ORGANIZATION.
NER_LABELS = {
    "PERSON": "PERSON",
    "PER": "PERSON",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "NORP": "NRP",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
    "ORG": "ORGANIZATION",
}
NER_SCORE = 0.85  # what Presidio's SpacyRecognizer reports for spaCy entities
NAME_PART_SCORE = 0.8  # a part of a name found in full elsewhere in the same string

# Entity types used when a policy lists none. ORGANIZATION is off (Presidio ignores it by default:
# too many false positives in free text); hinted company fields still count when enabled.
DEFAULT_ENTITIES = frozenset(
    [
        "PERSON",
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "STREET_ADDRESS",
        "LOCATION",
        "ZIP_CODE",
        "DATE_OF_BIRTH",
        "US_SSN",
        "US_ITIN",
        "US_PASSPORT",
        "US_DRIVER_LICENSE",
        "US_BANK_NUMBER",
        "CREDIT_CARD",
        "IBAN_CODE",
        "IP_ADDRESS",
        "CRYPTO",
        "MEDICAL_LICENSE",
        "UK_NHS",
        "NRP",
        "DATE_TIME",
        "URL",
        "MAC_ADDRESS",
    ]
)
# Presidio's base scores that sit below a 0.5 threshold although the match is usually right.
BUILTIN_THRESHOLDS = {"PHONE_NUMBER": 0.4, "US_DRIVER_LICENSE": 0.6, "US_BANK_NUMBER": 0.6, "US_PASSPORT": 0.6}

# Cheap pre-checks, one per group of recognizers, run on each window (every quantifier bounded).
_GATE = re.compile(r"[0-9@]|\w\.[A-Za-z]")
_PHONE_GATE = re.compile(r"(?:\d[^\d\n]{0,3}){7}")  # phonenumbers' matcher is slow: only where 7+ digits are
_CUE_GATE = re.compile(
    r"(?im)\b(?:mrs?|ms|miss|mx|dr|prof|sir|madam|name|dear|signed|regards|this is|call me|i am|i'm|called|named|"
    r"by|met with|spoke with|talked to|ask for|attn|attention|contact person|follow up with|including|tribute to|"
    r"said|told|thanks|hi|hello|calls me|maiden name|says|spouse|wife|husband|sister|brother|daughter|son|mother|"
    r"father|kid|cousin|nephew|niece|grandson|granddaughter|fianc[ée]e?)\b"
    r"|\b\w{1,40} (?:and \w{1,40} )?(?:" + _VERBS + r")\b"
    r"|^[ \t>]{0,8}\w{1,40}:"
    r"|\b\w{2,40}[ \t]\w\.?[ \t]\w{2,40}\b"  # a middle initial
    r"|^[ \t>|*?-]{0,8}\w{2,40}(?:[ \t]\w\.?)?[ \t]\w{2,40}[ \t]{0,8}$"  # a line of two words
)
_PLACE_GATE = re.compile(r"(?i)\b(?:to|from|in|at|near|of|visiting|visited|where|city|town):?[ \t]{1,8}\w")
_GATED = {"PHONE_NUMBER": _PHONE_GATE, "PERSON": _CUE_GATE, "LOCATION": _PLACE_GATE}  # own pass, own cheap pre-check
_CHUNK_CHARS = 6000
# Linear time whatever the input: a long string is scanned in windows of ``_WINDOW`` characters.
# Each window's recognizers also see ``_LEAD`` characters before it (look-behinds, context words)
# and ``MAX_SPAN`` after it; a match is kept by the window it starts in, so a span is at most
# ``MAX_SPAN`` characters past its window. Every regex sees bounded text, so however a pattern
# backtracks, its cost per input character is bounded; Veil's own patterns also bound every
# repetition (tests/tokenizer/test_linear.py checks both).
_WINDOW = 4096
_LEAD = 160
MAX_SPAN = 512
_NER_PIECE = 20_000  # NER sees long texts in pieces cut at a line break or space
_FOCUS_WORD = re.compile(r"[^\W\d_][\w'\u2019-]{0,200}")
_AFTER_SENTENCE = '.!?:;\n"(['
# Titles (abbreviated) that stand before a name; a capital after ". " or " " follows.
_TITLE_WORDS = frozenset(["mr", "mrs", "ms", "mx", "dr", "prof", "rev", "sr", "sra", "mme", "mlle", "capt", "sgt"])
_BEFORE_NAME = re.compile(r"\.?[ \t]{1,3}[^\W\d_]")
# A pattern pass over at least this many characters goes to the worker processes when there are
# some (sending smaller ones costs more than it saves).
_POOL_PATTERN_CHARS = 20_000
_FOCUS_REACH = 300  # NER reads at most this many characters either side of a word it is run for
_LONGEST_NAME_WORD = 40  # a longer "word" ("A-A-A-..." runs, base64, hashes) is no name: not a reason for NER
# Where a sentence ends for NER's focus: a line break, or ., ! or ? and spaces, except after a
# title, a common abbreviation or an initial ("Dr. Roe", "St. Louis", "J. Roe" stay one sentence).
_SENTENCE_BREAK = regex.compile(
    r"\n|(?<!\b(?:Mr|Mrs|Ms|Mx|Dr|Prof|St|Mt|Jr|Sr|Rev|No|vs|etc|Inc|Ltd|Co|Apt|Ste|\p{Lu}))"
    r"[.!?]{1,8}[\"')\]]{0,3}[ \t]{1,40}"
)
# Between strings in a chunk: a token of its own that context look-behind never crosses.
_MARK = "\u241e"
_SEPARATOR = f"\n{_MARK}\n"
_CONTEXT_WORD = re.compile(r"[^\W\d_]+")


def _token_spans(text: str, real_tokens: frozenset[str] | None) -> list[tuple[int, int]]:
    """Where the tokens in ``text`` are: every token-shaped string, or only ``real_tokens``."""
    if "[" not in text:
        return []
    return [m.span() for m in TOKEN_RE.finditer(text) if real_tokens is None or m.group() in real_tokens]


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    entity_type: str
    score: float
    ner: bool = False  # found by the NER model (a pattern span of the same length wins)


@dataclass(frozen=True)
class TextItem:
    text: str
    context: str = ""  # words from the key name, e.g. "contact phone"
    ner: bool = False
    # (start, end) ranges NER reads when ``ner`` (``Detector.ner_focus``); None: the whole text
    focus: tuple[tuple[int, int], ...] | None = None


class Detector:
    """Batched detection over many strings for one settings version."""

    def __init__(self, settings: DetectionSettings, *, nlp=None, model_name: str | None = None) -> None:
        self.settings = settings
        if nlp is None:
            nlp, model_name = load_ner_pipeline(settings.spacy_model)
        self.nlp = nlp
        self.model_name = model_name
        self.common_words = common_words(model_name) if model_name else frozenset()
        self.language = settings.language
        self._lock = pipeline_lock(nlp)
        engine = OfflineSpacyNlpEngine(nlp, settings.language, model_name or "")
        registry = RecognizerRegistry(supported_languages=[settings.language])
        presidio_log = logging.getLogger("presidio-analyzer")
        level = presidio_log.level
        presidio_log.setLevel(logging.ERROR)  # it warns about every recognizer of other languages
        try:
            registry.load_predefined_recognizers(languages=[settings.language], nlp_engine=engine)
        finally:
            presidio_log.setLevel(level)
        unwanted = SpacyRecognizer | EmailRecognizer | PhoneRecognizer | UrlRecognizer
        registry.recognizers = [r for r in registry.recognizers if not isinstance(r, unwanted)]
        # phonenumbers' matcher runs once per region: only the configured regions
        registry.add_recognizer(
            CandidatePhoneRecognizer(
                supported_language=settings.language, supported_regions=tuple(settings.phone_regions)
            )
        )
        registry.add_recognizer(OfflineEmailRecognizer(supported_language=settings.language))
        registry.add_recognizer(ObfuscatedEmailRecognizer(supported_language=settings.language))
        registry.add_recognizer(StreetAddressRecognizer(supported_language=settings.language))
        registry.add_recognizer(VeilUrlRecognizer(supported_language=settings.language))
        registry.add_recognizer(ZipCodeRecognizer(supported_language=settings.language))
        registry.add_recognizer(DateOfBirthRecognizer(supported_language=settings.language))
        registry.add_recognizer(SsnDigitsRecognizer(supported_language=settings.language))
        registry.add_recognizer(ContextPhoneRecognizer(supported_language=settings.language))
        registry.add_recognizer(ContextCardRecognizer(supported_language=settings.language))
        registry.add_recognizer(GluedCardRecognizer(supported_language=settings.language))
        registry.add_recognizer(CuedPersonRecognizer(supported_language=settings.language))
        registry.add_recognizer(CuedLocationRecognizer(supported_language=settings.language))
        if model_name:
            lexicon = common_words(model_name, ("noun", "verb", "adj", "adv"))
            registry.add_recognizer(NameBeforeVerbRecognizer(lexicon, supported_language=settings.language))
            registry.add_recognizer(UpperCasePlaceRecognizer(lexicon, supported_language=settings.language))
            registry.add_recognizer(NameShapeRecognizer(lexicon, supported_language=settings.language))
            adverbs = common_words(model_name, ("adv",))
            registry.add_recognizer(
                LowerCasePersonRecognizer(self.common_words, adverbs, supported_language=settings.language)
            )
            registry.add_recognizer(PlaceBeforeCodeRecognizer(lexicon, supported_language=settings.language))
        self._custom = custom_recognizers(settings.patterns, settings.deny_lists, settings.language)
        for rec in self._custom:
            registry.add_recognizer(rec)
        self.analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=engine,
            supported_languages=[settings.language],
            default_score_threshold=0,
            context_aware_enhancer=_FastContextEnhancer(),
        )
        self._engine = engine
        excluded = set(settings.exclude)
        wanted = set(settings.entities) if settings.entities else set(DEFAULT_ENTITIES)
        wanted |= {c.entity_type for c in settings.patterns} | {d.entity_type for d in settings.deny_lists}
        wanted |= set(settings.field_hints.values())  # a policy's own key hints name types it wants
        # What patterns and NER look for in text: the policy's list (or Veil's default).
        self.detect_entities = frozenset(wanted - excluded)
        # What counts when a key says so, or when the guard finds a known value: every type a
        # key can imply, unless the policy excludes it by name (ORGANIZATION only when asked for).
        hinted = set(HINTABLE_TYPES) - ({"ORGANIZATION"} - wanted)
        self.entities = frozenset((wanted | hinted) - excluded)
        self.work: Counter[str] = Counter()  # characters scanned, calls made: see tests/tokenizer/test_linear.py
        supported = set(self.analyzer.get_supported_entities(settings.language))
        pattern_entities = self.detect_entities & supported
        # (entities, gate) groups; None gate: every string (policy patterns can match anything).
        self._groups: list[tuple[list[str], re.Pattern[str] | None]] = []
        custom = {r.supported_entities[0] for r in self._custom}
        if custom:
            self._groups.append((sorted(custom & pattern_entities), None))
        for entity, gate in _GATED.items():
            if entity in pattern_entities - custom:
                self._groups.append(([entity], gate))
        rest = sorted(pattern_entities - custom - set(_GATED))
        if rest:
            self._groups.append((rest, _GATE))
        self._allow = {v.casefold() for v in settings.allow_values}
        self._warm_up()
        # The gateway's worker processes build the same detector to run large pattern passes.
        self._settings_blob = pickle.dumps(settings)
        self._settings_key = hashlib.sha256(self._settings_blob).hexdigest()
        pool = nerpool.active()
        if pool is not None:
            pool.prepare(self._settings_key, self._settings_blob)

    def _warm_up(self) -> None:
        """Compile every recognizer's regexes and load phone metadata now, not in the first call."""
        sample = (
            "Call Jane Doe on +1 212-555-0100 or 020 7946 0958, mail jane@example.com, 1 Main St, "
            "Springfield, IL 62704; card 4111 1111 1111 1111, IBAN DE89370400440532013000, 10.0.0.1."
        )
        self.detect([TextItem(sample, "phone email", ner=True)])
        escapes.fold("\u00a0")  # builds the look-alike table (~80 ms) before the first call needs it

    # -- thresholds -------------------------------------------------------------------------
    def threshold(self, entity_type: str) -> float:
        t = self.settings.thresholds.get(entity_type)
        if t is not None:
            return t
        return min(
            BUILTIN_THRESHOLDS.get(entity_type, self.settings.default_threshold), self.settings.default_threshold
        )

    def wants(self, entity_type: str) -> bool:
        return entity_type in self.entities

    def allowed_value(self, value: str) -> bool:
        return value.strip().casefold() in self._allow

    # -- detection --------------------------------------------------------------------------
    def detect(self, items: list[TextItem], deadline: float | None = None) -> list[list[Span]]:
        """Spans per item (patterns everywhere, NER where ``item.ner``), overlaps resolved.

        ``deadline`` is a ``time.monotonic()`` value; past it, ``TokenizeBudgetExceeded`` is
        raised between two batches of work (never with a partial result)."""
        found = self.patterns(items, deadline)
        for spans, more in zip(found, self.ner(items, deadline), strict=True):
            spans.extend(more)
        return [self.resolve(item.text, spans) for item, spans in zip(items, found, strict=True)]

    def patterns(self, items: list[TextItem], deadline: float | None = None) -> list[list[Span]]:
        """Raw pattern-recognizer spans per item (unresolved, unthresholded), batched. A large
        batch goes to the gateway's worker processes when they hold a detector for these
        settings (``nerpool.NerPool.patterns``): the same spans, computed on every core."""
        pool = nerpool.active()
        if pool is not None and self.pooled(items):
            if not pool.prepared(self._settings_key):
                pool.prepare(self._settings_key, self._settings_blob)  # in the background; this call runs here
            else:
                got = pool.patterns(self._settings_key, [(it.text, it.context) for it in items], deadline)
                if got is not None:
                    spans, work = got
                    self.work.update(work)
                    return [[Span(*sp) for sp in item] for item in spans]
        return self.patterns_here(items, deadline)

    def pooled(self, items: list[TextItem]) -> bool:
        """Whether ``patterns`` may send ``items`` to the worker processes (a pool is running and
        the batch is large): the caller then only waits, and can do other work meanwhile."""
        return nerpool.active() is not None and sum(len(it.text) for it in items) >= _POOL_PATTERN_CHARS

    def patterns_here(self, items: list[TextItem], deadline: float | None = None) -> list[list[Span]]:
        """``patterns`` in this process."""
        found: list[list[Span]] = [[] for _ in items]
        self._patterns(items, found, deadline)  # no spaCy here: no pipeline lock, sessions run side by side
        return found

    def ner(self, items: list[TextItem], deadline: float | None = None) -> list[list[Span]]:
        """Raw NER spans for the items marked ``ner``, in one ``nlp.pipe`` call."""
        found: list[list[Span]] = [[] for _ in items]
        if not any(it.ner for it in items):
            return found
        self._ner(items, found, deadline)
        return found

    @contextmanager
    def _locked(self, deadline: float | None):
        """The pipeline lock, waited for no longer than the deadline allows."""
        if deadline is None:
            self._lock.acquire()
        elif not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TokenizeBudgetExceeded(_BUDGET_MESSAGE)
        try:
            yield
        finally:
            self._lock.release()

    def _patterns(self, items: list[TextItem], found: list[list[Span]], deadline: float | None) -> None:
        windows = [_windows(len(item.text)) for item in items]
        for entities, gate in self._groups:
            chunk: list[str] = []
            # (item index, start in chunk, end in chunk, window start in item, core start, core end)
            where: list[tuple[int, int, int, int, int, int]] = []
            size = 0
            for i, item in enumerate(items):
                prefix = f"{item.context}: " if item.context else ""
                for lo, hi, core_lo, core_hi in windows[i]:
                    piece = item.text[lo:hi]
                    if gate is not None and not gate.search(piece):
                        continue
                    start = size + len(prefix)
                    chunk.append(prefix + piece.replace(_MARK, " ") + _SEPARATOR)
                    where.append((i, start, start + len(piece), lo, core_lo, core_hi))
                    size += len(chunk[-1])
                    if size >= _CHUNK_CHARS:
                        _check(deadline)
                        self._analyze_chunk("".join(chunk), entities, where, found)
                        chunk, where, size = [], [], 0
            if chunk:
                _check(deadline)
                self._analyze_chunk("".join(chunk), entities, where, found)

    def _analyze_chunk(
        self, text: str, entities: list[str], where: list[tuple[int, int, int, int, int, int]], found: list[list[Span]]
    ) -> None:
        self.work["pattern_chars"] += len(text)
        self.work["analyze_calls"] += 1
        # No tokenisation here: the context enhancer below reads the words before a match itself.
        artifacts = NlpArtifacts(
            entities=[],
            tokens=[],  # type: ignore[arg-type]  # no spaCy Doc on purpose (see above)
            tokens_indices=[],
            lemmas=[],
            nlp_engine=None,
            language=self.language,
        )
        results = self.analyzer.analyze(
            text, language=self.language, entities=entities, nlp_artifacts=artifacts, score_threshold=0
        )
        starts = [w[1] for w in where]
        for r in results:
            k = bisect.bisect_right(starts, r.start) - 1
            if k < 0:
                continue
            idx, s, e, lo, core_lo, core_hi = where[k]
            if r.start >= e:
                continue
            begin = r.start - s + lo
            if not core_lo <= begin < core_hi:
                continue  # the window this match starts in reports it
            found[idx].append(Span(begin, min(r.end, e) - s + lo, r.entity_type, r.score))

    def ner_focus(self, text: str, covered: list, real_tokens: frozenset[str] | None = None) -> list[tuple[int, int]]:
        """The sentences of ``text`` NER must read (at most 300 characters either side of each
        word it is read for), adjacent ones joined: those holding a
        capitalised word (of at most 40 characters) outside every span in ``covered`` (patterns,
        known values) and outside tokens, other than a sentence-initial stop word or ordinary English verb, adjective or
        adverb ("Called ...", "Quarterly ..."). Empty: the model could add nothing. Lower-case
        names are not lost by this: the model does not find them either. The model decides from
        a few words around each one (spaCy's CNN sees four tokens each side), so a sentence is
        context enough, and on notes that repeat known names and patterns most of the text is
        skipped. Linear: a coverage map, one pass over the words, sentences found by bisection."""
        inside = bytearray(len(text) + 1)
        for s, e in [(c.start, c.end) for c in covered] + _token_spans(text, real_tokens):
            inside[s:e] = b"\x01" * (e - s)
        starts: list[int] | None = None
        out: list[tuple[int, int]] = []
        for m in _FOCUS_WORD.finditer(text):
            word = m.group()
            if not word[0].isupper() or inside[m.start()] or len(word) > _LONGEST_NAME_WORD:
                continue
            if self._no_reason_for_ner(text, m.start(), m.end(), word):
                continue
            if starts is None:
                starts = [0] + [b.end() for b in _SENTENCE_BREAK.finditer(text)]
            k = bisect.bisect_right(starts, m.start()) - 1
            # the word's sentence, at most _FOCUS_REACH characters either side of it (cut at a space)
            lo = max(starts[k], m.start() - _FOCUS_REACH)
            hi = min(starts[k + 1] if k + 1 < len(starts) else len(text), m.end() + _FOCUS_REACH)
            if lo > starts[k]:
                space = text.find(" ", lo, m.start())
                lo = space + 1 if space != -1 else lo
            if hi < len(text) and (k + 1 >= len(starts) or hi < starts[k + 1]):
                space = text.rfind(" ", m.end(), hi)
                hi = space if space != -1 else hi
            if out and lo <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        return out

    def _no_reason_for_ner(self, text: str, s: int, e: int, word: str) -> bool:
        """Whether a capitalised word outside every span is still no reason to run NER on its
        sentence: a stop word or ordinary English word (or a hyphenated one made of them:
        "Follow-up") opening a sentence or a line; a title before a capitalised word ("Mr. Roe":
        the name is a reason of its own when nothing explains it); a field label before a colon
        ("DOB:", "Phone:"). Everything it looks at is bounded: linear on long texts."""
        before = text[max(0, s - 64) : s].rstrip(" \t")
        lower = word.lower()
        if (not before or before[-1] in _AFTER_SENTENCE) and all(
            p in STOP_WORDS or is_common_word(p, self.common_words) for p in lower.split("-") if p
        ):
            return True
        after = text[e : e + 8]
        if lower in _TITLE_WORDS and _BEFORE_NAME.match(after):
            return True
        return after.startswith(":") and builtin_hint(lower) is not None

    def _ner(self, items: list[TextItem], found: list[list[Span]], deadline: float | None) -> None:
        pieces: list[tuple[int, int]] = []  # (item index, offset of the piece in the item)
        texts: list[str] = []
        for i, it in enumerate(items):
            if not it.ner:
                continue
            for f_lo, f_hi in it.focus if it.focus is not None else ((0, len(it.text)),):
                for lo, hi in _ner_pieces(it.text[f_lo:f_hi]):
                    pieces.append((i, f_lo + lo))
                    texts.append(it.text[f_lo + lo : f_lo + hi])
        _check(deadline)
        # Each distinct text once: exports repeat lines ("Hi,", a template's sentence), and the
        # model reads a text the same way wherever it stands (a doc's entities depend on it alone).
        distinct = list(dict.fromkeys(texts))
        self.work["ner_chars"] += sum(len(t) for t in distinct)
        pool = nerpool.active()  # the gateway's worker processes (veil/tokenizer/nerpool.py), if running
        if pool is not None:
            ents_of = pool.run(self.settings.spacy_model, distinct, deadline)
        else:
            ents_of = self._ner_here(distinct, deadline)
        by_text = dict(zip(distinct, ents_of, strict=True))
        for (i, lo), text in zip(pieces, texts, strict=True):
            doc_ents = by_text[text]
            for start, end, label in doc_ents:
                entity = NER_LABELS.get(label)
                if entity == "DATE_TIME":
                    entity = _ner_date(text[start:end])
                if entity is None or entity not in self.detect_entities:
                    continue
                if entity in _NAMEISH and _lower_case_in_code(text, start, end):
                    continue
                found[i].append(Span(lo + start, lo + end, entity, NER_SCORE, ner=True))

    def _ner_here(self, texts: list[str], deadline: float | None) -> list[list[tuple[int, int, str]]]:
        """NER in this process (unit tests, CLI), under the pipeline lock, deadline checked per doc."""
        out: list[list[tuple[int, int, str]]] = []
        with self._locked(deadline):
            for doc in self.nlp.pipe(texts, batch_size=64):
                _check(deadline)
                out.append([(e.start_char, e.end_char, e.label_) for e in doc.ents])
        return out

    def resolve(self, text: str, spans: list[Span], real_tokens: frozenset[str] | None = None) -> list[Span]:
        """Thresholds, wanted types and allow-list applied; spans cut at a line break (except
        address blocks), person names without titles, code read as code; overlaps resolved
        longest first. Linear in the text and the number of spans (a coverage map, no pairwise
        overlap tests). Nothing inside a token is a value; with ``real_tokens`` (the scope's),
        only those count as tokens: ``[US_SSN_512341292]`` made by an upstream is text."""
        if not spans:
            return spans
        self.work["resolve_spans"] += len(spans)
        covered = bytearray(len(text))
        for start, end in _token_spans(text, real_tokens):
            covered[start:end] = b"\x01" * (end - start)
        out: list[Span] = []
        cleaned = [c for c in (_clean(text, sp) for sp in spans) if c is not None]
        for sp in sorted(cleaned, key=lambda s: (-(s.end - s.start), s.ner, s.entity_type in _GENERIC, -s.score)):
            if sp.score < self.threshold(sp.entity_type) or not self.wants(sp.entity_type):
                continue
            if covered.find(1, sp.start, sp.end) != -1:
                continue
            if self.allowed_value(text[sp.start : sp.end]):
                continue
            covered[sp.start : sp.end] = b"\x01" * (sp.end - sp.start)
            out.append(sp)
        out.extend(_name_parts_elsewhere(text, out, covered))
        if "PERSON" in self.entities:
            out.extend(self._list_siblings(text, out, covered))
        out.sort(key=lambda s: s.start)
        return out

    def _list_siblings(self, text: str, found: list[Span], covered: bytearray) -> list[Span]:
        """Names listed next to a name ("Eklund, Michael and Hodge", "Matheus, Janet, Nicholas"):
        a capitalised word joined to a person by a comma, "and", "or" or "&" is a person too,
        unless it is an English stop word, verb, adjective or adverb, or a company word."""
        todo = [sp for sp in found if sp.entity_type == "PERSON" and sp.score >= self.threshold("PERSON")]
        extra: list[Span] = []
        for _ in range(8):  # a list is walked one neighbour per round, both ways
            more: list[Span] = []
            for sp in todo:
                for m in (
                    _NEXT_IN_LIST.match(text, sp.end, min(len(text), sp.end + 80)),
                    _PREV_IN_LIST.search(text, max(0, sp.start - 80), sp.start),
                ):
                    if m is None:
                        continue
                    s, e = m.span("name")
                    words = m.group("name").lower().split()
                    if covered.find(1, s, e) != -1 or any(
                        w in STOP_WORDS or w in _NOT_NAMES or is_common_word(w, self.common_words) for w in words
                    ):
                        continue
                    covered[s:e] = b"\x01" * (e - s)
                    more.append(Span(s, e, "PERSON", NAME_PART_SCORE))
            if not more:
                break
            extra.extend(more)
            todo = more
        return extra


# Types that say less than another type found on the same characters (a date that is a date of
# birth, a number that is an SSN): the specific one wins.
_GENERIC = frozenset({"DATE_TIME", "NRP", "URL", "ZIP_CODE", "US_BANK_NUMBER", "US_DRIVER_LICENSE", "PHONE_NUMBER"})

_BUDGET_MESSAGE = (
    "detection did not finish within the call's time budget; the result was withheld "
    "(ask for less data, e.g. a narrower query or a smaller page)"
)


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TokenizeBudgetExceeded(_BUDGET_MESSAGE)


def _windows(n: int) -> list[tuple[int, int, int, int]]:
    """(start, end, core start, core end) of the windows a string of length ``n`` is scanned in."""
    if n <= _WINDOW + MAX_SPAN:
        return [(0, n, 0, n)]
    out = []
    for a in range(0, n, _WINDOW):
        b = min(n, a + _WINDOW)
        out.append((max(0, a - _LEAD), min(n, b + MAX_SPAN), a, b))
    return out


def _ner_pieces(text: str) -> list[tuple[int, int]]:
    """Pieces of at most ``_NER_PIECE`` characters, cut after a line break or space when one is
    near the end of a piece (a name is not cut in two unless a line has no space at all)."""
    n = len(text)
    out: list[tuple[int, int]] = []
    a = 0
    while n - a > _NER_PIECE:
        b = a + _NER_PIECE
        cut = text.rfind("\n", b - 2000, b)
        if cut == -1:
            cut = text.rfind(" ", b - 2000, b)
        b = cut + 1 if cut > a else b
        out.append((a, b))
        a = b
    out.append((a, n))
    return out


_DATE_WORD = re.compile(
    r"(?i)\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]{0,6}\.?\b"
    r"|\b(?:mon|tues|wednes|thurs|fri|satur|sun)day\b"
    r"|\b(?:1[89]|20)\d{2}s?\b|\d{1,4}[-/.]\d{1,2}|\d{1,2}:\d{2}|\b\d{1,2}(?:st|nd|rd|th)\b"
)
_BARE_CODE = re.compile(r"\d{4,5}")


def _ner_date(value: str) -> str | None:
    """What a span the model calls a date is. A date names a day, month, weekday, year or time
    ("Tuesday", "2/10/1985", "1978", "10:30"); "next week", "this morning", "the age of 54" or a
    bare "40" identify no one and are dropped. A bare four- or five-digit number that is no year
    is a postal code in an address the model misread ("Poland 11248")."""
    if _BARE_CODE.fullmatch(value) and not re.fullmatch(r"(?:1[89]|20)\d{2}", value):
        return "ZIP_CODE"
    return "DATE_TIME" if _DATE_WORD.search(value) and not _AGE.search(value) else None


_AGE = re.compile(r"(?i)\byears?[ -]old\b|\bage of\b|\baged\b")

_LIST_NAME = r"(?P<name>\p{Lu}[\p{Ll}'\u2019-]{1,40}(?:[ \t]\p{Lu}[\p{Ll}'\u2019-]{1,40})?)"
_JOIN = r"(?:,[ \t]{1,3}(?:(?:and|or|&)[ \t]{1,3})?|[ \t]{1,3}(?:and|or|&)[ \t]{1,3})"
_NEXT_IN_LIST = regex.compile(rf"{_JOIN}{_LIST_NAME}(?![\p{{L}}'\u2019-])")
_PREV_IN_LIST = regex.compile(rf"(?<![\p{{L}}'\u2019-]){_LIST_NAME}{_JOIN}$")
_NOT_NAMES = frozenset(
    [
        "company",
        "inc",
        "co",
        "corp",
        "ltd",
        "llc",
        "group",
        "team",
        "family",
        "friends",
        "others",
        "sons",
        "partners",
        "associates",
        "university",
        "street",
        "avenue",
        "road",
        "city",
        "county",
        "state",
    ]
)

_NAME_RUN = re.compile(r"[\w-]{1,200}(?:['\u2019][\w-]{1,200})*")


def _name_parts_elsewhere(text: str, found: list[Span], covered: bytearray) -> list[Span]:
    """A person named in full once ("directed by Jindrich Holinka") is the same person when a part
    of the name stands alone later in the same text ("starring Holinka"): the guard's rule, applied
    within one string, so it also holds where no vault is involved. One pass over the words."""
    parts = {p for sp in found if sp.entity_type == "PERSON" for p in name_parts(text[sp.start : sp.end])}
    if not parts:
        return []
    extra: list[Span] = []
    for m in _NAME_RUN.finditer(text):
        word = m.group()
        # "Holinka's": the part before an apostrophe stands alone too
        for c in dict.fromkeys((word, re.split("['\u2019]", word, maxsplit=1)[0])):
            if c in parts:
                s, e = m.start(), m.start() + len(c)
                if covered.find(1, s, e) == -1:
                    covered[s:e] = b"\x01" * (e - s)
                    extra.append(Span(s, e, "PERSON", NAME_PART_SCORE))
                break
    return extra


_TITLES = re.compile(
    r"^(?:(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam|Dame|Lord|Lady|Herr|Frau|Mme|Mlle|Sr|Sra|Rev|Capt|Sgt)\.?[ \t]{1,4})+"
)
_SPACE = " \t\r\n,;:"
_EDGE = _SPACE + "\"'`()[]{}<>"  # also quotes and brackets, for types that never contain them
_QUOTABLE = frozenset({"PERSON", "LOCATION", "NRP", "ORGANIZATION", "EMAIL_ADDRESS", "URL"})
_CODE_CHARS = frozenset("_()[]{}<>=/\\$@#|`")
_CODE_WORD = re.compile(r"(?:Error|Exception|Warning|Exit|Interrupt|Iteration|Iterator|Mixin|Type|Dict|List)$")
_NAMEISH = frozenset({"PERSON", "LOCATION", "NRP", "ORGANIZATION"})


def _clean(text: str, sp: Span) -> Span | None:
    """A span as it should be tokenised, or None: whitespace, quotes and punctuation trimmed;
    cut at the first line break (an address block excepted); a person without a title or a
    possessive, so the same person gets the same token from "Dr. Jane Roe" and "Jane Roe's"; and
    nothing name-like that reads as code (identifiers, exception names, paths, JSON paths)."""
    s, e = sp.start, sp.end
    edge = _EDGE if sp.entity_type in _QUOTABLE else _SPACE
    while s < e and text[s] in edge:
        s += 1
    while e > s and text[e - 1] in edge:
        e -= 1
    if sp.entity_type != "STREET_ADDRESS":
        nl = text.find("\n", s, e)
        if nl != -1:
            e = nl
            while e > s and text[e - 1] in edge:
                e -= 1
    if sp.entity_type in _NAMEISH:
        if sp.entity_type == "PERSON":
            m = _TITLES.match(text, s, e)
            if m and m.end() < e:
                s = m.end()
            for tail in ("'s", "\u2019s"):
                if text.endswith(tail, s, e):
                    e -= len(tail)
            while e > s and text[e - 1] in ".!?-":
                e -= 1
        if _code_like(text, s, e):
            return None
    if e - s < 2:
        return None
    if (s, e) == (sp.start, sp.end):
        return sp
    return Span(s, e, sp.entity_type, sp.score, sp.ner)


def _lower_case_in_code(text: str, s: int, e: int) -> bool:
    """A name the model found in lower case among code or SQL (``email || phone || ssn``,
    ``json_build_object(full_name, ssn)``): a column or variable, not a person. Lower-case names
    in prose ("cormac had given ...") are kept."""
    if any(c.isupper() for c in text[s:e]):
        return False
    return any(c in _CODE_CHARS or c in "|;*" for c in text[max(0, s - 40) : e + 40])


def _code_like(text: str, s: int, e: int) -> bool:
    """Whether a would-be name is code: it holds identifier or path characters or digits, a word
    ends like an exception or type name ("NameError"), or it is glued to code on either side
    (``obj.Name``, ``Name(``, ``'$.Name'``, ``/path/Name``)."""
    value = text[s:e]
    if any(c in _CODE_CHARS or c.isdigit() for c in value):
        return True
    if any(_CODE_WORD.search(w) and not w.istitle() for w in value.split()):
        return True
    before = text[s - 1] if s > 0 else " "
    after = text[e] if e < len(text) else " "
    if before in "._/\\$@#" or after in "(_/\\[":
        return True
    return after == "." and e + 1 < len(text) and (text[e + 1].isalnum() or text[e + 1] == "_")


class _FastContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's lemma context enhancer, minus its costs on large texts.

    The stock one deep-copies every result and finds each match's token by a linear scan over a
    spaCy doc, which is quadratic on Veil's batched chunks. This one keeps the semantics (up to
    five preceding non-stop words, plus caller context, matched against the recognizer's context
    words, lower-cased rather than lemmatised) by reading the text just before each match, and
    never looks back across a string boundary in a chunk. It also reads the one word after a
    match on its line, which Presidio's default does not: a signature block puts "office", "fax"
    or "mobile" after the number it names."""

    def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
        if not raw_results:
            return raw_results
        by_id = {r.id: r for r in recognizers}
        extra = [w.lower() for w in context or []]
        own_words: dict[int, frozenset[str]] = {}
        for result in raw_results:
            meta = result.recognition_metadata or {}
            rec = by_id.get(meta.get(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY))
            if rec is None or not rec.context or meta.get(RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY):
                continue
            own = own_words.get(id(rec))
            if own is None:
                own = own_words[id(rec)] = frozenset(c.lower() for c in rec.context)
            window = text[max(0, result.start - 160) : result.start]
            window = window[window.rfind(_MARK) + 1 :]
            words: list[str] = []
            for w in reversed(_CONTEXT_WORD.findall(window)):
                w = w.lower()
                if w not in STOP_WORDS or w in own:  # spaCy counts "call" and "name" as stop words
                    words.append(w)
                    if len(words) >= self.context_prefix_count:
                        break
            # and the first word after it on its line: a signature's "416 60 039 office",
            # "085 175 7641-Office" name what the number is after it
            after = text[result.end : result.end + 40].split("\n", 1)[0]
            after = after[: after.find(_MARK)] if _MARK in after else after
            following = _CONTEXT_WORD.search(after)
            if following is not None:
                words.append(following.group().lower())
            words.extend(extra)
            if self._supported(words, own):
                # a recognizer whose matches mean nothing without context says what they mean with it
                floor = max(self.min_score_with_context_similarity, getattr(rec, "context_score", 0.0))
                result.score = min(max(result.score + self.context_similarity_factor, floor), self.MAX_SCORE)
        return raw_results

    def _supported(self, words: list[str], own: frozenset[str]) -> bool:
        """Presidio's ``_find_supportive_word_in_context``: a context word equal to one of
        ``words`` or, in "substring" mode (the default), inside one; one ``in`` test per context
        word on the words joined, instead of a Python loop over every pair."""
        if not words:
            return False
        if self.context_matching_mode == "whole_word":
            return not own.isdisjoint(words)
        joined = "\x00".join(words)
        return any(c in joined for c in own)
