"""Recognizers Veil adds to, or swaps into, Presidio's registry.

* ``StreetAddressRecognizer``: Presidio has none. Regexes with context words cover US-style
  addresses ("1234 Oak Street", "77 Mission St Apt 4B", "88 Pine Street, Denver, CO 80202"),
  European street-first forms ("Via Roma 131", "Koepenicker Str. 74"), units and PO boxes.
* ``ZipCodeRecognizer``: five-digit postal codes, only with context (they look like any number).
* ``OfflineEmailRecognizer``: Presidio's e-mail recognizer validates domains with tldextract,
  whose default extractor fetches the public suffix list over the network. This one uses the
  suffix list snapshot bundled with tldextract and never opens a socket.
"""

from __future__ import annotations

import re

import tldextract
from presidio_analyzer import Pattern, PatternRecognizer
from presidio_analyzer.predefined_recognizers import EmailRecognizer
from spacy.lang.en.stop_words import STOP_WORDS

from veil.tokenizer.settings import CustomPattern, DenyList

# The bundled snapshot only: no URLs to fetch, no disk cache to write.
OFFLINE_TLD = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

_CASE_SENSITIVE = re.DOTALL | re.MULTILINE  # capitalisation is evidence for addresses

_WORD = r"\p{Lu}[\p{L}'\u2019.-]*"  # a capitalised word, any script
_ANYWORD = r"[\p{L}][\p{L}'\u2019.-]*"
_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Av|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Way|"
    r"Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl|Alley|Plaza|Loop|Row|"
    r"Crescent|Close|Path|Pike|Walk|Gardens|Grove|Hill|Mews|Park|Quay|View|Wharf)\.?"
)
_PREFIX = (
    r"(?:Via|Viale|Piazza|Corso|Rue|Rua|Avenida|Avda\.|Av\.|Calle|Carrer|Camino|Paseo|Plaza|"
    r"Praça|ul\.|Ul\.|ulica|Ulica|Aleja|al\.|Strada|Rruga|Odos|Bulevar|Boulevard|Avenue|Place|Chemin)"
)
_COMPOUND = (
    r"\p{Lu}\p{L}*(?:strasse|straße|str\.|straat|gracht|laan|weg|gade|vej|vegen|vägen|veien|gatan|"
    r"gata|katu|tie|vegur|stræti|straeti|gasse|allee|platz|utca|út|u\.|ring|damm)"
)
_UNIT = (
    r"(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Floor|Fl\.|Rm\.?|Room|#)\s?#?\s?[0-9][0-9A-Za-z-]*"
    r"|(?:Apt\.?|Suite|Unit)\s?[A-Z]\b"
)
_ZIP = r"\d{5}(?:-\d{4})?|\d{3}\s\d{2}|[A-Z]\d[A-Z]\s?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2}"
_NUM = r"\d{1,6}[A-Za-z]?(?:[-/]\d{1,4}[A-Za-z]?)?"

# The tail after a street: words finishing its line, units, then up to four comma- or
# newline-separated lines of place words, state codes and postal codes ("..., Denver, CO 80202",
# or a letter-style block, also when quoted with "> ").
_SEP = r"[ \t]*[,\n][ \t>|*?-]*"
_LINE = (
    rf"(?:{_WORD}(?:[ \t-]+{_WORD}){{0,3}}(?:[ \t]*,?[ \t]+(?:{_ZIP}|\d{{3,6}}))?"
    rf"|(?:{_ZIP})|\d{{3,6}}(?:[ -]\d{{2,3}})?)"
)
_TAIL = (
    rf"(?:[ \t]+{_WORD}(?:[ \t]+{_WORD}){{0,2}}(?=[ \t]*(?:\n|,|$)))?"
    rf"(?:{_SEP}(?:{_UNIT})|[ \t]+(?:{_UNIT}))*"
    rf"(?:{_SEP},?[ \t]*{_LINE}){{0,4}}"
    rf"(?:[ \t]*,?[ \t]+(?:{_ZIP}))?"
)

ADDRESS_PATTERNS = [
    # 1234 Oak Street / 77 Mission St Apt 4B / 88 Pine Street, Denver, CO 80202
    Pattern("us_street", rf"\b{_NUM}(?:[ \t]+{_NUM})?[ \t]+(?:{_WORD}[ \t]+){{0,4}}{_SUFFIX}(?![\p{{L}}]){_TAIL}", 0.7),
    # Via Roma 131 / Rue de la Gare 12 / ul. Jarzębinowa 5 (street word first, number after)
    Pattern(
        "street_first",
        rf"(?:\b{_NUM}[ \t]+)?(?<![\p{{L}}]){_PREFIX}[ \t]+(?:{_ANYWORD}[ \t]+){{0,4}}{_NUM}\b{_TAIL}",
        0.6,
    ),
    # Koepenicker Str. 74 / Hafnarstraeti 5 / Rooseveltlaan 110
    Pattern("compound", rf"(?:\b{_NUM}[ \t]+)?\b(?:{_WORD}[ \t]+)?{_COMPOUND}[ \t]+{_NUM}\b{_TAIL}", 0.6),
    # Koepenicker Str. 74 / Huntly Street 5 (name, street word, then the number)
    Pattern(
        "suffix_then_number",
        rf"(?:\b{_NUM}[ \t]+)?\b(?:{_WORD}[ \t]+){{1,3}}"
        rf"(?:{_SUFFIX}|Str\.|Straße|Strasse|Gasse|Weg|Platz)[ \t]+{_NUM}\b{_TAIL}",
        0.6,
    ),
    # 0138 Brisas 6802 / 971 Kesk 53 (building number, street name, number; common in Europe)
    # followed by a unit or another address line: strong; alone it needs a context word.
    Pattern(
        "number_name_number_block",
        rf"\b\d{{1,5}}[ \t]+{_WORD}(?:[ \t]+{_ANYWORD}){{0,3}}[ \t]+\d{{1,4}}[A-Za-z]?\b\.?"
        rf"(?=[ \t]*(?:,|\n)[ \t]*(?:{_UNIT}|\p{{Lu}}))(?:{_TAIL})",
        0.6,
    ),
    Pattern(
        "number_name_number",
        rf"\b\d{{1,5}}[ \t]+{_WORD}(?:[ \t]+{_ANYWORD}){{0,3}}[ \t]+\d{{1,4}}[A-Za-z]?\b{_TAIL}",
        0.3,
    ),
    # the corner of Bygget 64 and Komel Club
    Pattern(
        "corner",
        rf"\b[Tt]he corner of [^\n,;?!]{{3,60}}? and {_WORD}(?:[ \t]+{_WORD}){{0,3}}",
        0.6,
    ),
    # PO Box 123 / P.O. Box 4567 / PSC 3294, Box 9168 APO AA 61487
    Pattern(
        "po_box",
        r"\b(?:P\.?[ \t]?O\.?[ \t]?Box|Post[ \t]Office[ \t]Box|PSC[ \t]\d{3,5},?[ \t]Box)[ \t]+\d{1,6}"
        r"(?:\s+(?:APO|FPO|DPO)[ \t]+A[AEP][ \t]+\d{5})?",
        0.7,
    ),
    # a unit on its own ("Suite 464", "Apt. 117") is part of an address
    Pattern("unit", r"\b(?:Apt\.?|Apartment|Suite|Ste\.)[ \t]?#?[0-9][0-9A-Za-z-]*", 0.5),
]

ADDRESS_CONTEXT = [
    "address",
    "street",
    "live",
    "lives",
    "living",
    "located",
    "ship",
    "shipping",
    "mail",
    "mailing",
    "deliver",
    "delivery",
    "visit",
    "apartment",
    "home",
    "office",
    "residence",
    "move",
]


class StreetAddressRecognizer(PatternRecognizer):
    """Street addresses, entity type ``STREET_ADDRESS``."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="STREET_ADDRESS",
            patterns=ADDRESS_PATTERNS,
            context=ADDRESS_CONTEXT,
            supported_language=supported_language,
            name="VeilStreetAddressRecognizer",
            global_regex_flags=_CASE_SENSITIVE,
        )


class ZipCodeRecognizer(PatternRecognizer):
    """US ZIP codes; weak alone, so they need a context word ("zip", "postal code") to count."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="ZIP_CODE",
            patterns=[Pattern("zip", r"\b(?:\d{5}(?:-\d{4})?|\d{4}(?:[ ]?[A-Z]{2})?|\d{3}[ ]\d{2})\b", 0.2)],
            context=["zip", "zipcode", "postal", "postcode", "post code"],
            supported_language=supported_language,
            name="VeilZipCodeRecognizer",
        )


def _digit_count_between(low: int, high: int):
    def check(text: str) -> bool | None:
        n = sum(c.isdigit() for c in text)
        return None if low <= n <= high else False  # None keeps the pattern score

    return check


class ContextPhoneRecognizer(PatternRecognizer):
    """Phone numbers the phonenumbers matcher rejects for the configured regions: international
    numbers with a trunk "(0)" ("+41 (0)96 471 07 95"), and local formats ("655 437 108") that
    count only next to a word like "call", "mobile" or "fax"."""

    CONTEXT = [
        "phone",
        "telephone",
        "tel",
        "call",
        "called",
        "mobile",
        "cell",
        "fax",
        "office",
        "desk",
        "number",
        "reach",
        "reached",
        "answering",
        "contact",
        "registered",
        "dial",
        "text",
        "sms",
        "whatsapp",
    ]

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="PHONE_NUMBER",
            patterns=[
                Pattern("intl", r"(?<![\w+])\+\d{1,3}[ .-]?(?:\(0\)[ ]?)?\(?\d{1,4}\)?(?:[ .-]?\d{1,4}){2,5}\b", 0.6),
                Pattern(
                    "local",
                    r"(?<![\w.+/-])(?!\d{3}-\d{2}-\d{4}\b)\(?\d{2,4}\)?(?:[ .-]\d{2,4}){1,4}"
                    r"(?:[ ]?(?:x|ext\.?)[ ]?\d{1,5})?\b(?![.-]\d)",
                    0.2,
                ),
            ],
            context=self.CONTEXT,
            supported_language=supported_language,
            name="VeilContextPhoneRecognizer",
        )
        self._check = _digit_count_between(7, 15)

    def validate_result(self, pattern_text: str) -> bool | None:
        return self._check(pattern_text)


class ContextCardRecognizer(PatternRecognizer):
    """Card numbers that fail the Luhn check (typos, test data, truncated exports) still identify
    an account: 12-19 digits count next to a word like "card"."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="CREDIT_CARD",
            patterns=[Pattern("digits", r"\b(?:\d[ -]?){11,18}\d\b", 0.2)],
            context=["card", "credit", "debit", "visa", "mastercard", "amex", "cc", "pan"],
            supported_language=supported_language,
            name="VeilContextCardRecognizer",
        )


# "My name is Akinori", "Dear Ms. Földesy", "Dr. Cindy Holinka": a capitalised name after a cue.
_NAME = r"\p{Lu}[\p{L}'\u2019-]+(?:[ \t]+(?:\p{Lu}\.?|\p{Lu}[\p{L}'\u2019-]+)){0,3}"


class CuedPersonRecognizer(PatternRecognizer):
    """Names after an explicit cue (a title, "my name is", "Dear", "signed"), which the small NER
    model misses when the name is not English-looking."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="PERSON",
            patterns=[
                Pattern("title", rf"(?<=\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam)\.?[ \t]){_NAME}", 0.7),
                Pattern(
                    "cue",
                    rf"(?<=\b(?:[Mm]y name is|[Nn]ame:|[Dd]ear|[Ss]igned|[Rr]egards,|[Tt]his is|[Cc]all me|[Ii] am|I'm"
                    r"|[Cc]alled|[Nn]amed|[Dd]irected by|[Ww]ritten by|[Pp]roduced by|[Ss]igned by|[Mm]et with"
                    r"|[Ss]poke with|[Tt]alked to|[Aa]sk for|[Aa]ttn:?|[Aa]ttention:|[Cc]ontact person:?"
                    rf"|[Nn]ame\?)[ \t]+){_NAME}",
                    0.6,
                ),
            ],
            supported_language=supported_language,
            name="VeilCuedPersonRecognizer",
            global_regex_flags=_CASE_SENSITIVE,
        )


_VERBS = (
    r"is|was|were|will|has|had|began|begins|lives|lived|said|says|asked|wants|wanted|went|can|could|would|"
    r"did|does|told|wrote|writes|made|makes|works|worked|joined|left|called|emailed|phoned|replied|agreed"
)


_UNKNOWN_WORD = r"\p{Lu}\p{Ll}[\p{L}'\u2019-]+"


class NameBeforeVerbRecognizer(PatternRecognizer):
    """ "Sunniva is very reliable", "Usamov and Bowers were ...": one or two capitalised words that
    are not English words (per the WordNet index shipped with the spaCy model), right before a
    verb. The small NER model misses such unfamiliar names most often at the start of a sentence."""

    def __init__(self, lexicon: frozenset[str], supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="PERSON",
            patterns=[
                Pattern(
                    "name_verb",
                    rf"(?<![\p{{L}}'\u2019-]){_UNKNOWN_WORD}(?:[ \t]{_UNKNOWN_WORD})?(?=[ \t]+(?:{_VERBS})\b)",
                    0.55,
                ),
                # a chat transcript's speaker ("Zuzana: ..."); "Status:" or "Owner:" are English words
                Pattern("speaker", rf"(?m)^[ \t>]*\K{_UNKNOWN_WORD}(?=:[ \t]*\S)", 0.55),
            ],
            supported_language=supported_language,
            name="VeilNameBeforeVerbRecognizer",
            global_regex_flags=_CASE_SENSITIVE,
        )
        self._lexicon = lexicon

    def validate_result(self, pattern_text: str) -> bool | None:
        words = pattern_text.lower().split()
        if not self._lexicon or any(w in self._lexicon or w in STOP_WORDS for w in words):
            return False
        return None


_PLACE = r"\p{Lu}[\p{L}'\u2019.-]+(?:[ \t](?:\p{Lu}[\p{L}'\u2019.-]+|de|del|la|le|upon|nad))*"
_PLACE_CUES = (
    r"flew to|fly to|flying to|moved here from|moved from|moved to|originally from|I'm in|I am in|we're in|live in|"
    r"lives in|living in|located in|based in|arrived at|arrived in|travell?ed to|travell?ing to|born in|trip to|"
    r"visiting|visited|holiday in|vacation in|grew up in|Where:|City:|Town:|from the town of|from the city of"
)


class CuedLocationRecognizer(PatternRecognizer):
    """Places after an explicit cue ("flew to RYSSBY", "moved here from Tjaereborg", "Where: ..."),
    which the small NER model misses for non-English or upper-case place names."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="LOCATION",
            patterns=[Pattern("cue", rf"(?<=\b(?:{_PLACE_CUES})[ \t]+){_PLACE}", 0.6)],
            supported_language=supported_language,
            name="VeilCuedLocationRecognizer",
            global_regex_flags=_CASE_SENSITIVE,
        )


class UpperCasePlaceRecognizer(PatternRecognizer):
    """An upper-case word after "in", "to", "from" or "at" that is not an English word ("in
    KATRINEHOLM", "to RYSSBY"): addresses and travel notes write towns that way; acronyms
    ("in USD") are too short and words ("in SALES") are in the lexicon."""

    def __init__(self, lexicon: frozenset[str], supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="LOCATION",
            patterns=[
                Pattern(
                    "upper_place",
                    r"(?<=\b(?:in|to|from|at|near)[ \t]+)\p{Lu}{4,}(?:[ -]\p{Lu}{2,}){0,2}\b(?!\p{Ll})",
                    0.55,
                )
            ],
            supported_language=supported_language,
            name="VeilUpperCasePlaceRecognizer",
            global_regex_flags=_CASE_SENSITIVE,
        )
        self._lexicon = lexicon

    def validate_result(self, pattern_text: str) -> bool | None:
        words = pattern_text.lower().replace("-", " ").split()
        if not self._lexicon or any(w in self._lexicon or w in STOP_WORDS for w in words):
            return False
        return None


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer with a tldextract that never touches the network."""

    def validate_result(self, pattern_text: str) -> bool | None:
        # A known public suffix confirms the address (score 1.0). Unlike Presidio, an unknown one
        # (``jw@corp.internal``) keeps the pattern's score instead of being dropped: enterprise
        # data is full of internal domains, and they identify people just as well.
        return True if OFFLINE_TLD(pattern_text).fqdn else None


def custom_recognizers(patterns: tuple[CustomPattern, ...], deny_lists: tuple[DenyList, ...], language: str):
    """Policy-defined regexes and deny lists as Presidio recognizers."""
    out: list[PatternRecognizer] = []
    for i, cp in enumerate(patterns):
        rec = _ValidatedPatternRecognizer(
            validator=cp.validator,
            supported_entity=cp.entity_type,
            patterns=[Pattern(f"custom_{i}", cp.regex, cp.score)],
            context=list(cp.context) or None,
            supported_language=language,
            name=f"VeilCustomPattern{i}",
        )
        out.append(rec)
    for i, dl in enumerate(deny_lists):
        out.append(
            PatternRecognizer(
                supported_entity=dl.entity_type,
                deny_list=list(dl.values),
                supported_language=language,
                name=f"VeilDenyList{i}",
            )
        )
    return out


class _ValidatedPatternRecognizer(PatternRecognizer):
    def __init__(self, validator: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self._validator = validator

    def validate_result(self, pattern_text: str) -> bool | None:
        if self._validator == "luhn":
            digits = [int(c) for c in pattern_text if c.isdigit()]
            if len(digits) < 2:
                return False
            total = 0
            for i, d in enumerate(reversed(digits)):
                if i % 2:
                    d *= 2
                    d = d - 9 if d > 9 else d
                total += d
            return total % 10 == 0
        if self._validator == "iban":
            s = re.sub(r"\s", "", pattern_text).upper()
            if len(s) < 15 or not s[:2].isalpha():
                return False
            num = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
            return int(num) % 97 == 1
        return None
