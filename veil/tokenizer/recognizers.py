"""Recognizers Veil adds to, or swaps into, Presidio's registry.

* ``StreetAddressRecognizer``: Presidio has none. Regexes with context words cover US-style
  addresses ("1234 Oak Street", "77 Mission St Apt 4B", "88 Pine Street, Denver, CO 80202"),
  European street-first forms ("Via Roma 131", "Koepenicker Str. 74"), units and PO boxes.
* ``ZipCodeRecognizer``: postal codes after "City, ST" or next to "zip"/"postal".
* ``DateOfBirthRecognizer``, ``SsnDigitsRecognizer``: a date after "born on"/"DOB:", nine digits
  next to "ssn": evidence turns an ordinary date or number into an identifier.
* ``OfflineEmailRecognizer``, ``VeilUrlRecognizer``: Presidio's e-mail recognizer validates
  domains with tldextract, whose default extractor fetches the public suffix list over the
  network; these use the snapshot bundled with tldextract and never open a socket. Their patterns
  replace Presidio's, which were quadratic (URL: seconds on a few KB) or swallowed labels.
* ``CandidatePhoneRecognizer``: phonenumbers' matcher, only on stretches that could be a number.
* ``GluedCardRecognizer`` and ``SsnDigitsRecognizer``'s glued pattern: card numbers and dashed
  SSNs glued to letters or ``_`` (``id_512-34-1291``), where Presidio's ``\b`` patterns see none.

Linear time: every repetition in these patterns is bounded (``{0,40}``, never ``*`` or ``+``),
so one match attempt costs a bounded number of steps; tests/tokenizer/test_linear.py parses them.
"""

from __future__ import annotations

import re
from typing import Any

import phonenumbers
import tldextract
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, EmailRecognizer, PhoneRecognizer
from spacy.lang.en.stop_words import STOP_WORDS

from veil.tokenizer.settings import CustomPattern, DenyList

# The bundled snapshot only: no URLs to fetch, no disk cache to write.
OFFLINE_TLD = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

_CASE_SENSITIVE = re.DOTALL | re.MULTILINE  # capitalisation is evidence for addresses

_WORD = r"\p{Lu}[\p{L}'\u2019.-]{0,40}"  # a capitalised word, any script
_ANYWORD = r"[\p{L}][\p{L}'\u2019.-]{0,40}"
_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Av|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Way|"
    r"Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl|Alley|Plaza|Loop|Row|"
    r"Crescent|Close|Path|Pike|Walk|Gardens|Grove|Hill|Mews|Park|Quay|View|Wharf|Str)\.?"
)
_PREFIX = (
    r"(?:Via|Viale|Piazza|Corso|Rue|Rua|Avenida|Avda\.|Av\.|Calle|Carrer|Camino|Paseo|Plaza|"
    r"Praça|ul\.|Ul\.|ulica|Ulica|Aleja|al\.|Strada|Rruga|Odos|Bulevar|Boulevard|Avenue|Place|Chemin)"
)
_COMPOUND = (
    r"\p{Lu}\p{L}{0,40}(?:strasse|straße|str\.|straat|gracht|laan|weg|gade|vej|vegen|vägen|veien|gatan|"
    r"gata|katu|tie|vegur|stræti|straeti|gasse|allee|platz|utca|út|u\.|ring|damm)"
)
_UNIT = (
    r"(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Floor|Fl\.|Rm\.?|Room|#)\s?#?\s?[0-9][0-9A-Za-z-]{0,12}"
    r"|(?:Apt\.?|Suite|Unit)\s?[A-Z]\b"
)
_ZIP = r"\d{5}(?:-\d{4})?|\d{3}\s\d{2}|[A-Z]\d[A-Z]\s?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2}"
_NUM = r"\d{1,6}[A-Za-z]?(?:[-/]\d{1,4}[A-Za-z]?)?"

# The tail after a street: words finishing its line, units, then up to four comma- or
# newline-separated lines of place words, state codes and postal codes ("..., Denver, CO 80202",
# or a letter-style block, also when quoted with "> ").
_SEP = r"[ \t]{0,8}(?:,|\n(?:[ \t>|*?-]{0,8}\n)?)[ \t>|*?-]{0,8}"
# place words of an address line: capitalised words, lower-case particles ("Soto del Barco",
# "Velka Bukovina u Decina") and a word in brackets ("Cyprus (Greek)")
_CONNECTOR = r"(?:de|del|della|di|da|do|dos|das|du|des|la|le|les|el|en|na|nad|pod|u|upon|on|am|an|im|bei|sur|y|i)"
_PLACE_WORDS = rf"{_WORD}(?:[ \t-]{{1,8}}(?:{_WORD}|{_CONNECTOR}(?=[ \t]{{1,8}}\p{{Lu}})|\({_WORD}\))){{0,4}}"
_LINE = (
    rf"(?:{_PLACE_WORDS}(?:[ \t]{{0,8}},?[ \t]{{1,8}}(?:{_ZIP}|\d{{3,6}}|\d{{2}}-\d{{3}}|\d{{4}}-\d{{3}}))?"
    rf"|(?:{_ZIP})|\d{{3,6}}(?:[ -]\d{{2,3}})?)"
)
_TAIL = (
    rf"(?:[ \t]{{1,8}}{_WORD}(?:[ \t]{{1,8}}{_WORD}){{0,2}}(?=[ \t]{{0,8}}(?:\n|,|$)))?"
    rf"(?:{_SEP}(?:{_UNIT})|[ \t]{{1,8}}(?:{_UNIT})){{0,3}}"
    rf"(?:{_SEP},?[ \t]{{0,8}}{_LINE}){{0,4}}"
    rf"(?:[ \t]{{0,8}},?[ \t]{{1,8}}(?:{_ZIP}))?"
)

ADDRESS_PATTERNS = [
    # 1234 Oak Street / 77 Mission St Apt 4B / 88 Pine Street, Denver, CO 80202
    Pattern(
        "us_street",
        rf"\b{_NUM}(?:[ \t]{{1,8}}{_NUM})?[ \t]{{1,8}}(?:{_WORD}[ \t]{{1,8}}){{0,4}}{_SUFFIX}(?![\p{{L}}]){_TAIL}",
        0.7,
    ),
    # Via Roma 131 / Rue de la Gare 12 / ul. Jarzębinowa 5 (street word first, number after)
    Pattern(
        "street_first",
        rf"(?:\b{_NUM}[ \t]{{1,8}})?(?<![\p{{L}}]){_PREFIX}[ \t]{{1,8}}"
        rf"(?:{_ANYWORD}[ \t]{{1,8}}){{0,4}}{_NUM}\b{_TAIL}",
        0.6,
    ),
    # Koepenicker Str. 74 / Hafnarstraeti 5 / Rooseveltlaan 110
    Pattern(
        "compound",
        rf"(?:\b{_NUM}[ \t]{{1,8}})?\b(?:{_WORD}[ \t]{{1,8}})?{_COMPOUND}[ \t]{{1,8}}{_NUM}\b{_TAIL}",
        0.6,
    ),
    # Koepenicker Str. 74 / Huntly Street 5 (name, street word, then the number)
    Pattern(
        "suffix_then_number",
        rf"(?:\b{_NUM}[ \t]{{1,8}})?\b(?:{_WORD}[ \t]{{1,8}}){{1,3}}"
        rf"(?:{_SUFFIX}|Str\.|Straße|Strasse|Gasse|Weg|Platz)[ \t]{{1,8}}{_NUM}\b{_TAIL}",
        0.6,
    ),
    # 0138 Brisas 6802 / 971 Kesk 53 (building number, street name, number; common in Europe)
    # followed by a unit or another address line: strong; alone it needs a context word.
    Pattern(
        "number_name_number_block",
        rf"\b\d{{1,5}}[ \t]{{1,8}}{_WORD}(?:[ \t]{{1,8}}{_ANYWORD}){{0,3}}[ \t]{{1,8}}\d{{1,4}}[A-Za-z]?\b\.?"
        rf"(?=[ \t]{{0,8}}(?:,|\n)[ \t>|*?-]{{0,8}}(?:{_UNIT}|\p{{Lu}}))(?:{_TAIL})",
        0.6,
    ),
    Pattern(
        "number_name_number",
        rf"\b\d{{1,5}}[ \t]{{1,8}}{_WORD}(?:[ \t]{{1,8}}{_ANYWORD}){{0,3}}[ \t]{{1,8}}\d{{1,4}}[A-Za-z]?\b{_TAIL}",
        0.3,
    ),
    # the corner of Bygget 64 and Komel Club
    Pattern(
        "corner",
        rf"\b[Tt]he corner of [^\n,;?!]{{3,60}}? and {_WORD}(?:[ \t]{{1,8}}{_WORD}){{0,3}}",
        0.6,
    ),
    # PO Box 123 / P.O. Box 4567 / PSC 3294, Box 9168 APO AA 61487
    Pattern(
        "po_box",
        r"\b(?:P\.?[ \t]?O\.?[ \t]?Box|Post[ \t]Office[ \t]Box|PSC[ \t]\d{3,5},?[ \t]Box)[ \t]{1,8}\d{1,6}"
        r"(?:\s{1,8}(?:APO|FPO|DPO)[ \t]{1,8}A[AEP][ \t]{1,8}\d{5})?",
        0.7,
    ),
    # 846 31 Rue Al Imam Al Bakri / 12 Avenida Paulista (number first, then a street word)
    Pattern(
        "number_then_prefix",
        rf"\b{_NUM}(?:[ \t]{{1,8}}{_NUM})?[ \t]{{1,8}}(?<![\p{{L}}]){_PREFIX}[ \t]{{1,8}}"
        rf"(?:{_ANYWORD}[ \t]{{1,8}}){{0,4}}{_ANYWORD}{_TAIL}",
        0.6,
    ),
    # US military mail: "USS Mahler / FPO AA 70489", "Unit 1009 Box 0219 / DPO AP 51065",
    # "PSC 5420, Box 2708 / APO AA 33879" (any case)
    Pattern(
        "military",
        r"(?i)\b(?:(?:USNS|USNV|USS|USCGC)[ \t]{1,8}\p{L}[\p{L}'\u2019-]{1,40}"
        r"|(?:Unit|PSC)[ \t]{1,8}\d{3,5},?[ \t]{1,8}Box[ \t]{1,8}\d{3,5})"
        r"[ \t]{0,8}[,\n]?[ \t>|]{0,8}(?:APO|FPO|DPO)[ \t]{1,8}A[AEP][ \t]{1,8}\d{5}\b",
        0.8,
    ),
    # a unit on its own ("Suite 464", "Apt. 117") is part of an address
    Pattern("unit", r"\b(?:Apt\.?|Apartment|Suite|Ste\.)[ \t]?#?[0-9][0-9A-Za-z-]{0,12}", 0.5),
]

ADDRESS_CONTEXT = [
    "address",
    "addressed",
    "billing",
    "drops",
    "restaurant",
    "meet",
    "sent",
    "arrived",
    "return",
    "returned",
    "moved",
    "offices",
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


_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|"
    "ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR|GU|VI|AS|MP"
)


class ZipCodeRecognizer(PatternRecognizer):
    """US ZIP codes. Alone they look like any number, so they need a context word ("zip",
    "postal code"), or the place they belong to: a ZIP after "City, ST" is part of an address
    ("Denver, CO 80202"), a geographic subdivision smaller than a state (HIPAA Safe Harbor)."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="ZIP_CODE",
            patterns=[
                Pattern("zip", r"\b(?:\d{5}(?:-\d{4})?|\d{4}(?:[ ]?[A-Z]{2})?|\d{3}[ ]\d{2})\b", 0.2),
                Pattern(
                    "city_state_zip",
                    rf"(?<=\b\p{{Lu}}[\p{{L}}.'\u2019-]{{1,30}},?[ \t]{{1,3}}(?:{_STATES})[ \t]{{1,3}})"
                    r"\d{5}(?:-\d{4})?\b",
                    0.6,
                ),
            ],
            context=["zip", "zipcode", "postal", "postcode", "post code"],
            supported_language=supported_language,
            name="VeilZipCodeRecognizer",
            global_regex_flags=_CASE_SENSITIVE,
        )


_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|"
    r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_DATE = (
    rf"(?:\d{{4}}-\d{{1,2}}-\d{{1,2}}|\d{{1,2}}[/.-]\d{{1,2}}[/.-](?:\d{{4}}|\d{{2}})"
    rf"|{_MONTH}[ \t]{{1,3}}\d{{1,2}}(?:st|nd|rd|th)?,?[ \t]{{1,3}}\d{{4}}"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?[ \t]{{1,3}}(?:of[ \t]{{1,3}})?{_MONTH},?[ \t]{{1,3}}\d{{4}})"
)
# "born on", "DOB:", "date of birth", "birthdate", "d.o.b." and a key's own words ("dob: ...").
_DOB_CUE = (
    r"(?:born(?:[ \t]{1,3}on)?|dob|d\.o\.b\.?|date[ \t_-]of[ \t_-]birth|birth[ \t_-]?date|birthday|"
    r"birth[ \t_-]?day|geburtsdatum|geboren(?:[ \t]{1,3}am)?|n[ée]e?[ \t]{1,3}le)"
)


class DateOfBirthRecognizer(PatternRecognizer):
    """``DATE_OF_BIRTH``: a date right after a cue that says whose birth it is ("born on
    3 March 1985", "DOB: 03/02/1985", "date_of_birth='1985-03-02'"). A date of birth identifies a
    person (HIPAA Safe Harbor lists it); any other date stays ``DATE_TIME``."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="DATE_OF_BIRTH",
            patterns=[
                Pattern(
                    "cued_date",
                    rf"(?<=\b{_DOB_CUE}[ \t:=\"'\u2019-]{{0,4}}(?:(?:is|was|on|of)[ \t]{{1,3}}){{0,2}}){_DATE}\b",
                    0.9,
                )
            ],
            supported_language=supported_language,
            name="VeilDateOfBirthRecognizer",
        )


class SsnDigitsRecognizer(PatternRecognizer):
    """US SSNs written without dashes ("123456789", "123 45 6789"): nine digits are any number,
    so they count only next to "ssn" or "social security" (a key's own words count too).
    ``context_score`` is the score a match gets from that evidence."""

    context_score = 0.8

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="US_SSN",
            patterns=[
                Pattern("ssn_digits", r"(?<![\d-])\d{3}([ .]?)\d{2}\1\d{4}(?![\d-])", 0.05),
                # dashed, glued to letters ("x512-34-1293x", "id_512-34-1291"): Presidio's own
                # pattern wants a word boundary, which an upstream asked to glue one removes
                Pattern(
                    "ssn_dashed_glued",
                    r"(?<=[^\W\d])\d{3}-\d{2}-\d{4}(?![\d-])|(?<![\d-])\d{3}-\d{2}-\d{4}(?=[^\W\d])",
                    0.5,
                ),
            ],
            context=["ssn", "ssns", "social", "security", "ss", "taxpayer", "tin", "tax"],
            supported_language=supported_language,
            name="VeilSsnDigitsRecognizer",
        )

    def invalidate_result(self, pattern_text: str) -> bool:
        digits = "".join(c for c in pattern_text if c.isdigit())
        area, group, serial = digits[:3], digits[3:5], digits[5:]
        return (
            len(set(digits)) == 1
            or digits in ("123456789", "987654321")
            or area in ("000", "666")
            or area[0] == "9"
            or group == "00"
            or serial == "0000"
        )


# Timestamps and dates that phone patterns would otherwise take: "Nov 28 2026 22", "2026-11-28 22",
# "28.11.2026 22", epoch seconds or milliseconds ("1732831200").
_YEAR_DATE = re.compile(
    r"(?<!\d)(?:(?:19|20)\d{2}[-./ ]\d{1,2}[-./ ]\d{1,2}|\d{1,2}[-./ ]\d{1,2}[-./ ](?:19|20)\d{2}"
    r"|\d{1,2}[ ,]{1,2}(?:19|20)\d{2})(?!\d)"
)
_MONTH_BEFORE = re.compile(r"(?i)\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]{0,6}\.?[ \t]{0,3}$")
_EPOCH = re.compile(r"1\d{9}(?:\d{3})?")


def looks_like_datetime(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is (part of) a date or time rather than a phone number."""
    value = text[start:end]
    if _YEAR_DATE.search(value) or _EPOCH.fullmatch(value):
        return True
    if _MONTH_BEFORE.search(text[max(0, start - 12) : start]):
        return True
    after = text[end : end + 3]
    return len(after) >= 2 and after[0] in ":." and after[1].isdigit() and not value.startswith("+")


# Where a phone number could be: a digit, then up to 28 digits and separators, ending in a digit.
_DIGIT_GROUPS = re.compile(r"\d{1,30}")
_PHONE_CANDIDATE = re.compile(r"(?<![\d+])\+?\(?\d[\d \t.()/-]{5,28}\d(?!\d)")


# A number written as a phone number: with "+", or with a separator between digits.
_FORMATTED = re.compile(r"^\+|\d[ \t.()/-]+\d")


def _unglued(sub: str, before: bool, after: bool) -> str:
    """``sub`` with a letter glued to either end of the number (``x415-555-0199x``, what an
    upstream returns for ``'x' || phone``) read as a space: phonenumbers' matcher rejects a
    number next to a letter, so such values reached the agent raw. Same length, same offsets."""
    if before and sub[:1].isalpha():
        sub = " " + sub[1:]
    if after and sub[-1:].isalpha():
        sub = sub[:-1] + " "
    return sub


class CandidatePhoneRecognizer(PhoneRecognizer):
    """Presidio's phonenumbers-based recognizer, run only on the stretches of text that could hold
    a phone number. phonenumbers' matcher tries dozens of sub-matches for every run of digits, so
    on a long text of digits and spaces it costs ~0.1 s per kilobyte; here a cheap bounded regex
    finds the candidates (7-15 digits in at most six groups within 30 characters) and the matcher
    sees only those. A formatted number glued to letters is read as if a space stood between;
    a bare run of digits glued to letters is not (``ORD2024118700``: an order number, mostly)."""

    def analyze(self, text, entities, nlp_artifacts=None):
        results = []
        for cand in _PHONE_CANDIDATE.finditer(text):
            groups = _DIGIT_GROUPS.findall(cand.group())
            # 7-15 digits in at most six groups, at most one of them a lone digit ("+1", "(0)")
            if not 7 <= sum(map(len, groups)) <= 15 or len(groups) > 6 or sum(len(g) == 1 for g in groups) > 1:
                continue
            lo = max(0, cand.start() - 1)  # the matcher looks at the characters around a number
            sub = text[lo : min(len(text), cand.end() + 1)]
            if _FORMATTED.search(cand.group()):
                sub = _unglued(sub, lo < cand.start(), cand.end() < len(text))
            for region in self.supported_regions:
                whole = False
                for match in phonenumbers.PhoneNumberMatcher(sub, region, leniency=self.leniency):
                    match.start += lo
                    match.end += lo
                    whole = whole or (match.start <= cand.start() and match.end >= cand.end())
                    if looks_like_datetime(text, match.start, match.end):
                        continue
                    results.append(self._get_recognizer_result(match, text, region, nlp_artifacts))
                # a number found whole (or written with +country, which no region changes) is
                # what every other region would find too: one matcher pass instead of several
                if whole or cand.group().startswith("+"):
                    break
        return EntityRecognizer.remove_duplicates(results)


def _digit_count_between(low: int, high: int):
    def check(text: str) -> bool | None:
        n = sum(c.isdigit() for c in text)
        return None if low <= n <= high else False  # None keeps the pattern score

    return check


# Where a phone number ends: after its extension if it has one ("x769", "ext. 12"), and never
# with more digits right after (a bare word boundary let "+1-903-140-4508x769" stop at "140",
# leaving the rest of the number raw beside the token).
_END = r"(?:[ ]?(?:x|ext\.?)[ ]?\d{1,6})?(?![.-]?\d)(?!\w)"


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
        "message",
        "messages",
        "sms",
        "whatsapp",
    ]

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="PHONE_NUMBER",
            patterns=[
                Pattern(
                    "intl",
                    r"(?<![\w+])\+\d{1,3}[ .-]?(?:\(0\)[ ]?)?\(?\d{1,4}\)?(?:[ .-]?\d{1,4}){2,5}" + _END,
                    0.6,
                ),
                Pattern(
                    "local",
                    r"(?<![\w.+/-])(?!\d{3}-\d{2}-\d{4}\b)(?:\(\d{2,4}\)[ ]?\d{2,4}|\d{2,4})(?:[ .-]\d{2,4}){1,4}"
                    + _END,
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

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in results if not looks_like_datetime(text, r.start, r.end)]


_CARD = r"(?:4\d{3}|5[0-5]\d{2}|2[2-7]\d{2}|6\d{3}|3\d{3})[- ]?\d{3,4}[- ]?\d{3,4}[- ]?\d{3,5}"


class GluedCardRecognizer(CreditCardRecognizer):
    """Card numbers glued to letters ("card_4111111111111111", "x4111-1111-1111-1111y"), which
    Presidio's pattern misses for want of a word boundary, and Mastercard's 2221-2720 numbers,
    which its pattern leaves out; the Luhn check still decides."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            patterns=[
                Pattern(
                    "glued",
                    rf"(?<=[^\W\d]){_CARD}(?!\d)|(?<!\d){_CARD}(?=[^\W\d])",  # a letter or _ on one side
                    0.3,
                ),
                Pattern("two_series", r"(?<![\d-])2[2-7]\d{2}([- ]?)\d{4}\1\d{4}\1\d{4}(?![\d-])", 0.3),
            ],
            supported_language=supported_language,
            name="VeilGluedCardRecognizer",
        )


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
# The whole word before the initial: with the initial first, "Maria Lopez" matched as "Maria L"
# and "opez" stayed raw (and the span kept NER from reading the rest).
_NAME = r"\p{Lu}[\p{L}'\u2019-]{1,40}(?:[ \t]{1,8}(?:\p{Lu}[\p{L}'\u2019-]{1,40}|\p{Lu}\.?(?!\p{L}))){0,3}"


class CuedPersonRecognizer(PatternRecognizer):
    """Names after an explicit cue (a title, "my name is", "Dear", "signed"), which the small NER
    model misses when the name is not English-looking."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="PERSON",
            patterns=[
                Pattern("title", rf"(?<=\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam|mr|mrs|ms|dr)\.?[ \t]){_NAME}", 0.7),
                Pattern(
                    "cue",
                    rf"(?<=\b(?:[Mm]y name is|[Nn]ame:|[Dd]ear|[Ss]igned|[Rr]egards,|[Tt]his is|[Cc]all me|[Ii] am|I'm"
                    r"|[Cc]alled|[Nn]amed|[Dd]irected by|[Ww]ritten by|[Pp]roduced by|[Ss]igned by|[Mm]et with"
                    r"|[Ff]ollow up with|[Ii]ncluding|[Tt]ribute to|[Ss]aid|[Tt]old|[Tt]hanks|[Hh]i|[Hh]ello"
                    r"|[Ss]poke with|[Tt]alked to|[Aa]sk for|[Aa]ttn:?|[Aa]ttention:|[Cc]ontact person:?"
                    r"|[Cc]alls me|[Mm]aiden name is|[Ss]ays|[Ss]pouse|[Ww]ife|[Hh]usband|[Ss]ister|[Bb]rother"
                    r"|[Dd]aughter|[Ss]on|[Mm]other|[Ff]ather|[Kk]id|[Cc]ousin|[Nn]ephew|[Nn]iece|[Gg]randson"
                    r"|[Gg]randdaughter|[Ff]ianc[ée]e?"
                    rf"|[Nn]ame\?)[ \t]{{1,8}}){_NAME}",
                    0.6,
                ),
            ],
            supported_language=supported_language,
            name="VeilCuedPersonRecognizer",
            global_regex_flags=_CASE_SENSITIVE,
        )


# Cues after which the next words are a name even when nobody capitalised them ("my name is
# vitoria", "people call me višeslav", "her maiden name is nyberg", "follow up with patricia
# desrosiers"): chat and ticket text is often all lower case, and NER misses such names.
_LOWER_NAME_CUES = r"name is|name was|name's|call me|calls me|maiden name is|follow up with"


class LowerCasePersonRecognizer(PatternRecognizer):
    """Lower-case names after a cue that announces a name: a first word that is no stop word and
    no English verb, adjective or adverb ("call me back", "my name is not on the list" find
    nothing), then the words up to a stop word or an adverb ("call me ana tomorrow"). Surnames
    that are adjectives or verbs ("emily brown", "james foster") are kept; one single-letter
    initial may stand between two names."""

    def __init__(self, common: frozenset[str], adverbs: frozenset[str], supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="PERSON",
            patterns=[
                Pattern(
                    "cue_lower",
                    rf"(?i)(?<=\b(?:{_LOWER_NAME_CUES})[ \t]{{1,8}})\p{{Ll}}[\p{{L}}'\u2019-]{{1,40}}"
                    r"(?:[ \t]{1,3}\p{Ll}[\p{L}'\u2019-]{0,40}){0,3}",
                    0.6,
                ),
            ],
            supported_language=supported_language,
            name="VeilLowerCasePersonRecognizer",
            global_regex_flags=_CASE_SENSITIVE,
        )
        self._common = common
        self._adverbs = adverbs

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None, regex_flags: int | None = None
    ) -> list[RecognizerResult]:
        kept = []
        for result in super().analyze(text, entities, nlp_artifacts, regex_flags):
            end = self._name_end(text, result.start, result.end)
            if end is not None:
                result.end = end
                kept.append(result)
        return kept

    def _name_end(self, text: str, start: int, end: int) -> int | None:
        """Where the name that starts at ``start`` ends within the match, or None if no word is one."""
        words = [(m.start() + start, m.end() + start, m.group()) for m in re.finditer(r"\S+", text[start:end])]
        name_end: int | None = None
        for i, (_, w_end, word) in enumerate(words):
            lower = word.lower()
            if len(word) == 1:  # an initial: only between two names
                if name_end is None or i + 1 >= len(words) or not self._goes_on(words[i + 1][2]):
                    break
                continue
            if not (self._goes_on(lower) if name_end is not None else self._starts(lower)):
                break
            name_end = w_end
        return name_end

    def _starts(self, word: str) -> bool:
        return len(word) > 1 and word not in STOP_WORDS and word not in self._common

    def _goes_on(self, word: str) -> bool:
        word = word.lower()
        return len(word) > 1 and word not in STOP_WORDS and word not in self._adverbs


_VERBS = (
    r"is|was|were|will|has|had|began|begins|lives|lived|said|says|asked|wants|wanted|went|can|could|would|"
    r"did|does|told|wrote|writes|made|makes|works|worked|joined|left|called|emailed|phoned|replied|agreed"
)


_UNKNOWN_WORD = r"\p{Lu}\p{Ll}[\p{L}'\u2019-]{1,40}"


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
                    rf"(?<![\p{{L}}'\u2019-]){_UNKNOWN_WORD}(?:[ \t]{_UNKNOWN_WORD})?(?=[ \t]{{1,8}}(?:{_VERBS})\b)",
                    0.55,
                ),
                # a chat transcript's speaker ("Zuzana: ..."); "Status:" or "Owner:" are English words
                Pattern("speaker", rf"(?m)^[ \t>]{{0,8}}\K{_UNKNOWN_WORD}(?=:[ \t]{{0,8}}\S)", 0.55),
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


# Each word whole ("Villa del Mar" matched as "Villa de" while "de" came first).
_PLACE = r"\p{Lu}[\p{L}'\u2019.-]{1,40}(?:[ \t](?:\p{Lu}[\p{L}'\u2019.-]{1,40}|del|de|la|le|upon|nad)(?!\p{L})){0,4}"
_FIRST_LAST = r"\p{Lu}\p{Ll}[\p{L}'\u2019-]{1,40}"


class NameShapeRecognizer(PatternRecognizer):
    """Names by their shape, where the words are not English (the WordNet index shipped with the
    spaCy model): a first name, a middle initial and a surname ("Elita B Desaulniers", also all
    lower case: "emidio p lombardo"), and a line that holds nothing but two such words (the name
    heading a signature or an address block: "Satu Elomo")."""

    def __init__(self, lexicon: frozenset[str], supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="PERSON",
            patterns=[
                Pattern(
                    "initial",
                    rf"(?<![\p{{L}}'\u2019-]){_FIRST_LAST}[ \t]\p{{Lu}}\.?[ \t]\p{{Lu}}[\p{{L}}'\u2019-]{{1,40}}"
                    r"(?![\p{L}'\u2019-])",
                    0.6,
                ),
                Pattern(
                    "initial_lower",
                    r"(?<![\p{L}'\u2019-])\p{Ll}{2,20}[ \t][b-hj-np-z]\.?[ \t]\p{Ll}{2,20}(?![\p{L}'\u2019-])",
                    0.55,
                ),
                Pattern(
                    "name_line",
                    rf"(?m)^[ \t>|*?-]{{0,8}}\K{_FIRST_LAST}(?:[ \t]\p{{Lu}}\.?)?[ \t]{_FIRST_LAST}(?=[ \t]{{0,8}}$)",
                    0.55,
                ),
            ],
            supported_language=supported_language,
            name="VeilNameShapeRecognizer",
            global_regex_flags=_CASE_SENSITIVE,
        )
        self._lexicon = lexicon

    def validate_result(self, pattern_text: str) -> bool | None:
        words = [w for w in pattern_text.lower().replace(".", " ").split() if len(w) > 1]
        if not self._lexicon or len(words) < 2 or any(w in STOP_WORDS for w in words):
            return False
        if pattern_text[:1].islower():  # lower case: neither name may be an English word
            return False if any(w in self._lexicon for w in words) else None
        return False if words[0] in self._lexicon else None


_PLACE_CUES = (
    r"flew to|fly to|flying to|moved here from|moved from|moved to|originally from|I'm in|I am in|we're in|live in|"
    r"lives in|living in|located in|based in|arrived at|arrived in|travell?ed to|travell?ing to|born in|trip to|"
    r"visiting|visited|holiday in|vacation in|grew up in|Where:|City:|Town:|from the town of|from the city of|"
    r"University of|university of|home city|hometown|returned to|coming to|the town of|the city of|the village of|"
    r"world to"
)


class CuedLocationRecognizer(PatternRecognizer):
    """Places after an explicit cue ("flew to RYSSBY", "moved here from Tjaereborg", "Where: ..."),
    which the small NER model misses for non-English or upper-case place names."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="LOCATION",
            patterns=[Pattern("cue", rf"(?<=\b(?:{_PLACE_CUES})[ \t]{{1,8}}){_PLACE}", 0.6)],
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
                    r"(?<=\b(?:in|to|from|at|near)[ \t]{1,8})\p{Lu}{4,40}(?:[ -]\p{Lu}{2,40}){0,2}\b(?!\p{Ll})",
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


class PlaceBeforeCodeRecognizer(PatternRecognizer):
    """A place followed by its postal code after "in", "to", "from", "at" or "near" ("in
    Acquapendente 1021", "in Tokoza Ext 1426"): the place is a ``LOCATION``, the code a
    ``ZIP_CODE``. The place's first word must not be an English word or a month ("in March
    2021" is a date)."""

    def __init__(self, lexicon: frozenset[str], supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="LOCATION",
            patterns=[
                Pattern(
                    "place_code",
                    rf"(?<=\b(?:in|to|from|at|near)[ \t]{{1,8}}){_PLACE}[ \t]{{1,4}}"
                    r"(?:\d{4,5}|\d{3}[ ]\d{2}|\d{4}-\d{3}|\d{2}-\d{3})\b(?![.,]\d)",
                    0.6,
                )
            ],
            supported_language=supported_language,
            name="VeilPlaceBeforeCodeRecognizer",
            global_regex_flags=_CASE_SENSITIVE,
        )
        self._lexicon = lexicon

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        out = []
        for r in super().analyze(text, entities, nlp_artifacts, regex_flags):
            m = _CODE_AT_END.search(text, r.start, r.end)
            if m is None:
                continue
            meta = r.recognition_metadata
            out.append(RecognizerResult("LOCATION", r.start, m.start(), r.score, r.analysis_explanation, meta))
            out.append(RecognizerResult("ZIP_CODE", m.start(1), r.end, r.score, r.analysis_explanation, dict(meta)))
        return out

    def validate_result(self, pattern_text: str) -> bool | None:
        first = pattern_text.split()[0].lower()
        if not self._lexicon or first in self._lexicon or first in STOP_WORDS or _MONTH_WORD.match(first):
            return False
        return None


_MONTH_WORD = re.compile(r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)")
_CODE_AT_END = re.compile(r"[ \t]{1,4}(\d[\d -]{1,8}\d)$")


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer with a tldextract that never touches the network, and a
    pattern of its own: Presidio's lets a local part start with ``'`` or ``=`` (so
    ``email='jane@x.org'`` became one span that swallowed the label) and has unbounded
    repetitions (quadratic on long runs of word characters). This one starts a match only
    where no local-part character precedes it, and every repetition is bounded."""

    PATTERNS = [
        Pattern(
            "Email (Medium)",
            r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9_%+\-][A-Za-z0-9._%+'\-]{0,63}@"
            r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?){1,8}"
            r"(?![A-Za-z0-9\-]|\.[A-Za-z0-9])",
            0.5,
        )
    ]

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(patterns=self.PATTERNS, supported_language=supported_language)

    def validate_result(self, pattern_text: str) -> bool | None:
        # A known public suffix confirms the address (score 1.0). Unlike Presidio, an unknown one
        # (``jw@corp.internal``) keeps the pattern's score instead of being dropped: enterprise
        # data is full of internal domains, and they identify people just as well.
        return True if OFFLINE_TLD(pattern_text).fqdn else None


# "jane.doe(at)example.com", "jane.doe [at] example [dot] com": an address written so that
# harvesters miss it, as people do in tickets and web pages; the pattern above misses it too.
_AT = r"[ \t]?[\[(][ \t]?at[ \t]?[\])][ \t]?"
_DOT = r"[ \t]?(?:\.|[\[(][ \t]?dot[ \t]?[\])])[ \t]?"


class ObfuscatedEmailRecognizer(PatternRecognizer):
    """E-mail addresses with ``@`` written ``(at)`` or ``[at]`` (and dots, maybe, ``[dot]``),
    ending in a top-level domain. Only the bracketed forms: a bare "at" is a word of every
    sentence."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="EMAIL_ADDRESS",
            patterns=[
                Pattern(
                    "bracketed at",
                    rf"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9_%+\-][A-Za-z0-9._%+\-]{{0,63}}{_AT}"
                    rf"[A-Za-z0-9][A-Za-z0-9\-]{{0,62}}(?:{_DOT}[A-Za-z0-9][A-Za-z0-9\-]{{0,62}}){{0,5}}"
                    rf"{_DOT}[A-Za-z]{{2,24}}(?![A-Za-z0-9\-])",  # the last label a top-level domain
                    0.7,
                )
            ],
            supported_language=supported_language,
            name="VeilObfuscatedEmailRecognizer",
            global_regex_flags=re.IGNORECASE,
        )


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# File names in code and tracebacks ("main.py", "README.md") are not web addresses.
_CODE_SUFFIXES = frozenset({"py", "md", "sh", "rs", "ps"})


class VeilUrlRecognizer(PatternRecognizer):
    r"""URLs, with or without a scheme. Replaces Presidio's recognizer, whose scheme-less pattern
    (``[a-z0-9.\-]{1,253}`` before a list of ~600 top-level domains, tried at every position)
    took seconds on a few kilobytes of ``a.a.a.``. Here a host is matched label by label, only
    where no host character precedes it, and its suffix is checked against the public suffix
    list bundled with tldextract (``validate_result``)."""

    def __init__(self, supported_language: str = "en") -> None:
        host = rf"{_LABEL}(?:\.{_LABEL}){{1,10}}"
        super().__init__(
            supported_entity="URL",
            patterns=[
                Pattern(
                    "url_scheme",
                    rf"\b(?:https?|ftp)://(?:[^\s/@]{{1,64}}@)?{host}(?::\d{{1,5}})?(?:[/?#][^\s()<>\"']{{0,2000}})?",
                    0.6,
                ),
                Pattern(
                    "url_host",
                    rf"(?<![\w.@/\\-])(?:www\d{{0,3}}\.)?{host}(?![\w@-]|\.[a-z0-9])(?::\d{{1,5}})?"
                    rf"(?:/[^\s()<>\"']{{0,2000}})?",
                    0.5,
                ),
            ],
            context=["url", "website", "link", "site", "web"],
            supported_language=supported_language,
            name="VeilUrlRecognizer",
            global_regex_flags=re.IGNORECASE | re.DOTALL | re.MULTILINE,
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        ext = OFFLINE_TLD(pattern_text)
        if not ext.suffix or not ext.domain:
            return False
        if "://" not in pattern_text and ext.suffix.lower() in _CODE_SUFFIXES:
            return False
        return None


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
