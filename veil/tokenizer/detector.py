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

spaCy pipelines are not documented as thread-safe, so ``detect`` holds a lock; the gateway's
worker threads queue here while vault work runs in parallel.
"""

from __future__ import annotations

import bisect
import logging
import re
from dataclasses import dataclass

from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, RecognizerResult
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import EmailRecognizer, PhoneRecognizer, SpacyRecognizer
from spacy.lang.en.stop_words import STOP_WORDS

from veil.tokenizer.guard import name_parts
from veil.tokenizer.nlp import OfflineSpacyNlpEngine, common_words, load_ner_pipeline, pipeline_lock
from veil.tokenizer.recognizers import (
    _VERBS,
    ContextCardRecognizer,
    ContextPhoneRecognizer,
    CuedLocationRecognizer,
    CuedPersonRecognizer,
    NameBeforeVerbRecognizer,
    OfflineEmailRecognizer,
    StreetAddressRecognizer,
    UpperCasePlaceRecognizer,
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

_GATE = re.compile(r"[0-9@]|\w\.[A-Za-z]")
_PHONE_GATE = re.compile(r"(?:\d[^\d\n]{0,3}){7}")  # phonenumbers' matcher is slow: only where 7+ digits are
_CUE_GATE = re.compile(
    r"(?im)\b(?:mrs?|ms|miss|mx|dr|prof|sir|madam|name|dear|signed|regards|this is|call me|i am|i'm|called|named|"
    r"by|met with|spoke with|talked to|ask for|attn|attention|contact person)\b|\w+ (?:and \w+ )?(?:" + _VERBS + r")\b"
    r"|^[ \t>]*\w+:"
)
_PLACE_GATE = re.compile(r"(?i)\b(?:to|from|in|at|visiting|visited|where|city|town):?[ \t]+\w")
_GATED = {"PHONE_NUMBER": _PHONE_GATE, "PERSON": _CUE_GATE, "LOCATION": _PLACE_GATE}  # own pass, own cheap pre-check
_CHUNK_CHARS = 6000
# Between strings in a chunk: a token of its own that context look-behind never crosses.
_MARK = "\u241e"
_SEPARATOR = f"\n{_MARK}\n"
_CONTEXT_WORD = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    entity_type: str
    score: float


@dataclass(frozen=True)
class TextItem:
    text: str
    context: str = ""  # words from the key name, e.g. "contact phone"
    ner: bool = False


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
        unwanted = SpacyRecognizer | EmailRecognizer | PhoneRecognizer
        registry.recognizers = [r for r in registry.recognizers if not isinstance(r, unwanted)]
        # phonenumbers' matcher runs once per region: only the configured regions
        registry.add_recognizer(
            PhoneRecognizer(supported_language=settings.language, supported_regions=tuple(settings.phone_regions))
        )
        registry.add_recognizer(OfflineEmailRecognizer(supported_language=settings.language))
        registry.add_recognizer(StreetAddressRecognizer(supported_language=settings.language))
        registry.add_recognizer(ZipCodeRecognizer(supported_language=settings.language))
        registry.add_recognizer(ContextPhoneRecognizer(supported_language=settings.language))
        registry.add_recognizer(ContextCardRecognizer(supported_language=settings.language))
        registry.add_recognizer(CuedPersonRecognizer(supported_language=settings.language))
        registry.add_recognizer(CuedLocationRecognizer(supported_language=settings.language))
        if model_name:
            lexicon = common_words(model_name, ("noun", "verb", "adj", "adv"))
            registry.add_recognizer(NameBeforeVerbRecognizer(lexicon, supported_language=settings.language))
            registry.add_recognizer(UpperCasePlaceRecognizer(lexicon, supported_language=settings.language))
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
        wanted = set(settings.entities) if settings.entities else set(DEFAULT_ENTITIES)
        wanted |= {c.entity_type for c in settings.patterns} | {d.entity_type for d in settings.deny_lists}
        wanted |= set(settings.field_hints.values())  # a policy's own key hints name types it wants
        self.entities = frozenset(wanted)
        supported = set(self.analyzer.get_supported_entities(settings.language))
        pattern_entities = self.entities & supported
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

    def _warm_up(self) -> None:
        """Compile every recognizer's regexes and load phone metadata now, not in the first call."""
        sample = (
            "Call Jane Doe on +1 212-555-0100 or 020 7946 0958, mail jane@example.com, 1 Main St, "
            "Springfield, IL 62704; card 4111 1111 1111 1111, IBAN DE89370400440532013000, 10.0.0.1."
        )
        self.detect([TextItem(sample, "phone email", ner=True)])

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
    def detect(self, items: list[TextItem]) -> list[list[Span]]:
        """Spans per item (patterns everywhere, NER where ``item.ner``), overlaps resolved."""
        found = self.patterns(items)
        for spans, more in zip(found, self.ner(items), strict=True):
            spans.extend(more)
        return [self.resolve(item.text, spans) for item, spans in zip(items, found, strict=True)]

    def patterns(self, items: list[TextItem]) -> list[list[Span]]:
        """Raw pattern-recognizer spans per item (unresolved, unthresholded), batched."""
        found: list[list[Span]] = [[] for _ in items]
        with self._lock:
            self._patterns(items, found)
        return found

    def ner(self, items: list[TextItem]) -> list[list[Span]]:
        """Raw NER spans for the items marked ``ner``, in one ``nlp.pipe`` call."""
        found: list[list[Span]] = [[] for _ in items]
        with self._lock:
            self._ner(items, found)
        return found

    def _patterns(self, items: list[TextItem], found: list[list[Span]]) -> None:
        for entities, gate in self._groups:
            chunk: list[str] = []
            where: list[tuple[int, int, int]] = []  # (item index, start in chunk, end in chunk)
            size = 0
            for i, item in enumerate(items):
                if gate is not None and not gate.search(item.text):
                    continue
                prefix = f"{item.context}: " if item.context else ""
                start = size + len(prefix)
                piece = prefix + item.text.replace(_MARK, " ") + _SEPARATOR
                chunk.append(piece)
                where.append((i, start, start + len(item.text)))
                size += len(piece)
                if size >= _CHUNK_CHARS:
                    self._analyze_chunk("".join(chunk), entities, where, found)
                    chunk, where, size = [], [], 0
            if chunk:
                self._analyze_chunk("".join(chunk), entities, where, found)

    def _analyze_chunk(
        self, text: str, entities: list[str], where: list[tuple[int, int, int]], found: list[list[Span]]
    ) -> None:
        # No tokenisation here: the context enhancer below reads the words before a match itself.
        artifacts = NlpArtifacts(
            entities=[], tokens=[], tokens_indices=[], lemmas=[], nlp_engine=None, language=self.language
        )
        results = self.analyzer.analyze(
            text, language=self.language, entities=entities, nlp_artifacts=artifacts, score_threshold=0
        )
        starts = [w[1] for w in where]
        for r in results:
            k = bisect.bisect_right(starts, r.start) - 1
            if k < 0:
                continue
            idx, s, e = where[k]
            if r.start >= e:
                continue
            found[idx].append(Span(r.start - s, min(r.end, e) - s, r.entity_type, r.score))

    def _ner(self, items: list[TextItem], found: list[list[Span]]) -> None:
        targets = [i for i, it in enumerate(items) if it.ner]
        if not targets:
            return
        texts = [items[i].text for i in targets]
        for i, doc in zip(targets, self.nlp.pipe(texts, batch_size=64), strict=True):
            for ent in doc.ents:
                entity = NER_LABELS.get(ent.label_)
                if entity is None or entity not in self.entities:
                    continue
                found[i].append(Span(ent.start_char, ent.end_char, entity, NER_SCORE))

    def resolve(self, text: str, spans: list[Span]) -> list[Span]:
        """Thresholds, wanted types and allow-list applied; overlaps resolved longest first."""
        if not spans:
            return spans
        taken: list[tuple[int, int]] = [m.span() for m in TOKEN_RE.finditer(text)]
        out: list[Span] = []
        for sp in sorted(spans, key=lambda s: (-(s.end - s.start), s.score == NER_SCORE, -s.score)):
            sp = _trim(text, sp)
            if sp is None or sp.score < self.threshold(sp.entity_type) or not self.wants(sp.entity_type):
                continue
            if any(sp.start < e and s < sp.end for s, e in taken):
                continue
            if self.allowed_value(text[sp.start : sp.end]):
                continue
            taken.append((sp.start, sp.end))
            out.append(sp)
        out.extend(_name_parts_elsewhere(text, out, taken))
        out.sort(key=lambda s: s.start)
        return out


def _name_parts_elsewhere(text: str, found: list[Span], taken: list[tuple[int, int]]) -> list[Span]:
    """A person named in full once ("directed by Jindrich Holinka") is the same person when a part
    of the name stands alone later in the same text ("starring Holinka"): the guard's rule, applied
    within one string, so it also holds where no vault is involved."""
    parts = {p for sp in found if sp.entity_type == "PERSON" for p in name_parts(text[sp.start : sp.end])}
    extra: list[Span] = []
    for part in parts:
        for m in re.finditer(rf"(?<![\w-]){re.escape(part)}(?![\w-])", text):
            if not any(m.start() < e and s < m.end() for s, e in taken):
                taken.append(m.span())
                extra.append(Span(m.start(), m.end(), "PERSON", NAME_PART_SCORE))
    return extra


def _trim(text: str, sp: Span) -> Span | None:
    """Strip whitespace and trailing punctuation a regex or NER span may carry."""
    s, e = sp.start, sp.end
    while s < e and text[s] in " \t\r\n,;:":
        s += 1
    while e > s and text[e - 1] in " \t\r\n,;:":
        e -= 1
    if e - s < 2:
        return None
    return Span(s, e, sp.entity_type, sp.score)


class _FastContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's lemma context enhancer, minus its costs on large texts.

    The stock one deep-copies every result and finds each match's token by a linear scan over a
    spaCy doc, which is quadratic on Veil's batched chunks. This one keeps the semantics (up to
    five preceding non-stop words, plus caller context, matched against the recognizer's context
    words, lower-cased rather than lemmatised) by reading the text just before each match, and
    never looks back across a string boundary in a chunk."""

    def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
        if not raw_results:
            return raw_results
        by_id = {r.id: r for r in recognizers}
        extra = [w.lower() for w in context or []]
        for result in raw_results:
            meta = result.recognition_metadata or {}
            rec = by_id.get(meta.get(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY))
            if rec is None or not rec.context or meta.get(RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY):
                continue
            window = text[max(0, result.start - 160) : result.start]
            window = window[window.rfind(_MARK) + 1 :]
            words: list[str] = []
            own = {c.lower() for c in rec.context}
            for w in reversed(_CONTEXT_WORD.findall(window)):
                w = w.lower()
                if w not in STOP_WORDS or w in own:  # spaCy counts "call" and "name" as stop words
                    words.append(w)
                    if len(words) >= self.context_prefix_count:
                        break
            words.extend(extra)
            if self._find_supportive_word_in_context(words, rec.context, self.context_matching_mode):
                result.score = min(
                    max(result.score + self.context_similarity_factor, self.min_score_with_context_similarity),
                    self.MAX_SCORE,
                )
        return raw_results
